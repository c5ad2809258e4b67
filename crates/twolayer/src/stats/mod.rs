//! The statistics every figure and verdict of the project rests on, in one
//! place: medians (in linear time), percentiles, and the hierarchical
//! bootstrap of the regression gate (`twolayer compare`).
//!
//! The bootstrap's statistic R is the current side's step time over the
//! baseline's, from per-process medians: paired, the median over process
//! pairs of each pair's ratio; unpaired, the ratio of the medians. Its 95%
//! interval comes from resampling processes (pairs) and, within each, its
//! steps — the two levels of noise these machines have.

mod median_table;

pub use median_table::MedianTable;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::collections::HashMap;

/// Bootstrap resamples.
pub const RESAMPLES: usize = 2000;

/// The q-quantile of sorted values, interpolating linearly (NaN for no
/// values).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let (lo, frac) = (pos.floor() as usize, pos.fract());
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (sorted[hi] - sorted[lo]) * frac
        }
    }
}

/// Up to this many values, [`median_in_place`] sorts them without a
/// branch: the bootstrap takes millions of medians of a few processes.
const SMALL: usize = 16;

/// `x`'s bits as an integer that orders as [`f64::total_cmp`] orders `x`
/// (the transform `total_cmp` itself applies; it is its own inverse).
#[inline]
fn total_order_key(x: f64) -> i64 {
    let b = x.to_bits() as i64;
    b ^ ((((b >> 63) as u64) >> 1) as i64)
}

/// The median of at most [`SMALL`] values, sorted in place in the order of
/// [`f64::total_cmp`] by insertion with integer min/max (no branch on the
/// data, so none mispredicted).
fn small_median(v: &mut [f64]) -> f64 {
    let n = v.len();
    let mut keys = [0i64; SMALL];
    for (i, &value) in v.iter().enumerate() {
        // keys[..i] sorted; carry the new value down, each larger one
        // moving up a place.
        let mut x = total_order_key(value);
        for j in (0..i).rev() {
            keys[j + 1] = keys[j].max(x);
            x = keys[j].min(x);
        }
        keys[0] = x;
    }
    for (v, &k) in v.iter_mut().zip(&keys[..n]) {
        *v = f64::from_bits(total_order_key_inverse(k));
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// The bits of the f64 whose [`total_order_key`] is `k`.
#[inline]
fn total_order_key_inverse(k: i64) -> u64 {
    (k ^ ((((k >> 63) as u64) >> 1) as i64)) as u64
}

/// The median of `v` (reordered), in time linear in its length.
pub fn median_in_place(v: &mut [f64]) -> f64 {
    let n = v.len();
    assert!(n > 0, "median of nothing");
    if n <= SMALL {
        return small_median(v);
    }
    let (_, &mut hi, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
    if n % 2 == 1 {
        hi
    } else {
        let lo = v[..n / 2].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        0.5 * (lo + hi)
    }
}

/// The median of `v` (a copy reordered), in time linear in its length;
/// NaN for no values.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    median_in_place(&mut v.to_vec())
}

/// The statistic R from per-process medians.
fn statistic(base: &[f64], cur: &[f64], paired: bool, scratch: &mut Vec<f64>) -> f64 {
    scratch.clear();
    if paired {
        scratch.extend(base.iter().zip(cur).map(|(b, c)| c / b));
        median_in_place(scratch)
    } else {
        scratch.extend_from_slice(cur);
        let c = median_in_place(scratch);
        scratch.clear();
        scratch.extend_from_slice(base);
        c / median_in_place(scratch)
    }
}

/// The q-quantile of `v` as [`percentile`] of it sorted would give, by
/// selection (`v` is reordered): linear time.
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    let n = v.len();
    if n <= 1 {
        return v.first().copied().unwrap_or(f64::NAN);
    }
    let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
    let (lo, frac) = (pos.floor() as usize, pos.fract());
    let (_, &mut at, rest) = v.select_nth_unstable_by(lo, f64::total_cmp);
    let next = rest.iter().copied().fold(f64::INFINITY, f64::min);
    if rest.is_empty() {
        at
    } else {
        at + (next - at) * frac
    }
}

/// The 2.5th and 97.5th percentiles of `v` (reordered): a 95% interval.
pub fn interval(v: &mut [f64]) -> (f64, f64) {
    (quantile(v, 0.025), quantile(v, 0.975))
}

/// One point's samples on both sides: `[side][process] → step samples`.
pub(crate) struct PointSamples<'a> {
    /// The baseline's processes.
    pub(crate) base: Vec<&'a [f64]>,
    /// The current side's processes.
    pub(crate) cur: Vec<&'a [f64]>,
}

/// Processes with up to this many steps draw their resampled median from
/// its exact distribution ([`MedianTable`], one per step count); above,
/// from its large-sample form (see `Steps::resampled_median`).
pub const EXACT_RESAMPLE_MAX: usize = 1000;

