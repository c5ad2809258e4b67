//! How a [`Trainer`] is set up: one builder, the step built once at the
//! end from everything it was told.
//!
//! The step a trainer runs is one of three, and each takes its own
//! settings:
//!
//! ```text
//! Trainer::builder(data, weights, lr)      → TrainerBuilder<F, Primal>   .plan(p)  .build_in(form)
//!     .dual() / .dual_from(C)              → TrainerBuilder<F, DualForm<F>>
//!     .bf16()                              → TrainerBuilder<F, Bf16>
//! any of them: .mode(m) .resumed(losses) .loss(l) .loss_over(l, rows) .threads(t)
//!     .build()                             → Trainer<F>: the step's buffers allocated once
//! ```
//!
//! The kind of step is a type parameter, so a setting that a kind does not
//! take cannot be given to it: a plan lays out the primal step's shards
//! and blocks, and neither the dual step (one fixed batch, G and P) nor the
//! bf16 step (the whole batch through each GEMM) has any. Before this
//! builder a trainer was made and then changed (`with_plan`, `with_form`,
//! `with_bf16`), each change building a new step, and a plan given after
//! the dual form or bf16 replaced them with the primal step, silently.
//!
//! ```compile_fail
//! # use twolayer::{Data, LearningRates, Shape, Trainer, Weights};
//! # let s = Shape::new(8, 5, 4, 2)?;
//! # let plan = twolayer::step::Plan::new(s, twolayer::Dtype::F32, 1, twolayer::StepMode::Fused);
//! // A plan for the dual form: it has none, so this does not compile.
//! Trainer::builder(Data::<f32>::random(s, 0), Weights::random(s, 1), LearningRates::uniform(1e-3))
//!     .dual()
//!     .plan(plan);
//! # Ok::<(), twolayer::Error>(())
//! ```
//!
//! ```compile_fail
//! # use twolayer::{Data, LearningRates, Shape, Trainer, Weights};
//! # let s = Shape::new(8, 5, 4, 2)?;
//! # let plan = twolayer::step::Plan::new(s, twolayer::Dtype::F32, 1, twolayer::StepMode::Fused);
//! // Nor does a plan for the bf16 step.
//! Trainer::builder(Data::<f32>::random(s, 0), Weights::random(s, 1), LearningRates::uniform(1e-3))
//!     .bf16()
//!     .plan(plan);
//! # Ok::<(), twolayer::Error>(())
//! ```
//!
//! ```compile_fail
//! # use twolayer::{Data, LearningRates, Shape, Trainer, Weights};
//! # let s = Shape::new(8, 5, 4, 2)?;
//! // Nor the dual form of a bf16 step.
//! Trainer::builder(Data::<f32>::random(s, 0), Weights::random(s, 1), LearningRates::uniform(1e-3))
//!     .bf16()
//!     .dual();
//! # Ok::<(), twolayer::Error>(())
//! ```

use super::{LossHistory, Trainer};
use crate::error::{Error, Result};
use crate::net::{checked_shape, Biases, Data, Weights};
use crate::scalar::Real;
use crate::shape::Shape;
use crate::step::{Form, LearningRates, Plan, Step, StepMode};
use crate::train::Loss;
use ndarray::Array2;
use std::cell::OnceCell;

/// A trainer being set up ([`Trainer::builder`]): the data, the weights,
/// the rates, and the settings of the step kind `K` ([`Primal`],
/// [`DualForm`] or [`Bf16`]). Nothing is allocated until
/// [`TrainerBuilder::build`].
///
/// Every kind takes `mode`, `resumed`, `loss`, `loss_over` and `threads`;
/// the primal step alone takes a plan (`.plan(p)`), and becomes the dual
/// form with `.dual()` / `.dual_from(C)` or bf16 with `.bf16()`. The kind
/// is a type, so a plan for the dual or the bf16 step does not compile.
#[derive(Debug)]
#[must_use = "a builder does nothing until .build()"]
pub struct TrainerBuilder<F, K> {
    data: Data<F>,
    weights: Weights<F>,
    lr: LearningRates,
    mode: StepMode,
    losses: Vec<f64>,
    loss: Loss,
    /// The rows the mean is over, when not the batch's own (a part of a
    /// batch summed across processes).
    loss_rows: Option<usize>,
    threads: Option<usize>,
    kind: K,
}

/// The primal step (shards and blocks of rows), laid out by a plan.
#[derive(Debug, Clone, Copy, Default)]
pub struct Primal {
    /// The plan, or `None` for [`Plan::new`]'s rule.
    plan: Option<Plan>,
}

