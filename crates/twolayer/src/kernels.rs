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
#[inline(never)]
pub fn relu_in_place<F: Real>(h: &mut [F]) {
    // Branch-free so it vectorises (signs are random: branches mispredict).
    for v in h {
        *v = relu_keeping_sign(*v);
    }
}

/// max(z, 0) with the sign bit as the mask: −0.0 where z < 0, elsewhere
/// z + 0.0 (which turns −0.0 into +0.0 and leaves every other value as it
/// is). Branch-free, so the loops that call it vectorise.
#[inline(always)]
fn relu_keeping_sign<F: Real>(z: F) -> F {
    if z < F::zero() {
        F::neg_zero()
    } else {
        z + F::zero()
    }
}

/// One pass over a block of y_pred: on entry `pred_to_grad` holds y_pred; on
/// exit it holds g_y = 2·(y_pred − y). Returns Σ (y_pred − y)², accumulated
/// in f64 whatever the element type.
#[inline(never)]
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
#[inline(never)]
pub fn relu_mask<F: Real>(grad: &mut [F], h_relu: &[F]) {
    assert_eq!(
        grad.len(),
        h_relu.len(),
        "g_hrelu and h_relu differ in size"
    );
    // Bit operations, not a select: written `*g = if h.is_sign_negative()
    // { 0 } else { *g }`, LLVM compiled it to a scalar loop of compares and
    // branches — 50/50 branches on random signs: 6.1% of a step's time at
    // (4096, 1000, 100, 10) f64 on one thread, against 0.8% for the
    // bias form, whose accumulation made LLVM vectorise it.
    for (g, h) in grad.iter_mut().zip(h_relu) {
        *g = g.masked_by_sign_of(*h);
    }
}

/// [`relu_in_place`] after adding the bias: `h ← max(h + b1, 0)` for h a
/// block of rows × H (row-major) and b1 of H, in the same one pass over
/// h, with the same sign-bit mask.
pub fn bias_relu_in_place<F: Real>(h: &mut [F], b1: &[F]) {
    assert!(
        !b1.is_empty() && h.len().is_multiple_of(b1.len()),
        "h is not rows of b1's width"
    );
    for row in h.chunks_exact_mut(b1.len()) {
        for (v, &b) in row.iter_mut().zip(b1) {
            *v = relu_keeping_sign(*v + b);
        }
    }
}

/// [`bias_relu_in_place`] for activations laid out a row per hidden unit
/// (hᵀ, H × columns, row-major): `hᵀ[j, :] ← max(hᵀ[j, :] + b1[j], 0)`.
pub fn bias_relu_in_place_by_unit<F: Real>(h_t: &mut [F], b1: &[F]) {
    assert!(
        !b1.is_empty() && h_t.len().is_multiple_of(b1.len()),
        "hᵀ is not b1's length of rows"
    );
    let cols = h_t.len() / b1.len();
    if cols == 0 {
        return;
    }
    for (row, &b) in h_t.chunks_exact_mut(cols).zip(b1) {
        for v in row {
            *v = relu_keeping_sign(*v + b);
        }
    }
}

/// [`relu_mask_bias`] for a row per hidden unit (g_hᵀ and h_reluᵀ, H ×
/// columns): the mask, and the row sums of g_hᵀ added into `g_b1` (H).
pub fn relu_mask_bias_by_unit<F: Real>(grad_t: &mut [F], h_relu_t: &[F], g_b1: &mut [F]) {
    check_mask_bias_sizes(grad_t.len(), h_relu_t.len(), g_b1.len());
    let cols = grad_t.len() / g_b1.len();
    if cols == 0 {
        return;
    }
    for ((row, h), acc) in grad_t
        .chunks_exact_mut(cols)
        .zip(h_relu_t.chunks_exact(cols))
        .zip(g_b1.iter_mut())
    {
        let mut s = F::zero();
        for (g, h) in row.iter_mut().zip(h) {
            *g = g.masked_by_sign_of(*h);
            s = s + *g;
        }
        *acc = *acc + s;
    }
}

