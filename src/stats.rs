//! The statistics every figure and verdict of the project rests on, in one
//! place: medians (in linear time), percentiles, and the hierarchical
//! bootstrap of the regression gate (`twolayer compare`).
//!
//! The bootstrap's statistic R is the current side's step time over the
//! baseline's, from per-process medians: paired, the median over process
//! pairs of each pair's ratio; unpaired, the ratio of the medians. Its 95%
//! interval comes from resampling processes (pairs) and, within each, its
//! steps — the two levels of noise these machines have.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

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

/// The median of `v` (reordered), in time linear in its length.
pub fn median_in_place(v: &mut [f64]) -> f64 {
    let n = v.len();
    assert!(n > 0, "median of nothing");
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

/// The 2.5th and 97.5th percentiles of `v` (sorted in place): a 95%
/// interval.
pub fn interval(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (percentile(v, 0.025), percentile(v, 0.975))
}

/// One point's samples on both sides: `[side][process] → step samples`.
pub(crate) struct PointSamples<'a> {
    /// The baseline's processes.
    pub(crate) base: Vec<&'a [f64]>,
    /// The current side's processes.
    pub(crate) cur: Vec<&'a [f64]>,
}

/// Processes with more steps than this resample their median in its
/// large-sample form (see `Steps::resampled_median`), so a comparison
/// takes time linear in the samples however many there are.
pub const EXACT_RESAMPLE_MAX: usize = 1000;

/// One process's step times, ready to be resampled.
struct Steps<'a> {
    raw: &'a [f64],
    /// Sorted copy, for processes above [`EXACT_RESAMPLE_MAX`] steps.
    sorted: Vec<f64>,
}

impl<'a> Steps<'a> {
    fn new(raw: &'a [f64]) -> Steps<'a> {
        let mut sorted = Vec::new();
        if raw.len() > EXACT_RESAMPLE_MAX {
            sorted = raw.to_vec();
            sorted.sort_by(f64::total_cmp);
        }
        Steps { raw, sorted }
    }

    /// The median of n steps drawn with replacement from these n. Up to
    /// [`EXACT_RESAMPLE_MAX`] steps, drawn exactly (O(n)). Above, the
    /// median of such a draw is the order statistic at the rank where the
    /// count of draws at or below it reaches n/2; that count is binomial,
    /// and for large n the rank is n/2 + (√n / 2)·Z with Z standard normal:
    /// one normal draw and a look-up (O(1)).
    fn resampled_median(&self, rng: &mut ChaCha8Rng, draw: &mut Vec<f64>) -> f64 {
        let n = self.raw.len();
        if self.sorted.is_empty() {
            draw.clear();
            draw.extend((0..n).map(|_| self.raw[rng.random_range(0..n)]));
            median_in_place(draw)
        } else {
            let z: f64 = rng.sample(rand_distr::StandardNormal);
            let rank = (0.5 * n as f64 + 0.5 * (n as f64).sqrt() * z).round();
            self.sorted[(rank.max(0.0) as usize).min(n - 1)]
        }
    }
}

/// A statistic and its 95% interval.
pub type Estimate = (f64, (f64, f64));

/// The point estimates and hierarchical-bootstrap intervals of R for
/// every point, and of their geometric mean.
pub(crate) fn bootstrap(points: &[PointSamples], paired: bool) -> (Vec<Estimate>, Estimate) {
    let mut scratch = Vec::new();
    let estimate: Vec<f64> = points
        .iter()
        .map(|p| {
            let b: Vec<f64> = p.base.iter().map(|s| median(s)).collect();
            let c: Vec<f64> = p.cur.iter().map(|s| median(s)).collect();
            statistic(&b, &c, paired, &mut scratch)
        })
        .collect();
    let geo = |rs: &[f64]| (rs.iter().map(|r| r.ln()).sum::<f64>() / rs.len() as f64).exp();

    let (kb, kc) = (points[0].base.len(), points[0].cur.len());
    let prepared: Vec<(Vec<Steps>, Vec<Steps>)> = points
        .iter()
        .map(|p| {
            (
                p.base.iter().map(|s| Steps::new(s)).collect(),
                p.cur.iter().map(|s| Steps::new(s)).collect(),
            )
        })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(0x0077_766c_6179_6572);
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
    // Point by point, every resample of it, its interval taken at once:
    // memory O(RESAMPLES), not O(points × RESAMPLES) (1.6 GB at 100,000
    // points, scattered writes that made the whole superlinear). The
    // overall geometric mean of each resample is built up as a sum of
    // logarithms over the points.
    let (mut mb, mut mc) = (vec![0.0; kb], vec![0.0; kc]);
    let mut draw = Vec::new();
    let mut log_sum = vec![0.0; RESAMPLES];
    let mut rs = Vec::with_capacity(RESAMPLES);
    let points = prepared
        .iter()
        .zip(&estimate)
        .map(|(p, &e)| {
            rs.clear();
            for ((ib, ic), acc) in draws.iter().zip(log_sum.iter_mut()) {
                for (procs, idx, m) in [(&p.0, ib, &mut mb), (&p.1, ic, &mut mc)] {
                    for (&i, m) in idx.iter().zip(m.iter_mut()) {
                        *m = procs[i].resampled_median(&mut rng, &mut draw);
                    }
                }
                let r = statistic(&mb, &mc, paired, &mut scratch);
                *acc += r.ln();
                rs.push(r);
            }
            (e, interval(&mut rs))
        })
        .collect();
    let n = prepared.len() as f64;
    let mut overall: Vec<f64> = log_sum.iter().map(|s| (s / n).exp()).collect();
    (points, (geo(&estimate), interval(&mut overall)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_in_linear_time_matches_sorting() {
        for n in 1..40 {
            let v: Vec<f64> = (0..n).map(|i| ((i * 7919) % 23) as f64).collect();
            let mut s = v.clone();
            s.sort_by(f64::total_cmp);
            assert_eq!(median(&v), percentile(&s, 0.5));
        }
    }

    #[test]
    fn the_large_sample_median_resamples_like_the_exact_ones() {
        // 4,000 steps, uniform in [1, 2): the spread of the bootstrap
        // median, drawn exactly and in the large-sample form, agrees.
        let raw: Vec<f64> = (0..4000u64)
            .map(|i| 1.0 + ((i * 2_654_435_761) % 4000) as f64 / 4000.0)
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut draw = Vec::new();
        let spread = |steps: &Steps, rng: &mut ChaCha8Rng, draw: &mut Vec<f64>| {
            let mut m: Vec<f64> = (0..2000)
                .map(|_| steps.resampled_median(rng, draw))
                .collect();
            let (lo, hi) = interval(&mut m);
            (median(&m), hi - lo)
        };
        let exact = Steps {
            raw: &raw,
            sorted: Vec::new(),
        };
        let fast = Steps::new(&raw);
        assert!(!fast.sorted.is_empty());
        let (c1, w1) = spread(&exact, &mut rng, &mut draw);
        let (c2, w2) = spread(&fast, &mut rng, &mut draw);
        assert!(
            (c1 - 1.5).abs() < 0.01 && (c2 - 1.5).abs() < 0.01,
            "{c1} {c2}"
        );
        assert!(
            (w2 / w1 - 1.0).abs() < 0.2,
            "exact width {w1}, large-sample {w2}"
        );
    }
}
