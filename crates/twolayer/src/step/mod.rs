//! One training step: forward, backward, update, mirroring the math of
//! docs/design.md §1 line by line. Every product is a GEMM into a buffer
//! allocated once, in the `Workspace`; every elementwise pass is a
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
//! One object runs it: a [`Step`] is built once for a run's shape, plan
//! and form (primal or dual) and holds every buffer the step needs;
//! [`Step::run`] runs one step and is told by an [`Update`] what to do
//! with the gradients (apply them as SGD, hand them back, or sum them
//! across processes first) and by a [`Probe`] whether to time its phases.
//! The Trainer, minibatch runs, sweeps, the tuner, the data-parallel
//! benchmark and the MPI driver all call it.
//!
//! ```text
//!                      ┌ Primal, fused plan ─ block (update in the GEMMs)
//! Step::run(Update) ───┤ Primal, sharded ──── all_shards ─┬ update_from_shards ─┐
//!                      │                                  ├ sum_into grads ─────┤
//!                      │                                  └ exchange (MPI) ─────┼─ sgd::apply
//!                      └ Dual ─────────────── Dual::run (C and w2) ─────────────┘
//! ```
//!
//! Where the parts are:
//!
//! - `block.rs`: one block of rows forward and backward — the math above,
//!   with every buffer's shape and every GEMM's transposes, alpha and beta.
//! - [`plan`]: how the batch is split into shards of rows (one per thread)
//!   and blocks, and the `Workspace` of buffers.
//! - `shards.rs`: the shards run side by side; their gradient sums are
//!   reduced into the update.
//! - [`exchange`]: the same step with the sums across MPI processes
//!   overlapped with the work.
//! - [`dual`]: the dual form, for one fixed batch with N small against
//!   D_in: the step on C with w1 = w1_0 + xᵀ·C, N² in place of N·D_in.
//! - `sgd.rs`: the SGD update, the one pass that moves parameters.
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

pub mod bf16;
mod block;
pub mod dual;
pub mod exchange;
pub mod plan;
pub mod probe;
mod selftest;
pub(crate) mod sgd;
mod shards;
mod views;

pub use dual::{Dual, Form, FormChoice};
pub use exchange::{Exchange, NoExchange};
pub use plan::{step_secs_estimate, too_small_to_split, Layout, Plan, PlanChoice, WIDE_LAYER};
pub use probe::{NoProbe, Phase, Probe};

use crate::error::{Error, Result};
use crate::net::{Biases, Data, Weights};
use crate::scalar::{Dtype, Real};
use crate::shape::Shape;
use block::{block, BiasSums, Sink};
use exchange::gradients_exchanged;
use ndarray::Array2;
use sgd::{Grad, Param};
use shards::Workspace;
use shards::{all_shards, sum_into, update_from_shards};
use views::{flat, flat1, flat1_mut, flat_mut};

/// How a step applies its update. Its names (`fused`, `explicit`) are the
/// command line's, the checkpoint header's, the wisdom file's and the
/// reports'.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum StepMode {
    /// Plain SGD applied by the step itself: inside the gradient GEMMs when
    /// the plan allows it, else in the pass that sums the shards.
    #[default]
    Fused,
    /// Gradients into [`Gradients`] buffers, then a separate update: the
    /// form that data-parallel training and optimizers with state build on.
    Explicit,
}

crate::named!(StepMode, "step mode", {
    Fused => "fused", "plain SGD applied by the step itself",
    Explicit => "explicit", "gradients into buffers, then a separate update",
});

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

/// What [`Step::run`] does with the gradients it computes.
pub enum Update<'a, F> {
    /// Plain SGD, applied by the step: inside the gradient GEMMs when the
    /// plan fuses it, else in the pass that sums the shards (or from the
    /// step's own gradient buffers, in [`StepMode::Explicit`]); in the dual
    /// form on C and w2. The weights are left as they were when the loss is
    /// not finite.
    Sgd,
    /// The gradients into `grads` (summed over the whole batch); the
    /// weights are not touched. Primal form, on a plan that does not fuse
    /// the update into the GEMMs (built for [`StepMode::Explicit`], or
    /// sharded). [`apply_sgd`] completes a plain SGD step.
    Gradients(&'a mut Gradients<F>),
    /// The gradients and the loss summed over every process of `exchange`
    /// while they are computed (g_w1's sum started in `pieces` parts; see
    /// [`exchange`]), into the step's own buffers, then SGD on every
    /// process alike. Needs a step built for [`StepMode::Explicit`].
    Exchanged {
        /// The other processes.
        exchange: &'a mut dyn Exchange<F>,
        /// Parts g_w1's sum is started in.
        pieces: usize,
    },
    /// The step's GEMMs alone: the very block code of the step, with its
    /// elementwise passes switched off and no reduction or update pass —
    /// what a step would cost if those were free. Benchmarks time it beside
    /// the step. The values it leaves are not a valid step: the loss is 0,
    /// and where the update lives in the GEMMs it moves the weights by a
    /// fused update's worth.
    GemmsOnly,
}

