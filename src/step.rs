//! One training step, written to mirror the math of design.md §1 line by
//! line. Every product is a GEMM into a buffer allocated once, in the
//! [`Workspace`]; every elementwise pass is a [`kernels`]
//! call. Nothing here allocates.
//!
//! ```text
//! h        = x · w1                 N×H
//! h_relu   = max(h, 0)              N×H
//! y_pred   = h_relu · w2            N×D_out
//! loss     = Σ (y_pred − y)²
//! g_y      = 2 (y_pred − y)         N×D_out
//! g_w2     = h_reluᵀ · g_y          H×D_out
//! g_hrelu  = g_y · w2ᵀ              N×H      (w2 before this step's update)
//! g_h      = g_hrelu, 0 where h < 0
//! g_w1     = xᵀ · g_h               D_in×H
//! w1      -= lr · g_w1 ;  w2 -= lr · g_w2
//! ```
//!
//! ## How the work is laid out ([`Plan`])
//!
//! Every line above but the last two is a function of each row of x alone;
//! only g_w1 and g_w2 sum over rows. So the batch is split into one *shard*
//! of rows per thread, and each shard walks its rows in *blocks* of a few
//! hundred: for each block, forward and backward run back to back while the
//! block of x is still in cache, and the block's g_w1, g_w2 are added into
//! the shard's own gradient buffers (GEMM with beta = 1). Each shard runs on
//! its own core with single-threaded GEMMs. When all shards are done, one
//! pass sums their gradients and applies the update.
//!
//! Why: on this machine (Debian's OpenBLAS 0.3.21, Zen 4) a single-threaded
//! dgemm of 128–256 rows against w1 runs at ~47 GFLOP/s, against ~34 for all
//! 4,096 rows at once and ~61 for both cores sharing one multi-threaded
//! call; two cores each on their own blocks make ~90. It also removes the
//! N×H buffers: the workspace holds a block, not the batch.
//!
//! When one shard holds the whole batch in one block (one thread, N small)
//! the order allows the update to live inside the gradient GEMMs:
//! `w ← −lr · (product) + 1 · w` (alpha = −lr, beta = 1), with no gradient
//! buffer at all.
//!
//! Transposed operands are `.t()` views; ndarray hands them to cblas as
//! transpose flags, without copying. All buffers and blocks are row-major
//! and contiguous, so ndarray never falls back to its own matmul (a test
//! counts the cblas calls).

use crate::error::Result;
use crate::kernels;
use crate::net::{Data, Weights};
use crate::scalar::{Dtype, Real};
use crate::shape::Shape;
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2};
use std::ops::Range;

mod selftest;

/// The parts of a step, as the phase breakdown of a benchmark reports
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// x·w1 and h_relu·w2.
    ForwardGemms,
    /// The in-place ReLU.
    Relu,
    /// The loss and g_y pass.
    LossGrad,
    /// g_y·w2ᵀ, h_reluᵀ·g_y and xᵀ·g_h.
    BackwardGemms,
    /// The ReLU mask on g_hrelu.
    Mask,
    /// Waiting for the other shards, summing their gradients, and the
    /// update pass (empty when the update is fused into the GEMMs).
    Update,
}

impl Phase {
    /// Every phase, in step order.
    pub const ALL: [Phase; 6] = [
        Phase::ForwardGemms,
        Phase::Relu,
        Phase::LossGrad,
        Phase::BackwardGemms,
        Phase::Mask,
        Phase::Update,
    ];

    /// Its position in [`Phase::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Sees the end of each phase of a step. The step functions take one so
/// that a benchmark can time the phases with the very code that runs in
/// training; [`NoProbe`] compiles to nothing. Only the first shard reports
/// its phases (the shards do the same work side by side).
pub trait Probe: Send {
    /// Called when `phase` has just finished.
    fn done(&mut self, phase: Phase);
}

/// The probe of an ordinary step: does nothing, costs nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProbe;

impl Probe for NoProbe {
    #[inline(always)]
    fn done(&mut self, _: Phase) {}
}

/// How a step applies its update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StepMode {
    /// Plain SGD applied by the step itself: inside the gradient GEMMs when
    /// the plan allows it, else in the pass that sums the shards.
    #[default]
    Fused,
    /// Gradients into [`Gradients`] buffers, then a separate update: the
    /// form that data-parallel training and optimizers with state build on.
    Explicit,
}

/// How a step divides its work: `shards` groups of consecutive rows, one
/// per rayon thread, each walked in blocks of at most `block_rows` rows,
/// with OpenBLAS running `blas_threads` threads inside each GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Number of shards (≤ threads, ≤ N).
    pub shards: usize,
    /// Rows per block.
    pub block_rows: usize,
    /// OpenBLAS threads per GEMM call (shards × blas_threads ≤ threads).
    pub blas_threads: usize,
    /// Whether the update lives inside the gradient GEMMs: a fused step
    /// whose single shard holds the whole batch in one block.
    pub fused_gemm_update: bool,
}

