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
use ndarray::{s, Array2, ArrayView2, ArrayViewMut2};

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
        let mut out = std::mem::replace(&mut self.out, Array2::zeros((0, 0)));
        self.run_into(x, w, out.slice_mut(s![..r, ..]));
        self.out = out;
        self.out.slice(s![..r, ..])
    }

    /// y_pred for the rows of `x` (at most [`Forward::capacity`]), written
    /// into `out` (x's rows × D_out, any layout; the second GEMM writes it
    /// directly).
    pub fn run_into(
        &mut self,
        x: ArrayView2<'_, F>,
        w: &Weights<F>,
        mut out: ArrayViewMut2<'_, F>,
    ) {
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
        // out (r×D_out) = relu(h) (r×H) · w2 (H×D_out): GEMM NN, alpha 1,
        // beta 0; then + b2 on every row.
        general_mat_mul(one, &self.h.slice(s![..r, ..]), &w.w2, zero, &mut out);
        if let Some(b) = &w.biases {
            for mut row in out.rows_mut() {
                row.zip_mut_with(&b.b2, |o, &b| *o = *o + b);
            }
        }
    }
}

/// y_pred for every row of `x` (M×D_in), written into `out` (M×D_out, a
/// caller's buffer: nothing else of M rows is allocated), `batch` rows at
/// a time through one [`Forward`]. Shapes that do not match `w` are an
/// error naming them.
pub fn predict_into<F: Real>(
    x: ArrayView2<'_, F>,
    w: &Weights<F>,
    mut out: ArrayViewMut2<'_, F>,
    batch: usize,
) -> Result<()> {
    let (d_in, d_out) = (w.w1.nrows(), w.w2.ncols());
    if x.ncols() != d_in || out.dim() != (x.nrows(), d_out) {
        return Err(Error::invalid(format!(
            "predictions of {}×{} inputs into a {}×{} buffer with weights for {d_in} inputs and {d_out} outputs: want {}×{d_in} inputs and a {}×{d_out} buffer",
            x.nrows(),
            x.ncols(),
            out.nrows(),
            out.ncols(),
            x.nrows(),
            x.nrows()
        )));
    }
    let batch = batch.clamp(1, x.nrows().max(1));
    let mut f = Forward::new(batch, w);
    for start in (0..x.nrows()).step_by(batch) {
        let end = (start + batch).min(x.nrows());
        f.run_into(
            x.slice(s![start..end, ..]),
            w,
            out.slice_mut(s![start..end, ..]),
        );
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::Shape;
    use ndarray::ShapeBuilder;

    /// The plain-loop forward pass of one row: relu(x·w1 + b1)·w2 + b2.
    fn by_loops(x: ArrayView2<'_, f64>, w: &Weights<f64>) -> Array2<f64> {
        let (h, d_out) = (w.w1.ncols(), w.w2.ncols());
        let b = w.biases.as_ref().expect("biases");
        Array2::from_shape_fn((x.nrows(), d_out), |(i, o)| {
            (0..h)
                .map(|k| {
                    let a = (0..x.ncols())
                        .map(|j| x[[i, j]] * w.w1[[j, k]])
                        .sum::<f64>()
                        + b.b1[k];
                    a.max(0.0) * w.w2[[k, o]]
                })
                .sum::<f64>()
                + b.b2[o]
        })
    }

    #[test]
    fn predictions_go_into_the_callers_buffer() {
        let w = Weights::<f64>::random(Shape::new(8, 6, 5, 3).unwrap(), 3).with_zero_biases();
        let mut w = w;
        let b = w.biases.as_mut().unwrap();
        b.b1.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = 0.1 * i as f64 - 0.2);
        b.b2.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = 0.3 - 0.1 * i as f64);
        let x = Array2::from_shape_fn((23, 6), |(i, j)| ((i * 5 + j * 3) % 7) as f64 - 3.0);
        let want = by_loops(x.view(), &w);
        // Row-major, in batches of 8 rows (the last one 7): the same calls
        // as Forward::run, so the same bits.
        let mut out = Array2::zeros((23, 3));
        predict_into(x.view(), &w, out.view_mut(), 8).unwrap();
        let mut f = Forward::new(8, &w);
        for start in (0..23).step_by(8) {
            let end = (start + 8).min(23);
            assert_eq!(
                out.slice(s![start..end, ..]),
                f.run(x.slice(s![start..end, ..]), &w)
            );
        }
        // Against plain loops, and into a column-major buffer.
        let mut col = Array2::zeros((23, 3).f());
        predict_into(x.view(), &w, col.view_mut(), 100).unwrap();
        for (a, (b, c)) in want.iter().zip(out.iter().zip(col.iter())) {
            assert!((a - b).abs() <= 1e-12 * a.abs().max(1.0), "{a} vs {b}");
            assert!((a - c).abs() <= 1e-12 * a.abs().max(1.0), "{a} vs {c}");
        }
        // Shapes that do not fit are named.
        let mut small = Array2::zeros((22, 3));
        let e = predict_into(x.view(), &w, small.view_mut(), 8).unwrap_err();
        assert!(e.to_string().contains("22×3 buffer"), "{e}");
        let e = predict_into(x.slice(s![.., ..5]), &w, out.view_mut(), 8).unwrap_err();
        assert!(e.to_string().contains("for 6 inputs"), "{e}");
        // No rows: nothing to do.
        let none = Array2::<f64>::zeros((0, 6));
        predict_into(none.view(), &w, Array2::zeros((0, 3)).view_mut(), 8).unwrap();
    }
}
