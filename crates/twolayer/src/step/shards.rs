//! The shards of a step: each a range of consecutive rows walked in blocks
//! on its own core, adding its blocks' weight gradients into its own sums;
//! then the reduction of those sums into the update (see [`super::plan`]
//! for why the work is laid out this way).

use super::block::{block, BiasSums, BlockBufs, Sink};
use super::plan::{Layout, Plan};
use super::probe::{NoProbe, Phase, Probe};
use super::sgd::{self, Grad, Param};
use super::views::{columns_of, flat, flat_mut, rows_of, rows_of_mut, slice, slice_mut};
use super::LearningRates;
use crate::kernels;
use crate::net::{Data, Weights};
use crate::scalar::Real;
use crate::shape::Shape;
use ndarray::linalg::general_mat_mul;
use ndarray::Array2;
use std::ops::Range;

/// One shard's rows, block buffers and gradient sums.
#[derive(Debug)]
pub(super) struct Shard<F> {
    /// Its rows of the batch.
    pub(super) rows: Range<usize>,
    /// One block's intermediates.
    pub(super) bufs: BlockBufs<F>,
    /// D_in×H: Σ over this shard's blocks of x_bᵀ·g_h (empty when fused);
    /// in [`Layout::Units`], H×D_in: Σ g_hᵀ·x_b, the transpose.
    pub(super) g_w1: Array2<F>,
    /// H×D_out: Σ over this shard's blocks of h_reluᵀ·g_y (empty when fused).
    pub(super) g_w2: Array2<F>,
    /// 1×H: Σ over this shard's rows of g_h (b1's gradient; unused
    /// without biases). In a fused step, the step's own.
    pub(super) g_b1: Array2<F>,
    /// 1×D_out: Σ over this shard's rows of g_y (b2's gradient).
    pub(super) g_b2: Array2<F>,
    /// Σ over this shard's blocks of the loss.
    pub(super) loss: f64,
}

impl<F> Shard<F> {
    /// This shard's sum of `l`'s gradient (1×H and 1×D_out for the biases).
    pub(super) fn grad(&self, l: Param) -> &Array2<F> {
        match l {
            Param::W1 => &self.g_w1,
            Param::W2 => &self.g_w2,
            Param::B1 => &self.g_b1,
            Param::B2 => &self.g_b2,
        }
    }

    /// [`Shard::grad`], to add into.
    pub(super) fn grad_mut(&mut self, l: Param) -> &mut Array2<F> {
        match l {
            Param::W1 => &mut self.g_w1,
            Param::W2 => &mut self.g_w2,
            Param::B1 => &mut self.g_b1,
            Param::B2 => &mut self.g_b2,
        }
    }
}

/// The step's preallocated buffers, laid out by a [`Plan`].
#[derive(Debug)]
pub(crate) struct Workspace<F> {
    pub(super) shape: Shape,
    pub(super) plan: Plan,
    pub(super) shards: Vec<Shard<F>>,
}

impl<F: Real> Workspace<F> {
    /// Buffers for `shape` laid out by `plan`.
    pub fn with_plan(shape: Shape, plan: Plan) -> Self {
        let (b, d, h, o) = (plan.block_rows, shape.d_in, shape.hidden, shape.d_out);
        let (gd, gh, go) = if plan.fused_gemm_update {
            (0, 0, 0)
        } else {
            (d, h, o)
        };
        let g_w1 = match plan.layout {
            Layout::Rows => (gd, gh),
            Layout::Units => (gh, gd),
        };
        let shards = (0..plan.shards)
            .map(|i| Shard {
                rows: plan.shard_rows(shape.n, i),
                bufs: BlockBufs::new(b, shape, plan.layout),
                g_w1: Array2::zeros(g_w1),
                g_w2: Array2::zeros((gh, go)),
                g_b1: Array2::zeros((1, h)),
                g_b2: Array2::zeros((1, o)),
                loss: 0.0,
            })
            .collect();
        Workspace {
            shape,
            plan,
            shards,
        }
    }
}

/// Runs all blocks of one shard, leaving its loss and gradient sums in it.
/// With `defer_last_w1`, the last block stops before its g_w1 GEMM (see
/// [`last_block_w1`]).
fn run_shard<F: Real, const PASSES: bool>(
    sh: &mut Shard<F>,
    data: &Data<F>,
    weights: &Weights<F>,
    plan: &super::Plan,
    defer_last_w1: bool,
    probe: &mut impl Probe,
) {
    let mut loss = 0.0;
    let biases = weights.has_biases();
    for (rows, beta) in plan.blocks::<F>(sh.rows.clone()) {
        let deferred = defer_last_w1 && rows.end == sh.rows.end;
        let Shard {
            bufs,
            g_w1,
            g_w2,
            g_b1,
            g_b2,
            ..
        } = &mut *sh;
        loss += block::<F, PASSES>(
            bufs,
            rows_of(&data.x, rows.clone()),
            rows_of(&data.y, rows),
            Sink::Accumulate {
                weights,
                g_w1: (!deferred).then_some(g_w1),
                g_w2,
                beta,
            },
            biases.then(|| BiasSums {
                g_b1: flat_mut(g_b1),
                g_b2: flat_mut(g_b2),
            }),
            plan.layout,
            probe,
        );
    }
    sh.loss = loss;
}