/// The dual form ([`crate::step::dual`]): one fixed batch, w1 = w1_0 + xᵀ·C.
#[derive(Debug)]
pub struct DualForm<F> {
    /// C (N×H) to continue from, or `None` for C = 0.
    coef: Option<Array2<F>>,
}

/// bf16 mixed precision ([`crate::step::bf16`]): bf16 GEMMs over f32 data.
#[derive(Debug, Clone, Copy)]
pub struct Bf16;

impl<F: Real> Trainer<F> {
    /// Sets up a trainer for `data` (x N×D_in, y N×D_out) and `weights`
    /// (w1 D_in×H, w2 H×D_out, biases optional) at rates `lr`: the primal
    /// step with the built-in plan, fused SGD, the summed loss, no earlier
    /// steps, the threads of the rayon pool it is built in, unless told
    /// otherwise. See [`TrainerBuilder`] for what each kind of step takes.
    ///
    /// ```
    /// use twolayer::{Data, LearningRates, Loss, Shape, Trainer, Weights};
    /// let shape = Shape::new(32, 6, 5, 2)?;
    /// let mut t = Trainer::builder(
    ///     Data::<f64>::random(shape, 0),
    ///     Weights::random(shape, 1).with_zero_biases(),
    ///     LearningRates::uniform(1e-2),
    /// )
    /// .loss(Loss::Mean)
    /// .build()?;
    /// let first = t.step()?;
    /// for _ in 0..50 {
    ///     t.step()?;
    /// }
    /// assert!(t.last_loss().unwrap() < first);
    /// # Ok::<(), twolayer::Error>(())
    /// ```
    pub fn builder(
        data: Data<F>,
        weights: Weights<F>,
        lr: LearningRates,
    ) -> TrainerBuilder<F, Primal> {
        TrainerBuilder {
            data,
            weights,
            lr,
            mode: StepMode::Fused,
            losses: Vec::new(),
            loss: Loss::Sum,
            loss_rows: None,
            threads: None,
            kind: Primal::default(),
        }
    }
}

impl<F: Real, K> TrainerBuilder<F, K> {
    /// How the update is applied ([`StepMode`]; fused unless told). The
    /// dual form applies its own: [`TrainerBuilder::build`] refuses it
    /// with [`StepMode::Explicit`].
    pub fn mode(mut self, mode: StepMode) -> Self {
        self.mode = mode;
        self
    }

    /// Continues a run: `losses` are those of the steps already done (from
    /// a checkpoint), and the weights given their result.
    pub fn resumed(mut self, losses: Vec<f64>) -> Self {
        self.losses = losses;
        self
    }

    /// Minimises and reports `loss` ([`Trainer::loss`]): with
    /// [`Loss::Mean`] every loss recorded is the batch's mean squared
    /// error, and the step applies `lr / (N·D_out)` to the summed gradient.
    pub fn loss(mut self, loss: Loss) -> Self {
        self.loss = loss;
        self.loss_rows = None;
        self
    }

    /// [`TrainerBuilder::loss`] for a batch of `rows` rows of which this
    /// trainer holds a part (data-parallel training: the losses and
    /// gradients it is given are sums over every part, so the mean is
    /// over all `rows`).
    pub fn loss_over(mut self, loss: Loss, rows: usize) -> Self {
        self.loss = loss;
        self.loss_rows = Some(rows);
        self
    }

    /// The threads the step plans for (the built-in rule's budget, the
    /// dual step's and the bf16 step's OpenBLAS threads); the rayon pool's
    /// unless told.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads.max(1));
        self
    }

    /// The same settings, another kind of step.
    fn into_kind<K2>(self, kind: K2) -> TrainerBuilder<F, K2> {
        TrainerBuilder {
            data: self.data,
            weights: self.weights,
            lr: self.lr,
            mode: self.mode,
            losses: self.losses,
            loss: self.loss,
            loss_rows: self.loss_rows,
            threads: self.threads,
            kind,
        }
    }

    /// Checks what every kind needs and lays the arrays out row-major;
    /// then `step` builds the kind's step for the shape and thread budget.
    fn build_with(
        self,
        step: impl FnOnce(Shape, &Data<F>, &Weights<F>, usize, StepMode) -> Result<Step<F>>,
    ) -> Result<Trainer<F>> {
        for (name, v) in [("--lr (w1)", self.lr.w1), ("--lr (w2)", self.lr.w2)] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::invalid(format!(
                    "{name} must be a finite number ≥ 0, got {v}"
                )));
            }
        }
        let shape = checked_shape(&self.data, &self.weights)?;
        let standard = |a: Array2<F>| {
            if a.is_standard_layout() {
                a
            } else {
                a.as_standard_layout().into_owned()
            }
        };
        let data = Data {
            x: standard(self.data.x),
            y: standard(self.data.y),
        };
        let weights = Weights {
            w1: standard(self.weights.w1),
            w2: standard(self.weights.w2),
            biases: self.weights.biases.map(|b| Biases {
                b1: b.b1.as_standard_layout().into_owned(),
                b2: b.b2.as_standard_layout().into_owned(),
            }),
        };
        let threads = self.threads.unwrap_or_else(rayon::current_num_threads);
        let step = step(shape, &data, &weights, threads, self.mode)?;
        let rows = self.loss_rows.unwrap_or(shape.n);
        let scale = self.loss.scale(rows, shape.d_out);
        Ok(Trainer {
            shape,
            data,
            weights,
            step,
            lr: self.lr,
            step_lr: LearningRates {
                w1: self.lr.w1 * scale,
                w2: self.lr.w2 * scale,
            },
            loss: self.loss,
            loss_scale: scale,
            losses: LossHistory {
                kept: self.losses,
                ..LossHistory::default()
            },
            formed: OnceCell::new(),
        })
    }
}

