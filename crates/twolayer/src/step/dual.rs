//! The dual form of the step, for training on one fixed batch x: every
//! SGD update of w1 is xᵀ·(something N×H), so w1 never leaves
//! w1_0 + xᵀ·C with C an N×H matrix. Then x·w1 = x·w1_0 + (x·xᵀ)·C, and
//! the step works on C instead of w1:
//!
//! ```text
//! once:
//! G        = x · xᵀ                 N×N      (x·xᵀ, symmetric)
//! P        = x · w1_0               N×H
//! C        = 0                      N×H      (so w1 = w1_0)
//! each step:
//! h        = P + G · C [+ b1]       N×H      (= x·w1_0 + x·xᵀ·C = x·w1)
//! h_relu   = max(h, 0)              N×H
//! y_pred   = h_relu · w2 [+ b2]     N×D_out
//! loss     = Σ (y_pred − y)²
//! g_y      = 2 (y_pred − y)         N×D_out
//! g_hrelu  = g_y · w2ᵀ              N×H      (w2 before this step's update)
//! g_h      = g_hrelu, 0 where h < 0
//! w2      -= lr · h_reluᵀ · g_y     H×D_out
//! C       -= lr · g_h               N×H      (w1 -= lr·xᵀ·g_h  ⇔  C -= lr·g_h)
//! b1      -= lr · Σ_rows g_h ;  b2 -= lr · Σ_rows g_y   (with biases: they
//!                                    are not in w1, so the dual form keeps them as they are)
//! when the weights are read:
//! w1       = w1_0 + xᵀ · C          D_in×H
//! ```
//!
//! In exact arithmetic this is the primal step's trajectory, step for
//! step; in floating point it rounds differently (tests hold it to the
//! primal and to numpy within the parity tolerances). Per step it costs
//! 2·N²·H FLOPs for h in place of 4·N·D_in·H for x·w1 and xᵀ·g_h: at the
//! seed shape (64, 1000, 100, 10) about 20 times fewer for the whole step.
//! G and P cost 2·N²·D_in + 2·N·D_in·H once, and forming w1 2·N·D_in·H
//! each time the weights are read. [`Form::auto`] weighs these.

use super::probe::{Phase, Probe};
use super::sgd::{self, Grad, Param};
use super::views::{flat, flat1, flat_mut};
use super::LearningRates;
use crate::error::{Error, Result};
use crate::kernels;
use crate::net::{Biases, Data};
use crate::scalar::{Dtype, Real};
use crate::shape::Shape;
use ndarray::linalg::general_mat_mul;
use ndarray::Array2;

/// Steps of `twolayer train` when not told (the reference's 500).
pub const TRAIN_DEFAULT_STEPS: usize = 500;

/// How a step computes x·w1 and updates w1. Its names (`primal`, `dual`)
/// are the command line's, the checkpoint header's and the reports'.
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
pub enum Form {
    /// On w1 itself: the step of docs/design.md §1.
    #[default]
    Primal,
    /// On C, with w1 = w1_0 + xᵀ·C (this module): for one fixed batch
    /// with N small against D_in.
    Dual,
}

crate::named!(Form, "form", {
    Primal => "primal", "on w1 itself",
    Dual => "dual", "on C, with w1 = w1_0 + xᵀ·C",
});

impl Form {
    /// The form `twolayer train` runs for `shape` when given no `--form`
    /// and no `--steps` (its default of [`TRAIN_DEFAULT_STEPS`] steps on one
    /// fixed batch): what sweeps, the tuner and the regression gate time
    /// for a point unless told otherwise.
    pub fn as_train_runs(shape: Shape) -> Form {
        Form::auto(shape, TRAIN_DEFAULT_STEPS)
    }

    /// One step's FLOPs in this form (a multiply-add as two): the primal's
    /// [`Shape::flops_per_step`]; the dual form's h = P + G·C is 2·N²·H
    /// where the primal's x·w1 and xᵀ·g_h are 4·N·D_in·H, and the three
    /// products with w2 are the same.
    pub fn flops_per_step(self, shape: Shape) -> f64 {
        match self {
            Form::Primal => shape.flops_per_step(),
            Form::Dual => {
                let (n, h, o) = (shape.n as f64, shape.hidden as f64, shape.d_out as f64);
                2.0 * n * n * h + 6.0 * n * h * o
            }
        }
    }