/// One training step, built once for a run and run once per step: the
/// form it computes in, the plan of its work and every buffer it needs,
/// allocated here and never again.
///
/// ```
/// use twolayer::step::{apply_sgd, Gradients, LearningRates, NoProbe, Step, Update};
/// use twolayer::{Data, Shape, StepMode, Weights};
/// let shape = Shape::new(8, 5, 4, 2)?;
/// let data = Data::<f64>::random(shape, 0);
/// let mut w = Weights::random(shape, 1);
/// // The primal step on one thread, with gradient buffers.
/// let mut step = Step::planned(shape, 1, StepMode::Explicit)?;
/// // Gradients handed back (the rate is not used), then one SGD update:
/// let mut g = Gradients::zeros(shape);
/// let lr = LearningRates::uniform(1e-3);
/// let loss = step.run(&data, &mut w, lr, Update::Gradients(&mut g), &mut NoProbe)?;
/// apply_sgd(&mut w, &g, lr);
/// // ... the same as the step applying it itself:
/// let mut w2 = Weights::random(shape, 1);
/// assert_eq!(step.run(&data, &mut w2, lr, Update::Sgd, &mut NoProbe)?, loss);
/// assert_eq!(w2, w);
/// # Ok::<(), twolayer::Error>(())
/// ```
#[derive(Debug)]
pub struct Step<F> {
    /// The plan the primal step runs (for the dual form: the plan the
    /// run's shape would have, which reports name; its threads are the
    /// dual step's budget).
    plan: Plan,
    /// The form and its state.
    form: FormState<F>,
}

/// A step's form with the buffers it works in.
#[derive(Debug)]
enum FormState<F> {
    /// Shards and blocks of rows ([`plan`]); `grads` holds the summed
    /// gradients in [`StepMode::Explicit`].
    Primal {
        ws: Workspace<F>,
        grads: Option<Gradients<F>>,
    },
    /// G, P, C and the dual step's buffers ([`dual`]).
    Dual(Dual<F>),
    /// bf16 mixed precision ([`bf16`]): built only as a `Step<f32>`.
    Bf16(Box<bf16::Bf16Step<F>>),
}

impl<F: Real> Step<F> {
    /// The primal step for `shape`, its work laid out by `plan` (for
    /// [`Plan::new`]'s rule with the same `mode`, or a tuned plan), with
    /// gradient buffers when `mode` is [`StepMode::Explicit`]. Fails when
    /// the buffers would not fit in memory, or when an explicit step is
    /// given a plan that fuses the update into the GEMMs.
    pub fn primal(shape: Shape, plan: Plan, mode: StepMode) -> Result<Self> {
        if plan.fused_gemm_update && mode == StepMode::Explicit {
            return Err(Error::invalid(
                "a plan with the update in the GEMMs needs the fused mode",
            ));
        }
        if plan.layout == Layout::Units && (plan.fused_gemm_update || mode == StepMode::Explicit) {
            return Err(Error::invalid(
                "the units layout needs the fused mode and a plan whose update is not in the GEMMs",
            ));
        }
        plan.check_fits_memory(shape, F::DTYPE, mode)?;
        Ok(Step {
            plan,
            form: FormState::Primal {
                ws: Workspace::with_plan(shape, plan),
                // With bias gradients, used when the weights have biases.
                grads: (mode == StepMode::Explicit).then(|| Gradients {
                    biases: Some(Biases {
                        b1: ndarray::Array1::zeros(shape.hidden),
                        b2: ndarray::Array1::zeros(shape.d_out),
                    }),
                    ..Gradients::zeros(shape)
                }),
            },
        })
    }

