//! The machine facts read from the operating system (/proc, /sys, the
//! cgroup, getrusage), in one place: the CPU's model, the memory a process
//! may still allocate and holds, and the CPU time the rest of the machine
//! used while a measurement ran.

pub mod peak;
mod peak_kernels;

use serde::{Deserialize, Serialize};

/// Other processes using more than this share of the cores.
pub const OTHERS_SHARE: f64 = 0.10;
/// The hypervisor taking more than this share of the cores' time.
pub const STEAL_SHARE: f64 = 0.05;

/// The CPU model name from /proc/cpuinfo (`unknown` where it is not there).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The CPU's feature flags from /proc/cpuinfo (`avx512_bf16`, `amx_bf16`,
/// …); empty where it is not there.
pub fn cpu_flags() -> Vec<String> {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("flags"))
                .and_then(|l| l.split(':').nth(1))
                .map(|f| f.split_whitespace().map(str::to_string).collect())
        })
        .unwrap_or_default()
}

/// Bytes of memory this process may still allocate: the smaller of the
/// kernel's `MemAvailable` and the cgroup's remaining limit. Where neither
/// can be read, `u64::MAX` (no check).
pub fn available_memory_bytes() -> u64 {
    let mut avail = u64::MAX;
    if let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") {
        for line in meminfo.lines() {
            if let Some(rest) = line.strip_prefix("MemAvailable:") {
                let kb = rest.trim().trim_end_matches("kB").trim();
                if let Ok(kb) = kb.parse::<u64>() {
                    avail = avail.min(kb.saturating_mul(1024));
                }
            }
        }
    }
    let limit = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let used = std::fs::read_to_string("/sys/fs/cgroup/memory.current")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    if let (Some(limit), Some(used)) = (limit, used) {
        avail = avail.min(limit.saturating_sub(used));
    }
    avail
}

/// The most resident memory this process has held so far (Linux's
/// `VmHWM`), when the system reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// The memory this process holds now (Linux's `VmRSS`), when the system
/// reports it.
pub fn resident_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

/// A `kB` line of /proc/self/status, in bytes.
fn status_bytes(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// A file in twolayer's cache folder, or the one `var` names (empty:
/// none): `$var`, else `$XDG_CACHE_HOME/twolayer/NAME`, else
/// `~/.cache/twolayer/NAME`.
pub fn cache_file(var: &str, name: &str) -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    if let Some(v) = std::env::var_os(var) {
        return (!v.is_empty()).then(|| PathBuf::from(v));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("twolayer").join(name))
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