/// Below this H or D_in the GEMMs are too thin for OpenBLAS's own threads
/// to pay; at or above both, one multi-threaded call per product is as
/// fast as a shard per core, and needs no gradient sum across shards.
pub const WIDE_LAYER: usize = 512;

impl Plan {
    /// The plan for `shape` in `dtype` on `threads` threads.
    ///
    /// Wide layers (H and D_in both ≥ [`WIDE_LAYER`]): one shard, the
    /// whole batch in one block, OpenBLAS on all threads — measured at
    /// (8192, 4096, 1024, 256) f64, 1587 ms per step against 1635 for a
    /// shard per core.
    ///
    /// Otherwise one shard per thread, single-threaded GEMMs, blocks of
    /// max(H, 128) rows in f64 and max(H, 256) in f32. Measured on this
    /// machine's OpenBLAS, single-threaded GEMMs against w1 with H = 100
    /// peak at 128–256 rows (f64 ~47 GFLOP/s, f32 ~99) and fall off beyond
    /// 512; all 4,096 rows at once run at ~34, and both cores sharing one
    /// call at ~61 in f64.
    pub fn new(shape: Shape, dtype: Dtype, threads: usize, mode: StepMode) -> Plan {
        let threads = threads.max(1);
        let wide = shape.hidden >= WIDE_LAYER && shape.d_in >= WIDE_LAYER;
        let (shards, blas_threads, block_rows) = if wide {
            (1, threads, shape.n)
        } else {
            let shards = threads.min(shape.n);
            let min_rows = 1024 / dtype.size(); // 128 in f64, 256 in f32
            let rows = shape
                .hidden
                .max(min_rows)
                .min(shape.n.div_ceil(shards))
                .max(1);
            (shards, 1, rows)
        };
        let (shards, block_rows) = selftest::worsen_plan(shards, block_rows, shape.n, wide);
        Plan {
            shards,
            block_rows,
            blas_threads,
            fused_gemm_update: mode == StepMode::Fused && shards == 1 && block_rows >= shape.n,
        }
    }

    /// The rows of shard `i` of a batch of `n`: consecutive, sizes
    /// differing by at most one.
    pub fn shard_rows(&self, n: usize, i: usize) -> Range<usize> {
        let (q, r) = (n / self.shards, n % self.shards);
        let start = i * q + i.min(r);
        start..start + q + usize::from(i < r)
    }

    /// Elements a workspace under this plan holds: per shard, the block
    /// buffers (2·B·H + B·D_out) and, unless the update is in the GEMMs,
    /// its gradient sums (D_in·H + H·D_out).
    pub fn workspace_elems(&self, shape: Shape) -> u128 {
        let (b, d, h, o) = (
            self.block_rows as u128,
            shape.d_in as u128,
            shape.hidden as u128,
            shape.d_out as u128,
        );
        let grads = if self.fused_gemm_update {
            0
        } else {
            d * h + h * o
        };
        self.shards as u128 * (2 * b * h + b * o + grads)
    }

    /// Bytes a training run holds at once: x, y, the weights, this plan's
    /// workspace, and the explicit [`Gradients`] in explicit mode.
    pub fn training_bytes(&self, shape: Shape, dtype: Dtype, mode: StepMode) -> u128 {
        let grads = if mode == StepMode::Explicit {
            shape.weight_elems()
        } else {
            0
        };
        (shape.data_elems() + shape.weight_elems() + self.workspace_elems(shape) + grads)
            * dtype.size() as u128
    }

    /// Fails with the bytes needed when a run under this plan would not fit
    /// in the memory available now. Call before allocating.
    pub fn check_fits_memory(&self, shape: Shape, dtype: Dtype, mode: StepMode) -> Result<()> {
        shape.check_bytes_fit(self.training_bytes(shape, dtype, mode), dtype)
    }
}

/// A block's worth of intermediates.
#[derive(Debug)]
struct BlockBufs<F> {
    /// B×H: h = x_b·w1 of the current block, then h_relu in place
    /// (negatives stored as −0.0, so the sign bit is the ReLU mask).
    h: Array2<F>,
    /// B×D_out: y_pred = h_relu·w2, then g_y = 2(y_pred − y) in place.
    y_pred: Array2<F>,
    /// B×H: g_hrelu = g_y·w2ᵀ, then g_h in place after the mask.
    g_hrelu: Array2<F>,
}

/// One shard's rows, block buffers and gradient sums.
#[derive(Debug)]
struct Shard<F> {
    rows: Range<usize>,
    bufs: BlockBufs<F>,
    /// D_in×H: Σ over this shard's blocks of x_bᵀ·g_h (empty when fused).
    g_w1: Array2<F>,
    /// H×D_out: Σ over this shard's blocks of h_reluᵀ·g_y (empty when fused).
    g_w2: Array2<F>,
    /// Σ over this shard's blocks of the loss.
    loss: f64,
}

