//! The elementwise passes of the step.
//!
//! Inside a shard (one core's rows, see [`step`](crate::step)) the passes
//! over a block — ReLU, loss with its gradient, the ReLU mask — are plain
//! sequential loops: each core already has its own rows, and a block is
//! small enough to stay in its cache. The passes that combine the shards —
//! summing their gradients and the SGD update — cover D_in×H elements and
//! run on rayon above [`PAR_THRESHOLD`] elements, sequentially below it,
//! where handing work to another thread costs more than it saves.
//! Parallel passes work in fixed chunks of [`CHUNK`] elements and never
//! reorder a sum, so their results do not depend on the thread count.

use crate::scalar::Real;
use rayon::prelude::*;

/// Passes over fewer elements than this run sequentially. Measured on the
/// 2-core Zen 4 machine, a 6,400-element pass was slower on two threads.
pub const PAR_THRESHOLD: usize = 1 << 15;

/// Elements per chunk of a parallel pass.
pub const CHUNK: usize = 1 << 12;

/// ReLU in place, `h ← max(h, 0)`, keeping what the backward mask needs:
/// where h < 0 the result is −0.0, elsewhere +0.0 or h itself. So after the
/// pass, "the sign bit is set" means exactly "h was < 0", and h == 0 (either
/// sign) still lets the gradient through, as the reference does. A −0.0 is
/// zero to every product and sum that follows.
pub fn relu_in_place<F: Real>(h: &mut [F]) {
    // Branch-free so it vectorises (signs are random: branches mispredict):
    // v + 0.0 turns −0.0 into +0.0 and leaves every other value as it is.
    for v in h {
        *v = if *v < F::zero() {
            F::neg_zero()
        } else {
            *v + F::zero()
        };
    }
}

/// One pass over a block of y_pred: on entry `pred_to_grad` holds y_pred; on
/// exit it holds g_y = 2·(y_pred − y). Returns Σ (y_pred − y)², accumulated
/// in f64 whatever the element type.
pub fn loss_and_grad<F: Real>(pred_to_grad: &mut [F], y: &[F]) -> f64 {
    assert_eq!(pred_to_grad.len(), y.len(), "y_pred and y differ in size");
    let two = F::one() + F::one();
    let mut s = 0.0f64;
    for (p, &y) in pred_to_grad.iter_mut().zip(y) {
        let d = *p - y;
        let d64 = d.to_f64();
        s += d64 * d64;
        *p = two * d;
    }
    s
}

/// The ReLU backward mask, `g_h = g_hrelu` with `g_h[i,j] = 0` where
/// `h[i,j] < 0`, in place on `grad`. Reads the sign bit that
/// [`relu_in_place`] left in `h_relu`.
pub fn relu_mask<F: Real>(grad: &mut [F], h_relu: &[F]) {
    assert_eq!(
        grad.len(),
        h_relu.len(),
        "g_hrelu and h_relu differ in size"
    );
    // A select, not a conditional store, so it vectorises.
    for (g, h) in grad.iter_mut().zip(h_relu) {
        *g = if h.is_sign_negative() { F::zero() } else { *g };
    }
}

/// Runs `pass` over matching chunks of `out` and `a`, `b` (either may be
/// empty, meaning unused), in parallel when large.
fn zip3<F: Real>(out: &mut [F], a: &[F], b: &[F], pass: impl Fn(&mut [F], &[F], &[F]) + Sync) {
    let chunk = |c: usize, len: usize| (c * CHUNK, (c * CHUNK + len));
    if out.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
            let (lo, hi) = chunk(c, o.len());
            pass(o, slice_or_empty(a, lo, hi), slice_or_empty(b, lo, hi));
        });
    } else {
        let n = out.len();
        pass(out, slice_or_empty(a, 0, n), slice_or_empty(b, 0, n));
    }
}

fn slice_or_empty<F>(s: &[F], lo: usize, hi: usize) -> &[F] {
    if s.is_empty() {
        s
    } else {
        &s[lo..hi]
    }
}