    /// The form with fewer FLOPs for `steps` steps on one fixed batch of
    /// `shape`: dual when N ≤ D_in and its whole run — G, P, every step's
    /// 2·N²·H, forming w1 at the end — costs at most half the primal's
    /// 4·N·D_in·H per step (the products both forms share left out).
    /// The margin covers what FLOPs do not count: a small N×N GEMM runs
    /// further from the machine's peak than the primal's.
    pub fn auto(shape: Shape, steps: usize) -> Form {
        // The regression gate's self-test: a build whose rule never picks
        // the dual form (scripts/gate-selftest.sh, kind no-dual).
        if cfg!(feature = "selftest-no-dual") {
            return Form::Primal;
        }
        let (n, d, h) = (shape.n as f64, shape.d_in as f64, shape.hidden as f64);
        let s = steps as f64;
        let primal = 4.0 * n * d * h * s;
        let dual = 2.0 * n * n * h * s + 2.0 * n * n * d + 4.0 * n * d * h;
        if shape.n <= shape.d_in && 2.0 * dual <= primal {
            Form::Dual
        } else {
            Form::Primal
        }
    }
}

/// The form a run asks for: one of the two, or the rule's choice. What
/// `--form` and a grid's `form` take.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum FormChoice {
    /// Dual when it saves at least half the FLOPs ([`Form::auto`]), else
    /// primal.
    #[default]
    Auto,
    /// On w1: the step of docs/design.md §1.
    Primal,
    /// On C, with w1 = w1_0 + xᵀ·C.
    Dual,
}

crate::named!(FormChoice, "form", {
    Auto => "auto", "dual when it saves at least half the FLOPs, else primal",
    Primal => "primal", "on w1 itself",
    Dual => "dual", "on C, with w1 = w1_0 + xᵀ·C",
});

impl FormChoice {
    /// The form a run on one fixed batch of `shape` takes for `steps`
    /// steps in `mode` and `dtype`: as asked, or by [`Form::auto`] —
    /// primal with explicit gradients, which the dual form does not make,
    /// and in bf16, whose step is the primal one with bf16 GEMMs. Asking
    /// for the dual form with explicit gradients or in bf16 is an error.
    pub fn resolve(
        self,
        shape: Shape,
        steps: usize,
        mode: super::StepMode,
        dtype: crate::scalar::Dtype,
    ) -> Result<Form> {
        let explicit = mode == super::StepMode::Explicit;
        let bf16 = dtype == crate::scalar::Dtype::Bf16;
        match self {
            FormChoice::Primal => Ok(Form::Primal),
            FormChoice::Dual if bf16 => Err(Error::invalid(
                "form dual runs in f32 or f64; bf16 runs the primal step with bf16 GEMMs",
            )),
            FormChoice::Auto if bf16 => Ok(Form::Primal),
            FormChoice::Dual if explicit => Err(Error::invalid(
                "form dual applies its update itself; it cannot run with step mode explicit",
            )),
            FormChoice::Dual => Ok(Form::Dual),
            FormChoice::Auto if explicit => Ok(Form::Primal),
            FormChoice::Auto => Ok(Form::auto(shape, steps)),
        }
    }
}

/// The dual step's state and buffers, all allocated once.
#[derive(Debug)]
pub struct Dual<F> {
    /// The problem's shape.
    shape: Shape,
    /// G = x·xᵀ, N×N.
    gram: Array2<F>,
    /// P = x·w1_0, N×H.
    base: Array2<F>,
    /// C, N×H: w1 = w1_0 + xᵀ·C.
    coef: Array2<F>,
    /// N×H: h, then h_relu in place (negatives as −0.0: the mask).
    h: Array2<F>,
    /// N×D_out: y_pred, then g_y in place.
    y_pred: Array2<F>,
    /// N×H: g_hrelu, then g_h in place.
    g_hrelu: Array2<F>,
    /// H: Σ_rows g_h, b1's gradient (with biases).
    g_b1: Vec<F>,
    /// D_out: Σ_rows g_y, b2's gradient (with biases).
    g_b2: Vec<F>,
    /// OpenBLAS threads of the step's GEMMs.
    blas_threads: usize,
    /// OpenBLAS threads of the set-up and forming GEMMs (the run's
    /// budget): the same every time, so formed weights are the same bits.
    threads: usize,
}

/// Below this many FLOPs, the G·C product runs on one thread: handing
/// part of a small GEMM to another core costs more than it saves.
const ONE_THREAD_BELOW: f64 = (1u64 << 24) as f64;