/// The step's preallocated buffers, laid out by a [`Plan`].
#[derive(Debug)]
pub struct Workspace<F> {
    shape: Shape,
    plan: Plan,
    shards: Vec<Shard<F>>,
}

impl<F: Real> Workspace<F> {
    /// Buffers for `shape` on `threads` threads (see [`Plan::new`]).
    pub fn new(shape: Shape, threads: usize, mode: StepMode) -> Self {
        Self::with_plan(shape, Plan::new(shape, F::DTYPE, threads, mode))
    }

    /// Buffers for `shape` laid out by `plan`.
    pub fn with_plan(shape: Shape, plan: Plan) -> Self {
        let (b, d, h, o) = (plan.block_rows, shape.d_in, shape.hidden, shape.d_out);
        let (gd, gh, go) = if plan.fused_gemm_update {
            (0, 0, 0)
        } else {
            (d, h, o)
        };
        let shards = (0..plan.shards)
            .map(|i| Shard {
                rows: plan.shard_rows(shape.n, i),
                bufs: BlockBufs {
                    h: Array2::zeros((b, h)),
                    y_pred: Array2::zeros((b, o)),
                    g_hrelu: Array2::zeros((b, h)),
                },
                g_w1: Array2::zeros((gd, gh)),
                g_w2: Array2::zeros((gh, go)),
                loss: 0.0,
            })
            .collect();
        Workspace {
            shape,
            plan,
            shards,
        }
    }

    /// The shape the buffers were made for.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// How the work is divided.
    pub fn plan(&self) -> Plan {
        self.plan
    }
}

/// The gradients of the loss with respect to the weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients<F> {
    /// ∂loss/∂w1, D_in×H.
    pub w1: Array2<F>,
    /// ∂loss/∂w2, H×D_out.
    pub w2: Array2<F>,
}

impl<F: Real> Gradients<F> {
    /// Zeroed gradient buffers for `shape`.
    pub fn zeros(shape: Shape) -> Self {
        Gradients {
            w1: Array2::zeros((shape.d_in, shape.hidden)),
            w2: Array2::zeros((shape.hidden, shape.d_out)),
        }
    }
}

/// Learning rates, one per layer. Setting one to 0 holds that layer fixed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LearningRates {
    /// Step size for w1.
    pub w1: f64,
    /// Step size for w2.
    pub w2: f64,
}

impl LearningRates {
    /// The same rate for both layers.
    pub fn uniform(lr: f64) -> Self {
        LearningRates { w1: lr, w2: lr }
    }

    /// The larger of the two, for messages.
    pub fn max(&self) -> f64 {
        self.w1.max(self.w2)
    }
}

fn slice_mut<'a, F>(a: &'a mut ArrayViewMut2<'_, F>) -> &'a mut [F] {
    a.as_slice_mut()
        .expect("blocks are contiguous row ranges of row-major buffers")
}

fn slice<'a, F>(a: &'a ArrayView2<'_, F>) -> &'a [F] {
    a.as_slice()
        .expect("blocks are contiguous row ranges of row-major buffers")
}

/// Rows `r` of a row-major matrix as a view with standard strides. (An
/// ndarray slice of a one-column matrix gets a zero column stride, which
/// cblas refuses and ndarray then silently multiplies with its own slower
/// code; a view made from the rows' memory keeps strides (cols, 1).)
fn rows_of<F>(a: &Array2<F>, r: Range<usize>) -> ArrayView2<'_, F> {
    let cols = a.ncols();
    ArrayView2::from_shape((r.len(), cols), &flat(a)[r.start * cols..r.end * cols])
        .expect("rows of a row-major matrix")
}

/// [`rows_of`], mutable. Made from the buffer's pointer, so that no
/// reference to the other rows is formed: in an exchanged step
/// ([`gradients_exchanged`]) another process may be reading rows already
/// handed to the [`Exchange`].
fn rows_of_mut<F>(a: &mut Array2<F>, r: Range<usize>) -> ArrayViewMut2<'_, F> {
    let cols = a.ncols();
    assert!(
        a.is_standard_layout() && r.start <= r.end && r.end <= a.nrows(),
        "rows {r:?} of a {}×{cols} row-major matrix",
        a.nrows()
    );
    // SAFETY: rows r of a contiguous row-major buffer (checked above),
    // borrowed exclusively for the view's lifetime.
    unsafe { ArrayViewMut2::from_shape_ptr((r.len(), cols), a.as_mut_ptr().add(r.start * cols)) }
}

