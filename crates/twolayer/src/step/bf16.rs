//! bf16 mixed precision (`--dtype bf16`), as PyTorch's autocast runs a
//! linear layer on the CPU: the step of block.rs with each of its five
//! GEMMs taking bf16 operands and giving f32 results (OpenBLAS's
//! `cblas_sbgemm`); the data, the master weights, the gradients, the loss
//! and the update stay f32.
//!
//! ```text
//! x_bf     = bf16(x)                        N×D_in   once per batch
//! w1_bf    = bf16(w1), w2_bf = bf16(w2)              made in the update's pass
//! h        = x_bf · w1_bf                   N×H      f32
//! h_relu   = max(h [+ b1], 0)               N×H      f32, in place
//! h_bf     = bf16(h_relu)                   N×H      same pass
//! y_pred   = h_bf · w2_bf                   N×D_out  f32
//! loss     = Σ (y_pred [+ b2] − y)²                  f64 sums
//! g_y      = 2 (y_pred [+ b2] − y)          N×D_out  f32, in place
//! g_y_bf   = bf16(g_y)                      N×D_out  same pass
//! g_w2     = h_bfᵀ · g_y_bf                 H×D_out  f32
//! g_hrelu  = g_y_bf · w2_bfᵀ                N×H      f32 (w2 before the update)
//! g_h      = g_hrelu, 0 where h < 0         N×H      f32, in place
//! g_h_bf   = bf16(g_h)                      N×H      same pass
//! g_w1     = x_bfᵀ · g_h_bf                 D_in×H   f32
//! w ← w − lr·g;  w_bf = bf16(w)                      one pass per weight
//! ```
//!
//! bf16 is f32 with its mantissa cut to 8 bits (7 stored), rounded to
//! nearest even (the `half` crate's conversion). The biases stay f32 and
//! are added in the ReLU and loss passes, as in block.rs.
//!
//! Unlike the primal step this one does not split the batch into shards
//! and blocks: the whole batch goes through each GEMM, which OpenBLAS runs
//! on the step's threads, and the elementwise passes run on rayon over
//! fixed chunks of [`ROWS`] rows (their sums are taken chunk by chunk and
//! added in chunk order, so the result does not depend on the thread
//! count). There is nothing to plan; `twolayer tune` skips bf16 points.
//!
//! The bf16 copies of x and of the weights are made once and kept: x again
//! only when the batch is replaced ([`super::Step::batch_replaced`], which
//! the trainer calls after a minibatch run swaps rows in) or another array
//! is given, the weights in the update's own pass. A caller that changes
//! the weights or the batch in place between steps says so with
//! [`super::Step::inputs_changed`].

use super::probe::{Phase, Probe};
use super::sgd::Param;
use super::{Gradients, LearningRates, StepMode};
use crate::blas::{Sbgemm, Trans};
use crate::error::{Error, Result};
use crate::kernels;
use crate::net::{Biases, Data, Weights};
use crate::scalar::{Dtype, Real};
use crate::shape::Shape;
use half::bf16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// Rows per chunk of an elementwise pass.
pub const ROWS: usize = 64;

/// The library's bf16 GEMM, or the one-line error a user gets when it has
/// none (Debian's 0.3.21), naming how to get one.
pub fn require_sbgemm() -> Result<Sbgemm> {
    Sbgemm::get().ok_or_else(no_sbgemm)
}

fn no_sbgemm() -> Error {
    let lib = crate::blas::Library::current();
    Error::invalid(format!(
        "--dtype bf16 needs OpenBLAS's bf16 GEMM (cblas_sbgemm), which the loaded OpenBLAS {} ({}) does not have: build the native library with scripts/build-openblas.sh (it has it), or train in f32",
        lib.version, lib.path
    ))
}