impl<F: Real> Dual<F> {
    /// Bytes of the dual state and buffers for `shape` (in u128: N² of a
    /// huge N must not overflow before it is refused).
    pub fn bytes(shape: Shape, dtype: Dtype) -> u128 {
        let (n, h, o) = (shape.n as u128, shape.hidden as u128, shape.d_out as u128);
        (n * n + 4 * n * h + n * o) * dtype.size() as u128
    }

    /// The dual state of `data` at weights w1 = `w1_0` + xᵀ·`coef` (C = 0
    /// when `coef` is `None`), computing G and P with `threads` OpenBLAS
    /// threads. Fails when the buffers would not fit in memory or `coef`
    /// is not N×H.
    pub fn new(
        data: &Data<F>,
        w1_0: &Array2<F>,
        coef: Option<Array2<F>>,
        threads: usize,
    ) -> Result<Self> {
        let (n, d_in) = data.x.dim();
        let (h, d_out) = (w1_0.ncols(), data.y.ncols());
        let shape = Shape::new(n, d_in, h, d_out)?;
        shape.check_bytes_fit(Self::bytes(shape, F::DTYPE), F::DTYPE)?;
        let coef = match coef {
            Some(c) if c.dim() == (n, h) => c,
            Some(c) => {
                return Err(Error::invalid(format!(
                    "the dual coefficients are {:?}, not N×H = {n}×{h}",
                    c.dim()
                )))
            }
            None => Array2::zeros((n, h)),
        };
        let (one, zero) = (F::one(), F::zero());
        crate::blas::set_threads(threads);
        // G = x · xᵀ
        //   (N×D_in)·(D_in×N) → N×N; xᵀ is a transposed view (TransB);
        //   alpha = 1, beta = 0.
        let mut gram = Array2::zeros((n, n));
        general_mat_mul(one, &data.x, &data.x.t(), zero, &mut gram);
        // P = x · w1_0
        //   (N×D_in)·(D_in×H) → N×H; no transposes; alpha = 1, beta = 0.
        let mut base = Array2::zeros((n, h));
        general_mat_mul(one, &data.x, w1_0, zero, &mut base);
        let flops = 2.0 * (n * n * h) as f64;
        Ok(Dual {
            shape,
            threads,
            gram,
            base,
            coef,
            h: Array2::zeros((n, h)),
            y_pred: Array2::zeros((n, d_out)),
            g_hrelu: Array2::zeros((n, h)),
            g_b1: vec![zero; h],
            g_b2: vec![zero; d_out],
            blas_threads: if flops < ONE_THREAD_BELOW { 1 } else { threads },
        })
    }

