//! The network's state: the data it is trained on (x, y) and its weights
//! (w1, w2, and the biases b1, b2 when the model has them), with seeded
//! initialisation.
//!
//! Random arrays are drawn row by row, each row from its own ChaCha8 stream
//! (stream id = array id and row index). So any subset of rows can be made
//! without the others — a data-parallel rank makes only its own shard, and
//! the union of the shards is exactly the single-process data — and rows are
//! generated in parallel with the same result on any number of threads.

use crate::error::{Error, Result};
use crate::scalar::Real;
use crate::shape::Shape;
use ndarray::{Array1, Array2};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

/// The training batch: x is N×D_in, y is N×D_out. Both are kept in
/// row-major (C) order so GEMM reads them without copies.
#[derive(Clone, Debug, PartialEq)]
pub struct Data<F> {
    /// Inputs, N×D_in.
    pub x: Array2<F>,
    /// Targets, N×D_out.
    pub y: Array2<F>,
}

/// The weights: w1 is D_in×H, w2 is H×D_out, and the biases, when the
/// model has them (as every `nn.Linear` does by default):
/// y_pred = max(x·w1 + b1, 0)·w2 + b2. The reference experiment has none.
#[derive(Clone, Debug, PartialEq)]
pub struct Weights<F> {
    /// First layer, D_in×H.
    pub w1: Array2<F>,
    /// Second layer, H×D_out.
    pub w2: Array2<F>,
    /// b1 and b2, or `None` for the model without biases.
    pub biases: Option<Biases<F>>,
}

/// The two bias vectors, added to every row: b1 to x·w1 (before the
/// ReLU), b2 to h_relu·w2.
#[derive(Clone, Debug, PartialEq)]
pub struct Biases<F> {
    /// First layer's, H.
    pub b1: Array1<F>,
    /// Second layer's, D_out.
    pub b2: Array1<F>,
}

impl<F: Real> Biases<F> {
    /// Zero biases for `shape` (the initialisation twolayer uses).
    pub fn zeros(shape: Shape) -> Self {
        Biases {
            b1: Array1::zeros(shape.hidden),
            b2: Array1::zeros(shape.d_out),
        }
    }

    /// The same biases in another element type (rounded to nearest).
    pub fn cast<G: Real>(&self) -> Biases<G> {
        Biases {
            b1: self.b1.mapv(|v| G::from_f64(v.to_f64())),
            b2: self.b2.mapv(|v| G::from_f64(v.to_f64())),
        }
    }
}

/// Which array a random stream belongs to; part of every row's stream id.
#[derive(Clone, Copy, Debug)]
#[repr(u64)]
enum ArrayId {
    X = 1,
    Y = 2,
    W1 = 3,
    W2 = 4,
    B1 = 5,
    B2 = 6,
}

/// A rows×cols matrix of standard-normal values for `rows` consecutive rows
/// starting at global row `first_row` of array `id` (see [`seeded_rows`]).
fn normal_rows<F: Real>(
    seed: u64,
    id: ArrayId,
    first_row: usize,
    rows: usize,
    cols: usize,
) -> Array2<F> {
    seeded_rows(seed, id, first_row, rows, cols, StandardNormal)
}

/// A rows×cols matrix of values drawn from `dist` for `rows` consecutive
/// rows starting at global row `first_row` of array `id`. Row r comes from
/// the ChaCha8 stream (seed, id·2^48 + r), drawn in f64 and rounded to F,
/// so f32 and f64 runs start from the same numbers, on any number of
/// threads.
fn seeded_rows<F: Real>(
    seed: u64,
    id: ArrayId,
    first_row: usize,
    rows: usize,
    cols: usize,
    dist: impl Distribution<f64> + Sync,
) -> Array2<F> {
    let mut a = Array2::<F>::zeros((rows, cols));
    a.as_slice_mut()
        .expect("fresh arrays are contiguous")
        .par_chunks_mut(cols.max(1))
        .enumerate()
        .for_each(|(r, row)| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(((id as u64) << 48) | (first_row + r) as u64);
            for v in row.iter_mut() {
                *v = F::from_f64(dist.sample(&mut rng));
            }
        });
    a
}

/// A `rows`×`cols` matrix of values uniform on [−bound, bound) for array
/// `id` ([`seeded_rows`] from row 0).
fn uniform_rows<F: Real>(
    seed: u64,
    id: ArrayId,
    rows: usize,
    cols: usize,
    bound: f64,
) -> Array2<F> {
    let u = rand_distr::Uniform::new(-bound, bound).expect("a bound > 0");
    seeded_rows(seed, id, 0, rows, cols, u)
}