/// The bf16 step's state: the bf16 copies, the f32 intermediates and the
/// gradient buffers.
#[derive(Debug)]
pub(super) struct Bf16Step<F> {
    shape: Shape,
    /// What the run records (both modes run the same arithmetic).
    mode: StepMode,
    /// OpenBLAS threads for the GEMMs.
    threads: usize,
    gemm: Sbgemm,
    /// N×D_in: x in bf16.
    x_bf: Vec<bf16>,
    /// The address of the x it was made from; `None`: make it again.
    x_from: Option<usize>,
    /// D_in×H and H×D_out: the weights in bf16.
    w1_bf: Vec<bf16>,
    w2_bf: Vec<bf16>,
    /// The addresses of the w1 and w2 they were made from (or last
    /// updated with); `None`: make them again.
    w_from: Option<(usize, usize)>,
    /// N×H: h, then h_relu in place (negatives as −0.0: the sign bit is
    /// the mask).
    h: Vec<f32>,
    /// N×H: bf16(h_relu).
    h_bf: Vec<bf16>,
    /// N×D_out: y_pred, then g_y in place.
    y_pred: Vec<f32>,
    /// N×D_out: bf16(g_y).
    g_y_bf: Vec<bf16>,
    /// N×H: g_hrelu, then g_h in place.
    g_hrelu: Vec<f32>,
    /// N×H: bf16(g_h).
    g_h_bf: Vec<bf16>,
    /// The gradients the update reads (with bias buffers, used when the
    /// weights have biases); in a step summed across processes, the sums.
    grads: Gradients<F>,
    /// In a step summed across processes, this process's own gradients
    /// (explicit mode only, as the MPI driver runs: `None` otherwise).
    local: Option<Gradients<F>>,
    /// Per chunk of rows: the loss's partial sum, and the bias gradients'
    /// (chunks × H and chunks × D_out), added in chunk order.
    part_loss: Vec<f64>,
    part_b1: Vec<f32>,
    part_b2: Vec<f32>,
}

impl<F: Real> Bf16Step<F> {
    /// The step for `shape`, its GEMMs on `threads` OpenBLAS threads.
    /// Fails when `F` is not f32 (bf16 runs store f32: every array the
    /// step is given is then read as f32, through [`Real::as_f32s`]), the
    /// library has no bf16 GEMM or the buffers would not fit in memory.
    pub(super) fn new(shape: Shape, threads: usize, mode: StepMode) -> Result<Self> {
        if F::DTYPE != Dtype::F32 {
            return Err(Error::invalid(format!(
                "bf16 mixed precision stores f32: its step is a Step<f32>, not a Step<{}>",
                F::DTYPE
            )));
        }
        let gemm = require_sbgemm()?;
        shape.check_bytes_fit(Self::bytes(shape), Dtype::Bf16)?;
        let Shape {
            n,
            d_in,
            hidden,
            d_out,
        } = shape;
        let chunks = n.div_ceil(ROWS);
        let zero = bf16::ZERO;
        Ok(Bf16Step {
            shape,
            mode,
            threads: threads.max(1),
            gemm,
            x_bf: vec![zero; n * d_in],
            x_from: None,
            w1_bf: vec![zero; d_in * hidden],
            w2_bf: vec![zero; hidden * d_out],
            w_from: None,
            h: vec![0.0; n * hidden],
            h_bf: vec![zero; n * hidden],
            y_pred: vec![0.0; n * d_out],
            g_y_bf: vec![zero; n * d_out],
            g_hrelu: vec![0.0; n * hidden],
            g_h_bf: vec![zero; n * hidden],
            grads: Gradients {
                biases: Some(Biases {
                    b1: ndarray::Array1::zeros(hidden),
                    b2: ndarray::Array1::zeros(d_out),
                }),
                ..Gradients::zeros(shape)
            },
            local: (mode == StepMode::Explicit).then(|| Gradients {
                biases: Some(Biases {
                    b1: ndarray::Array1::zeros(hidden),
                    b2: ndarray::Array1::zeros(d_out),
                }),
                ..Gradients::zeros(shape)
            }),
            part_loss: vec![0.0; chunks],
            part_b1: vec![0.0; chunks * hidden],
            part_b2: vec![0.0; chunks * d_out],
        })
    }

    /// Bytes a bf16 run holds: x, y and the weights in f32, and the
    /// step's buffers (the bf16 copies, the f32 intermediates, the
    /// gradients).
    pub(super) fn bytes(s: Shape) -> u128 {
        let (n, d_in, h, d_out) = (
            s.n as u128,
            s.d_in as u128,
            s.hidden as u128,
            s.d_out as u128,
        );
        let bf = n * d_in + d_in * h + h * d_out + 2 * n * h + n * d_out;
        let data_and_weights = n * d_in + n * d_out + d_in * h + h * d_out;
        // The intermediates, and two sets of gradients (the local ones of
        // a step summed across processes).
        let f32s =
            data_and_weights + 2 * n * h + n * d_out + 2 * (d_in * h + h * d_out + h + d_out);
        2 * bf + 4 * f32s
    }

    /// The problem's shape.
    pub(super) fn shape(&self) -> Shape {
        self.shape
    }

    /// The mode the run records.
    pub(super) fn mode(&self) -> StepMode {
        self.mode
    }

