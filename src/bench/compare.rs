//! The regression gate behind `twolayer compare`: two sweep reports, point
//! by point, with a statistical test and an effect-size threshold.
//!
//! ## What is gated, and why
//!
//! Wall time on a shared 2-core machine moves 10–20% between runs, so
//! comparing milliseconds across two runs (say, a baseline from last week
//! and a run today) mostly measures the neighbours. The gate instead
//! compares a ratio that each run takes on itself: for every timed sample,
//! the step's time divided by the time of its own five GEMMs alone, measured
//! right after it on the same buffers (the sweep alternates them). A busy
//! machine slows both; the ratio — the step's *overhead over its GEMMs* —
//! stays. A change that makes the step do more work than its GEMMs (an extra
//! pass, a lost fusion, a slower kernel, a sync) moves it.
//!
//! What it cannot see: a change that slows the GEMMs themselves as much as
//! the step (a worse block size, a layout that falls back from cblas). For
//! those the table also shows the GEMMs' share of the machine's GEMM rate
//! measured in the same run, and the raw times, for a person to read; they
//! do not decide the exit code, being too noisy across runs to gate on
//! without crying wolf (see docs/regression-gate.md for the measurements).
//!
//! ## The decision
//!
//! For each point: R = median(current ratios) / median(baseline ratios),
//! with a 95% bootstrap interval (2,000 resamples of each side's samples,
//! fixed seed, so the same reports always give the same verdict). A point is
//! *slower* when R > 1 + max_slowdown **and** the interval's lower end is
//! above 1 + max_slowdown/2 (the change is both large and real), *faster*
//! symmetrically, and *within noise* otherwise.

use super::report::{PointReport, Report};
use crate::error::{Error, Result};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::fmt::Write as _;

/// Bootstrap resamples per point.
pub const RESAMPLES: usize = 2000;

/// What the gate concluded about one point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Faster beyond the threshold, with confidence.
    Faster,
    /// Slower beyond the threshold, with confidence: fails the gate.
    Slower,
    /// Neither.
    WithinNoise,
}

impl Verdict {
    /// Its name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Faster => "faster",
            Verdict::Slower => "**slower**",
            Verdict::WithinNoise => "within noise",
        }
    }
}

/// One point of the comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct PointComparison {
    /// `(N, D_in, H, D_out) dtype ×threads`.
    pub label: String,
    /// Median step/GEMM ratio of the baseline.
    pub base_ratio: f64,
    /// Median step/GEMM ratio now.
    pub cur_ratio: f64,
    /// current / baseline of the medians.
    pub change: f64,
    /// 95% bootstrap interval of `change`.
    pub ci: (f64, f64),
    /// Median ms per step, baseline and now.
    pub ms: (f64, f64),
    /// The GEMMs' share of the machine's GEMM rate, baseline and now.
    pub gemm_share: (f64, f64),
    /// The conclusion.
    pub verdict: Verdict,
}

/// Per-sample step/GEMM ratios of a point.
fn ratios(p: &PointReport) -> Vec<f64> {
    p.ms_per_step
        .samples
        .iter()
        .zip(&p.gemm_ms_samples)
        .filter(|(_, g)| **g > 0.0)
        .map(|(s, g)| s / g)
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    super::report::percentile(v, 0.5)
}

/// Ratio of medians and its percentile-bootstrap 95% interval.
pub fn ratio_of_medians(base: &[f64], cur: &[f64], seed: u64) -> (f64, (f64, f64)) {
    let point = median(&mut cur.to_vec()) / median(&mut base.to_vec());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut b, mut c) = (vec![0.0; base.len()], vec![0.0; cur.len()]);
    let mut stats = Vec::with_capacity(RESAMPLES);
    for _ in 0..RESAMPLES {
        for v in b.iter_mut() {
            *v = base[rng.random_range(0..base.len())];
        }
        for v in c.iter_mut() {
            *v = cur[rng.random_range(0..cur.len())];
        }
        stats.push(median(&mut c) / median(&mut b));
    }
    stats.sort_by(f64::total_cmp);
    let lo = super::report::percentile(&stats, 0.025);
    let hi = super::report::percentile(&stats, 0.975);
    (point, (lo, hi))
}