/// Forward and backward over all shards in parallel, each on its own core;
/// each shard's loss and gradient sums stay in the workspace. Returns the
/// total loss, added in shard order (the same sum whatever ran where). The
/// first shard reports its phases to `probe`, then its wait for the others
/// as [`Phase::Join`].
pub(super) fn all_shards<F: Real, const PASSES: bool>(
    ws: &mut Workspace<F>,
    data: &Data<F>,
    weights: &Weights<F>,
    defer_last_w1: bool,
    probe: &mut impl Probe,
) -> f64 {
    use rayon::prelude::*;
    let plan = ws.plan;
    let (first, rest) = ws.shards.split_at_mut(1);
    rayon::join(
        || run_shard::<F, PASSES>(&mut first[0], data, weights, &plan, defer_last_w1, probe),
        || {
            rest.par_iter_mut().for_each(|sh| {
                run_shard::<F, PASSES>(sh, data, weights, &plan, defer_last_w1, &mut NoProbe)
            })
        },
    );
    // The first shard's wait for the others ends here.
    probe.done(Phase::Join);
    ws.shards.iter().map(|s| s.loss).sum()
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
/// element is the same dot product over the block's rows (OpenBLAS may
/// still round a smaller call differently).
pub(super) fn last_block_w1<F: Real>(
    sh: &mut Shard<F>,
    data: &Data<F>,
    plan: &super::Plan,
    piece: Range<usize>,
) {
    assert_eq!(
        plan.layout,
        Layout::Rows,
        "an exchanged step sums g_w1 by rows"
    );
    let (blk, beta) = plan
        .blocks::<F>(sh.rows.clone())
        .last()
        .expect("a shard has at least one row");
    let x_piece = columns_of(&data.x, blk.clone(), piece.clone());
    debug_assert_eq!(x_piece.dim(), (blk.len(), piece.len()));
    let g_h = rows_of(&sh.bufs.g_hrelu, 0..blk.len());
    let mut out = rows_of_mut(&mut sh.g_w1, piece);
    general_mat_mul(F::one(), &x_piece.t(), &g_h, beta, &mut out);
}

/// One layer's gradient summed over the shards: `out ← Σ shard sums` (in
/// the layer's own layout: g_w1 D_in×H, transposed from the shards' g_w1ᵀ
/// in `layout` [`Layout::Units`]).
pub(super) fn sum_into<F: Real>(out: &mut [F], shards: &[Shard<F>], l: Param, layout: Layout) {
    if let (Param::W1, Layout::Units) = (l, layout) {
        let width = shards[0].g_w1.nrows();
        let b = shards.get(1).map(|b| flat(b.grad(l)));
        kernels::sum_transposed(out, flat(shards[0].grad(l)), b, width);
        for m in shards.iter().skip(2) {
            kernels::add_transposed(out, flat(m.grad(l)), width);
        }
        return;
    }
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

/// SGD from the shards' sums: each parameter moves by the sum over the
/// shards of its gradient, the first two shards' sums added in the
/// update's own pass (any more are first added into the first shard's
/// buffer, in shard order). In `layout` [`Layout::Units`], w1 moves by the
/// transpose of the shards' g_w1ᵀ sums, transposed in the update's pass.
pub(super) fn update_from_shards<F: Real>(
    weights: &mut Weights<F>,
    shards: &mut [Shard<F>],
    lr: LearningRates,
    layout: Layout,
) {
    if shards.len() > 2 {
        let (first, rest) = shards.split_at_mut(1);
        for p in [Param::W1, Param::W2, Param::B1, Param::B2] {
            let bias = matches!(p, Param::B1 | Param::B2);
            if p.rate(lr) == 0.0 || (bias && !weights.has_biases()) {
                continue;
            }
            for m in &rest[1..] {
                kernels::add_assign(flat_mut(first[0].grad_mut(p)), flat(m.grad(p)));
            }
        }
    }
    let shards = &*shards;
    sgd::update(weights, lr, |p| match (p, layout, shards) {
        (Param::W1, Layout::Units, [a, rest @ ..]) => Grad::Transposed(
            flat(a.grad(p)),
            rest.first().map(|b| flat(b.grad(p))),
            a.g_w1.nrows(),
        ),
        (_, _, [a]) => Grad::One(flat(a.grad(p))),
        (_, _, [a, b, ..]) => Grad::Sum2(flat(a.grad(p)), flat(b.grad(p))),
        (_, _, []) => unreachable!("a plan has at least one shard"),
    });
}

/// Adds rows `r` of every other shard's sum of `l` into the first shard's,
/// leaving the process's whole sum of those rows there.
pub(super) fn fold_into_first<F: Real>(shards: &mut [Shard<F>], l: Param, r: Range<usize>) {
    let (first, rest) = shards.split_at_mut(1);
    let mut acc = rows_of_mut(first[0].grad_mut(l), r.clone());
    for sh in rest.iter() {
        let part = rows_of(sh.grad(l), r.clone());
        kernels::add_assign(slice_mut(&mut acc), slice(&part));
    }
}