    /// [`Step::primal`] with the built-in rule's plan for `threads`.
    pub fn planned(shape: Shape, threads: usize, mode: StepMode) -> Result<Self> {
        Self::primal(shape, Plan::new(shape, F::DTYPE, threads, mode), mode)
    }

    /// The dual step on the fixed batch `data`, at weights
    /// w1 = `w1_0` + xᵀ·`coef` (C = 0 when `coef` is `None`), G and P
    /// computed with `threads` OpenBLAS threads. Every [`Step::run`] must
    /// then be given the same batch, and weights whose w1 is `w1_0`: the
    /// step moves C in its place ([`Step::w1_into`] forms w1). Fails when
    /// the buffers would not fit in memory or `coef` is not N×H.
    pub fn dual(
        data: &Data<F>,
        w1_0: &Array2<F>,
        coef: Option<Array2<F>>,
        threads: usize,
    ) -> Result<Self> {
        let dual = Dual::new(data, w1_0, coef, threads)?;
        Ok(Step {
            plan: Plan::new(dual.shape(), F::DTYPE, threads, StepMode::Fused),
            form: FormState::Dual(dual),
        })
    }

    /// The bf16 mixed-precision step for `shape` ([`bf16`]), its GEMMs on
    /// `threads` OpenBLAS threads. Needs `F` = f32 (bf16 runs store f32)
    /// and a library with `cblas_sbgemm`; fails otherwise, or when its
    /// buffers would not fit in memory. Every [`Step::run`] must be given
    /// the weights the previous one updated and the batch it was given,
    /// unless [`Step::inputs_changed`] says they changed in place.
    ///
    /// Both modes run the same arithmetic: the gradients into buffers,
    /// then one update pass that also makes the weights' bf16 copies (a
    /// GEMM cannot fuse the update, since the copies must follow the f32
    /// weights); `mode` is what the run records and whether
    /// [`Step::gradients`] shows them.
    pub fn bf16(shape: Shape, threads: usize, mode: StepMode) -> Result<Self> {
        Ok(Step {
            plan: Plan::new(shape, F::DTYPE, threads, StepMode::Fused),
            form: FormState::Bf16(Box::new(bf16::Bf16Step::new(shape, threads, mode)?)),
        })
    }

    /// The run's element type: `F`'s, or [`Dtype::Bf16`] for the bf16 step.
    pub fn dtype(&self) -> Dtype {
        match self.form {
            FormState::Bf16(_) => Dtype::Bf16,
            _ => F::DTYPE,
        }
    }

    /// Tells the step that the batch was replaced in place (a minibatch
    /// run's next rows): the bf16 step converts x again. Nothing for the
    /// other forms, which read x as it is (the dual form needs one fixed
    /// batch).
    pub fn batch_replaced(&mut self) {
        if let FormState::Bf16(b) = &mut self.form {
            b.batch_replaced();
        }
    }

    /// Tells the step that the batch or the weights were changed in place
    /// (not by its own update): the bf16 step converts both again.
    pub fn inputs_changed(&mut self) {
        if let FormState::Bf16(b) = &mut self.form {
            b.inputs_changed();
        }
    }

    /// The step a run of `dtype` in `form` takes — the one place a run's
    /// description picks its step: for bf16 [`Step::bf16`] (primal, no
    /// plan), else [`Step::primal`] with `plan`, or [`Step::dual`] on
    /// `data` at `weights`' w1 (C = 0). The bf16 and dual steps run on the
    /// threads of the rayon pool they are built in, as [`Plan::new`]'s
    /// rule is given them.
    pub fn new(
        dtype: Dtype,
        form: Form,
        data: &Data<F>,
        weights: &Weights<F>,
        plan: Plan,
        mode: StepMode,
    ) -> Result<Self> {
        let (x, y) = (data.x.dim(), data.y.dim());
        let shape = crate::net::shape_from_dims(x, y, weights.w1.dim(), weights.w2.dim())?;
        match (dtype, form) {
            (Dtype::Bf16, Form::Dual) => Err(Error::invalid(
                "form dual runs in f32 or f64; bf16 runs the primal step with bf16 GEMMs",
            )),
            (Dtype::Bf16, Form::Primal) => Self::bf16(shape, rayon::current_num_threads(), mode),
            (_, Form::Primal) => Self::primal(shape, plan, mode),
            (_, Form::Dual) if mode == StepMode::Explicit => Err(Error::invalid(
                "the dual form applies its update itself: explicit gradients need the primal form",
            )),
            (_, Form::Dual) => {
                let mut step = Self::dual(data, &weights.w1, None, rayon::current_num_threads())?;
                step.plan = plan;
                Ok(step)
            }
        }
    }

