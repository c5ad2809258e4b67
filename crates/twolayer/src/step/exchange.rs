//! Data-parallel training's seam: a step that hands each part of its
//! gradient to an [`Exchange`] (the sum across processes) the moment that
//! part is final, so the sums overlap the rest of the work.

use super::probe::NoProbe;
use super::sgd::Param;
use super::shards::Workspace;
use super::shards::{all_shards, fold_into_first, last_block_w1};
use super::views::{flat, flat_mut};
use super::{start_step, Gradients};
use crate::net::{Data, Weights};
use crate::scalar::Real;
use std::ops::Range;

/// Sums a step's gradients and loss across processes while the step is
/// still computing: data-parallel training's allreduce, behind a seam the
/// step can call at the moment each part is final (`gradients_exchanged`).
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

/// The explicit-gradient step with the sum across processes overlapped with the work:
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
/// [`super::Update::Gradients`]' (the same GEMMs, split by rows of their output).
pub(super) fn gradients_exchanged<F: Real>(
    ws: &mut Workspace<F>,
    data: &Data<F>,
    weights: &Weights<F>,
    grads: &mut Gradients<F>,
    exchange: &mut dyn Exchange<F>,
    pieces: usize,
) -> f64 {
    use rayon::prelude::*;
    let _step = start_step(&ws.plan);
    let (d_in, h) = (ws.shape.d_in, ws.shape.hidden);
    let pieces = pieces.clamp(1, d_in.max(1));
    let plan = ws.plan;

    // 1. Forward and backward; each shard's last g_w1 GEMM deferred.
    let local_loss = all_shards::<F, true>(ws, data, weights, true, &mut NoProbe);

    // 2. g_w2 (H×D_out), the bias gradients g_b1 (H) and g_b2 (D_out),
    //    and the loss are final: start their sums.
    let biases = weights.has_biases();
    assert!(
        !biases || grads.biases.is_some(),
        "bias gradients are needed when the model has biases"
    );
    let mut loss = 0.0;
    fold_into_first(&mut ws.shards, Param::W2, 0..ws.shape.hidden);
    if biases {
        fold_into_first(&mut ws.shards, Param::B1, 0..1);
        fold_into_first(&mut ws.shards, Param::B2, 0..1);
    }
    // SAFETY: `local_loss`, `loss`, the first shard's g_w2, g_b1, g_b2 and
    // grads.w2 and grads.biases are not touched again before
    // `exchange.finish()` below.
    unsafe {
        exchange.start_loss(&local_loss, &mut loss);
        exchange.start(flat(&ws.shards[0].g_w2), flat_mut(&mut grads.w2));
        if let (true, Some(g)) = (biases, &mut grads.biases) {
            let first = &ws.shards[0];
            exchange.start(flat(&first.g_b1), g.b1.as_slice_mut().expect("contiguous"));
            exchange.start(flat(&first.g_b2), g.b2.as_slice_mut().expect("contiguous"));
        }
    }

    // 3. g_w1 (D_in×H), range by range.
    let total_w1 = grads.w1.as_mut_ptr();
    for p in 0..pieces {
        let rows = piece(d_in, pieces, p);
        ws.shards
            .par_iter_mut()
            .for_each(|sh| last_block_w1(sh, data, &plan, rows.clone()));
        fold_into_first(&mut ws.shards, Param::W1, rows.clone());
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
