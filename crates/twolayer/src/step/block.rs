//! One block of rows through the network: the forward pass and the
//! backward pass, line by line against the math (docs/design.md §1). This
//! is the only file needed to check the math.
//!
//! ```text
//! h        = x · w1 [+ b1]          B×H
//! h_relu   = max(h, 0)              B×H
//! y_pred   = h_relu · w2 [+ b2]     B×D_out
//! loss     = Σ (y_pred − y)²
//! g_y      = 2 (y_pred − y)         B×D_out
//! g_b2     = Σ_rows g_y             D_out    (with biases)
//! g_w2     = h_reluᵀ · g_y          H×D_out
//! g_hrelu  = g_y · w2ᵀ              B×H      (w2 before this step's update)
//! g_h      = g_hrelu, 0 where h < 0
//! g_b1     = Σ_rows g_h             H        (with biases)
//! g_w1     = xᵀ · g_h               D_in×H
//! ```
//!
//! The biases cost no pass of their own: b1 is added in the ReLU pass, b2
//! in the loss pass, and their gradients (column sums) are taken in the
//! loss pass and the mask pass, which read g_y and g_h anyway.
//!
//! Three buffers hold a block's intermediates, each reused in place by the
//! next line that needs it (h then h_relu; y_pred then g_y; g_hrelu then
//! g_h); the code rebinds each view under the name of what it now holds.
//!
//! The same lines in the [`Layout::Units`] layout hold h, h_relu, g_hrelu
//! and g_h transposed (H×B, a row per hidden unit) and sum g_w1ᵀ (H×D_in):
//!
//! ```text
//! hᵀ       = w1ᵀ · x_bᵀ             H×B      (then + b1 down each row)
//! y_pred   = (h_reluᵀ)ᵀ · w2        B×D_out  (h_reluᵀ read transposed)
//! g_w2     = h_reluᵀ · g_y          H×D_out
//! g_hreluᵀ = w2 · g_yᵀ              H×B
//! g_b1     = Σ_columns g_hᵀ         H
//! g_w1ᵀ    = g_hᵀ · x_b             H×D_in
//! ```
//!
//! The code is the same for both: h, g_hrelu and g_w1 are then views of
//! their transposed buffers (column-major B×H and D_in×H), and ndarray
//! hands each GEMM to cblas as column-major, which is the row-major
//! product above. Only which matrix OpenBLAS packs on which side changes;
//! the numbers multiplied and added are the same (see [`Layout`] for why
//! it is faster in f64).

use super::probe::{Phase, Probe};
use super::sgd::{self, Grad, Param};
use super::views::{activations_mut, flat1, memory, memory_mut, rows_of_mut, slice, slice_mut};
use super::{Layout, LearningRates};
use crate::kernels;
use crate::net::{Biases, Weights};
use crate::scalar::Real;
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2};

/// A block's worth of intermediates.
#[derive(Debug)]
pub(super) struct BlockBufs<F> {
    /// B×H (H×B in [`Layout::Units`]): h = x_b·w1 of the current block,
    /// then h_relu in place (negatives stored as −0.0, so the sign bit is
    /// the ReLU mask).
    pub(super) h: Array2<F>,
    /// B×D_out: y_pred = h_relu·w2, then g_y = 2(y_pred − y) in place.
    pub(super) y_pred: Array2<F>,
    /// B×H (H×B in [`Layout::Units`]): g_hrelu = g_y·w2ᵀ, then g_h in
    /// place after the mask.
    pub(super) g_hrelu: Array2<F>,
}

impl<F: Real> BlockBufs<F> {
    /// Buffers for blocks of up to `b` rows of `shape` in `layout`.
    pub(super) fn new(b: usize, shape: crate::shape::Shape, layout: Layout) -> Self {
        let (h, o) = (shape.hidden, shape.d_out);
        let act = match layout {
            Layout::Rows => (b, h),
            Layout::Units => (h, b),
        };
        BlockBufs {
            h: Array2::zeros(act),
            y_pred: Array2::zeros((b, o)),
            g_hrelu: Array2::zeros(act),
        }
    }
}

