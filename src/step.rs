//! One training step, written to mirror the math of design.md §1 line by
//! line. Every product is a GEMM into a buffer allocated once, in the
//! [`Workspace`]; every elementwise pass is a [`kernels`](crate::kernels)
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
//! The step comes in two forms that share [`forward`] and [`backward_hidden`]:
//! - [`step_fused`] ([`finish_fused`] after the shared part) folds the SGD update into the weight-gradient GEMMs
//!   (`w ← −lr · (product) + 1 · w`), so no gradient buffer exists and the
//!   D_in×H matrix is passed over once;
//! - [`gradients`] writes g_w1 and g_w2 into [`Gradients`] buffers, to be
//!   summed across processes or fed to an optimizer with state before
//!   [`apply_sgd`] (or another update) runs.
//!
//! Transposed operands are `.t()` views; ndarray hands them to cblas as
//! transpose flags, without copying. All buffers are row-major and
//! contiguous, so ndarray never falls back to its own matmul (a test counts
//! the cblas calls).

use crate::kernels;
use crate::net::{Data, Weights};
use crate::scalar::Real;
use crate::shape::Shape;
use ndarray::linalg::general_mat_mul;
use ndarray::Array2;

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
    /// g_y·w2ᵀ, h_reluᵀ·g_y and xᵀ·g_h (with the fused update, if any).
    BackwardGemms,
    /// The ReLU mask on g_hrelu.
    Mask,
    /// The separate update pass of the explicit form.
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

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Phase::ForwardGemms => "forward_gemms",
            Phase::Relu => "relu",
            Phase::LossGrad => "loss_grad",
            Phase::BackwardGemms => "backward_gemms",
            Phase::Mask => "mask",
            Phase::Update => "update",
        }
    }
}

/// Sees the end of each phase of a step. The step functions take one so
/// that a benchmark can time the phases with the very code that runs in
/// training; [`NoProbe`] compiles to nothing.
pub trait Probe {
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

/// The step's preallocated buffers. Each one is reused in place for a
/// second quantity once the first is no longer needed.
#[derive(Debug)]
pub struct Workspace<F> {
    shape: Shape,
    /// N×H: h = x·w1, then h_relu in place (negatives stored as −0.0, so its
    /// sign bit is the ReLU mask).
    h: Array2<F>,
    /// N×D_out: y_pred = h_relu·w2, then g_y = 2(y_pred − y) in place.
    y_pred: Array2<F>,
    /// N×H: g_hrelu = g_y·w2ᵀ, then g_h in place after the mask.
    g_hrelu: Array2<F>,
    /// One f64 per [`kernels::CHUNK`] of y_pred: the loss's partial sums.
    partials: Vec<f64>,
}

impl<F: Real> Workspace<F> {
    /// Allocates the buffers for `shape` (see
    /// [`Shape::workspace_elems`] for their size).
    pub fn new(shape: Shape) -> Self {
        let (n, h, o) = (shape.n, shape.hidden, shape.d_out);
        Workspace {
            shape,
            h: Array2::zeros((n, h)),
            y_pred: Array2::zeros((n, o)),
            g_hrelu: Array2::zeros((n, h)),
            partials: vec![0.0; kernels::partials_len(n * o)],
        }
    }

    /// The shape the buffers were made for.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// h_relu (N×H) after [`forward`]; −0.0 marks where h was negative.
    pub fn h_relu(&self) -> &Array2<F> {
        &self.h
    }