    /// Fails, naming how to get it, when this machine's library cannot run
    /// a step of `dtype` (bf16 without OpenBLAS's bf16 GEMM): what a run
    /// checks before it reads or allocates anything.
    pub fn available(dtype: Dtype) -> Result<()> {
        match dtype {
            Dtype::Bf16 => bf16::require_sbgemm().map(|_| ()),
            Dtype::F32 | Dtype::F64 => Ok(()),
        }
    }

    /// One step on `data` from `weights` at rates `lr`, the gradients used
    /// as `update` says; `probe` sees the first shard's phases and the
    /// update ([`NoProbe`] to time nothing). Returns the loss of the
    /// weights before the update. Allocates nothing.
    ///
    /// Fails, before touching anything, when `data` or `weights` do not
    /// have the step's shape (or are not row-major), or when the form or
    /// mode cannot do what `update` asks: the dual form only applies its
    /// own update ([`Update::Sgd`], [`Update::GemmsOnly`]); handing
    /// gradients back needs a plan that does not fuse them into the GEMMs;
    /// an exchange needs [`StepMode::Explicit`].
    pub fn run(
        &mut self,
        data: &Data<F>,
        weights: &mut Weights<F>,
        lr: LearningRates,
        update: Update<'_, F>,
        probe: &mut impl Probe,
    ) -> Result<f64> {
        self.check(data, weights)?;
        let plan = self.plan;
        match (&mut self.form, update) {
            (FormState::Primal { ws, grads: None }, Update::Sgd) => {
                let _step = start_step(&plan);
                let loss = forward_backward::<F, true>(ws, data, weights, lr, probe);
                if !plan.fused_gemm_update && loss.is_finite() {
                    update_from_shards(weights, &mut ws.shards, lr, plan.layout);
                }
                probe.done(Phase::Update);
                Ok(loss)
            }
            (FormState::Primal { ws, grads: Some(g) }, Update::Sgd) => {
                let loss = gradients(ws, data, weights, g, probe);
                if loss.is_finite() {
                    apply_sgd(weights, g, lr);
                }
                probe.done(Phase::Update);
                Ok(loss)
            }
            (FormState::Primal { ws, .. }, Update::Gradients(g)) => {
                if plan.fused_gemm_update {
                    return Err(Error::invalid(
                        "gradients handed back need a step built for StepMode::Explicit",
                    ));
                }
                check_gradients(g, weights)?;
                Ok(gradients(ws, data, weights, g, probe))
            }
            (FormState::Primal { ws, grads: Some(g) }, Update::Exchanged { exchange, pieces }) => {
                let loss = gradients_exchanged(ws, data, weights, g, exchange, pieces);
                if loss.is_finite() {
                    apply_sgd(weights, g, lr);
                }
                probe.done(Phase::Update);
                Ok(loss)
            }
            (FormState::Primal { grads: None, .. }, Update::Exchanged { .. }) => Err(
                Error::invalid("a step summed across processes needs explicit gradients"),
            ),
            (FormState::Primal { ws, .. }, Update::GemmsOnly) => {
                crate::blas::set_threads(plan.blas_threads);
                forward_backward::<F, false>(ws, data, weights, lr, &mut NoProbe);
                Ok(0.0)
            }
            (FormState::Dual(d), Update::Sgd) => {
                Ok(d.run::<true>(&data.y, &mut weights.w2, weights.biases.as_mut(), lr, probe))
            }
            (FormState::Dual(d), Update::GemmsOnly) => {
                d.run::<false>(&data.y, &mut weights.w2, None, lr, &mut NoProbe);
                Ok(0.0)
            }
            (FormState::Dual(_), Update::Gradients(_)) => Err(Error::invalid(
                "the dual form applies its update itself: explicit gradients need the primal form",
            )),
            (FormState::Dual(_), Update::Exchanged { .. }) => Err(Error::invalid(
                "a step summed across processes needs the primal form",
            )),
            (FormState::Bf16(b), Update::Sgd) => Ok(b.run::<true>(data, weights, lr, None, probe)),
            (FormState::Bf16(b), Update::Gradients(g)) => {
                check_gradients(g, weights)?;
                Ok(b.run::<true>(data, weights, lr, Some(g), probe))
            }
            (FormState::Bf16(b), Update::GemmsOnly) => {
                b.run::<false>(data, weights, lr, None, &mut NoProbe);
                Ok(0.0)
            }
            (FormState::Bf16(b), Update::Exchanged { exchange, .. }) => {
                // This process's gradients in f32, then their sums (f32
                // over the wire, as the primal step's), then the update
                // with the bf16 copies. One sum per buffer, after the
                // GEMMs: not overlapped with them as the primal step's.
                let has_biases = weights.biases.is_some();
                let local_loss = b.local_gradients(data, weights, probe).ok_or_else(|| {
                    Error::invalid("a step summed across processes needs explicit gradients")
                })?;
                let (local, total) = b.exchange_buffers().expect("explicit mode");
                let mut loss = 0.0;
                // SAFETY: every buffer lives in the step, which is borrowed
                // here until `finish` returns; `local` is not written and
                // `total` not touched until then.
                unsafe {
                    exchange.start(flat(&local.w2), flat_mut(&mut total.w2));
                    exchange.start(flat(&local.w1), flat_mut(&mut total.w1));
                    if has_biases {
                        let (lb, tb) = (
                            local.biases.as_ref().expect("allocated"),
                            total.biases.as_mut().expect("allocated"),
                        );
                        exchange.start(flat1(&lb.b1), flat1_mut(&mut tb.b1));
                        exchange.start(flat1(&lb.b2), flat1_mut(&mut tb.b2));
                    }
                    exchange.start_loss(&local_loss, &mut loss);
                }
                exchange.finish();
                if loss.is_finite() {
                    b.update_from_sums(weights, lr);
                }
                probe.done(Phase::Update);
                Ok(loss)
            }
        }
    }