/// Columns `c` of rows `r` of a row-major matrix, as a strided view
/// (strides (cols, 1); its transpose goes to cblas as TransA with
/// lda = cols).
fn columns_of<F>(a: &Array2<F>, r: Range<usize>, c: Range<usize>) -> ArrayView2<'_, F> {
    use ndarray::ShapeBuilder;
    let cols = a.ncols();
    assert!(!r.is_empty() && !c.is_empty() && c.end <= cols);
    let start = r.start * cols + c.start;
    let len = (r.len() - 1) * cols + c.len();
    ArrayView2::from_shape(
        (r.len(), c.len()).strides((cols, 1)),
        &flat(a)[start..start + len],
    )
    .expect("a column range of a row-major matrix")
}

fn flat<F>(a: &Array2<F>) -> &[F] {
    a.as_slice().expect("buffers are contiguous and row-major")
}

fn flat_mut<F>(a: &mut Array2<F>) -> &mut [F] {
    a.as_slice_mut()
        .expect("buffers are contiguous and row-major")
}

/// Where a block's weight gradients go, with the weights the block reads:
/// added into a shard's sums (`g ← 1·product + beta·g`; beta = 0 for the
/// shard's first block, 1 after), or straight into the weights
/// (`w ← −lr·product + 1·w`).
enum Sink<'a, F> {
    Accumulate {
        weights: &'a Weights<F>,
        /// `None`: leave this block's g_w1 GEMM to [`last_blocks_w1`]
        /// (the block's g_h stays in its buffer).
        g_w1: Option<&'a mut Array2<F>>,
        g_w2: &'a mut Array2<F>,
        beta: F,
    },
    Update {
        weights: &'a mut Weights<F>,
        lr: LearningRates,
    },
}

impl<F> Sink<'_, F> {
    fn weights(&self) -> &Weights<F> {
        match self {
            Sink::Accumulate { weights, .. } => weights,
            Sink::Update { weights, .. } => weights,
        }
    }
}

/// Forward and backward for one block of rows (x_b is B×D_in, y_b is
/// B×D_out). Returns the block's loss. With [`Sink::Update`] and a loss that
/// is not finite, stops before the update and leaves the weights as they
/// were.
fn block<F: Real>(
    bufs: &mut BlockBufs<F>,
    x: ArrayView2<F>,
    y: ArrayView2<F>,
    sink: Sink<F>,
    probe: &mut impl Probe,
) -> f64 {
    let (one, zero) = (F::one(), F::zero());
    let rows = x.nrows();
    let mut h = rows_of_mut(&mut bufs.h, 0..rows);
    let mut y_pred = rows_of_mut(&mut bufs.y_pred, 0..rows);
    let mut g_hrelu = rows_of_mut(&mut bufs.g_hrelu, 0..rows);
    let w = sink.weights();

    // ---- forward ----
    // h = x · w1
    //   (B×D_in)·(D_in×H) → B×H; no transposes; alpha = 1, beta = 0.
    #[cfg(not(feature = "selftest-no-cblas"))]
    general_mat_mul(one, &x, &w.w1, zero, &mut h);
    #[cfg(feature = "selftest-no-cblas")]
    selftest::x_w1_off_cblas(&x, &w.w1, &mut h);
    probe.done(Phase::ForwardGemms);

    // h_relu = max(h, 0), in place; where h < 0 it stores −0.0 (the mask).
    kernels::relu_in_place(slice_mut(&mut h));
    probe.done(Phase::Relu);

    // y_pred = h_relu · w2
    //   (B×H)·(H×D_out) → B×D_out; no transposes; alpha = 1, beta = 0.
    general_mat_mul(one, &h, &w.w2, zero, &mut y_pred);
    probe.done(Phase::ForwardGemms);

    // loss = Σ (y_pred − y)²  and  g_y = 2 (y_pred − y), one pass, in place.
    let loss = kernels::loss_and_grad(slice_mut(&mut y_pred), slice(&y));
    probe.done(Phase::LossGrad);
    if matches!(sink, Sink::Update { .. }) && !loss.is_finite() {
        return loss;
    }

    // ---- backward ----
    // g_hrelu = g_y · w2ᵀ
    //   (B×D_out)·(D_out×H) → B×H; w2ᵀ is a transposed view (cblas
    //   TransB); alpha = 1, beta = 0. Reads this step's w2: it comes
    //   before any update of w2.
    general_mat_mul(one, &y_pred, &w.w2.t(), zero, &mut g_hrelu);
    probe.done(Phase::BackwardGemms);

    // g_h = g_hrelu, with g_h = 0 where h < 0 (h == 0 passes), in place.
    let h_relu = h.view();
    kernels::relu_mask(slice_mut(&mut g_hrelu), slice(&h_relu));
    probe.done(Phase::Mask);

    let (a2, out2, a1, out1, beta) = match sink {
        Sink::Accumulate {
            g_w1, g_w2, beta, ..
        } => (one, g_w2, one, g_w1, beta),
        Sink::Update { weights, lr } => (
            -F::from_f64(lr.w2),
            &mut weights.w2,
            -F::from_f64(lr.w1),
            Some(&mut weights.w1),
            one,
        ),
    };
    // A zero alpha with beta = 1 leaves its output as it is: skip the GEMM.
    let skip = |alpha: F| alpha == zero && beta == one;

    // g_w2 (+)= h_reluᵀ · g_y
    //   (H×B)·(B×D_out) → H×D_out; h_reluᵀ is a transposed view (TransA).
    //   Accumulating: alpha = 1, beta = 0 on the shard's first block, else 1.
    //   Fused: w2 ← −lr·h_reluᵀ·g_y + 1·w2 (alpha = −lr, beta = 1).
    if !skip(a2) {
        general_mat_mul(a2, &h_relu.t(), &y_pred, beta, out2);
    }

    // g_w1 (+)= xᵀ · g_h
    //   (D_in×B)·(B×H) → D_in×H; xᵀ is a transposed view (TransA). With
    //   x·w1, the big one: 2·B·D_in·H FLOPs each.
    //   Accumulating: alpha = 1, beta as above. Fused: alpha = −lr, beta = 1.
    //   Deferred (`out1` is None, the last block of a shard in an exchanged
    //   step): [`last_blocks_w1`] runs it later, in pieces.
    if let Some(out1) = out1 {
        if !skip(a1) {
            general_mat_mul(a1, &x.t(), &g_hrelu, beta, out1);
        }
    }
    probe.done(Phase::BackwardGemms);
    loss
}

