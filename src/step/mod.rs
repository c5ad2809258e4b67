//! One training step: forward, backward, update, mirroring the math of
//! docs/design.md §1 line by line. Every product is a GEMM into a buffer
//! allocated once, in the [`Workspace`]; every elementwise pass is a
//! [`kernels`](crate::kernels) call (sequential inside a shard, on rayon
//! over whole weight matrices). Nothing here allocates.
//!
//! ```text
//! h        = x · w1 [+ b1]          N×H
//! h_relu   = max(h, 0)              N×H
//! y_pred   = h_relu · w2 [+ b2]     N×D_out
//! loss     = Σ (y_pred − y)²
//! g_y      = 2 (y_pred − y)         N×D_out
//! g_w2     = h_reluᵀ · g_y          H×D_out
//! g_hrelu  = g_y · w2ᵀ              N×H      (w2 before this step's update)
//! g_h      = g_hrelu, 0 where h < 0
//! g_w1     = xᵀ · g_h               D_in×H
//! g_b1     = Σ_rows g_h ;  g_b2 = Σ_rows g_y          (with biases)
//! w1      -= lr · g_w1 ;  w2 -= lr · g_w2
//! b1      -= lr · g_b1 ;  b2 -= lr · g_b2             (w1's rate, w2's)
//! ```
//!
//! Where the parts are:
//!
//! - `block.rs`: one block of rows forward and backward — the math above,
//!   with every buffer's shape and every GEMM's transposes, alpha and beta.
//! - [`plan`]: how the batch is split into shards of rows (one per thread)
//!   and blocks, and the [`Workspace`] of buffers.
//! - `shards.rs`: the shards run side by side; their gradient sums are
//!   reduced into the update.
//! - [`exchange`]: the same step with the sums across MPI processes
//!   overlapped with the work.
//! - [`dual`]: the dual form, for one fixed batch with N small against
//!   D_in: the step on C with w1 = w1_0 + xᵀ·C, N² in place of N·D_in.
//! - [`probe`]: phase timing for benchmarks; `views.rs`: strided views that
//!   keep every GEMM on cblas; `selftest.rs`: the regression gate's
//!   injected slowdowns (off unless their features are on).
//!
//! When one shard holds the whole batch in one block (one thread, N small)
//! the update lives inside the gradient GEMMs:
//! `w ← −lr · (product) + 1 · w` (alpha = −lr, beta = 1), with no gradient
//! buffer at all.
//!
//! Transposed operands are `.t()` views; ndarray hands them to cblas as
//! transpose flags, without copying. All buffers and blocks are row-major
//! and contiguous, so ndarray never falls back to its own matmul (a test
//! counts the cblas calls).

mod block;
pub mod dual;
pub mod exchange;
pub mod plan;
pub mod probe;
mod selftest;
mod shards;
mod views;

pub use dual::{Dual, Form};
pub use exchange::{gradients_exchanged, Exchange, NoExchange};
pub use plan::{Plan, PlanChoice, Workspace, WIDE_LAYER};
pub use probe::{NoProbe, Phase, Probe};

use crate::kernels;
use crate::net::{Biases, Data, Weights};
use crate::scalar::Real;
use crate::shape::Shape;
use block::{block, BiasSums, Sink};
use ndarray::Array2;
use shards::{all_shards, sum_into, update_layer, Layer};
use views::{flat, flat1, flat1_mut, flat_mut};

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

/// The gradients of the loss with respect to the weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients<F> {
    /// ∂loss/∂w1, D_in×H.
    pub w1: Array2<F>,
    /// ∂loss/∂w2, H×D_out.
    pub w2: Array2<F>,
    /// ∂loss/∂b1 (H) and ∂loss/∂b2 (D_out), for a model with biases.
    pub biases: Option<Biases<F>>,
}

impl<F: Real> Gradients<F> {
    /// Zeroed gradient buffers for `shape`, without biases.
    pub fn zeros(shape: Shape) -> Self {
        Gradients {
            w1: Array2::zeros((shape.d_in, shape.hidden)),
            w2: Array2::zeros((shape.hidden, shape.d_out)),
            biases: None,
        }
    }