    /// The gradients of the last step the step updated from.
    pub(super) fn gradients(&self) -> &Gradients<F> {
        &self.grads
    }

    /// The batch was replaced in place: x is converted again at the next
    /// step.
    pub(super) fn batch_replaced(&mut self) {
        self.x_from = None;
    }

    /// The batch or the weights were changed in place: both are converted
    /// again at the next step.
    pub(super) fn inputs_changed(&mut self) {
        self.x_from = None;
        self.w_from = None;
    }

    /// Makes the bf16 copies of x and the weights current.
    fn convert_inputs(&mut self, data: &Data<F>, weights: &Weights<F>) {
        let x = f32s(data.x.as_slice().expect("the step checked the layout"));
        if self.x_from != Some(x.as_ptr() as usize) {
            to_bf16(&mut self.x_bf, x);
            self.x_from = Some(x.as_ptr() as usize);
        }
        let (w1, w2) = (
            f32s(weights.w1.as_slice().expect("row-major")),
            f32s(weights.w2.as_slice().expect("row-major")),
        );
        let from = (w1.as_ptr() as usize, w2.as_ptr() as usize);
        if self.w_from != Some(from) {
            to_bf16(&mut self.w1_bf, w1);
            to_bf16(&mut self.w2_bf, w2);
            self.w_from = Some(from);
        }
    }