/// Where a block's weight gradients go, with the weights the block reads.
pub(super) enum Sink<'a, F> {
    /// Into a shard's sums: `g ← 1·product + beta·g` (beta = 0 on the
    /// shard's first block, 1 after).
    Accumulate {
        /// The weights, read.
        weights: &'a Weights<F>,
        /// D_in×H (H×D_in, g_w1ᵀ, in [`Layout::Units`]). `None`: leave
        /// this block's g_w1 GEMM for later (an exchanged step runs it in
        /// pieces; g_h stays in its buffer).
        g_w1: Option<&'a mut Array2<F>>,
        /// H×D_out.
        g_w2: &'a mut Array2<F>,
        /// 0 or 1, as above.
        beta: F,
    },
    /// Straight into the weights, SGD inside the GEMMs:
    /// `w ← −lr·product + 1·w`.
    Fused {
        /// The weights, read by the forward pass and then updated.
        weights: &'a mut Weights<F>,
        /// Each layer's rate.
        lr: LearningRates,
    },
}

/// Where a block adds its bias gradients (the column sums of g_y and
/// g_h): g_b1 (H) and g_b2 (D_out). Zeroed first on a shard's first block
/// (the sink's beta = 0) and in a fused step.
pub(super) struct BiasSums<'a, F> {
    /// H.
    pub(super) g_b1: &'a mut [F],
    /// D_out.
    pub(super) g_b2: &'a mut [F],
}

/// One weight-gradient GEMM's destination: `out ← alpha·product + beta·out`.
struct Target<'a, F> {
    alpha: F,
    beta: F,
    out: ArrayViewMut2<'a, F>,
}

impl<'a, F: Real> Sink<'a, F> {
    fn weights(&self) -> &Weights<F> {
        match self {
            Sink::Accumulate { weights, .. } => weights,
            Sink::Fused { weights, .. } => weights,
        }
    }

    /// Whether this block's gradients start the sums (beta = 0; always
    /// for a fused step, whose sums are this block's alone).
    fn starts_sums(&self) -> bool {
        match self {
            Sink::Accumulate { beta, .. } => *beta == F::zero(),
            Sink::Fused { .. } => true,
        }
    }

    /// The targets of (g_w2, g_w1), and for a fused step with biases, the
    /// biases to update with the rates. `None` where the GEMM is not run
    /// now: a deferred g_w1, or a fused layer whose rate is 0 (alpha = 0
    /// with beta = 1 would leave the weights as they are). g_w1's target is
    /// D_in×H: in [`Layout::Units`] a view of the H×D_in sums, transposed.
    #[allow(clippy::type_complexity)]
    fn targets(
        self,
        layout: Layout,
    ) -> (
        Option<Target<'a, F>>,
        Option<Target<'a, F>>,
        Option<(&'a mut Biases<F>, LearningRates)>,
    ) {
        let (one, zero) = (F::one(), F::zero());
        match self {
            Sink::Accumulate {
                g_w1, g_w2, beta, ..
            } => (
                Some(Target {
                    alpha: one,
                    beta,
                    out: g_w2.view_mut(),
                }),
                g_w1.map(|out| Target {
                    alpha: one,
                    beta,
                    out: match layout {
                        Layout::Rows => out.view_mut(),
                        Layout::Units => out.view_mut().reversed_axes(),
                    },
                }),
                None,
            ),
            Sink::Fused { weights, lr } => {
                debug_assert_eq!(layout, Layout::Rows, "a fused sink writes w1 as it is");
                let fused = |lr: f64, out: &'a mut Array2<F>| {
                    let alpha = -F::from_f64(lr);
                    (alpha != zero).then_some(Target {
                        alpha,
                        beta: one,
                        out: out.view_mut(),
                    })
                };
                let Weights { w1, w2, biases } = weights;
                (
                    fused(Param::W2.rate(lr), w2),
                    fused(Param::W1.rate(lr), w1),
                    biases.as_mut().map(|b| (b, lr)),
                )
            }
        }
    }
}

