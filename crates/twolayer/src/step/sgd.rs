//! The SGD update, written once: `p ← p − lr·g` for each parameter p with
//! its layer's rate (b1 takes w1's, b2 takes w2's, as one `SGD(lr)` over a
//! `Linear`'s weight and bias does). Every pass over memory that moves a
//! parameter is [`apply`]:
//!
//! - the sharded step: each parameter from the sum of the shards' gradient
//!   sums, the last two shards added in the update's own pass
//!   ([`Grad::Sum2`]);
//! - explicit gradients ([`super::apply_sgd`], the exchanged step): from
//!   one buffer;
//! - the dual form: C, which stands for w1 (w1 = w1_0 + xᵀ·C, so
//!   w1 −= lr·xᵀ·g_h is C −= lr·g_h), and the biases;
//! - the fused step: the biases (H and D_out elements);
//! - the sharded step in the units layout: w1 from the shards' g_w1ᵀ,
//!   transposed in the same pass ([`Grad::Transposed`]).
//!
//! The one update that is not a pass is the fused step's weight update,
//! computed by the gradient GEMM itself: `w ← −lr·product + 1·w`
//! (alpha = −lr, beta = 1; block.rs, and the dual form's w2). Its rate
//! comes from the same [`Param::rate`], and a rate of 0 skips it there as
//! here: a layer held fixed is not touched at all.

use super::views::{flat1_mut, flat_mut};
use super::LearningRates;
use crate::kernels;
use crate::net::{Biases, Weights};
use crate::scalar::Real;

/// One of the model's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Param {
    /// D_in×H.
    W1,
    /// H×D_out.
    W2,
    /// H.
    B1,
    /// D_out.
    B2,
}

impl Param {
    /// The parameter's step size: its layer's rate.
    pub(crate) fn rate(self, lr: LearningRates) -> f64 {
        match self {
            Param::W1 | Param::B1 => lr.w1,
            Param::W2 | Param::B2 => lr.w2,
        }
    }
}

/// A parameter's gradient as the update reads it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Grad<'a, F> {
    /// One buffer holding the whole gradient.
    One(&'a [F]),
    /// Two partial sums (two shards'), added in the update's pass.
    Sum2(&'a [F], &'a [F]),
    /// One or two partial sums stored transposed, each `width` × (the
    /// parameter's rows) for a parameter `width` wide, added in the
    /// update's pass (the shards' g_w1ᵀ in the
    /// [`Layout::Units`](super::Layout::Units) layout).
    Transposed(&'a [F], Option<&'a [F]>, usize),
}

/// The update: `p ← p − rate·g`, one pass over `p` (on rayon for large
/// ones, see [`kernels`]); nothing at all when `rate` is 0.
pub(crate) fn apply<F: Real>(p: &mut [F], g: Grad<'_, F>, rate: f64) {
    if rate == 0.0 {
        return;
    }
    let rate = F::from_f64(rate);
    match g {
        Grad::One(g) => kernels::sgd_update(p, g, rate),
        Grad::Sum2(a, b) => kernels::sgd_update_sum2(p, a, b, rate),
        Grad::Transposed(a, b, width) => kernels::sgd_update_transposed(p, a, b, width, rate),
    }
}

/// [`apply`] to every parameter of `weights` (the biases when it has
/// them), each with its gradient `grad(param)` and its layer's rate.
pub(crate) fn update<'g, F: Real>(
    weights: &mut Weights<F>,
    lr: LearningRates,
    grad: impl Fn(Param) -> Grad<'g, F>,
) {
    apply(
        flat_mut(&mut weights.w1),
        grad(Param::W1),
        Param::W1.rate(lr),
    );
    apply(
        flat_mut(&mut weights.w2),
        grad(Param::W2),
        Param::W2.rate(lr),
    );
    if let Some(b) = &mut weights.biases {
        update_biases(b, lr, grad);
    }
}

/// [`apply`] to b1 and b2 alone (the fused and dual steps update the
/// weight matrices otherwise).
pub(crate) fn update_biases<'g, F: Real>(
    b: &mut Biases<F>,
    lr: LearningRates,
    grad: impl Fn(Param) -> Grad<'g, F>,
) {
    apply(flat1_mut(&mut b.b1), grad(Param::B1), Param::B1.rate(lr));
    apply(flat1_mut(&mut b.b2), grad(Param::B2), Param::B2.rate(lr));
}