/// Plain SGD, `w ← w − lr·g`: the product lr·g rounded to F, then
/// subtracted, as the reference computes it.
pub fn sgd_update<F: Real>(w: &mut [F], g: &[F], lr: F) {
    assert_eq!(w.len(), g.len(), "weights and gradient differ in size");
    zip3(w, g, &[], |w, g, _| {
        for (w, &g) in w.iter_mut().zip(g) {
            *w = *w - lr * g;
        }
    });
}

/// SGD from two partial gradients, `w ← w − lr·(g0 + g1)`, in one pass.
pub fn sgd_update_sum2<F: Real>(w: &mut [F], g0: &[F], g1: &[F], lr: F) {
    assert!(w.len() == g0.len() && w.len() == g1.len(), "sizes differ");
    zip3(w, g0, g1, |w, g0, g1| {
        for ((w, &a), &b) in w.iter_mut().zip(g0).zip(g1) {
            *w = *w - lr * (a + b);
        }
    });
}

/// `out ← a + b`, in one pass.
pub fn sum2<F: Real>(out: &mut [F], a: &[F], b: &[F]) {
    assert!(out.len() == a.len() && out.len() == b.len(), "sizes differ");
    zip3(out, a, b, |o, a, b| {
        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
            *o = a + b;
        }
    });
}

/// `acc ← acc + part`.
pub fn add_assign<F: Real>(acc: &mut [F], part: &[F]) {
    assert_eq!(acc.len(), part.len(), "sizes differ");
    zip3(acc, part, &[], |acc, p, _| {
        for (a, &p) in acc.iter_mut().zip(p) {
            *a = *a + p;
        }
    });
}

/// `out ← a`.
pub fn copy<F: Real>(out: &mut [F], a: &[F]) {
    assert_eq!(out.len(), a.len(), "sizes differ");
    zip3(out, a, &[], |o, a, _| o.copy_from_slice(a));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relu_marks_negatives_with_the_sign_bit_only() {
        let mut h = vec![
            -2.0f64,
            -0.0,
            0.0,
            3.0,
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
        ];
        relu_in_place(&mut h);
        let signs: Vec<bool> = h.iter().map(|v| v.is_sign_negative()).collect();
        assert_eq!(signs, [true, false, false, false, false, true]);
        assert_eq!(h, [0.0, 0.0, 0.0, 3.0, f64::MIN_POSITIVE, 0.0]);
    }

    #[test]
    fn mask_passes_zero_and_blocks_negatives() {
        let mut h = vec![-1.0f32, 0.0, 2.0];
        relu_in_place(&mut h);
        let mut g = vec![5.0f32, 6.0, 7.0];
        relu_mask(&mut g, &h);
        assert_eq!(g, [0.0, 6.0, 7.0]);
    }

    #[test]
    fn loss_and_gradient() {
        let mut p = vec![1.0f32, 4.0];
        let loss = loss_and_grad(&mut p, &[0.5, 1.0]);
        assert_eq!(loss, 0.25 + 9.0);
        assert_eq!(p, [1.0, 6.0]);
    }

    #[test]
    fn parallel_passes_match_sequential_loops() {
        for len in [10, PAR_THRESHOLD + 123] {
            let a: Vec<f64> = (0..len).map(|i| (i as f64 * 0.37).sin()).collect();
            let b: Vec<f64> = (0..len).map(|i| (i as f64 * 0.11).cos()).collect();
            let mut w = vec![1.0; len];
            sgd_update_sum2(&mut w, &a, &b, 0.5);
            let mut w2 = vec![1.0; len];
            sgd_update(&mut w2, &a, 0.5);
            let mut s = vec![0.0; len];
            sum2(&mut s, &a, &b);
            let mut acc = a.clone();
            add_assign(&mut acc, &b);
            let mut c = vec![0.0; len];
            copy(&mut c, &b);
            for i in 0..len {
                assert_eq!(w[i], 1.0 - 0.5 * (a[i] + b[i]));
                assert_eq!(w2[i], 1.0 - 0.5 * a[i]);
                assert_eq!(s[i], a[i] + b[i]);
                assert_eq!(acc[i], s[i]);
                assert_eq!(c[i], b[i]);
            }
        }
    }
}