    /// One SGD step on C and w2, and the biases when the model has them
    /// (module docs), reporting its phases to `probe`; `y` is N×D_out.
    /// Returns the loss of the weights before the update; when it is not
    /// finite, C, w2 and the biases are left as they were. Allocates
    /// nothing. With `PASSES = false`, the step's GEMMs alone, as the step
    /// calls them, with its elementwise passes and the update of C switched
    /// off (loss 0): what a step would cost if those were free; it moves w2
    /// by a fused update's worth.
    pub(super) fn run<const PASSES: bool>(
        &mut self,
        y: &Array2<F>,
        w2: &mut Array2<F>,
        mut biases: Option<&mut Biases<F>>,
        lr: LearningRates,
        probe: &mut impl Probe,
    ) -> f64 {
        let (one, zero) = (F::one(), F::zero());
        crate::blas::set_threads(self.blas_threads);
        // The regression gate's injected slowdowns act on this form too
        // (a no-op in every other build; see selftest.rs).
        let _step = super::selftest::StepGuard::start();
        // The biases' values, read by the passes below, before their
        // update at the end.
        let (b1, b2) = match biases.as_deref() {
            Some(b) => (Some(flat1(&b.b1)), Some(flat1(&b.b2))),
            None => (None, None),
        };
        // ---- forward ----
        // h = P + G · C
        //   h ← P, then (N×N)·(N×H) → N×H; no transposes; alpha = 1,
        //   beta = 1.
        if PASSES {
            kernels::copy(flat_mut(&mut self.h), flat(&self.base));
        }
        general_mat_mul(one, &self.gram, &self.coef, one, &mut self.h);
        probe.done(Phase::ForwardGemms);
        // h_relu = max(h + b1, 0), in place (b1 with biases; −0.0 where
        // the sum is < 0: the mask).
        if PASSES {
            match b1 {
                Some(b1) => kernels::bias_relu_in_place(flat_mut(&mut self.h), b1),
                None => kernels::relu_in_place(flat_mut(&mut self.h)),
            }
        }
        probe.done(Phase::Relu);
        let h_relu = &self.h;
        // y_pred = h_relu · w2
        //   (N×H)·(H×D_out) → N×D_out; no transposes; alpha = 1, beta = 0.
        general_mat_mul(one, h_relu, &*w2, zero, &mut self.y_pred);
        probe.done(Phase::ForwardGemms);
        // loss = Σ (y_pred − y)²  and  g_y = 2 (y_pred − y), in place;
        // with biases y_pred gains b2 and g_b2 = Σ_rows g_y, same pass.
        let loss = match (PASSES, b2) {
            (false, _) => 0.0,
            (true, Some(b2)) => {
                self.g_b2.fill(zero);
                kernels::loss_and_grad_bias(flat_mut(&mut self.y_pred), flat(y), b2, &mut self.g_b2)
            }
            (true, None) => kernels::loss_and_grad(flat_mut(&mut self.y_pred), flat(y)),
        };
        probe.done(Phase::LossGrad);
        if !loss.is_finite() {
            return loss;
        }
        let g_y = &self.y_pred;
        // ---- backward ----
        // g_hrelu = g_y · w2ᵀ
        //   (N×D_out)·(D_out×H) → N×H; w2ᵀ is a transposed view (TransB);
        //   alpha = 1, beta = 0. Reads w2 before its update below.
        general_mat_mul(one, g_y, &w2.t(), zero, &mut self.g_hrelu);
        probe.done(Phase::BackwardGemms);
        // g_h = g_hrelu, 0 where h < 0, in place; with biases
        // g_b1 = Σ_rows g_h, same pass.
        match (PASSES, b1.is_some()) {
            (false, _) => {}
            (true, true) => {
                self.g_b1.fill(zero);
                kernels::relu_mask_bias(flat_mut(&mut self.g_hrelu), flat(h_relu), &mut self.g_b1)
            }
            (true, false) => kernels::relu_mask(flat_mut(&mut self.g_hrelu), flat(h_relu)),
        }
        probe.done(Phase::Mask);
        let g_h = &self.g_hrelu;
        // w2 ← −lr·h_reluᵀ·g_y + 1·w2
        //   (H×N)·(N×D_out) → H×D_out; h_reluᵀ is a transposed view
        //   (TransA); alpha = −lr, beta = 1.
        let rate_w2 = Param::W2.rate(lr);
        if rate_w2 != 0.0 {
            general_mat_mul(-F::from_f64(rate_w2), &h_relu.t(), g_y, one, w2);
        }
        probe.done(Phase::BackwardGemms);
        // C ← C − lr·g_h: w1 − lr·xᵀ·g_h = w1_0 + xᵀ·(C − lr·g_h).
        //   (C stands for w1: it moves at w1's rate.)
        if PASSES {
            sgd::apply(
                flat_mut(&mut self.coef),
                Grad::One(flat(g_h)),
                Param::W1.rate(lr),
            );
        }
        // b1 −= lr·g_b1, b2 −= lr·g_b2.
        if let (true, Some(b)) = (PASSES, biases.as_mut()) {
            let (g_b1, g_b2) = (&self.g_b1[..], &self.g_b2[..]);
            sgd::update_biases(b, lr, |p| match p {
                Param::B1 => Grad::One(g_b1),
                _ => Grad::One(g_b2),
            });
        }
        probe.done(Phase::Update);
        loss
    }

    /// w1 = w1_0 + xᵀ·C into `out` (D_in×H), for `x` the batch (N×D_in).
    pub fn w1_into(&self, x: &Array2<F>, w1_0: &Array2<F>, out: &mut Array2<F>) {
        crate::blas::set_threads(self.threads);
        kernels::copy(flat_mut(out), flat(w1_0));
        // w1 = xᵀ · C + 1·w1_0
        //   (D_in×N)·(N×H) → D_in×H; xᵀ is a transposed view (TransA);
        //   alpha = 1, beta = 1 onto the copy of w1_0.
        general_mat_mul(F::one(), &x.t(), &self.coef, F::one(), out);
    }

    /// C, N×H.
    pub fn coef(&self) -> &Array2<F> {
        &self.coef
    }

    /// The problem's shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }
}