/// [`loss_and_grad`] with the bias b2 (D_out) added to every row of y_pred
/// (rows × D_out): `g_y = 2·(y_pred + b2 − y)`, and the bias's gradient,
/// the column sums of g_y, added into `g_b2` (D_out) — in the same pass.
/// Returns Σ (y_pred + b2 − y)².
pub fn loss_and_grad_bias<F: Real>(
    pred_to_grad: &mut [F],
    y: &[F],
    b2: &[F],
    g_b2: &mut [F],
) -> f64 {
    assert_eq!(pred_to_grad.len(), y.len(), "y_pred and y differ in size");
    assert!(
        !b2.is_empty() && b2.len() == g_b2.len() && y.len().is_multiple_of(b2.len()),
        "y_pred is not rows of b2's width"
    );
    let two = F::one() + F::one();
    let mut s = 0.0f64;
    let w = b2.len();
    for (row, y) in pred_to_grad.chunks_exact_mut(w).zip(y.chunks_exact(w)) {
        for (((p, &y), &b), g) in row.iter_mut().zip(y).zip(b2).zip(g_b2.iter_mut()) {
            let d = *p + b - y;
            let d64 = d.to_f64();
            s += d64 * d64;
            *p = two * d;
            *g = *g + *p;
        }
    }
    s
}

/// The sizes a mask pass with a bias gradient needs: g_hrelu and h_relu
/// alike, a whole number of g_b1's length (H) of elements.
fn check_mask_bias_sizes(grad: usize, h_relu: usize, g_b1: usize) {
    assert_eq!(grad, h_relu, "g_hrelu and h_relu differ in size");
    assert!(
        g_b1 > 0 && grad.is_multiple_of(g_b1),
        "g_h is not a whole number of g_b1's length"
    );
}