/// How seeded weights are drawn ([`Weights::seeded`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightInit {
    /// Standard normal w1 and w2, as the reference draws them; biases (when
    /// the model has them) start at zero.
    Normal,
    /// Standard normal scaled for the layer: w1 by √(2/D_in) (He, for the
    /// ReLU), w2 by √(1/H) (LeCun, for the linear output); biases zero.
    Scaled,
    /// As PyTorch's `nn.Linear` draws its parameters (`reset_parameters`:
    /// Kaiming-uniform with a = √5, which works out to the bound below):
    /// every weight and bias of a layer uniform on [−1/√fan_in,
    /// 1/√fan_in], fan_in = D_in for w1 and b1, H for w2 and b2. The
    /// default for training on a dataset.
    Torch,
}

impl WeightInit {
    /// Its name, as `--weight-init` takes it.
    pub fn name(self) -> &'static str {
        match self {
            WeightInit::Normal => "normal",
            WeightInit::Scaled => "scaled",
            WeightInit::Torch => "torch",
        }
    }
}

impl<F: Real> Data<F> {
    /// Standard-normal x and y for `shape`, from `seed`.
    pub fn random(shape: Shape, seed: u64) -> Self {
        Self::random_rows(shape, seed, 0, shape.n)
    }

    /// Rows `first..first + count` of [`Data::random`]`(shape, seed)`, made
    /// without the others.
    pub fn random_rows(shape: Shape, seed: u64, first: usize, count: usize) -> Self {
        Data {
            x: normal_rows(seed, ArrayId::X, first, count, shape.d_in),
            y: normal_rows(seed, ArrayId::Y, first, count, shape.d_out),
        }
    }
}

impl<F: Real> Data<F> {
    /// The same data in another element type (rounded to nearest).
    pub fn cast<G: Real>(&self) -> Data<G> {
        Data {
            x: self.x.mapv(|v| G::from_f64(v.to_f64())),
            y: self.y.mapv(|v| G::from_f64(v.to_f64())),
        }
    }
}

impl<F: Real> Data<F> {
    /// This data as `Data<G>`: moved when G is F, else converted (as
    /// [`Data::cast`]).
    pub fn into_dtype<G: Real>(self) -> Data<G> {
        Data {
            x: F::into_array(self.x),
            y: F::into_array(self.y),
        }
    }
}

impl<F: Real> Weights<F> {
    /// These weights as `Weights<G>`: moved when G is F, else converted
    /// (as [`Weights::cast`]).
    pub fn into_dtype<G: Real>(self) -> Weights<G> {
        Weights {
            w1: F::into_array(self.w1),
            w2: F::into_array(self.w2),
            biases: self.biases.map(|b| Biases {
                b1: F::into_array(b.b1),
                b2: F::into_array(b.b2),
            }),
        }
    }
}

impl<F: Real> Weights<F> {
    /// The same weights in another element type (rounded to nearest).
    pub fn cast<G: Real>(&self) -> Weights<G> {
        Weights {
            w1: self.w1.mapv(|v| G::from_f64(v.to_f64())),
            w2: self.w2.mapv(|v| G::from_f64(v.to_f64())),
            biases: self.biases.as_ref().map(Biases::cast),
        }
    }
}

impl<F: Real> Weights<F> {
    /// Standard-normal w1 and w2 for `shape`, from `seed` (as the reference
    /// does: no scaling).
    pub fn random(shape: Shape, seed: u64) -> Self {
        Weights {
            w1: normal_rows(seed, ArrayId::W1, 0, shape.d_in, shape.hidden),
            w2: normal_rows(seed, ArrayId::W2, 0, shape.hidden, shape.d_out),
            biases: None,
        }
    }

    /// Seeded weights for `shape`, drawn as `init` says, with biases when
    /// `biases` (zero, or uniform for [`WeightInit::Torch`]). The same seed
    /// gives the same values in f32 and f64 (drawn in f64, rounded), on any
    /// number of threads.
    pub fn seeded(shape: Shape, seed: u64, init: WeightInit, biases: bool) -> Self {
        let (d, h, o) = (shape.d_in, shape.hidden, shape.d_out);
        let w = match init {
            WeightInit::Normal | WeightInit::Scaled => {
                let mut w = Self::random(shape, seed);
                if init == WeightInit::Scaled {
                    let s1 = F::from_f64((2.0 / d as f64).sqrt());
                    let s2 = F::from_f64((1.0 / h as f64).sqrt());
                    w.w1.mapv_inplace(|v| v * s1);
                    w.w2.mapv_inplace(|v| v * s2);
                }
                w
            }
            WeightInit::Torch => {
                // nn.Linear(fan_in, fan_out): weight and bias both
                // U(−1/√fan_in, 1/√fan_in). Our w1 is D_in×H (PyTorch's
                // weight transposed): the same distribution, element for
                // element.
                let (k1, k2) = (1.0 / (d as f64).sqrt(), 1.0 / (h as f64).sqrt());
                Weights {
                    w1: uniform_rows(seed, ArrayId::W1, d, h, k1),
                    w2: uniform_rows(seed, ArrayId::W2, h, o, k2),
                    biases: biases.then(|| Biases {
                        b1: uniform_rows(seed, ArrayId::B1, 1, h, k1)
                            .into_shape_with_order(h)
                            .expect("one row"),
                        b2: uniform_rows(seed, ArrayId::B2, 1, o, k2)
                            .into_shape_with_order(o)
                            .expect("one row"),
                    }),
                }
            }
        };
        if biases {
            w.with_zero_biases()
        } else {
            w
        }
    }