    /// g_y = 2(y_pred − y) (N×D_out) after [`forward`].
    pub fn g_y(&self) -> &Array2<F> {
        &self.y_pred
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

fn slice_mut<F>(a: &mut Array2<F>) -> &mut [F] {
    a.as_slice_mut()
        .expect("workspace buffers are contiguous and row-major")
}

fn slice<F>(a: &Array2<F>) -> &[F] {
    a.as_slice()
        .expect("workspace buffers are contiguous and row-major")
}

/// Forward pass and loss. Leaves h_relu and g_y in the workspace and returns
/// loss = Σ (y_pred − y)² of the weights as they are now.
pub fn forward<F: Real>(ws: &mut Workspace<F>, data: &Data<F>, weights: &Weights<F>) -> f64 {
    forward_probed(ws, data, weights, &mut NoProbe)
}

/// [`forward`], reporting its phases to `probe`.
pub fn forward_probed<F: Real>(
    ws: &mut Workspace<F>,
    data: &Data<F>,
    weights: &Weights<F>,
    probe: &mut impl Probe,
) -> f64 {
    let (one, zero) = (F::one(), F::zero());

    // h = x · w1
    //   (N×D_in)·(D_in×H) → N×H; no transposes; alpha = 1, beta = 0.
    general_mat_mul(one, &data.x, &weights.w1, zero, &mut ws.h);

    probe.done(Phase::ForwardGemms);

    // h_relu = max(h, 0), in place; where h < 0 it stores −0.0 (the mask).
    kernels::relu_in_place(slice_mut(&mut ws.h));
    probe.done(Phase::Relu);

    // y_pred = h_relu · w2
    //   (N×H)·(H×D_out) → N×D_out; no transposes; alpha = 1, beta = 0.
    general_mat_mul(one, &ws.h, &weights.w2, zero, &mut ws.y_pred);
    probe.done(Phase::ForwardGemms);

    // loss = Σ (y_pred − y)²  and  g_y = 2 (y_pred − y), one pass, in place.
    let loss = kernels::loss_and_grad(slice_mut(&mut ws.y_pred), slice(&data.y), &mut ws.partials);
    probe.done(Phase::LossGrad);
    loss
}

/// Backward through the second layer and the ReLU, up to g_h (left in the
/// workspace). Must run before w2 is updated: it reads this step's w2.
pub fn backward_hidden<F: Real>(ws: &mut Workspace<F>, w2: &Array2<F>) {
    backward_hidden_probed(ws, w2, &mut NoProbe)
}

/// [`backward_hidden`], reporting its phases to `probe`.
pub fn backward_hidden_probed<F: Real>(
    ws: &mut Workspace<F>,
    w2: &Array2<F>,
    probe: &mut impl Probe,
) {
    // g_hrelu = g_y · w2ᵀ
    //   (N×D_out)·(D_out×H) → N×H; w2ᵀ is a transposed view (cblas
    //   TransB); alpha = 1, beta = 0.
    general_mat_mul(F::one(), &ws.y_pred, &w2.t(), F::zero(), &mut ws.g_hrelu);
    probe.done(Phase::BackwardGemms);

    // g_h = g_hrelu, with g_h = 0 where h < 0 (h == 0 passes), in place.
    kernels::relu_mask(slice_mut(&mut ws.g_hrelu), slice(&ws.h));
    probe.done(Phase::Mask);
}

/// The two weight-gradient GEMMs, each written as
/// `out ← alpha · product + beta · out`:
/// `out_w2 ← alpha_w2 · h_reluᵀ·g_y + beta · out_w2` and
/// `out_w1 ← alpha_w1 · xᵀ·g_h + beta · out_w1`.
/// A zero alpha with beta = 1 leaves its output as it is, so that GEMM is
/// skipped.
fn weight_gemms<F: Real>(
    ws: &Workspace<F>,
    x: &Array2<F>,
    (alpha_w2, out_w2): (F, &mut Array2<F>),
    (alpha_w1, out_w1): (F, &mut Array2<F>),
    beta: F,
    probe: &mut impl Probe,
) {
    let skip = |alpha: F| alpha == F::zero() && beta == F::one();

    // g_w2 = h_reluᵀ · g_y
    //   (H×N)·(N×D_out) → H×D_out; h_reluᵀ is a transposed view (TransA).
    if !skip(alpha_w2) {
        general_mat_mul(alpha_w2, &ws.h.t(), &ws.y_pred, beta, out_w2);
    }

    // g_w1 = xᵀ · g_h
    //   (D_in×N)·(N×H) → D_in×H; xᵀ is a transposed view (TransA). The big
    //   one, with x·w1: 2·N·D_in·H FLOPs each.
    if !skip(alpha_w1) {
        general_mat_mul(alpha_w1, &x.t(), &ws.g_hrelu, beta, out_w1);
    }
    probe.done(Phase::BackwardGemms);
}

/// One SGD step with the updates fused into the gradient GEMMs:
/// [`forward`], [`backward_hidden`], then [`finish_fused`]. Returns the loss
/// of the weights before the update.
pub fn step_fused<F: Real>(
    ws: &mut Workspace<F>,
    data: &Data<F>,
    weights: &mut Weights<F>,
    lr: LearningRates,
) -> f64 {
    step_probed(ws, data, weights, None, lr, &mut NoProbe)
}

/// The fused update, after [`backward_hidden`]:
/// `w2 ← −lr_w2 · h_reluᵀ·g_y + 1 · w2` and `w1 ← −lr_w1 · xᵀ·g_h + 1 · w1`
/// (alpha = −lr, beta = 1): the gradient never exists as a buffer.
pub fn finish_fused<F: Real>(
    ws: &Workspace<F>,
    data: &Data<F>,
    weights: &mut Weights<F>,
    lr: LearningRates,
) {
    finish_fused_probed(ws, data, weights, lr, &mut NoProbe)
}

fn finish_fused_probed<F: Real>(
    ws: &Workspace<F>,
    data: &Data<F>,
    weights: &mut Weights<F>,
    lr: LearningRates,
    probe: &mut impl Probe,
) {
    let (a1, a2) = (-F::from_f64(lr.w1), -F::from_f64(lr.w2));
    weight_gemms(
        ws,
        &data.x,
        (a2, &mut weights.w2),
        (a1, &mut weights.w1),
        F::one(),
        probe,
    );
}

/// Forward and backward with explicit gradients: fills `grads` with
/// g_w1 = xᵀ·g_h and g_w2 = h_reluᵀ·g_y (alpha = 1, beta = 0) and returns
/// the loss. The weights are not touched.
pub fn gradients<F: Real>(
    ws: &mut Workspace<F>,
    data: &Data<F>,
    weights: &Weights<F>,
    grads: &mut Gradients<F>,
) -> f64 {
    gradients_probed(ws, data, weights, grads, &mut NoProbe)
}

fn gradients_probed<F: Real>(
    ws: &mut Workspace<F>,
    data: &Data<F>,
    weights: &Weights<F>,
    grads: &mut Gradients<F>,
    probe: &mut impl Probe,
) -> f64 {
    let loss = forward_probed(ws, data, weights, probe);
    backward_hidden_probed(ws, &weights.w2, probe);
    let (one, zero) = (F::one(), F::zero());
    weight_gemms(
        ws,
        &data.x,
        (one, &mut grads.w2),
        (one, &mut grads.w1),
        zero,
        probe,
    );
    loss
}

/// Plain SGD from explicit gradients: `w1 -= lr_w1 · g_w1`,
/// `w2 -= lr_w2 · g_w2`, as rayon passes.
pub fn apply_sgd<F: Real>(weights: &mut Weights<F>, grads: &Gradients<F>, lr: LearningRates) {
    kernels::sgd_update(
        slice_mut(&mut weights.w1),
        slice(&grads.w1),
        F::from_f64(lr.w1),
    );
    kernels::sgd_update(
        slice_mut(&mut weights.w2),
        slice(&grads.w2),
        F::from_f64(lr.w2),
    );
}

/// A whole step, reporting its phases to `probe`: fused when `grads` is
/// `None`, else explicit gradients into `grads` followed by [`apply_sgd`].
/// Returns the loss before the update. (The [`Trainer`](crate::Trainer)
/// runs the same parts with a finiteness check between forward and update.)
pub fn step_probed<F: Real>(
    ws: &mut Workspace<F>,
    data: &Data<F>,
    weights: &mut Weights<F>,
    grads: Option<&mut Gradients<F>>,
    lr: LearningRates,
    probe: &mut impl Probe,
) -> f64 {
    match grads {
        None => {
            let loss = forward_probed(ws, data, weights, probe);
            backward_hidden_probed(ws, &weights.w2, probe);
            finish_fused_probed(ws, data, weights, lr, probe);
            loss
        }
        Some(g) => {
            let loss = gradients_probed(ws, data, weights, g, probe);
            apply_sgd(weights, g, lr);
            probe.done(Phase::Update);
            loss
        }
    }
}

/// The step's five GEMMs alone, with the same operands, transposes, alphas
/// and betas as [`step_probed`] and nothing between them: what a step would
/// cost if the elementwise passes were free. Benchmarks time it beside the
/// step. The values it leaves in the workspace are not a valid step.
pub fn gemms_only<F: Real>(
    ws: &mut Workspace<F>,
    data: &Data<F>,
    weights: &mut Weights<F>,
    grads: Option<&mut Gradients<F>>,
    lr: LearningRates,
) {
    let (one, zero) = (F::one(), F::zero());
    general_mat_mul(one, &data.x, &weights.w1, zero, &mut ws.h);
    general_mat_mul(one, &ws.h, &weights.w2, zero, &mut ws.y_pred);
    general_mat_mul(one, &ws.y_pred, &weights.w2.t(), zero, &mut ws.g_hrelu);
    match grads {
        None => finish_fused_probed(ws, data, weights, lr, &mut NoProbe),
        Some(g) => weight_gemms(
            ws,
            &data.x,
            (one, &mut g.w2),
            (one, &mut g.w1),
            zero,
            &mut NoProbe,
        ),
    }
}