    /// Fails when `data` and `weights` are not of the step's shape or not
    /// row-major (the step's views need contiguous rows).
    fn check(&self, data: &Data<F>, weights: &Weights<F>) -> Result<()> {
        let s = self.shape();
        let dims_ok = data.x.dim() == (s.n, s.d_in)
            && data.y.dim() == (s.n, s.d_out)
            && weights.w1.dim() == (s.d_in, s.hidden)
            && weights.w2.dim() == (s.hidden, s.d_out)
            && weights
                .biases
                .as_ref()
                .is_none_or(|b| b.b1.len() == s.hidden && b.b2.len() == s.d_out);
        let standard = data.x.is_standard_layout()
            && data.y.is_standard_layout()
            && weights.w1.is_standard_layout()
            && weights.w2.is_standard_layout();
        if !dims_ok || !standard {
            return Err(Error::invalid(format!(
                "the step is built for {s}: its data and weights must have that shape and be row-major"
            )));
        }
        Ok(())
    }

    /// The problem's shape.
    pub fn shape(&self) -> Shape {
        match &self.form {
            FormState::Primal { ws, .. } => ws.shape,
            FormState::Dual(d) => d.shape(),
            FormState::Bf16(b) => b.shape(),
        }
    }

    /// How the primal step divides its work (for the dual form, the plan
    /// the shape would have; see [`Step`]).
    pub fn plan(&self) -> Plan {
        self.plan
    }

    /// The form the step computes in.
    pub fn form(&self) -> Form {
        match self.form {
            FormState::Primal { .. } | FormState::Bf16(_) => Form::Primal,
            FormState::Dual(_) => Form::Dual,
        }
    }

    /// How the update is applied: [`StepMode::Explicit`] when the step
    /// keeps gradient buffers of its own.
    pub fn mode(&self) -> StepMode {
        match &self.form {
            FormState::Primal { grads: Some(_), .. } => StepMode::Explicit,
            FormState::Bf16(b) => b.mode(),
            _ => StepMode::Fused,
        }
    }

    /// In [`StepMode::Explicit`], the gradients of the last step run (in
    /// an [`Update::Exchanged`] step, summed over every process; bias
    /// gradients meaningful when the model has biases); `None` otherwise.
    pub fn gradients(&self) -> Option<&Gradients<F>> {
        match &self.form {
            FormState::Primal { grads, .. } => grads.as_ref(),
            FormState::Dual(_) => None,
            FormState::Bf16(b) => (b.mode() == StepMode::Explicit).then(|| b.gradients()),
        }
    }