    /// These weights with zero biases added (kept as they are when they
    /// have biases already).
    pub fn with_zero_biases(mut self) -> Self {
        if self.biases.is_none() {
            let (h, o) = self.w2.dim();
            self.biases = Some(Biases {
                b1: Array1::zeros(h),
                b2: Array1::zeros(o),
            });
        }
        self
    }

    /// Whether the model has biases.
    pub fn has_biases(&self) -> bool {
        self.biases.is_some()
    }
}

/// The shape that `data` and `weights` describe, after checking that they
/// agree with each other and are usable: every dimension at least 1, every
/// value finite.
pub fn checked_shape<F: Real>(data: &Data<F>, weights: &Weights<F>) -> Result<Shape> {
    let shape = shape_from_dims(
        data.x.dim(),
        data.y.dim(),
        weights.w1.dim(),
        weights.w2.dim(),
    )?;
    for (name, a) in [
        ("x", &data.x),
        ("y", &data.y),
        ("w1", &weights.w1),
        ("w2", &weights.w2),
    ] {
        check_finite(name, a)?;
    }
    if let Some(b) = &weights.biases {
        check_biases(b, shape.hidden, shape.d_out)?;
    }
    Ok(shape)
}

/// Fails, naming the vector, when b1 is not H long, b2 not D_out long, or
/// either holds a value that is not finite.
pub fn check_biases<F: Real>(b: &Biases<F>, hidden: usize, d_out: usize) -> Result<()> {
    for (name, v, want, dim) in [("b1", &b.b1, hidden, "H"), ("b2", &b.b2, d_out, "D_out")] {
        if v.len() != want {
            return Err(Error::invalid(format!(
                "shape mismatch: {name} has {} values but the layer has {dim} = {want}",
                v.len()
            )));
        }
        if let Some((i, x)) = v.indexed_iter().find(|(_, x)| !x.is_finite()) {
            return Err(Error::invalid(format!(
                "array '{name}' holds a non-finite value ({x}) at [{i}]; the weights must be finite"
            )));
        }
    }
    Ok(())
}

/// The shape that arrays of these (rows, columns) describe, or an error
/// naming the two arrays that disagree and the dimension they share.
pub fn shape_from_dims(
    x: (usize, usize),
    y: (usize, usize),
    w1: (usize, usize),
    w2: (usize, usize),
) -> Result<Shape> {
    let dims = |a: (usize, usize)| format!("{}×{}", a.0, a.1);
    let mismatch = |a: &str, ad, b: &str, bd, why: &str| {
        Err(Error::invalid(format!(
            "shape mismatch: {a} is {} but {b} is {}; {why}",
            dims(ad),
            dims(bd)
        )))
    };
    if y.0 != x.0 {
        return mismatch("x", x, "y", y, "they need the same number of rows (N)");
    }
    if w1.0 != x.1 {
        return mismatch(
            "x",
            x,
            "w1",
            w1,
            "w1 needs as many rows as x has columns (D_in)",
        );
    }
    if w2.0 != w1.1 {
        return mismatch(
            "w1",
            w1,
            "w2",
            w2,
            "w2 needs as many rows as w1 has columns (H)",
        );
    }
    if w2.1 != y.1 {
        return mismatch("y", y, "w2", w2, "w2 needs as many columns as y (D_out)");
    }
    Shape::new(x.0, x.1, w1.1, y.1)
}