    /// One step: forward and backward with bf16 GEMMs, the gradients into
    /// `out` when given (nothing updated), else into the step's own
    /// buffers and then the update `w ← w − lr·g` with the bf16 copies
    /// made in the same pass (skipped, weights untouched, when the loss is
    /// not finite). Returns the loss of the weights before the update.
    ///
    /// With `PASSES = false` the elementwise passes, the bias sums and the
    /// update are skipped and the loss is 0: the five GEMMs alone, exactly
    /// as the step calls them (on whatever the buffers hold), for
    /// benchmarks to time beside the step (as block.rs's `PASSES`).
    pub(super) fn run<const PASSES: bool>(
        &mut self,
        data: &Data<F>,
        weights: &mut Weights<F>,
        lr: LearningRates,
        out: Option<&mut Gradients<F>>,
        probe: &mut impl Probe,
    ) -> f64 {
        crate::blas::set_threads(self.threads);
        self.convert_inputs(data, weights);
        let Shape {
            n,
            d_in,
            hidden,
            d_out,
        } = self.shape;
        let gemm = self.gemm;
        let y = f32s(data.y.as_slice().expect("row-major"));
        let biases = weights.biases.as_ref();
        let handed_back = out.is_some();
        let g = match out {
            Some(g) => g,
            None => &mut self.grads,
        };
        let (g_w1, g_w2) = (
            f32s_mut(g.w1.as_slice_mut().expect("row-major")),
            f32s_mut(g.w2.as_slice_mut().expect("row-major")),
        );

        // ---- forward ----
        // h = x_bf · w1_bf: (N×D_in)·(D_in×H) → N×H, no transposes,
        // alpha = 1, beta = 0.
        gemm.gemm(
            Trans::No,
            Trans::No,
            (n, hidden, d_in),
            1.0,
            bits(&self.x_bf),
            bits(&self.w1_bf),
            0.0,
            &mut self.h,
        );
        probe.done(Phase::ForwardGemms);
        // h_relu = max(h + b1, 0) in place; h_bf = bf16(h_relu): one pass
        // over each chunk of rows.
        if PASSES {
            let b1 = biases.map(|b| f32s(b.b1.as_slice().expect("contiguous")));
            self.h
                .par_chunks_mut(ROWS * hidden)
                .zip(self.h_bf.par_chunks_mut(ROWS * hidden))
                .for_each(|(h, h_bf)| {
                    match b1 {
                        Some(b1) => kernels::bias_relu_in_place(h, b1),
                        None => kernels::relu_in_place(h),
                    }
                    h_bf.convert_from_f32_slice(h);
                });
        }
        probe.done(Phase::Relu);
        // y_pred = h_bf · w2_bf: (N×H)·(H×D_out) → N×D_out; alpha 1, beta 0.
        gemm.gemm(
            Trans::No,
            Trans::No,
            (n, d_out, hidden),
            1.0,
            bits(&self.h_bf),
            bits(&self.w2_bf),
            0.0,
            &mut self.y_pred,
        );
        probe.done(Phase::ForwardGemms);

        // ---- loss and its gradient ----
        // g_y = 2(y_pred + b2 − y) in place, g_y_bf = bf16(g_y), the loss's
        // and g_b2's partial sums per chunk: one pass.
        if PASSES {
            let b2 = biases.map(|b| f32s(b.b2.as_slice().expect("contiguous")));
            self.y_pred
                .par_chunks_mut(ROWS * d_out)
                .zip(self.g_y_bf.par_chunks_mut(ROWS * d_out))
                .zip(y.par_chunks(ROWS * d_out))
                .zip(self.part_loss.par_iter_mut())
                .zip(self.part_b2.par_chunks_mut(d_out))
                .for_each(|((((p, p_bf), y), loss), g_b2)| {
                    *loss = match b2 {
                        Some(b2) => {
                            g_b2.fill(0.0);
                            kernels::loss_and_grad_bias(p, y, b2, g_b2)
                        }
                        None => kernels::loss_and_grad(p, y),
                    };
                    p_bf.convert_from_f32_slice(p);
                });
        }
        let loss: f64 = if PASSES {
            self.part_loss.iter().sum()
        } else {
            0.0
        };
        probe.done(Phase::LossGrad);

        // ---- backward ----
        // g_w2 = h_bfᵀ · g_y_bf: (H×N)·(N×D_out) → H×D_out; A transposed
        // (h_bf is stored N×H), alpha 1, beta 0.
        gemm.gemm(
            Trans::Yes,
            Trans::No,
            (hidden, d_out, n),
            1.0,
            bits(&self.h_bf),
            bits(&self.g_y_bf),
            0.0,
            g_w2,
        );
        // g_hrelu = g_y_bf · w2_bfᵀ: (N×D_out)·(D_out×H) → N×H; B
        // transposed (w2_bf is stored H×D_out: w2 before the update).
        gemm.gemm(
            Trans::No,
            Trans::Yes,
            (n, hidden, d_out),
            1.0,
            bits(&self.g_y_bf),
            bits(&self.w2_bf),
            0.0,
            &mut self.g_hrelu,
        );
        probe.done(Phase::BackwardGemms);
        // g_h = g_hrelu where h_relu's sign bit is clear, 0 elsewhere, in
        // place; g_h_bf = bf16(g_h); g_b1's partial sums: one pass.
        let with_b1 = PASSES && biases.is_some();
        if PASSES {
            self.g_hrelu
                .par_chunks_mut(ROWS * hidden)
                .zip(self.h.par_chunks(ROWS * hidden))
                .zip(self.g_h_bf.par_chunks_mut(ROWS * hidden))
                .zip(self.part_b1.par_chunks_mut(hidden))
                .for_each(|(((g, h), g_bf), g_b1)| {
                    if with_b1 {
                        g_b1.fill(0.0);
                        kernels::relu_mask_bias(g, h, g_b1);
                    } else {
                        kernels::relu_mask(g, h);
                    }
                    g_bf.convert_from_f32_slice(g);
                });
        }
        probe.done(Phase::Mask);
        // g_w1 = x_bfᵀ · g_h_bf: (D_in×N)·(N×H) → D_in×H; A transposed (x
        // is stored N×D_in), alpha 1, beta 0.
        gemm.gemm(
            Trans::Yes,
            Trans::No,
            (d_in, hidden, n),
            1.0,
            bits(&self.x_bf),
            bits(&self.g_h_bf),
            0.0,
            g_w1,
        );
        probe.done(Phase::BackwardGemms);
        // The bias gradients: the chunks' partial sums, in chunk order.
        if let (Some(gb), true) = (g.biases.as_mut(), with_b1) {
            let chunks = self.part_loss.len();
            sum_chunks(
                f32s_mut(gb.b1.as_slice_mut().expect("contiguous")),
                &self.part_b1,
                chunks,
            );
            sum_chunks(
                f32s_mut(gb.b2.as_slice_mut().expect("contiguous")),
                &self.part_b2,
                chunks,
            );
        }

        // ---- update ----
        if PASSES && !handed_back && loss.is_finite() {
            update(weights, &self.grads, &mut self.w1_bf, &mut self.w2_bf, lr);
            probe.done(Phase::Update);
        }
        loss
    }

    /// The gradients of this process's rows into its local buffers (for a
    /// step summed across processes), nothing updated; returns this
    /// process's loss. `None` outside the explicit mode, which alone keeps
    /// local buffers.
    pub(super) fn local_gradients(
        &mut self,
        data: &Data<F>,
        weights: &mut Weights<F>,
        probe: &mut impl Probe,
    ) -> Option<f64> {
        let mut local = self.local.take()?;
        let loss = self.run::<true>(
            data,
            weights,
            LearningRates::uniform(0.0),
            Some(&mut local),
            probe,
        );
        self.local = Some(local);
        Some(loss)
    }