    /// Zeroed gradient buffers for the weights `w` (with bias gradients
    /// when `w` has biases).
    pub fn zeros_for(w: &Weights<F>) -> Self {
        let (d_in, h) = w.w1.dim();
        let d_out = w.w2.ncols();
        Gradients {
            w1: Array2::zeros((d_in, h)),
            w2: Array2::zeros((h, d_out)),
            biases: w.biases.as_ref().map(|b| Biases {
                b1: ndarray::Array1::zeros(b.b1.len()),
                b2: ndarray::Array1::zeros(b.b2.len()),
            }),
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

/// Every step's start: OpenBLAS gets the plan's threads per call (the one
/// place a step sets them).
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
    let loss = forward_backward::<F, true>(ws, data, weights, lr, probe);
    if !ws.plan.fused_gemm_update && loss.is_finite() {
        update_layer(flat_mut(&mut weights.w1), &mut ws.shards, Layer::W1, lr.w1);
        update_layer(flat_mut(&mut weights.w2), &mut ws.shards, Layer::W2, lr.w2);
        if let Some(b) = &mut weights.biases {
            update_layer(flat1_mut(&mut b.b1), &mut ws.shards, Layer::B1, lr.w1);
            update_layer(flat1_mut(&mut b.b2), &mut ws.shards, Layer::B2, lr.w2);
        }
    }
    probe.done(Phase::Update);
    loss
}

/// Plain SGD on the biases from their gradients: `b1 −= lr_w1 · g_b1`,
/// `b2 −= lr_w2 · g_b2` (each bias takes its layer's rate).
pub(crate) fn update_biases<F: Real>(b: &mut Biases<F>, g_b1: &[F], g_b2: &[F], lr: LearningRates) {
    for (v, g, lr) in [(&mut b.b1, g_b1, lr.w1), (&mut b.b2, g_b2, lr.w2)] {
        if lr != 0.0 {
            kernels::sgd_update(flat1_mut(v), g, F::from_f64(lr));
        }
    }
}

/// Forward and backward over the whole batch as the plan lays it out:
/// with a fused plan (one shard, one block) the update happens inside the
/// gradient GEMMs; otherwise every shard's sums are left in the workspace.
fn forward_backward<F: Real, const PASSES: bool>(
    ws: &mut Workspace<F>,
    data: &Data<F>,
    weights: &mut Weights<F>,
    lr: LearningRates,
    probe: &mut impl Probe,
) -> f64 {
    if ws.plan.fused_gemm_update {
        let biases = weights.has_biases();
        let sh = &mut ws.shards[0];
        let sums = biases.then(|| BiasSums {
            g_b1: flat_mut(&mut sh.g_b1),
            g_b2: flat_mut(&mut sh.g_b2),
        });
        block::<F, PASSES>(
            &mut sh.bufs,
            data.x.view(),
            data.y.view(),
            Sink::Fused { weights, lr },
            sums,
            probe,
        )
    } else {
        all_shards::<F, PASSES>(ws, data, weights, false, probe)
    }
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
    assert_eq!(
        grads.biases.is_some(),
        weights.has_biases(),
        "bias gradients are needed exactly when the model has biases"
    );
    let loss = all_shards::<F, true>(ws, data, weights, false, probe);
    sum_into(flat_mut(&mut grads.w1), &ws.shards, Layer::W1);
    sum_into(flat_mut(&mut grads.w2), &ws.shards, Layer::W2);
    if let Some(g) = &mut grads.biases {
        sum_into(flat1_mut(&mut g.b1), &ws.shards, Layer::B1);
        sum_into(flat1_mut(&mut g.b2), &ws.shards, Layer::B2);
    }
    loss
}

/// Plain SGD from explicit gradients: `w1 -= lr_w1 · g_w1`,
/// `w2 -= lr_w2 · g_w2`, as rayon passes; the biases with their layers'
/// rates.
pub fn apply_sgd<F: Real>(weights: &mut Weights<F>, grads: &Gradients<F>, lr: LearningRates) {
    for (w, g, lr) in [
        (&mut weights.w1, &grads.w1, lr.w1),
        (&mut weights.w2, &grads.w2, lr.w2),
    ] {
        if lr != 0.0 {
            kernels::sgd_update(flat_mut(w), flat(g), F::from_f64(lr));
        }
    }
    if let (Some(b), Some(g)) = (&mut weights.biases, &grads.biases) {
        update_biases(b, flat1(&g.b1), flat1(&g.b2), lr);
    }
}

/// One SGD step in either mode, the one entry point callers use: with
/// `grads` `None`, the fused [`step`]; with `Some`, [`gradients`] into
/// them, then [`apply_sgd`]. Either way the weights are left alone when
/// the loss is not finite. Returns the loss (of the weights before the
/// update); `probe` sees the first shard's phases and the update.
pub fn update<F: Real>(
    ws: &mut Workspace<F>,
    data: &Data<F>,
    weights: &mut Weights<F>,
    grads: Option<&mut Gradients<F>>,
    lr: LearningRates,
    probe: &mut impl Probe,
) -> f64 {
    match grads {
        None => step_probed(ws, data, weights, lr, probe),
        Some(g) => {
            let loss = gradients_probed(ws, data, weights, g, probe);
            if loss.is_finite() {
                apply_sgd(weights, g, lr);
            }
            probe.done(Phase::Update);
            loss
        }
    }
}

/// [`update`] with explicit gradients summed through `exchange` while
/// they are computed ([`gradients_exchanged`], g_w1's sum started in
/// `pieces` parts): data-parallel training's step. Every process applies
/// the same summed update.
pub fn update_exchanged<F: Real>(
    ws: &mut Workspace<F>,
    data: &Data<F>,
    weights: &mut Weights<F>,
    grads: &mut Gradients<F>,
    exchange: &mut dyn Exchange<F>,
    pieces: usize,
    lr: LearningRates,
) -> f64 {
    let loss = gradients_exchanged(ws, data, weights, grads, exchange, pieces);
    if loss.is_finite() {
        apply_sgd(weights, grads, lr);
    }
    loss
}

/// The step's GEMMs alone: the very block code of [`step`], block by block
/// and shard by shard, with its elementwise passes switched off and no
/// reduction or update pass — what a step would cost if those were free.
/// Benchmarks time it beside the step. The values it leaves in the
/// workspace are not a valid step, and when the plan fuses the update it
/// moves the weights by a fused update's worth.
pub fn gemms_only<F: Real>(
    ws: &mut Workspace<F>,
    data: &Data<F>,
    weights: &mut Weights<F>,
    lr: LearningRates,
) {
    crate::blas::set_threads(ws.plan.blas_threads);
    forward_backward::<F, false>(ws, data, weights, lr, &mut NoProbe);
}
