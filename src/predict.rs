//! The forward pass on its own, for predictions and evaluation: y_pred =
//! relu(x·w1 + b1)·w2 + b2 (without the biases when the model has none)
//! over any number of rows, a batch at a time, through the
//! same two GEMMs as the step's forward half, into buffers allocated once.

use crate::dataset::batches::Schedule;
use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::kernels;
use crate::net::Weights;
use crate::scalar::Real;
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView2};

/// Buffers for the forward pass of up to `rows` rows.
#[derive(Debug)]
pub struct Forward<F> {
    /// h = relu(x·w1), rows×H.
    h: Array2<F>,
    /// y_pred = h·w2, rows×D_out.
    out: Array2<F>,
}

impl<F: Real> Forward<F> {
    /// Room for batches of up to `rows` rows of a network shaped like `w`.
    pub fn new(rows: usize, w: &Weights<F>) -> Self {
        Forward {
            h: Array2::zeros((rows, w.w1.ncols())),
            out: Array2::zeros((rows, w.w2.ncols())),
        }
    }

    /// Most rows one call takes.
    pub fn capacity(&self) -> usize {
        self.h.nrows()
    }

    /// y_pred for the rows of `x` (at most [`Forward::capacity`]).
    pub fn run(&mut self, x: ArrayView2<'_, F>, w: &Weights<F>) -> ArrayView2<'_, F> {
        let r = x.nrows();
        let (one, zero) = (F::one(), F::zero());
        // h[..r] (r×H) = x (r×D_in) · w1 (D_in×H): GEMM NN, alpha 1, beta 0.
        let mut h = self.h.slice_mut(s![..r, ..]);
        general_mat_mul(one, &x, &w.w1, zero, &mut h);
        let h = h.as_slice_mut().expect("leading rows of a row-major array");
        // h = relu(h + b1), b1 added to every row in the same pass.
        match &w.biases {
            Some(b) => kernels::bias_relu_in_place(h, b.b1.as_slice().expect("contiguous")),
            None => kernels::relu_in_place(h),
        }
        // out[..r] (r×D_out) = relu(h) (r×H) · w2 (H×D_out): GEMM NN;
        // then + b2 on every row.
        let mut out = self.out.slice_mut(s![..r, ..]);
        general_mat_mul(one, &self.h.slice(s![..r, ..]), &w.w2, zero, &mut out);
        if let Some(b) = &w.biases {
            for mut row in out.rows_mut() {
                row.zip_mut_with(&b.b2, |o, &b| *o = *o + b);
            }
        }
        self.out.slice(s![..r, ..])
    }
}

/// Squared error summed over rows and outputs, and the rows it covers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Errors {
    /// Σ (y_pred − y)².
    pub sum_sq: f64,
    /// Rows evaluated.
    pub rows: u64,
    /// Outputs per row (D_out).
    pub d_out: usize,
}

impl Errors {
    /// Mean squared error over every element: sum_sq / (rows·D_out).
    pub fn mse(&self) -> f64 {
        self.sum_sq / (self.rows as f64 * self.d_out as f64)
    }
}

/// Which rows of a dataset to evaluate.
#[derive(Clone, Copy, Debug)]
pub enum Rows<'a> {
    /// Every row, in order.
    All,
    /// The validation rows a schedule holds out.
    Validation(&'a Schedule),
}

/// The squared error of `w` on rows of `data`, in batches of `batch` rows.
pub fn evaluate<F: Real>(
    data: &Dataset,
    rows: Rows<'_>,
    w: &Weights<F>,
    batch: usize,
) -> Result<Errors> {
    let total = match rows {
        Rows::All => data.rows(),
        Rows::Validation(s) => s.val_rows(),
    };
    let batch = batch.min(total as usize).max(1);
    let mut fwd = Forward::new(batch, w);
    let mut x = Array2::<F>::zeros((batch, data.d_in()));
    let mut y = Array2::<F>::zeros((batch, data.d_out()));
    let (mut idx, mut scratch) = (Vec::new(), Vec::new());
    let mut sum_sq = 0.0;
    let mut from = 0;
    while from < total {
        let count = (total - from).min(batch as u64);
        match rows {
            Rows::All => {
                idx.clear();
                idx.extend(from..from + count);
            }
            Rows::Validation(s) => s.val_chunk(from, count, &mut idx),
        }
        let r = idx.len();
        data.gather(
            &idx,
            x.slice_mut(s![..r, ..]),
            y.slice_mut(s![..r, ..]),
            &mut scratch,
        )?;
        let pred = fwd.run(x.slice(s![..r, ..]), w);
        for (p, t) in pred.iter().zip(y.slice(s![..r, ..]).iter()) {
            let d = Real::to_f64(*p) - Real::to_f64(*t);
            sum_sq += d * d;
        }
        from += count;
    }
    // An infinite error (a target of 1e200 squares past f64's range, or
    // predictions that overflowed) is no measurement: `eval` would print
    // `mse inf` and early stopping would compare infinities.
    if !sum_sq.is_finite() {
        return Err(Error::invalid(format!(
            "the squared error over {} is {sum_sq}: its targets or the predictions are too large to square; scale the data",
            match rows {
                Rows::All => "the data",
                Rows::Validation(_) => "the validation rows",
            }
        )));
    }
    Ok(Errors {
        sum_sq,
        rows: total,
        d_out: data.d_out(),
    })
}