    /// This process's gradients and the buffers their sums go to.
    pub(super) fn exchange_buffers(&mut self) -> Option<(&Gradients<F>, &mut Gradients<F>)> {
        Some((self.local.as_ref()?, &mut self.grads))
    }

    /// The update from the summed gradients, the bf16 copies made in the
    /// same pass (as at the end of `Bf16Step::run`).
    pub(super) fn update_from_sums(&mut self, weights: &mut Weights<F>, lr: LearningRates) {
        update(weights, &self.grads, &mut self.w1_bf, &mut self.w2_bf, lr);
    }
}

/// Bytes a bf16 run of `shape` holds: x, y and the weights (f32) and the
/// step's buffers.
pub fn training_bytes(shape: Shape) -> u128 {
    Bf16Step::<f32>::bytes(shape)
}

/// `v` as the f32s it is: a bf16 step is built for f32 alone
/// ([`Bf16Step::new`]).
fn f32s<F: Real>(v: &[F]) -> &[f32] {
    F::as_f32s(v).expect("a bf16 step is built for f32 alone")
}

/// [`f32s`], mutable.
fn f32s_mut<F: Real>(v: &mut [F]) -> &mut [f32] {
    F::as_f32s_mut(v).expect("a bf16 step is built for f32 alone")
}

/// A bf16 slice as the bits cblas_sbgemm reads.
fn bits(v: &[bf16]) -> &[u16] {
    v.reinterpret_cast()
}

/// `out ← bf16(src)`, rounded to nearest even, on rayon in fixed chunks.
pub fn to_bf16(out: &mut [bf16], src: &[f32]) {
    assert_eq!(out.len(), src.len(), "bf16 copy and source differ in size");
    out.par_chunks_mut(kernels::CHUNK)
        .zip(src.par_chunks(kernels::CHUNK))
        .for_each(|(o, s)| o.convert_from_f32_slice(s));
}

/// `out[j] = Σ_c parts[c·w + j]` over the `chunks` rows of `parts`, in
/// chunk order.
fn sum_chunks(out: &mut [f32], parts: &[f32], chunks: usize) {
    let w = out.len();
    out.fill(0.0);
    for c in 0..chunks {
        for (o, &p) in out.iter_mut().zip(&parts[c * w..(c + 1) * w]) {
            *o += p;
        }
    }
}

/// `w ← w − lr·g` for every parameter (each at its layer's rate), the bf16
/// copies of w1 and w2 made in the same passes.
fn update<F: Real>(
    weights: &mut Weights<F>,
    g: &Gradients<F>,
    w1_bf: &mut [bf16],
    w2_bf: &mut [bf16],
    lr: LearningRates,
) {
    update_with_copy(
        f32s_mut(weights.w1.as_slice_mut().expect("row-major")),
        w1_bf,
        f32s(g.w1.as_slice().expect("row-major")),
        Param::W1.rate(lr),
    );
    update_with_copy(
        f32s_mut(weights.w2.as_slice_mut().expect("row-major")),
        w2_bf,
        f32s(g.w2.as_slice().expect("row-major")),
        Param::W2.rate(lr),
    );
    if let (Some(b), Some(gb)) = (weights.biases.as_mut(), g.biases.as_ref()) {
        super::sgd::update_biases(b, lr, |p| match p {
            Param::B1 => super::sgd::Grad::One(gb.b1.as_slice().expect("contiguous")),
            _ => super::sgd::Grad::One(gb.b2.as_slice().expect("contiguous")),
        });
    }
}

/// The update of one weight matrix with its bf16 copy made in the same
/// pass: `w ← w − rate·g` (the product rounded to f32, then subtracted, as
/// [`kernels::sgd_update`]), `w_bf ← bf16(w)`. A rate of 0 leaves both as
/// they are (the copy already is w's).
fn update_with_copy(w: &mut [f32], w_bf: &mut [bf16], g: &[f32], rate: f64) {
    if rate == 0.0 {
        return;
    }
    let rate = rate as f32;
    w.par_chunks_mut(kernels::CHUNK)
        .zip(w_bf.par_chunks_mut(kernels::CHUNK))
        .zip(g.par_chunks(kernels::CHUNK))
        .for_each(|((w, w_bf), g)| {
            kernels::sgd_update(w, g, rate);
            w_bf.convert_from_f32_slice(w);
        });
}