/// Runs all blocks of one shard, leaving its loss and gradient sums in it.
/// With `defer_last_w1`, the last block stops before its g_w1 GEMM (see
/// [`last_blocks_w1`]).
fn run_shard<F: Real>(
    sh: &mut Shard<F>,
    data: &Data<F>,
    weights: &Weights<F>,
    block_rows: usize,
    defer_last_w1: bool,
    probe: &mut impl Probe,
) {
    let mut loss = 0.0;
    let mut start = sh.rows.start;
    while start < sh.rows.end {
        let end = (start + block_rows).min(sh.rows.end);
        let beta = if start == sh.rows.start {
            F::zero()
        } else {
            F::one()
        };
        let deferred = defer_last_w1 && end == sh.rows.end;
        loss += block(
            &mut sh.bufs,
            rows_of(&data.x, start..end),
            rows_of(&data.y, start..end),
            Sink::Accumulate {
                weights,
                g_w1: (!deferred).then_some(&mut sh.g_w1),
                g_w2: &mut sh.g_w2,
                beta,
            },
            probe,
        );
        start = end;
    }
    sh.loss = loss;
}

/// Forward and backward over all shards in parallel, each on its own core;
/// each shard's loss and gradient sums stay in the workspace. Returns the
/// total loss, added in shard order (the same sum whatever ran where).
fn all_shards<F: Real>(
    ws: &mut Workspace<F>,
    data: &Data<F>,
    weights: &Weights<F>,
    defer_last_w1: bool,
    probe: &mut impl Probe,
) -> f64 {
    use rayon::prelude::*;
    let b = ws.plan.block_rows;
    let (first, rest) = ws.shards.split_at_mut(1);
    rayon::join(
        || run_shard(&mut first[0], data, weights, b, defer_last_w1, probe),
        || {
            rest.par_iter_mut()
                .for_each(|sh| run_shard(sh, data, weights, b, defer_last_w1, &mut NoProbe))
        },
    );
    ws.shards.iter().map(|s| s.loss).sum()
}

/// The rows of a shard's last block, and the beta its GEMMs use (0 when it
/// is also the first block, else 1).
fn last_block<F: Real>(rows: &Range<usize>, block_rows: usize) -> (Range<usize>, F) {
    let start = rows.start + (rows.len().saturating_sub(1) / block_rows) * block_rows;
    let beta = if start == rows.start {
        F::zero()
    } else {
        F::one()
    };
    (start..rows.end, beta)
}

/// The deferred g_w1 GEMM of one shard's last block, for rows `piece` of
/// g_w1 (columns `piece` of x) only:
///
/// g_w1[piece, :] (+)= x_b[:, piece]ᵀ · g_h
///   (P×B)·(B×H) → P×H; x_b[:, piece]ᵀ is a transposed strided view
///   (TransA, lda = D_in); alpha = 1, beta = the block's (0 when the shard
///   has one block, else 1). g_h is the block's, left in its buffer.
///
/// The pieces of a row split are the rows of the whole product: each
/// element is the same dot product over the block's rows.
fn last_block_w1<F: Real>(
    sh: &mut Shard<F>,
    data: &Data<F>,
    block_rows: usize,
    piece: Range<usize>,
) {
    let (blk, beta) = last_block::<F>(&sh.rows, block_rows);
    let d_in = data.x.ncols();
    let x_piece = columns_of(&data.x, blk.clone(), piece.clone());
    debug_assert_eq!(x_piece.dim(), (blk.len(), piece.len()));
    debug_assert_eq!(d_in, sh.g_w1.nrows());
    let g_h = rows_of(&sh.bufs.g_hrelu, 0..blk.len());
    let mut out = rows_of_mut(&mut sh.g_w1, piece);
    general_mat_mul(F::one(), &x_piece.t(), &g_h, beta, &mut out);
}