/// One process's step times, ready to be resampled.
enum Steps<'a> {
    /// Up to [`EXACT_RESAMPLE_MAX`] steps: the table for their count and
    /// their sorted values of the ranks it draws.
    Exact(&'a MedianTable, Vec<f64>),
    /// More: all of them, sorted.
    Large(Vec<f64>),
}

impl<'a> Steps<'a> {
    fn new(raw: &[f64], tables: &'a HashMap<usize, MedianTable>) -> Steps<'a> {
        match tables.get(&raw.len()) {
            Some(t) => Steps::Exact(t, t.window(raw)),
            None => {
                let mut sorted = raw.to_vec();
                sorted.sort_by(f64::total_cmp);
                Steps::Large(sorted)
            }
        }
    }

    /// The median of n steps drawn with replacement from these n. Up to
    /// [`EXACT_RESAMPLE_MAX`] steps, one draw from its exact distribution
    /// (O(1)). Above, the median of such a draw is the order statistic at
    /// the rank where the count of draws at or below it reaches n/2; that
    /// count is binomial, and for large n the rank is n/2 + (√n / 2)·Z
    /// with Z standard normal: one normal draw and a look-up (O(1)).
    #[inline]
    fn resampled_median(&self, rng: &mut ChaCha8Rng) -> f64 {
        match self {
            Steps::Exact(t, window) => t.draw(window, rng),
            Steps::Large(sorted) => {
                let n = sorted.len();
                let z: f64 = rng.sample(rand_distr::StandardNormal);
                let rank = (0.5 * n as f64 + 0.5 * (n as f64).sqrt() * z).round();
                sorted[(rank.max(0.0) as usize).min(n - 1)]
            }
        }
    }
}

/// A statistic and its 95% interval.
pub type Estimate = (f64, (f64, f64));

/// The bootstrap's seed: the same reports always give the same intervals.
const SEED: u64 = 0x0077_766c_6179_6572;

/// Points resampled together by one task; the overall mean's logarithms
/// are summed per chunk and the chunks' sums added in order, so the
/// result does not depend on how many threads ran.
const CHUNK: usize = 32;

/// The point estimates and hierarchical-bootstrap intervals of R for
/// every point, and of their geometric mean.
///
/// Processes (pairs, when paired) are drawn once per resample for all
/// points, from one random stream; then each point draws its processes'
/// resampled medians from a stream of its own (stream 1 + its index), so
/// points run in parallel and the result is the same bits on any number
/// of threads.
pub(crate) fn bootstrap(points: &[PointSamples], paired: bool) -> (Vec<Estimate>, Estimate) {
    let geo = |rs: &[f64]| (rs.iter().map(|r| r.ln()).sum::<f64>() / rs.len() as f64).exp();
    let (kb, kc) = (points[0].base.len(), points[0].cur.len());
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    // Processes (pairs, when paired) drawn once per resample for all
    // points: a slow process slows all of its points together.
    let draws: Vec<(Vec<usize>, Vec<usize>)> = (0..RESAMPLES)
        .map(|_| {
            let ib: Vec<usize> = (0..kb).map(|_| rng.random_range(0..kb)).collect();
            let ic = if paired {
                ib.clone()
            } else {
                (0..kc).map(|_| rng.random_range(0..kc)).collect()
            };
            (ib, ic)
        })
        .collect();
    // One table per step count up to EXACT_RESAMPLE_MAX, shared by every
    // process and point with that count.
    let mut counts: Vec<usize> = points
        .iter()
        .flat_map(|p| p.base.iter().chain(&p.cur).map(|s| s.len()))
        .filter(|&n| n <= EXACT_RESAMPLE_MAX)
        .collect();
    counts.sort_unstable();
    counts.dedup();
    let tables: HashMap<usize, MedianTable> = counts
        .par_iter()
        .map(|&n| (n, MedianTable::new(n)))
        .collect();

    // Point by point, every resample of it, its interval taken at once:
    // memory O(RESAMPLES) per chunk, not O(points × RESAMPLES). The
    // overall geometric mean of each resample is built up as a sum of
    // logarithms over the points.
    let chunks: Vec<(Vec<Estimate>, Vec<f64>)> = points
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(c, chunk)| {
            let mut log_sum = vec![0.0; RESAMPLES];
            let mut scratch = Vec::new();
            let (mut mb, mut mc) = (vec![0.0; kb], vec![0.0; kc]);
            let mut rs = Vec::with_capacity(RESAMPLES);
            let out = chunk
                .iter()
                .enumerate()
                .map(|(k, p)| {
                    let b: Vec<f64> = p.base.iter().map(|s| median(s)).collect();
                    let cu: Vec<f64> = p.cur.iter().map(|s| median(s)).collect();
                    let estimate = statistic(&b, &cu, paired, &mut scratch);
                    let steps: (Vec<Steps>, Vec<Steps>) = (
                        p.base.iter().map(|s| Steps::new(s, &tables)).collect(),
                        p.cur.iter().map(|s| Steps::new(s, &tables)).collect(),
                    );
                    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
                    rng.set_stream(1 + (c * CHUNK + k) as u64);
                    rs.clear();
                    for ((ib, ic), acc) in draws.iter().zip(log_sum.iter_mut()) {
                        for (procs, idx, m) in [(&steps.0, ib, &mut mb), (&steps.1, ic, &mut mc)] {
                            for (&i, m) in idx.iter().zip(m.iter_mut()) {
                                *m = procs[i].resampled_median(&mut rng);
                            }
                        }
                        let r = statistic(&mb, &mc, paired, &mut scratch);
                        *acc += r.ln();
                        rs.push(r);
                    }
                    (estimate, interval(&mut rs))
                })
                .collect();
            (out, log_sum)
        })
        .collect();
    let mut log_sum = vec![0.0; RESAMPLES];
    let mut estimates = Vec::with_capacity(points.len());
    for (out, sums) in chunks {
        estimates.extend(out);
        for (acc, s) in log_sum.iter_mut().zip(sums) {
            *acc += s;
        }
    }
    let n = points.len() as f64;
    let mut overall: Vec<f64> = log_sum.iter().map(|s| (s / n).exp()).collect();
    let point_estimates: Vec<f64> = estimates.iter().map(|e| e.0).collect();
    (estimates, (geo(&point_estimates), interval(&mut overall)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_in_linear_time_matches_sorting() {
        for n in 1..40 {
            let v: Vec<f64> = (0..n).map(|i| ((i * 7919) % 23) as f64 - 7.5).collect();
            let mut s = v.clone();
            s.sort_by(f64::total_cmp);
            assert_eq!(median(&v), percentile(&s, 0.5));
            // The small path leaves the values sorted, signs and all.
            if n <= SMALL {
                let mut w = v.clone();
                median_in_place(&mut w);
                assert_eq!(w, s);
            }
        }
        let mut w = vec![-0.0, 0.0, -1e300, f64::MIN_POSITIVE, 3.0];
        median_in_place(&mut w);
        assert_eq!(
            format!("{w:?}"),
            "[-1e300, -0.0, 0.0, 2.2250738585072014e-308, 3.0]"
        );
    }

    #[test]
    fn quantiles_by_selection_match_sorting() {
        for n in 1..60usize {
            let v: Vec<f64> = (0..n).map(|i| ((i * 7919) % 31) as f64 * 0.5).collect();
            let mut s = v.clone();
            s.sort_by(f64::total_cmp);
            for q in [0.0, 0.025, 0.3, 0.5, 0.975, 1.0] {
                assert_eq!(
                    quantile(&mut v.clone(), q),
                    percentile(&s, q),
                    "n {n} q {q}"
                );
            }
        }
    }

    #[test]
    fn the_large_sample_median_resamples_like_the_literal_ones() {
        // 4,000 steps, uniform in [1, 2): the spread of the bootstrap
        // median, drawn literally (4,000 indices and a median) and in the
        // large-sample form, agrees.
        let raw: Vec<f64> = (0..4000u64)
            .map(|i| 1.0 + ((i * 2_654_435_761) % 4000) as f64 / 4000.0)
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let spread = |m: &mut Vec<f64>| {
            let (lo, hi) = interval(m);
            (median(m), hi - lo)
        };
        let mut literal: Vec<f64> = (0..2000)
            .map(|_| {
                let mut d: Vec<f64> = (0..raw.len())
                    .map(|_| raw[rng.random_range(0..raw.len())])
                    .collect();
                median_in_place(&mut d)
            })
            .collect();
        let tables = HashMap::new();
        let fast = Steps::new(&raw, &tables);
        assert!(matches!(fast, Steps::Large(_)));
        let mut large: Vec<f64> = (0..2000).map(|_| fast.resampled_median(&mut rng)).collect();
        let (c1, w1) = spread(&mut literal);
        let (c2, w2) = spread(&mut large);
        assert!(
            (c1 - 1.5).abs() < 0.01 && (c2 - 1.5).abs() < 0.01,
            "{c1} {c2}"
        );
        assert!(
            (w2 / w1 - 1.0).abs() < 0.2,
            "literal width {w1}, large-sample {w2}"
        );
    }

    #[test]
    fn the_bootstrap_gives_the_same_bits_on_any_number_of_threads() {
        let procs: Vec<Vec<f64>> = (0..6)
            .map(|p| {
                (0..150 + 7 * p)
                    .map(|i| 1.0 + ((i * 37 + p * 11) % 97) as f64 / 300.0)
                    .collect()
            })
            .collect();
        let points: Vec<PointSamples> = (0..3 * CHUNK + 5)
            .map(|k| PointSamples {
                base: procs[..3].iter().map(|v| &v[k % 7..]).collect(),
                cur: procs[3..].iter().map(|v| &v[..v.len() - k % 5]).collect(),
            })
            .collect();
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| bootstrap(&points, true))
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
    }
}
