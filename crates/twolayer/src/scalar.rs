//! The element types the trainer runs in, f32 and f64, behind one trait;
//! and bf16 mixed precision, which stores f32 and multiplies in bf16.

use ndarray::{Array, Dimension};
use std::fmt;

/// The element type of a run, as chosen on the command line. Its names
/// (`f32`, `f64`, `bf16`) are the command line's, the checkpoint header's
/// and the reports'.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// IEEE single precision.
    F32,
    /// IEEE double precision (the reference's dtype).
    F64,
    /// Mixed precision, as PyTorch's autocast runs a linear layer: the
    /// GEMMs take bf16 operands (rounded to nearest even) and give f32
    /// results; the data, the master weights, the gradients, the loss and
    /// the update are f32 (its storage: [`Dtype::storage`]).
    Bf16,
}

impl Dtype {
    /// Bytes per stored element (bf16 runs store f32).
    pub fn size(self) -> usize {
        match self.storage() {
            Storage::F64 => 8,
            Storage::F32 => 4,
        }
    }

    /// The type data, weights and gradients are stored in: f32 for f32
    /// and for bf16 mixed precision, f64 for f64. Code generic over the
    /// stored type is reached through [`with_storage!`](crate::with_storage),
    /// which matches on this once.
    pub fn storage(self) -> Storage {
        match self {
            Dtype::F64 => Storage::F64,
            Dtype::F32 | Dtype::Bf16 => Storage::F32,
        }
    }

    /// The name used on the command line and in reports: `f32`, `f64` or
    /// `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
            Dtype::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(Dtype::F32),
            "f64" | "float64" => Ok(Dtype::F64),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            _ => Err(format!(
                "unsupported dtype '{s}' (expected f32, f64 or bf16)"
            )),
        }
    }
}

/// The element type values are stored in ([`Dtype::storage`]): what a
/// file holds, and the `F` of the arrays of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Storage {
    /// f32 (f32 runs, bf16 runs, `<f4` files).
    F32,
    /// f64 (f64 runs, `<f8` files).
    F64,
}

impl Storage {
    /// The dtype of a run that computes in its stored type.
    pub fn dtype(self) -> Dtype {
        match self {
            Storage::F32 => Dtype::F32,
            Storage::F64 => Dtype::F64,
        }
    }
}

/// Runs `$body` with the type alias `$F` set to the stored type of
/// `$dtype` (`f32` for f32 and bf16, `f64` for f64): the one dispatch from
/// a dtype chosen at run time to code generic over [`Real`].
///
/// ```
/// use twolayer::{with_storage, Dtype, Real};
/// fn bytes<F: Real>() -> usize { std::mem::size_of::<F>() }
/// assert_eq!(with_storage!(Dtype::Bf16, F => bytes::<F>()), 4);
/// assert_eq!(with_storage!(Dtype::F64, F => bytes::<F>()), 8);
/// ```
#[macro_export]
macro_rules! with_storage {
    ($dtype:expr, $F:ident => $body:expr) => {
        match $crate::scalar::Dtype::storage($dtype) {
            $crate::scalar::Storage::F32 => {
                type $F = f32;
                $body
            }
            $crate::scalar::Storage::F64 => {
                type $F = f64;
                $body
            }
        }
    };
}

/// A floating-point element the trainer can run in: what GEMM (through
/// ndarray's BLAS dispatch), the elementwise kernels and the .npy reader and
/// writer all need.
pub trait Real:
    ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + num_traits::Float
    + ndarray_npy::ReadableElement
    + ndarray_npy::WritableElement
    + Send
    + Sync
    + fmt::Debug
    + fmt::Display
    + fmt::LowerExp
    + 'static
{
    /// The [`Dtype`] this type is.
    const DTYPE: Dtype;
    /// Converts from f64, rounding to nearest.
    fn from_f64(v: f64) -> Self;
    /// Converts to f64 exactly.
    fn to_f64(self) -> f64;
    /// `self` where `h`'s sign bit is clear, +0.0 where it is set — the
    /// ReLU mask, as bit operations (an arithmetic shift of h's sign into
    /// a mask, and-ed with self's bits), so a loop of it vectorises with
    /// no branch.
    fn masked_by_sign_of(self, h: Self) -> Self;
    /// These elements as the f32s they are when `Self` is f32 (what bf16
    /// mixed precision stores: its step reads and writes f32 through
    /// this); `None` for f64.
    fn as_f32s(v: &[Self]) -> Option<&[f32]>;
    /// [`Real::as_f32s`], mutable.
    fn as_f32s_mut(v: &mut [Self]) -> Option<&mut [f32]>;
    /// An array of `Self` as one of `G`: moved when `G` is `Self`,
    /// else converted element by element (rounded to nearest).
    fn into_array<G: Real, D: Dimension>(a: Array<Self, D>) -> Array<G, D>;
    /// An f32 array as one of `Self` (moved when `Self` is f32).
    fn from_f32_array<D: Dimension>(a: Array<f32, D>) -> Array<Self, D>;
    /// An f64 array as one of `Self` (moved when `Self` is f64).
    fn from_f64_array<D: Dimension>(a: Array<f64, D>) -> Array<Self, D>;
}

impl Real for f32 {
    const DTYPE: Dtype = Dtype::F32;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn masked_by_sign_of(self, h: Self) -> Self {
        let clear = !((h.to_bits() as i32 >> 31) as u32);
        f32::from_bits(self.to_bits() & clear)
    }
    fn as_f32s(v: &[Self]) -> Option<&[f32]> {
        Some(v)
    }
    fn as_f32s_mut(v: &mut [Self]) -> Option<&mut [f32]> {
        Some(v)
    }
    fn into_array<G: Real, D: Dimension>(a: Array<Self, D>) -> Array<G, D> {
        G::from_f32_array(a)
    }
    fn from_f32_array<D: Dimension>(a: Array<f32, D>) -> Array<Self, D> {
        a
    }
    fn from_f64_array<D: Dimension>(a: Array<f64, D>) -> Array<Self, D> {
        a.mapv(|v| v as f32)
    }
}

impl Real for f64 {
    const DTYPE: Dtype = Dtype::F64;
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn masked_by_sign_of(self, h: Self) -> Self {
        let clear = !((h.to_bits() as i64 >> 63) as u64);
        f64::from_bits(self.to_bits() & clear)
    }
    fn as_f32s(_: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_f32s_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
    fn into_array<G: Real, D: Dimension>(a: Array<Self, D>) -> Array<G, D> {
        G::from_f64_array(a)
    }
    fn from_f32_array<D: Dimension>(a: Array<f32, D>) -> Array<Self, D> {
        a.mapv(f64::from)
    }
    fn from_f64_array<D: Dimension>(a: Array<f64, D>) -> Array<Self, D> {
        a
    }
}