/// One of the two weight matrices.
#[derive(Clone, Copy, Debug)]
enum Layer {
    W1,
    W2,
}

impl<F> Shard<F> {
    fn grad(&self, l: Layer) -> &Array2<F> {
        match l {
            Layer::W1 => &self.g_w1,
            Layer::W2 => &self.g_w2,
        }
    }

    fn grad_mut(&mut self, l: Layer) -> &mut Array2<F> {
        match l {
            Layer::W1 => &mut self.g_w1,
            Layer::W2 => &mut self.g_w2,
        }
    }
}

/// One layer's gradient summed over the shards: `out ← Σ shard sums`.
fn sum_into<F: Real>(out: &mut Array2<F>, shards: &[Shard<F>], l: Layer) {
    let out = flat_mut(out);
    match shards {
        [a] => kernels::copy(out, flat(a.grad(l))),
        [a, b, more @ ..] => {
            kernels::sum2(out, flat(a.grad(l)), flat(b.grad(l)));
            for m in more {
                kernels::add_assign(out, flat(m.grad(l)));
            }
        }
        [] => unreachable!("a plan has at least one shard"),
    }
}

/// One layer's update from the shards' sums, `w ← w − lr·Σ g`: summing and
/// updating in one pass for up to two shards (any more are first added
/// into the first shard's buffer).
fn update_layer<F: Real>(w: &mut Array2<F>, shards: &mut [Shard<F>], l: Layer, lr: f64) {
    if lr == 0.0 {
        return;
    }
    let lr = F::from_f64(lr);
    let (first, rest) = shards.split_at_mut(1);
    let g0 = first[0].grad_mut(l);
    match rest {
        [] => kernels::sgd_update(flat_mut(w), flat(g0), lr),
        [b, more @ ..] => {
            for m in more.iter() {
                kernels::add_assign(flat_mut(g0), flat(m.grad(l)));
            }
            kernels::sgd_update_sum2(flat_mut(w), flat(g0), flat(b.grad(l)), lr);
        }
    }
}

/// Every step's start: OpenBLAS gets the plan's threads per call.
fn start_step(plan: &Plan) -> selftest::StepGuard {
    crate::blas::set_threads(plan.blas_threads);
    selftest::StepGuard::start()
}

/// [`start_step`] for the explicit-gradient forms, whose workspace must
/// hold gradient sums.
fn start_explicit_step(plan: &Plan) -> selftest::StepGuard {
    assert!(
        !plan.fused_gemm_update,
        "explicit gradients need a workspace made for StepMode::Explicit"
    );
    start_step(plan)
}

/// One SGD step: forward, backward, update. Returns the loss of the weights
/// before the update; when that loss is not finite the weights are left as
/// they were.
pub fn step<F: Real>(
    ws: &mut Workspace<F>,
    data: &Data<F>,
    weights: &mut Weights<F>,
    lr: LearningRates,
) -> f64 {
    step_probed(ws, data, weights, lr, &mut NoProbe)
}

/// [`step`], reporting the first shard's phases (and the update) to
/// `probe`.
pub fn step_probed<F: Real>(
    ws: &mut Workspace<F>,
    data: &Data<F>,
    weights: &mut Weights<F>,
    lr: LearningRates,
    probe: &mut impl Probe,
) -> f64 {
    let _step = start_step(&ws.plan);
    if ws.plan.fused_gemm_update {
        // One shard, one block: the update lives in the gradient GEMMs.
        let loss = block(
            &mut ws.shards[0].bufs,
            data.x.view(),
            data.y.view(),
            Sink::Update { weights, lr },
            probe,
        );
        probe.done(Phase::Update);
        return loss;
    }
    let loss = all_shards(ws, data, weights, false, probe);
    if loss.is_finite() {
        update_layer(&mut weights.w1, &mut ws.shards, Layer::W1, lr.w1);
        update_layer(&mut weights.w2, &mut ws.shards, Layer::W2, lr.w2);
    }
    probe.done(Phase::Update);
    loss
}