/// Forward and backward for one block of rows: x is B×D_in, y is B×D_out.
/// Returns the block's loss. With a [`Sink::Fused`] sink and a loss that is
/// not finite, stops before the update and leaves the weights as they were.
/// `bias_sums` is `Some` exactly when the weights have biases.
///
/// With `PASSES = false` the elementwise passes (ReLU, loss and g_y, mask)
/// are skipped and the loss is 0: the step's GEMMs alone, exactly as the
/// step calls them, which benchmarks time beside the step
/// ([`super::Update::GemmsOnly`]).
///
/// In `layout` [`Layout::Units`] the activations and g_w1 are transposed
/// (module doc); a fused sink needs [`Layout::Rows`].
pub(super) fn block<F: Real, const PASSES: bool>(
    bufs: &mut BlockBufs<F>,
    x: ArrayView2<F>,
    y: ArrayView2<F>,
    sink: Sink<F>,
    bias_sums: Option<BiasSums<F>>,
    layout: Layout,
    probe: &mut impl Probe,
) -> f64 {
    let (one, zero) = (F::one(), F::zero());
    let rows = x.nrows();
    debug_assert_eq!(bias_sums.is_some(), sink.weights().has_biases());
    let mut bias_sums = bias_sums;
    if let (Some(s), true) = (&mut bias_sums, sink.starts_sums()) {
        s.g_b1.fill(zero);
        s.g_b2.fill(zero);
    }
    let w = sink.weights();
    let hidden = w.w2.nrows();
    // B×H views; column-major (of H×B memory) in the Units layout.
    let mut h = activations_mut(&mut bufs.h, rows, hidden, layout);
    let mut y_pred = rows_of_mut(&mut bufs.y_pred, 0..rows);
    let mut g_hrelu = activations_mut(&mut bufs.g_hrelu, rows, hidden, layout);

    // ---- forward ----
    // h = x · w1
    //   (B×D_in)·(D_in×H) → B×H; no transposes; alpha = 1, beta = 0.
    //   Units: h column-major, so cblas gets hᵀ = w1ᵀ·x_bᵀ (TransA,
    //   TransB): x_b on the kernel's long side.
    general_mat_mul(one, &x, &w.w1, zero, &mut h);
    probe.done(Phase::ForwardGemms);

    // h_relu = max(h + b1, 0), in place (b1 added to every row, when the
    // model has biases); where the sum is < 0 it stores −0.0, so the sign
    // bit is the mask the backward pass needs. Elementwise over h's
    // memory, whichever its layout; b1 runs along rows (Rows) or down
    // them (Units).
    let h_relu: ArrayViewMut2<F> = {
        if PASSES {
            match (&w.biases, layout) {
                (Some(b), Layout::Rows) => {
                    kernels::bias_relu_in_place(memory_mut(&mut h), flat1(&b.b1))
                }
                (Some(b), Layout::Units) => {
                    kernels::bias_relu_in_place_by_unit(memory_mut(&mut h), flat1(&b.b1))
                }
                (None, _) => kernels::relu_in_place(memory_mut(&mut h)),
            }
        }
        h
    };
    probe.done(Phase::Relu);

    // y_pred = h_relu · w2
    //   (B×H)·(H×D_out) → B×D_out; no transposes (Units: h_relu is read
    //   as the transpose of its H×B memory, TransA); alpha = 1, beta = 0.
    general_mat_mul(one, &h_relu, &w.w2, zero, &mut y_pred);
    probe.done(Phase::ForwardGemms);

    // loss = Σ (y_pred − y)²  and  g_y = 2 (y_pred − y), one pass, in
    // place; with biases y_pred gains b2 in the same pass, and
    // g_b2 (+)= Σ_rows g_y (D_out).
    let (loss, g_y) = {
        let loss = match (PASSES, &w.biases, &mut bias_sums) {
            (false, ..) => 0.0,
            (true, Some(b), Some(s)) => {
                kernels::loss_and_grad_bias(slice_mut(&mut y_pred), slice(&y), flat1(&b.b2), s.g_b2)
            }
            _ => kernels::loss_and_grad(slice_mut(&mut y_pred), slice(&y)),
        };
        (loss, y_pred)
    };
    probe.done(Phase::LossGrad);
    if matches!(sink, Sink::Fused { .. }) && !loss.is_finite() {
        return loss;
    }

    // ---- backward ----
    // g_hrelu = g_y · w2ᵀ
    //   (B×D_out)·(D_out×H) → B×H; w2ᵀ is a transposed view (cblas
    //   TransB); alpha = 1, beta = 0. Reads this step's w2: it comes
    //   before any update of w2. Units: g_hreluᵀ = w2 · g_yᵀ into H×B.
    general_mat_mul(one, &g_y, &w.w2.t(), zero, &mut g_hrelu);
    probe.done(Phase::BackwardGemms);

    // g_h = g_hrelu, with g_h = 0 where h < 0 (h == 0 passes), in place;
    // with biases, g_b1 (+)= Σ_rows g_h (H) in the same pass. g_hrelu and
    // h_relu share a layout: elementwise over their memory.
    let g_h = {
        let (g, h) = (memory_mut(&mut g_hrelu), memory(&h_relu));
        match (PASSES, &mut bias_sums, layout) {
            (false, ..) => {}
            (true, Some(s), Layout::Rows) => kernels::relu_mask_bias(g, h, s.g_b1),
            (true, Some(s), Layout::Units) => kernels::relu_mask_bias_by_unit(g, h, s.g_b1),
            (true, None, _) => kernels::relu_mask(g, h),
        }
        g_hrelu
    };
    probe.done(Phase::Mask);

    let (w2_target, w1_target, fused_biases) = sink.targets(layout);
    // g_w2 (+)= h_reluᵀ · g_y
    //   (H×B)·(B×D_out) → H×D_out; h_reluᵀ is a transposed view (TransA).
    //   Accumulating: alpha = 1, beta = 0 on the shard's first block, else 1.
    //   Fused: w2 ← −lr·h_reluᵀ·g_y + 1·w2 (alpha = −lr, beta = 1).
    if let Some(mut t) = w2_target {
        general_mat_mul(t.alpha, &h_relu.t(), &g_y, t.beta, &mut t.out);
    }
    // g_w1 (+)= xᵀ · g_h
    //   (D_in×B)·(B×H) → D_in×H; xᵀ is a transposed view (TransA). With
    //   x·w1, the big one: 2·B·D_in·H FLOPs each.
    //   Accumulating: alpha = 1, beta as above. Fused: alpha = −lr, beta = 1.
    //   Deferred: no target; the exchanged step runs it later, in pieces.
    //   Units: g_w1ᵀ (+)= g_hᵀ · x_b into the H×D_in sums, no transposes:
    //   x_b (its D_in columns) on the kernel's long side.
    if let Some(mut t) = w1_target {
        general_mat_mul(t.alpha, &x.t(), &g_h, t.beta, &mut t.out);
    }
    // Fused, with biases: b1 −= lr·g_b1, b2 −= lr·g_b2 (H and D_out
    // elements: the only update pass a fused step has).
    if let (Some((b, lr)), Some(s), true) = (fused_biases, bias_sums, PASSES) {
        let (g_b1, g_b2) = (&*s.g_b1, &*s.g_b2);
        sgd::update_biases(b, lr, |p| match p {
            Param::B1 => Grad::One(g_b1),
            _ => Grad::One(g_b2),
        });
    }
    probe.done(Phase::BackwardGemms);
    loss
}
