//! The network's four dimensions, what they cost (FLOPs, bytes), and the
//! checks that run before anything is allocated.

use crate::error::{Error, Result};
use crate::scalar::Dtype;
use std::fmt;

/// The dimensions of one training problem: x is `n`×`d_in`, y is
/// `n`×`d_out`, w1 is `d_in`×`hidden`, w2 is `hidden`×`d_out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shape {
    /// Batch size N: rows of x and y.
    pub n: usize,
    /// Input width D_in: columns of x, rows of w1.
    pub d_in: usize,
    /// Hidden width H: columns of w1, rows of w2.
    pub hidden: usize,
    /// Output width D_out: columns of y and w2.
    pub d_out: usize,
}

/// Largest dimension cblas accepts (its integers are 32-bit); a larger one
/// would make ndarray fall back silently to its own, slower matmul.
pub const MAX_DIM: usize = i32::MAX as usize;

impl Shape {
    /// The classic numpy warm-up's shape: (64, 1000, 100, 10).
    pub const REFERENCE: Shape = Shape {
        n: 64,
        d_in: 1000,
        hidden: 100,
        d_out: 10,
    };

    /// A validated shape: every dimension at least 1 and at most
    /// [`MAX_DIM`].
    pub fn new(n: usize, d_in: usize, hidden: usize, d_out: usize) -> Result<Shape> {
        let s = Shape {
            n,
            d_in,
            hidden,
            d_out,
        };
        for (name, v) in s.named_dims() {
            if v == 0 {
                return Err(Error::invalid(format!(
                    "{name} must be at least 1, got 0 in shape {s}"
                )));
            }
            if v > MAX_DIM {
                return Err(Error::invalid(format!(
                    "{name} = {v} exceeds the largest dimension BLAS accepts ({MAX_DIM})"
                )));
            }
        }
        Ok(s)
    }

    /// The dimensions with the flag names users know them by.
    pub fn named_dims(&self) -> [(&'static str, usize); 4] {
        [
            ("n", self.n),
            ("d-in", self.d_in),
            ("hidden", self.hidden),
            ("d-out", self.d_out),
        ]
    }

    /// Floating-point operations in one training step, counting a
    /// multiply-add as two: the five GEMMs, 2·N·D_in·H each for x·w1 and
    /// xᵀ·g_h, 2·N·H·D_out each for h_relu·w2, h_reluᵀ·g_y and g_y·w2ᵀ.
    /// Elementwise passes are not counted (they are O(N·H), not O(N·D_in·H)).
    pub fn flops_per_step(&self) -> f64 {
        let (n, d, h, o) = self.dims_f64();
        4.0 * n * d * h + 6.0 * n * h * o
    }

    fn dims_f64(&self) -> (f64, f64, f64, f64) {
        (
            self.n as f64,
            self.d_in as f64,
            self.hidden as f64,
            self.d_out as f64,
        )
    }

    /// Elements of the data, x and y.
    pub fn data_elems(&self) -> u128 {
        let (n, d, _, o) = self.dims_u128();
        n * d + n * o
    }

    /// Elements of the weights, w1 and w2.
    pub fn weight_elems(&self) -> u128 {
        let (_, d, h, o) = self.dims_u128();
        d * h + h * o
    }

    fn dims_u128(&self) -> (u128, u128, u128, u128) {
        (
            self.n as u128,
            self.d_in as u128,
            self.hidden as u128,
            self.d_out as u128,
        )
    }

    /// Fails with the bytes needed when `needed` bytes for a run of this
    /// shape in `dtype`, with the process's own [`PROCESS_BYTES`], would
    /// take more than 90% of the memory available now (before, a run of
    /// 22.4 GiB of data against 22.7 GiB available passed and was then
    /// killed by the kernel). Call before allocating.
    pub fn check_bytes_fit(&self, needed: u128, dtype: Dtype) -> Result<()> {
        let usable = crate::machine::available_memory_bytes() as u128 / 10 * 9;
        let needed = needed.saturating_add(PROCESS_BYTES);
        if needed > usable {
            return Err(Error::OutOfMemory {
                what: format!(
                    "training shape {self} in {dtype} (with the process's own 64 MiB, against 90% of the memory available)"
                ),
                needed,
                available: usable,
            });
        }
        Ok(())
    }
}

/// What the process holds besides a run's arrays, in a memory estimate:
/// the binary and its libraries, OpenBLAS's per-thread GEMM buffers, the
/// allocator's slack (peak RSS of a tiny run: about 10 MiB; of a large
/// one beyond its arrays: up to about 40 MiB on these machines).
pub const PROCESS_BYTES: u128 = 64 << 20;

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "({}, {}, {}, {})",
            self.n, self.d_in, self.hidden, self.d_out
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_of_the_reference_shape() {
        // 4·64·1000·100 + 6·64·100·10 = 25_600_000 + 384_000
        assert_eq!(Shape::REFERENCE.flops_per_step(), 25_984_000.0);
    }

    #[test]
    fn zero_dimension_is_refused_by_name() {
        let e = Shape::new(64, 0, 100, 10).unwrap_err().to_string();
        assert!(e.contains("d-in must be at least 1"), "{e}");
    }

    #[test]
    fn huge_shape_does_not_fit() {
        let s = Shape::new(1 << 30, 1 << 20, 100, 10).unwrap();
        let bytes = (s.data_elems() + s.weight_elems()) * 8;
        let e = s.check_bytes_fit(bytes, Dtype::F64).unwrap_err();
        assert!(e.to_string().contains("bytes"), "{e}");
    }
}