/// Fails, naming the array and the first offending index, when `a` holds a
/// NaN or an infinity.
pub fn check_finite<F: Real>(name: &str, a: &Array2<F>) -> Result<()> {
    if let Some(((i, j), v)) = a.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(Error::invalid(format!(
            "array '{name}' holds a non-finite value ({v}) at [{i}, {j}]; the data must be finite"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default for a dataset draws as nn.Linear does: every weight and
    /// bias of a layer uniform on [−1/√fan_in, 1/√fan_in]. Over many draws:
    /// inside the bounds, reaching near both, with the uniform's mean (0)
    /// and variance (k²/3), and a Kolmogorov–Smirnov distance from the
    /// uniform's CDF below its 0.1% critical value (1.95/√n).
    #[test]
    fn torch_init_draws_from_nn_linears_distributions() {
        let shape = Shape::new(1, 300, 200, 40).unwrap();
        let w = Weights::<f64>::seeded(shape, 5, WeightInit::Torch, true);
        let b = w.biases.as_ref().unwrap();
        let (k1, k2) = (1.0 / 300f64.sqrt(), 1.0 / 200f64.sqrt());
        for (name, v, k) in [
            ("w1", w.w1.iter().copied().collect::<Vec<_>>(), k1),
            ("b1", b.b1.to_vec(), k1),
            ("w2", w.w2.iter().copied().collect(), k2),
            ("b2", b.b2.to_vec(), k2),
        ] {
            let n = v.len() as f64;
            assert!(v.iter().all(|&x| -k <= x && x < k), "{name} outside ±{k}");
            let mean = v.iter().sum::<f64>() / n;
            let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
            // Standard errors: k/√(3n) for the mean, about k²·0.3/√n for
            // the variance; 5 of them.
            assert!(
                mean.abs() < 5.0 * k / (3.0 * n).sqrt(),
                "{name} mean {mean}"
            );
            assert!(
                (var - k * k / 3.0).abs() < 5.0 * 0.3 * k * k / n.sqrt(),
                "{name} var {var}"
            );
            let mut s = v.clone();
            s.sort_by(f64::total_cmp);
            let ks = s
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    let cdf = (x + k) / (2.0 * k);
                    (cdf - i as f64 / n)
                        .abs()
                        .max(((i + 1) as f64 / n - cdf).abs())
                })
                .fold(0.0, f64::max);
            assert!(
                ks < 1.95 / n.sqrt(),
                "{name}: KS distance {ks} over {n} draws"
            );
            if n > 1000.0 {
                assert!(
                    s[0] < -0.99 * k && s[s.len() - 1] > 0.99 * k,
                    "{name} range"
                );
            }
        }
        // Seeded: the same seed gives the same draws in f32 (rounded) and
        // f64; another seed, others.
        let w32 = Weights::<f32>::seeded(shape, 5, WeightInit::Torch, true);
        assert_eq!(w32.w1, w.w1.mapv(|v| v as f32));
        assert_ne!(
            Weights::<f64>::seeded(shape, 6, WeightInit::Torch, true).w1,
            w.w1
        );
        // Without biases, none; the other schemes keep zero biases.
        assert!(Weights::<f64>::seeded(shape, 5, WeightInit::Torch, false)
            .biases
            .is_none());
        let scaled = Weights::<f64>::seeded(shape, 5, WeightInit::Scaled, true);
        assert!(scaled.biases.unwrap().b1.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn shards_concatenate_to_the_whole() {
        let shape = Shape::new(10, 7, 3, 2).unwrap();
        let whole = Data::<f64>::random(shape, 42);
        let a = Data::<f64>::random_rows(shape, 42, 0, 4);
        let b = Data::<f64>::random_rows(shape, 42, 4, 6);
        assert_eq!(whole.x.slice(ndarray::s![..4, ..]), a.x);
        assert_eq!(whole.x.slice(ndarray::s![4.., ..]), b.x);
        assert_eq!(whole.y.slice(ndarray::s![4.., ..]), b.y);
    }

    #[test]
    fn seeds_differ_and_repeat() {
        let shape = Shape::new(3, 4, 5, 6).unwrap();
        let a = Weights::<f64>::random(shape, 1);
        assert_eq!(a, Weights::<f64>::random(shape, 1));
        assert_ne!(a, Weights::<f64>::random(shape, 2));
        // Roughly standard normal.
        let big = Data::<f64>::random(Shape::new(200, 500, 1, 1).unwrap(), 7).x;
        let mean = big.mean().unwrap();
        let var = big.mapv(|v| (v - mean) * (v - mean)).mean().unwrap();
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.02,
            "{mean} {var}"
        );
    }

    #[test]
    fn mismatches_and_non_finite_values_are_named() {
        let shape = Shape::new(4, 3, 2, 1).unwrap();
        let mut data = Data::<f64>::random(shape, 0);
        let w = Weights::<f64>::random(Shape::new(4, 5, 2, 1).unwrap(), 0);
        let e = checked_shape(&data, &w).unwrap_err().to_string();
        assert!(e.contains("w1 needs as many rows as x has columns"), "{e}");
        let w = Weights::<f64>::random(shape, 0);
        data.x[[2, 1]] = f64::NAN;
        let e = checked_shape(&data, &w).unwrap_err().to_string();
        assert!(e.contains("'x'") && e.contains("[2, 1]"), "{e}");
    }
}