/// [`relu_mask`] that also adds the bias's gradient, the column sums of
/// g_h (rows × H), into `g_b1` (H), in the same pass.
pub fn relu_mask_bias<F: Real>(grad: &mut [F], h_relu: &[F], g_b1: &mut [F]) {
    check_mask_bias_sizes(grad.len(), h_relu.len(), g_b1.len());
    let w = g_b1.len();
    for (row, h) in grad.chunks_exact_mut(w).zip(h_relu.chunks_exact(w)) {
        for ((g, h), acc) in row.iter_mut().zip(h).zip(g_b1.iter_mut()) {
            *g = g.masked_by_sign_of(*h);
            *acc = *acc + *g;
        }
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

/// Rows of `w` per tile of the transposed passes (one rayon task each):
/// each row of a transposed gradient is read in runs of this many
/// elements, long enough for the prefetcher.
const TILE_ROWS: usize = 64;

/// The side of the squares a transposed pass turns in L1.
const SQUARE: usize = 16;

/// Runs `pass(first_row, tile)` over tiles of [`TILE_ROWS`] rows of `w`
/// (rows of `width`), in parallel when `w` is large.
fn row_tiles<F: Real>(w: &mut [F], width: usize, pass: impl Fn(usize, &mut [F]) + Sync) {
    let tile = TILE_ROWS * width;
    if w.len() >= PAR_THRESHOLD {
        w.par_chunks_mut(tile)
            .enumerate()
            .for_each(|(t, w)| pass(t * TILE_ROWS, w));
    } else {
        for (t, w) in w.chunks_mut(tile).enumerate() {
            pass(t * TILE_ROWS, w);
        }
    }
}

/// SGD from a gradient stored transposed, in two partial sums:
/// `w ← w − lr·(a + b)ᵀ` for w of rows × `width` and a, b `width` × rows
/// (row-major), each element as [`sgd_update_sum2`] computes it — the
/// update of w1 (D_in×H) from the shards' g_w1ᵀ sums (H×D_in) in the
/// [`Layout::Units`](crate::step::Layout::Units) layout. In tiles of w's
/// rows, on rayon above [`PAR_THRESHOLD`]: the same result on any number
/// of threads.
pub fn sgd_update_transposed<F: Real>(w: &mut [F], a: &[F], b: Option<&[F]>, width: usize, lr: F) {
    update_transposed(w, a, b, width, |w, g| w - lr * g);
}

/// `out ← (a + b)ᵀ` (out rows × `width`, a and b `width` × rows): two
/// shards' g_w1ᵀ sums handed back as g_w1.
pub fn sum_transposed<F: Real>(out: &mut [F], a: &[F], b: Option<&[F]>, width: usize) {
    update_transposed(out, a, b, width, |_, g| g);
}

/// `acc ← acc + partᵀ` (acc rows × `width`, part `width` × rows): a
/// further shard's g_w1ᵀ added into g_w1.
pub fn add_transposed<F: Real>(acc: &mut [F], part: &[F], width: usize) {
    update_transposed(acc, part, None, width, |v, g| v + g);
}

/// `w ← combine(w, (a + b)ᵀ)` elementwise (`aᵀ` without `b`).
fn update_transposed<F: Real>(
    w: &mut [F],
    a: &[F],
    b: Option<&[F]>,
    width: usize,
    combine: impl Fn(F, F) -> F + Sync,
) {
    assert!(
        width > 0 && w.len().is_multiple_of(width),
        "w is not rows of width"
    );
    assert!(
        a.len() == w.len() && b.is_none_or(|b| b.len() == w.len()),
        "a transposed gradient differs from w in size"
    );
    let rows = w.len() / width;
    row_tiles(w, width, |first, tile| {
        // Squares of the gradient, summed and transposed in L1: g[i][k]
        // for w's rows r0 + i and columns j0 + k, read from the parts'
        // rows (runs of up to SQUARE elements) and written back along w's
        // rows (runs of up to SQUARE), so neither side strides through
        // memory element by element.
        let mut g = [[F::zero(); SQUARE]; SQUARE];
        let tile_rows = tile.len() / width;
        for i0 in (0..tile_rows).step_by(SQUARE) {
            let n = SQUARE.min(tile_rows - i0);
            for j0 in (0..width).step_by(SQUARE) {
                let m = SQUARE.min(width - j0);
                for k in 0..m {
                    let at = (j0 + k) * rows + first + i0;
                    match b {
                        None => {
                            for (gi, &p) in g.iter_mut().zip(&a[at..at + n]) {
                                gi[k] = p;
                            }
                        }
                        Some(b) => {
                            for ((gi, &p), &q) in
                                g.iter_mut().zip(&a[at..at + n]).zip(&b[at..at + n])
                            {
                                gi[k] = p + q;
                            }
                        }
                    }
                }
                for (i, g) in g.iter().enumerate().take(n) {
                    let at = (i0 + i) * width + j0;
                    for (v, &g) in tile[at..at + m].iter_mut().zip(g) {
                        *v = combine(*v, g);
                    }
                }
            }
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

    /// The transpose of `g` (rows × cols, row-major).
    fn transpose(g: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        let mut t = vec![0.0; g.len()];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = g[r * cols + c];
            }
        }
        t
    }

    #[test]
    fn the_transposed_update_is_the_plain_one_on_the_transpose() {
        // Sizes off the 16-square and 64-row tiles, and one above the
        // parallel threshold; one, two and three parts.
        for (rows, width) in [(1, 1), (7, 5), (33, 17), (100, 65), (1000, 100)] {
            let val =
                |seed: usize, i: usize| ((i * 7919 + seed * 104_729) % 1013) as f64 / 97.0 - 5.0;
            let w0: Vec<f64> = (0..rows * width).map(|i| val(1, i)).collect();
            let parts_t: Vec<Vec<f64>> = (2..5)
                .map(|s| (0..rows * width).map(|i| val(s, i)).collect())
                .collect();
            let parts: Vec<Vec<f64>> = parts_t.iter().map(|p| transpose(p, rows, width)).collect();
            let lr = 0.375;
            for k in 1..=3 {
                let mut got = w0.clone();
                let mut sum = vec![0.0; rows * width];
                let b = (k >= 2).then(|| parts[1].as_slice());
                sum_transposed(&mut sum, &parts[0], b, width);
                if k == 3 {
                    // A third shard: added into the first's, as the step does.
                    let mut first = parts[0].clone();
                    for (a, c) in first.iter_mut().zip(&parts[2]) {
                        *a += c;
                    }
                    sgd_update_transposed(&mut got, &first, b, width, lr);
                    add_transposed(&mut sum, &parts[2], width);
                } else {
                    sgd_update_transposed(&mut got, &parts[0], b, width, lr);
                }
                // The same sums in the same order, untransposed: the
                // update (a + c) + b, the handed-back sum (a + b) + c.
                let add = |x: &[f64], y: &[f64]| -> Vec<f64> {
                    x.iter().zip(y).map(|(a, b)| a + b).collect()
                };
                let (a, b, c) = (&parts_t[0], &parts_t[1], &parts_t[2]);
                let (upd, want_sum) = match k {
                    1 => (a.clone(), a.clone()),
                    2 => (add(a, b), add(a, b)),
                    _ => (add(&add(a, c), b), add(&add(a, b), c)),
                };
                let want: Vec<f64> = w0.iter().zip(&upd).map(|(w, g)| w - lr * g).collect();
                assert_eq!(got, want, "{rows}×{width}, {k} part(s)");
                assert_eq!(sum, want_sum, "{rows}×{width}, {k} part(s)");
            }
        }
    }

    #[test]
    fn the_by_unit_passes_are_the_by_row_ones_transposed() {
        let (rows, h) = (5, 3);
        let x: Vec<f64> = (0..rows * h).map(|i| (i as f64) - 7.0).collect();
        let b1 = [0.5, -2.0, 3.0];
        let mut by_row = x.clone();
        bias_relu_in_place(&mut by_row, &b1);
        let mut by_unit = transpose(&x, rows, h);
        bias_relu_in_place_by_unit(&mut by_unit, &b1);
        assert_eq!(transpose(&by_unit, h, rows), by_row);
        let g: Vec<f64> = (0..rows * h).map(|i| 1.0 + i as f64).collect();
        let (mut g_row, mut sums_row) = (g.clone(), [1.0; 3]);
        relu_mask_bias(&mut g_row, &by_row, &mut sums_row);
        let (mut g_unit, mut sums_unit) = (transpose(&g, rows, h), [1.0; 3]);
        relu_mask_bias_by_unit(&mut g_unit, &by_unit, &mut sums_unit);
        assert_eq!(transpose(&g_unit, h, rows), g_row);
        assert_eq!(sums_unit, sums_row);
    }

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
    fn bias_passes_match_plain_loops() {
        // 3 rows × 2 columns.
        let mut h = vec![-1.0f64, 0.5, 2.0, -3.0, 0.25, 0.0];
        bias_relu_in_place(&mut h, &[0.5, 1.0]);
        assert_eq!(h, [0.0, 1.5, 2.5, 0.0, 0.75, 1.0]);
        assert!(h[0].is_sign_negative() && h[3].is_sign_negative());
        let mut g = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut gb1 = vec![10.0, 20.0];
        relu_mask_bias(&mut g, &h, &mut gb1);
        assert_eq!(g, [0.0, 2.0, 3.0, 0.0, 5.0, 6.0]);
        assert_eq!(gb1, [10.0 + 8.0, 20.0 + 8.0]);
        let mut p = vec![1.0, 2.0, 3.0, 4.0];
        let mut gb2 = vec![0.0, 0.0];
        let loss = loss_and_grad_bias(&mut p, &[0.0, 0.0, 1.0, 1.0], &[1.0, -1.0], &mut gb2);
        // d = [2, 1, 3, 2]
        assert_eq!(loss, 4.0 + 1.0 + 9.0 + 4.0);
        assert_eq!(p, [4.0, 2.0, 6.0, 4.0]);
        assert_eq!(gb2, [10.0, 6.0]);
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