/// Forward and backward with explicit gradients: fills `grads` with
/// g_w1 = Σ xᵀ·g_h and g_w2 = Σ h_reluᵀ·g_y over the whole batch and returns
/// the loss. The weights are not touched. This is the form that
/// data-parallel training (sum `grads` across processes) and optimizers
/// with state build on; [`apply_sgd`] completes a plain SGD step.
pub fn gradients<F: Real>(
    ws: &mut Workspace<F>,
    data: &Data<F>,
    weights: &Weights<F>,
    grads: &mut Gradients<F>,
) -> f64 {
    gradients_probed(ws, data, weights, grads, &mut NoProbe)
}

/// [`gradients`], reporting the first shard's phases to `probe`.
pub fn gradients_probed<F: Real>(
    ws: &mut Workspace<F>,
    data: &Data<F>,
    weights: &Weights<F>,
    grads: &mut Gradients<F>,
    probe: &mut impl Probe,
) -> f64 {
    let _step = start_explicit_step(&ws.plan);
    let loss = all_shards(ws, data, weights, false, probe);
    sum_into(&mut grads.w1, &ws.shards, Layer::W1);
    sum_into(&mut grads.w2, &ws.shards, Layer::W2);
    loss
}

/// Sums a step's gradients and loss across processes while the step is
/// still computing: data-parallel training's allreduce, behind a seam the
/// step can call at the moment each part is final ([`gradients_exchanged`]).
/// [`NoExchange`] is the single-process case; the MPI one lives in
/// `distributed`.
pub trait Exchange<F> {
    /// Starts summing `local` over every process into `total` (same
    /// length). May return before the sum is done.
    ///
    /// # Safety
    /// Until [`Exchange::finish`] returns, both slices' memory must stay
    /// valid, `local` must not be written, and `total` must be neither
    /// read nor written: the sum may be in flight the whole time.
    unsafe fn start(&mut self, local: &[F], total: &mut [F]);

    /// Starts summing the loss, as [`Exchange::start`].
    ///
    /// # Safety
    /// As for [`Exchange::start`].
    unsafe fn start_loss(&mut self, local: &f64, total: &mut f64);

    /// Lets the sums already started move on (called between pieces of
    /// work: an MPI library progresses only inside its own calls).
    fn progress(&mut self);

    /// Returns when every sum started is complete.
    fn finish(&mut self);
}

/// The exchange of a single process: the totals are its own sums.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoExchange;

impl<F: Real> Exchange<F> for NoExchange {
    unsafe fn start(&mut self, local: &[F], total: &mut [F]) {
        total.copy_from_slice(local);
    }

    unsafe fn start_loss(&mut self, local: &f64, total: &mut f64) {
        *total = *local;
    }

    fn progress(&mut self) {}

    fn finish(&mut self) {}
}

/// Rows `p` of `pieces` near-equal consecutive pieces of `n` rows.
fn piece(n: usize, pieces: usize, p: usize) -> Range<usize> {
    p * n / pieces..(p + 1) * n / pieces
}

/// Adds rows `r` of every other shard's sum of `l` into the first shard's,
/// leaving the process's whole sum of those rows there.
fn fold_into_first<F: Real>(shards: &mut [Shard<F>], l: Layer, r: Range<usize>) {
    let (first, rest) = shards.split_at_mut(1);
    let mut acc = rows_of_mut(first[0].grad_mut(l), r.clone());
    for sh in rest.iter() {
        let part = rows_of(sh.grad(l), r.clone());
        kernels::add_assign(slice_mut(&mut acc), slice(&part));
    }
}