/// Compares two reports point by point. Fails (for exit status 2) when they
/// cannot be compared: points on one side only, different dtypes for the
/// same shape, too few samples.
pub fn compare(base: &Report, cur: &Report, max_slowdown: f64) -> Result<Vec<PointComparison>> {
    if !(max_slowdown.is_finite() && max_slowdown > 0.0) {
        return Err(Error::invalid(format!(
            "--max-slowdown must be a positive fraction (0.1 = 10%), got {max_slowdown}"
        )));
    }
    let find = |r: &Report, p: &PointReport| r.points.iter().find(|q| q.key() == p.key()).cloned();
    for (side, a, b) in [("current", base, cur), ("baseline", cur, base)] {
        if let Some(p) = a.points.iter().find(|p| find(b, p).is_none()) {
            let other_dtype = b.points.iter().find(|q| {
                (q.n, q.d_in, q.hidden, q.d_out, q.threads)
                    == (p.n, p.d_in, p.hidden, p.d_out, p.threads)
                    && q.dtype != p.dtype
            });
            return Err(Error::invalid(match other_dtype {
                Some(q) => format!(
                    "point {} is {} in one report and {} in the other; compare reports of the same dtypes",
                    p.shape_label(),
                    p.dtype,
                    q.dtype
                ),
                None => format!(
                    "point {} {} ×{} ({}) is missing from the {side} report; compare reports of the same grid",
                    p.shape_label(),
                    p.dtype,
                    p.threads,
                    p.step_mode
                ),
            }));
        }
    }
    let mut out = Vec::new();
    for (i, b) in base.points.iter().enumerate() {
        let c = find(cur, b).expect("checked above");
        let label = format!("{} {} ×{}", b.shape_label(), b.dtype, b.threads);
        let (rb, rc) = (ratios(b), ratios(&c));
        if rb.len() < 3 || rc.len() < 3 {
            return Err(Error::invalid(format!(
                "point {label} has fewer than 3 samples on one side; sweep with --min-steps 3 or more"
            )));
        }
        let (change, ci) = ratio_of_medians(&rb, &rc, i as u64);
        let verdict = if change > 1.0 + max_slowdown && ci.0 > 1.0 + max_slowdown / 2.0 {
            Verdict::Slower
        } else if change < 1.0 - max_slowdown && ci.1 < 1.0 - max_slowdown / 2.0 {
            Verdict::Faster
        } else {
            Verdict::WithinNoise
        };
        out.push(PointComparison {
            label,
            base_ratio: median(&mut rb.clone()),
            cur_ratio: median(&mut rc.clone()),
            change,
            ci,
            ms: (b.ms_per_step.median, c.ms_per_step.median),
            gemm_share: (gemm_share(b), gemm_share(&c)),
            verdict,
        });
    }
    Ok(out)
}

/// The GEMMs' rate as a fraction of the machine's square-GEMM rate.
fn gemm_share(p: &PointReport) -> f64 {
    let flops = 4.0 * (p.n * p.d_in * p.hidden) as f64 + 6.0 * (p.n * p.hidden * p.d_out) as f64;
    flops / (p.gemm_ms * 1e-3) / 1e9 / p.machine_gemm_gflops
}

/// The comparison as a Markdown table, with a summary line.
pub fn to_markdown(
    rows: &[PointComparison],
    base: &Report,
    cur: &Report,
    max_slowdown: f64,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Gated metric: step time / its GEMMs' time (same run). Baseline {} ({}), current {} ({}); slower means > {:.0}% with 95% confidence.\n",
        base.env.git_commit,
        base.env.date,
        cur.env.git_commit,
        cur.env.date,
        max_slowdown * 100.0
    );
    s.push_str("| point | step/GEMM base | now | change [95% CI] | verdict | ms/step base → now | GEMM share of rate base → now |\n|---|---:|---:|---:|---|---:|---:|\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {:.3} | {:.3} | {:+.1}% [{:+.1}%, {:+.1}%] | {} | {} → {} | {:.0}% → {:.0}% |",
            r.label,
            r.base_ratio,
            r.cur_ratio,
            (r.change - 1.0) * 100.0,
            (r.ci.0 - 1.0) * 100.0,
            (r.ci.1 - 1.0) * 100.0,
            r.verdict.name(),
            super::report::fmt_ms(r.ms.0),
            super::report::fmt_ms(r.ms.1),
            r.gemm_share.0 * 100.0,
            r.gemm_share.1 * 100.0,
        );
    }
    let slower = rows.iter().filter(|r| r.verdict == Verdict::Slower).count();
    let faster = rows.iter().filter(|r| r.verdict == Verdict::Faster).count();
    let _ = writeln!(
        s,
        "\n{} points: {slower} slower, {faster} faster, {} within noise.",
        rows.len(),
        rows.len() - slower - faster
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_covers_the_true_ratio_and_excludes_one_for_a_clear_shift() {
        let base: Vec<f64> = (0..60)
            .map(|i| 1.0 + 0.02 * ((i * 37 % 11) as f64 / 11.0))
            .collect();
        let cur: Vec<f64> = base.iter().map(|v| v * 1.2).collect();
        let (r, (lo, hi)) = ratio_of_medians(&base, &cur, 0);
        assert!((r - 1.2).abs() < 1e-9);
        assert!(lo > 1.1 && hi < 1.3 && lo <= r && r <= hi, "{lo} {r} {hi}");
        let (r, (lo, hi)) = ratio_of_medians(&base, &base, 0);
        assert!(r == 1.0 && lo < 1.0 + 1e-9 && hi > 1.0 - 1e-9);
    }
}