    /// In the dual form, C (N×H): w1 = w1_0 + xᵀ·C.
    pub fn dual_coef(&self) -> Option<&Array2<F>> {
        match &self.form {
            FormState::Dual(d) => Some(d.coef()),
            FormState::Primal { .. } | FormState::Bf16(_) => None,
        }
    }

    /// In the dual form, w1 = w1_0 + xᵀ·C into `out` (D_in×H), for `x`
    /// the batch (N×D_in); `None` in the primal form (w1 is the weights').
    pub fn w1_into(&self, x: &Array2<F>, w1_0: &Array2<F>, out: &mut Array2<F>) -> Option<()> {
        match &self.form {
            FormState::Dual(d) => {
                d.w1_into(x, w1_0, out);
                Some(())
            }
            FormState::Primal { .. } | FormState::Bf16(_) => None,
        }
    }
}

/// Fails when `g` does not have the weights' shapes (bias gradients
/// exactly when the model has biases).
fn check_gradients<F: Real>(g: &Gradients<F>, w: &Weights<F>) -> Result<()> {
    let biases_ok = match (&g.biases, &w.biases) {
        (None, None) => true,
        (Some(gb), Some(b)) => gb.b1.len() == b.b1.len() && gb.b2.len() == b.b2.len(),
        _ => false,
    };
    if g.w1.dim() != w.w1.dim() || g.w2.dim() != w.w2.dim() || !biases_ok {
        return Err(Error::invalid(
            "the gradient buffers must have the weights' shapes (and bias gradients exactly when the model has biases)",
        ));
    }
    if !g.w1.is_standard_layout() || !g.w2.is_standard_layout() {
        return Err(Error::invalid("the gradient buffers must be row-major"));
    }
    Ok(())
}

/// Every step's start: OpenBLAS gets the plan's threads per call (the one
/// place a primal step sets them).
fn start_step(plan: &Plan) -> selftest::StepGuard {
    crate::blas::set_threads(plan.blas_threads);
    selftest::StepGuard::start()
}

/// Plain SGD from explicit gradients, `p −= rate·g` for every parameter
/// with its layer's rate (`sgd.rs`): what completes an
/// [`Update::Gradients`] step.
pub fn apply_sgd<F: Real>(weights: &mut Weights<F>, grads: &Gradients<F>, lr: LearningRates) {
    sgd::update(weights, lr, |p| {
        Grad::One(match (p, &grads.biases) {
            (Param::W1, _) => flat(&grads.w1),
            (Param::W2, _) => flat(&grads.w2),
            (Param::B1, Some(b)) => flat1(&b.b1),
            (Param::B2, Some(b)) => flat1(&b.b2),
            // Asked for only when the model has biases.
            (_, None) => panic!("the model has biases and the gradients have none"),
        })
    });
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
            Layout::Rows,
            probe,
        )
    } else {
        all_shards::<F, PASSES>(ws, data, weights, false, probe)
    }
}

/// Forward and backward with explicit gradients: fills `grads` with
/// g_w1 = Σ xᵀ·g_h and g_w2 = Σ h_reluᵀ·g_y (and, when the model has
/// biases, g_b1 and g_b2: `grads` then has room for them) over the whole
/// batch and returns the loss. The weights are not touched.
fn gradients<F: Real>(
    ws: &mut Workspace<F>,
    data: &Data<F>,
    weights: &Weights<F>,
    grads: &mut Gradients<F>,
    probe: &mut impl Probe,
) -> f64 {
    debug_assert!(!ws.plan.fused_gemm_update);
    let _step = start_step(&ws.plan);
    let loss = all_shards::<F, true>(ws, data, weights, false, probe);
    let layout = ws.plan.layout;
    sum_into(flat_mut(&mut grads.w1), &ws.shards, Param::W1, layout);
    sum_into(flat_mut(&mut grads.w2), &ws.shards, Param::W2, layout);
    if weights.has_biases() {
        let g = grads
            .biases
            .as_mut()
            .expect("bias gradients for a model with biases");
        sum_into(flat1_mut(&mut g.b1), &ws.shards, Param::B1, layout);
        sum_into(flat1_mut(&mut g.b2), &ws.shards, Param::B2, layout);
    }
    loss
}