/// [`gradients`] with the sum across processes overlapped with the work:
/// `grads` ends up holding g_w1 and g_w2 summed over every process of
/// `exchange`, and the returned loss is the total loss.
///
/// The order makes each part final as early as it can be:
///
/// 1. every block's forward and backward, except the g_w1 GEMM of each
///    shard's last block (g_h stays in the block's buffer);
/// 2. g_w2 and the loss are now final on this process: start summing them;
/// 3. the deferred g_w1 GEMMs, in `pieces` row ranges of g_w1 (columns of
///    x); as each range is final, start summing it, and let the earlier
///    sums progress;
/// 4. wait for every sum.
///
/// Each process's sums are folded into its first shard's buffers, which
/// are the exchange's send buffers. With [`NoExchange`] the result equals
/// [`gradients`]' (the same GEMMs, split by rows of their output).
pub fn gradients_exchanged<F: Real>(
    ws: &mut Workspace<F>,
    data: &Data<F>,
    weights: &Weights<F>,
    grads: &mut Gradients<F>,
    exchange: &mut dyn Exchange<F>,
    pieces: usize,
) -> f64 {
    use rayon::prelude::*;
    let _step = start_explicit_step(&ws.plan);
    let (d_in, h) = (ws.shape.d_in, ws.shape.hidden);
    let pieces = pieces.clamp(1, d_in.max(1));
    let b = ws.plan.block_rows;

    // 1. Forward and backward; each shard's last g_w1 GEMM deferred.
    let local_loss = all_shards(ws, data, weights, true, &mut NoProbe);

    // 2. g_w2 (H×D_out) and the loss are final: start their sums.
    let mut loss = 0.0;
    fold_into_first(&mut ws.shards, Layer::W2, 0..ws.shape.hidden);
    // SAFETY: `local_loss`, `loss`, the first shard's g_w2 and grads.w2 are
    // not touched again before `exchange.finish()` below.
    unsafe {
        exchange.start_loss(&local_loss, &mut loss);
        exchange.start(flat(&ws.shards[0].g_w2), flat_mut(&mut grads.w2));
    }

    // 3. g_w1 (D_in×H), range by range.
    let total_w1 = grads.w1.as_mut_ptr();
    for p in 0..pieces {
        let rows = piece(d_in, pieces, p);
        ws.shards
            .par_iter_mut()
            .for_each(|sh| last_block_w1(sh, data, b, rows.clone()));
        fold_into_first(&mut ws.shards, Layer::W1, rows.clone());
        let elems = rows.start * h..rows.end * h;
        // SAFETY: rows `rows` of the first shard's g_w1 and of grads.w1;
        // the pieces are disjoint, later pieces form views of their own
        // rows only (`rows_of_mut`), and neither is touched again before
        // `exchange.finish()`.
        unsafe {
            let local = std::slice::from_raw_parts(
                ws.shards[0].g_w1.as_ptr().add(elems.start),
                elems.len(),
            );
            let total = std::slice::from_raw_parts_mut(total_w1.add(elems.start), elems.len());
            exchange.start(local, total);
        }
        exchange.progress();
    }

    // 4. Wait for every sum.
    exchange.finish();
    loss
}

/// Plain SGD from explicit gradients: `w1 -= lr_w1 · g_w1`,
/// `w2 -= lr_w2 · g_w2`, as rayon passes.
pub fn apply_sgd<F: Real>(weights: &mut Weights<F>, grads: &Gradients<F>, lr: LearningRates) {
    for (w, g, lr) in [
        (&mut weights.w1, &grads.w1, lr.w1),
        (&mut weights.w2, &grads.w2, lr.w2),
    ] {
        if lr != 0.0 {
            kernels::sgd_update(flat_mut(w), flat(g), F::from_f64(lr));
        }
    }
}

/// The step's GEMMs alone, block by block and shard by shard as the step
/// runs them, with the same operands, transposes, alphas and betas and
/// nothing between them: what a step would cost if the elementwise passes
/// and the gradient sums were free. Benchmarks time it beside the step. The
/// values it leaves in the workspace are not a valid step, and it moves the
/// weights by a fused update's worth when the plan fuses.
pub fn gemms_only<F: Real>(
    ws: &mut Workspace<F>,
    data: &Data<F>,
    weights: &mut Weights<F>,
    lr: LearningRates,
) {
    use rayon::prelude::*;
    let (one, zero) = (F::one(), F::zero());
    let b = ws.plan.block_rows;
    let fused = ws.plan.fused_gemm_update;
    crate::blas::set_threads(ws.plan.blas_threads);
    let gemms = |sh: &mut Shard<F>, w: &Weights<F>| {
        let mut start = sh.rows.start;
        while start < sh.rows.end {
            let end = (start + b).min(sh.rows.end);
            let rows = end - start;
            let x = rows_of(&data.x, start..end);
            let bufs = &mut sh.bufs;
            let mut h = rows_of_mut(&mut bufs.h, 0..rows);
            let mut yp = rows_of_mut(&mut bufs.y_pred, 0..rows);
            let mut gh = rows_of_mut(&mut bufs.g_hrelu, 0..rows);
            general_mat_mul(one, &x, &w.w1, zero, &mut h);
            general_mat_mul(one, &h, &w.w2, zero, &mut yp);
            general_mat_mul(one, &yp, &w.w2.t(), zero, &mut gh);
            if !fused {
                let beta = if start == sh.rows.start { zero } else { one };
                general_mat_mul(one, &h.t(), &yp, beta, &mut sh.g_w2);
                general_mat_mul(one, &x.t(), &gh, beta, &mut sh.g_w1);
            }
            start = end;
        }
    };
    if fused {
        let sh = &mut ws.shards[0];
        gemms(sh, weights);
        let rows = ws.shape.n;
        let h = rows_of(&sh.bufs.h, 0..rows);
        let yp = rows_of(&sh.bufs.y_pred, 0..rows);
        let gh = rows_of(&sh.bufs.g_hrelu, 0..rows);
        general_mat_mul(-F::from_f64(lr.w2), &h.t(), &yp, one, &mut weights.w2);
        general_mat_mul(-F::from_f64(lr.w1), &data.x.t(), &gh, one, &mut weights.w1);
    } else {
        let w: &Weights<F> = weights;
        ws.shards.par_iter_mut().for_each(|sh| gemms(sh, w));
    }
}