impl<F: Real> TrainerBuilder<F, Primal> {
    /// Lays the primal step's work out by `plan` (a tuned plan, or a
    /// checkpoint's) instead of the built-in rule's.
    pub fn plan(mut self, plan: Plan) -> Self {
        self.kind.plan = Some(plan);
        self
    }

    /// bf16 mixed precision ([`Step::bf16`]): the GEMMs on bf16 copies of
    /// the batch and the weights, everything else in f32. bf16 runs store
    /// f32: [`TrainerBuilder::build`] refuses other data, and a library
    /// without `cblas_sbgemm`.
    pub fn bf16(self) -> TrainerBuilder<F, Bf16> {
        self.into_kind(Bf16)
    }

    /// The dual form from C = 0: w1_0 is the weights' w1. Needs one fixed
    /// batch (no batch swapped in between steps, no exchange) and the
    /// fused mode.
    pub fn dual(self) -> TrainerBuilder<F, DualForm<F>> {
        self.into_kind(DualForm { coef: None })
    }

    /// The dual form continuing from C (N×H), a checkpoint's: the weights
    /// given must then be w1_0 and w2, so that w1 = w1_0 + xᵀ·C.
    pub fn dual_from(self, coef: Array2<F>) -> TrainerBuilder<F, DualForm<F>> {
        self.into_kind(DualForm { coef: Some(coef) })
    }

    /// Builds the trainer in `form` chosen at run time: [`Form::Primal`] as
    /// [`TrainerBuilder::build`], [`Form::Dual`] as `.dual().build()`.
    /// Fails for the dual form when a plan was given (it has none to lay
    /// out).
    pub fn build_in(self, form: Form) -> Result<Trainer<F>> {
        match form {
            Form::Primal => self.build(),
            Form::Dual if self.kind.plan.is_some() => Err(Error::invalid(
                "a plan lays out the primal step: the dual form has none",
            )),
            Form::Dual => self.dual().build(),
        }
    }

    /// Builds the trainer: checks that data and weights agree and are
    /// finite, the rates finite and ≥ 0, and that the step's buffers fit
    /// in memory, then allocates them, once.
    pub fn build(self) -> Result<Trainer<F>> {
        let plan = self.kind.plan;
        self.build_with(|shape, _, _, threads, mode| {
            let plan = plan.unwrap_or_else(|| Plan::new(shape, F::DTYPE, threads, mode));
            Step::primal(shape, plan, mode)
        })
    }
}

impl<F: Real> TrainerBuilder<F, DualForm<F>> {
    /// Builds the trainer in the dual form (as [`TrainerBuilder::build`]
    /// of the primal step): G and P computed once here. Fails in
    /// [`StepMode::Explicit`] (the dual form applies its own update) or
    /// when C is not N×H.
    pub fn build(mut self) -> Result<Trainer<F>> {
        if self.mode == StepMode::Explicit {
            return Err(Error::invalid(
                "the dual form applies its update itself: explicit gradients need the primal form",
            ));
        }
        let coef = self.kind.coef.take();
        self.build_with(|_, data, weights, threads, _| Step::dual(data, &weights.w1, coef, threads))
    }
}

impl<F: Real> TrainerBuilder<F, Bf16> {
    /// Builds the trainer with the bf16 step (as [`TrainerBuilder::build`]
    /// of the primal step). Fails for data that is not f32, or when the
    /// library has no bf16 GEMM.
    pub fn build(self) -> Result<Trainer<F>> {
        self.build_with(|shape, _, _, threads, mode| Step::bf16(shape, threads, mode))
    }
}
