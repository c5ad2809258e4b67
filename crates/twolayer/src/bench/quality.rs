//! Whether a measurement can be taken as it stands: what a point's own
//! numbers say (outliers, spread, ratios no machine can reach, phases that
//! do not add up to the step) and what the machine did while it ran (other
//! processes on the cores, time stolen by the hypervisor). Reports carry
//! the warnings beside the figures, as hyperfine warns about outliers, so
//! that a noisy sweep is never printed as if it were clean.

use super::report::PointReport;

/// A sample at least this many times its point's median, or at most the
/// median divided by it, is a far one.
pub const FAR: f64 = 1.5;
/// More than this share of a point's samples far from its median. Set
/// from sweeps of (64 | 1024, 1000, 100, 10) f32/f64 on 2 threads on these
/// VMs, 2026-12-01: at rest (no other process, no steal; the host's
/// neighbours still slow runs of ~30 steps now and then) 0.9–6.7% of a
/// point's steps were 1.5x off the median; under two spinning processes
/// 1.6–39.9%, and the loaded sweep had 24.8%. Tukey's fences, the
/// first rule, flagged 3 of 4 points at rest: around a tight median they
/// sit a few percent out, and these machines always have a tenth of their
/// steps 25% slow. (The machine-load warning is what tells a busy machine
/// from a quiet one: 58% of the cores' time against 0.3%.)
pub const FAR_SHARE: f64 = 0.10;
/// A p90 more than this many times the median.
pub const SPREAD: f64 = 1.5;
/// A ratio that cannot exceed 1 (the step's GEMMs alone over the step; the
/// primal step's rate over the square GEMM's) above this.
pub const IMPOSSIBLE: f64 = 1.05;
/// Phases whose medians add up to more than this far from the step's.
pub const PHASES_OFF: f64 = 0.15;

/// What one point's numbers say about themselves, one line each; empty
/// when nothing is off.
pub fn point_warnings(p: &PointReport) -> Vec<String> {
    let mut w = Vec::new();
    let s = &p.ms_per_step;
    let n = s.samples.len().max(1);
    let far = far_samples(&s.samples, s.median);
    if far as f64 > FAR_SHARE * n as f64 {
        w.push(format!(
            "{far} of {n} samples are {FAR}x or more off the median (more than {:.0}% of them)",
            FAR_SHARE * 100.0
        ));
    }
    if s.median > 0.0 && s.p90 > SPREAD * s.median {
        w.push(format!(
            "the p90 is {:.2}x the median (more than {SPREAD}x)",
            s.p90 / s.median
        ));
    }
    if p.efficiency > IMPOSSIBLE {
        w.push(format!(
            "the step's GEMMs alone took {:.2}x the whole step's time, which no machine does: the two were timed under different loads",
            p.efficiency
        ));
    }
    // The dual form's rate is primal-equivalent: it may pass the GEMM rate.
    if p.run.form != crate::step::Form::Dual && p.peak_fraction > IMPOSSIBLE {
        w.push(format!(
            "{:.0}% of the square GEMM's rate, above what the machine can do: the rate was measured under another load",
            p.peak_fraction * 100.0
        ));
    }
    if let Some(o) = crate::threads::oversubscribed(p.run.threads) {
        w.push(o);
    }
    let step = s.median;
    let sum = p.phases.sum();
    if step > 0.0 && sum > 0.0 && (sum / step - 1.0).abs() > PHASES_OFF {
        w.push(format!(
            "the phases add up to {:.0}% of the step's median (more than {:.0}% off): the instrumented steps saw another load",
            100.0 * sum / step,
            PHASES_OFF * 100.0
        ));
    }
    w
}

/// How many of `samples` lie at least [`FAR`] times `median`, or at most
/// `median` / [`FAR`].
pub fn far_samples(samples: &[f64], median: f64) -> usize {
    let (hi, lo) = (median * FAR, median / FAR);
    samples.iter().filter(|&&x| x >= hi || x <= lo).count()
}
