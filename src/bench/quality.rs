//! Whether a measurement can be taken as it stands: what a point's own
//! numbers say (outliers, spread, ratios no machine can reach, phases that
//! do not add up to the step) and what the machine did while it ran (other
//! processes on the cores, time stolen by the hypervisor). Reports carry
//! the warnings beside the figures, as hyperfine warns about outliers, so
//! that a noisy sweep is never printed as if it were clean.

use super::report::PointReport;
use serde::{Deserialize, Serialize};

/// More than this share of a point's samples beyond Tukey's fences.
pub const OUTLIER_SHARE: f64 = 0.10;
/// A p90 more than this many times the median.
pub const SPREAD: f64 = 1.5;
/// A ratio that cannot exceed 1 (the step's GEMMs alone over the step; the
/// primal step's rate over the square GEMM's) above this.
pub const IMPOSSIBLE: f64 = 1.05;
/// Phases whose medians add up to more than this far from the step's.
pub const PHASES_OFF: f64 = 0.15;
/// Other processes using more than this share of the cores.
pub const OTHERS_SHARE: f64 = 0.10;
/// The hypervisor taking more than this share of the cores' time.
pub const STEAL_SHARE: f64 = 0.05;

/// What one point's numbers say about themselves, one line each; empty
/// when nothing is off.
pub fn point_warnings(p: &PointReport) -> Vec<String> {
    let mut w = Vec::new();
    let s = &p.ms_per_step;
    let n = s.samples.len().max(1);
    let outliers = s.outliers_low + s.outliers_high;
    if outliers as f64 > OUTLIER_SHARE * n as f64 {
        w.push(format!(
            "{outliers} of {n} samples are outliers (more than {:.0}%)",
            OUTLIER_SHARE * 100.0
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
    if p.form != "dual" && p.peak_fraction > IMPOSSIBLE {
        w.push(format!(
            "{:.0}% of the square GEMM's rate, above what the machine can do: the rate was measured under another load",
            p.peak_fraction * 100.0
        ));
    }
    if let Some(o) = crate::threads::oversubscribed(p.threads) {
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

/// What the whole machine did while a measurement ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineLoad {
    /// Share of all cores' time used by other processes (0 to 1).
    pub others_share: f64,
    /// Share of all cores' time the hypervisor took (steal).
    pub steal_share: f64,
    /// Seconds the reading spans.
    pub seconds: f64,
}

impl MachineLoad {
    /// The warnings it calls for, one line each.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.others_share > OTHERS_SHARE {
            w.push(format!(
                "other processes used {:.0}% of the cores' time while this ran (more than {:.0}%)",
                self.others_share * 100.0,
                OTHERS_SHARE * 100.0
            ));
        }
        if self.steal_share > STEAL_SHARE {
            w.push(format!(
                "the hypervisor took {:.0}% of the cores' time (steal; more than {:.0}%)",
                self.steal_share * 100.0,
                STEAL_SHARE * 100.0
            ));
        }
        w
    }
}

/// A reading of the machine's CPU time (/proc/stat) and this process's
/// own (getrusage, its threads and waited-for children), to be compared
/// with a later one ([`LoadWatch::finish`]).
#[derive(Clone, Copy, Debug)]
pub struct LoadWatch {
    /// Busy, steal and total jiffies of all CPUs.
    busy: u64,
    steal: u64,
    total: u64,
    /// This process's CPU seconds.
    own_s: f64,
    at: std::time::Instant,
}

impl LoadWatch {
    /// Reads the counters now (`None` where /proc/stat is not there).
    pub fn start() -> Option<LoadWatch> {
        let (busy, steal, total) = proc_stat()?;
        Some(LoadWatch {
            busy,
            steal,
            total,
            own_s: own_cpu_seconds(),
            at: std::time::Instant::now(),
        })
    }

    /// The machine's load since [`LoadWatch::start`].
    pub fn finish(&self) -> Option<MachineLoad> {
        let (busy, steal, total) = proc_stat()?;
        let dt = total.saturating_sub(self.total) as f64;
        if dt <= 0.0 {
            return None;
        }
        let hz = clock_ticks();
        let own = (own_cpu_seconds() - self.own_s) * hz;
        let others = (busy.saturating_sub(self.busy) as f64 - own).max(0.0);
        Some(MachineLoad {
            others_share: (others / dt).min(1.0),
            steal_share: (steal.saturating_sub(self.steal) as f64 / dt).min(1.0),
            seconds: self.at.elapsed().as_secs_f64(),
        })
    }
}

/// (busy, steal, total) jiffies summed over every CPU, from the `cpu` line
/// of /proc/stat: user nice system idle iowait irq softirq steal …; busy is
/// everything but idle, iowait and steal.
fn proc_stat() -> Option<(u64, u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    if v.len() < 8 {
        return None;
    }
    let (idle, iowait, steal) = (v[3], v[4], v[7]);
    let total: u64 = v.iter().sum();
    Some((total - idle - iowait - steal, steal, total))
}

/// CPU seconds used by this process and the children it waited for.
fn own_cpu_seconds() -> f64 {
    let secs = |who| {
        let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage fills the struct it is given.
        if unsafe { libc::getrusage(who, u.as_mut_ptr()) } != 0 {
            return 0.0;
        }
        // SAFETY: getrusage succeeded.
        let u = unsafe { u.assume_init() };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        tv(u.ru_utime) + tv(u.ru_stime)
    };
    secs(libc::RUSAGE_SELF) + secs(libc::RUSAGE_CHILDREN)
}

/// Jiffies per second (/proc/stat's unit).
fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_loop_in_another_process_is_seen() {
        let w = LoadWatch::start().expect("/proc/stat");
        // Two spinning children, as many as these machines have cores.
        let mut kids: Vec<_> = (0..2)
            .map(|_| {
                std::process::Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .unwrap()
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let load = w.finish().unwrap();
        for k in &mut kids {
            let _ = k.kill();
            let _ = k.wait();
        }
        // Their time is not this process's (not waited for while they
        // ran): at least half a core of the two they spun on.
        let cores = crate::threads::available_cores() as f64;
        assert!(load.others_share > 0.25 / cores.max(1.0), "{load:?}");
        assert!(!load.warnings().is_empty() || load.others_share <= OTHERS_SHARE);
    }
}
