//! The cores' arithmetic peak per dtype, measured: what "% of peak" in
//! every report is a fraction of.
//!
//! For each dtype, the instruction its GEMM runs on, in a register-only
//! loop (`machine/peak_kernels.rs`): FMA for f64 and f32 (512-bit with
//! AVX-512, else 256-bit), and for bf16 the fastest of `vdpbf16ps`
//! (AVX512_BF16) and AMX's `tdpbf16ps` (where the CPU has AMX and the
//! kernel grants it). One thread per core the process may use, each pinned
//! to its core and timing its own loop for at least
//! [`Probe::min_seconds`]; the rates summed; the best of
//! [`Probe::trials`] trials.
//!
//! A probe takes about a second per instruction, so it is kept in a cache
//! file (`$TWOLAYER_PEAK`; empty: none; else
//! `$XDG_CACHE_HOME/twolayer/peak.json` or `~/.cache/twolayer/peak.json`)
//! with the CPU model, flags and core count it saw, and used again only on
//! the same. It is written under the file's lock, and only when the
//! machine was quiet while it ran (other processes and the hypervisor
//! below [`super::MachineLoad`]'s warning shares): a peak measured beside
//! other work would be low, and every fraction of it high, for as long as
//! it stayed cached.

use super::peak_kernels as k;
use crate::error::{Error, Result};
use crate::scalar::Dtype;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The instruction a peak was measured with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Instruction {
    /// `vfmadd` on 512-bit registers.
    Fma512,
    /// `vfmadd` on 256-bit registers.
    Fma256,
    /// AVX512_BF16's `vdpbf16ps`.
    Dpbf16,
    /// AMX's `tdpbf16ps`.
    AmxBf16,
}

impl Instruction {
    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Instruction::Fma512 => "AVX-512 FMA",
            Instruction::Fma256 => "AVX2 FMA",
            Instruction::Dpbf16 => "AVX512_BF16 vdpbf16ps",
            Instruction::AmxBf16 => "AMX tdpbf16ps",
        }
    }
}

/// A register-only loop: `run(iters)` does `flops` per iteration with
/// `instruction`.
#[derive(Clone, Copy)]
struct Loop {
    instruction: Instruction,
    flops: f64,
    run: unsafe fn(u64) -> f64,
}

impl Loop {
    const fn new(instruction: Instruction, flops: f64, run: unsafe fn(u64) -> f64) -> Loop {
        Loop {
            instruction,
            flops,
            run,
        }
    }
}

/// One dtype's peak.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// GFLOP/s of all the cores together.
    pub gflops: f64,
    /// What was measured.
    pub instruction: Instruction,
    /// Threads, one pinned per core.
    pub threads: usize,
}

/// The peaks of this machine's cores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    /// The CPU model it was measured on.
    pub cpu_model: String,
    /// The CPU flags that decide the instructions (sorted).
    pub cpu_flags: Vec<String>,
    /// The cores it ran on (one thread each).
    pub cores: usize,
    /// f64 FMA.
    pub f64: Option<Rate>,
    /// f32 FMA.
    pub f32: Option<Rate>,
    /// `vdpbf16ps`, where the CPU has it.
    pub bf16_dot: Option<Rate>,
    /// AMX `tdpbf16ps`, where the CPU has it and the kernel grants it.
    pub bf16_amx: Option<Rate>,
    /// Unix time of the measurement.
    pub measured_unix: u64,
}

/// The flags that decide which loops run.
const DECIDING_FLAGS: [&str; 6] = [
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
];

/// The environment variable naming the cache file (empty: no cache).
pub const PEAK_VAR: &str = "TWOLAYER_PEAK";

impl Peak {
    /// The peak a step of `dtype` is measured against: the dtype's FMA, and
    /// for bf16 the faster of its two instructions.
    pub fn for_dtype(&self, dtype: Dtype) -> Option<Rate> {
        match dtype {
            Dtype::F64 => self.f64,
            Dtype::F32 => self.f32,
            Dtype::Bf16 => match (self.bf16_dot, self.bf16_amx) {
                (Some(d), Some(a)) => Some(if a.gflops > d.gflops { a } else { d }),
                (d, a) => d.or(a),
            },
        }
    }

    /// The peak of `threads` of the cores for `dtype` (the probe's rate
    /// scaled by threads / cores: the cores are alike), or `None` when the
    /// probe has none for it.
    pub fn of_threads(&self, dtype: Dtype, threads: usize) -> Option<Rate> {
        let r = self.for_dtype(dtype)?;
        let used = threads.clamp(1, self.cores.max(1));
        Some(Rate {
            gflops: r.gflops * used as f64 / self.cores.max(1) as f64,
            threads: used,
            ..r
        })
    }

    /// A rate of `gflops` for `dtype` on `threads` as a fraction of that
    /// peak: (fraction, the peak).
    pub fn fraction(&self, dtype: Dtype, threads: usize, gflops: f64) -> Option<(f64, Rate)> {
        let r = self.of_threads(dtype, threads)?;
        (r.gflops > 0.0).then(|| (gflops / r.gflops, r))
    }

    /// Every rate measured, for `info`: (what, rate).
    pub fn rates(&self) -> Vec<(&'static str, Rate)> {
        [
            ("f64", self.f64),
            ("f32", self.f32),
            ("bf16 (dot)", self.bf16_dot),
            ("bf16 (AMX)", self.bf16_amx),
        ]
        .into_iter()
        .filter_map(|(n, r)| r.map(|r| (n, r)))
        .collect()
    }

    /// Whether it was measured on this CPU, with these cores.
    fn matches(&self, cpu_model: &str, flags: &[String], cores: usize) -> bool {
        self.cpu_model == cpu_model && self.cpu_flags == flags && self.cores == cores
    }
}

/// How a probe runs.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    /// Least seconds each thread times its loop for, per trial.
    pub min_seconds: f64,
    /// Trials per instruction; the best is kept.
    pub trials: usize,
}

impl Default for Probe {
    fn default() -> Probe {
        Probe {
            min_seconds: 0.2,
            trials: 5,
        }
    }
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity
    // fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..crate::threads::available_cores()).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins the calling thread to `cpu` (best effort).
fn pin(cpu: usize) {
    // SAFETY: as above; the set names one CPU of the allowed ones.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

impl Probe {
    /// The f64 and f32 loops this CPU has, by the flags.
    fn fma_loops(flags: &[String]) -> [Option<Loop>; 2] {
        let has = |f: &str| flags.iter().any(|x| x == f);
        if has("avx512f") {
            [
                Some(Loop::new(
                    Instruction::Fma512,
                    k::FLOPS_F64_512,
                    k::fma_f64_512,
                )),
                Some(Loop::new(
                    Instruction::Fma512,
                    k::FLOPS_F32_512,
                    k::fma_f32_512,
                )),
            ]
        } else if has("avx2") && has("fma") {
            [
                Some(Loop::new(
                    Instruction::Fma256,
                    k::FLOPS_F64_256,
                    k::fma_f64_256,
                )),
                Some(Loop::new(
                    Instruction::Fma256,
                    k::FLOPS_F32_256,
                    k::fma_f32_256,
                )),
            ]
        } else {
            [None, None]
        }
    }

    /// One loop on every allowed core at once, pinned: the best over the
    /// trials of the summed rates, GFLOP/s.
    fn time(&self, l: Loop) -> Rate {
        let (flops_per_iter, kernel) = (l.flops, l.run);
        let cpus = allowed_cpus();
        let threads = cpus.len().max(1);
        let mut best: f64 = 0.0;
        for _ in 0..self.trials {
            let barrier = std::sync::Barrier::new(threads);
            let total: f64 = std::thread::scope(|s| {
                let handles: Vec<_> = cpus
                    .iter()
                    .map(|&cpu| {
                        let barrier = &barrier;
                        s.spawn(move || {
                            pin(cpu);
                            // About a millisecond a chunk, found first.
                            let mut iters = 1u64 << 10;
                            loop {
                                let t = std::time::Instant::now();
                                // SAFETY: the caller checked the CPU's flags.
                                std::hint::black_box(unsafe { kernel(iters) });
                                if t.elapsed().as_secs_f64() > 1e-3 || iters > 1 << 40 {
                                    break;
                                }
                                iters *= 2;
                            }
                            barrier.wait();
                            let t = std::time::Instant::now();
                            let mut done = 0u64;
                            while t.elapsed().as_secs_f64() < self.min_seconds {
                                // SAFETY: as above.
                                std::hint::black_box(unsafe { kernel(iters) });
                                done += iters;
                            }
                            done as f64 * flops_per_iter / t.elapsed().as_secs_f64() / 1e9
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
            });
            best = best.max(total);
        }
        Rate {
            gflops: best,
            instruction: l.instruction,
            threads,
        }
    }

    /// Measures every instruction this CPU has.
    pub fn measure(&self) -> Peak {
        let flags = relevant_flags();
        let has = |f: &str| flags.iter().any(|x| x == f);
        let [f64_loop, f32_loop] = Probe::fma_loops(&flags);
        let dot = has("avx512f") && has("avx512_bf16");
        let amx = has("amx_tile") && has("amx_bf16") && k::amx_permitted();
        Peak {
            cpu_model: super::cpu_model(),
            cpu_flags: flags.clone(),
            cores: allowed_cpus().len().max(1),
            f64: f64_loop.map(|l| self.time(l)),
            f32: f32_loop.map(|l| self.time(l)),
            bf16_dot: dot
                .then(|| self.time(Loop::new(Instruction::Dpbf16, k::FLOPS_DPBF16, k::dpbf16))),
            bf16_amx: amx.then(|| {
                self.time(Loop::new(
                    Instruction::AmxBf16,
                    k::FLOPS_AMX_BF16,
                    k::amx_bf16,
                ))
            }),
            measured_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// The CPU flags of [`DECIDING_FLAGS`] this CPU has, sorted.
fn relevant_flags() -> Vec<String> {
    let all = super::cpu_flags();
    let mut v: Vec<String> = DECIDING_FLAGS
        .iter()
        .filter(|f| all.iter().any(|x| x == *f))
        .map(|f| f.to_string())
        .collect();
    v.sort();
    v
}

/// Where the probe is kept: `$TWOLAYER_PEAK` (empty: nowhere), else the
/// cache folder's `peak.json`.
pub fn cache_path() -> Option<PathBuf> {
    super::cache_file(PEAK_VAR, "peak.json")
}

/// What is at the cache path.
enum Cached {
    /// Nothing yet.
    Nothing,
    /// A probe of this CPU with these cores.
    Ours(Peak),
    /// A probe of another CPU or core count: replaced by a new one.
    Other,
    /// Not a probe (or unreadable): never replaced.
    Foreign,
}

/// What is at `path`.
fn look(path: &Path) -> Cached {
    if std::fs::symlink_metadata(path).is_err() {
        return Cached::Nothing;
    }
    let Ok(text) = crate::input::read_text(path, 1 << 20) else {
        return Cached::Foreign;
    };
    match serde_json::from_str::<Peak>(&text) {
        Ok(p)
            if p.matches(
                &super::cpu_model(),
                &relevant_flags(),
                allowed_cpus().len().max(1),
            ) =>
        {
            Cached::Ours(p)
        }
        Ok(_) => Cached::Other,
        Err(_) => Cached::Foreign,
    }
}

/// The cached probe at `path`, if it is one and was measured on this CPU
/// with these cores.
fn cached(path: &Path) -> Option<Peak> {
    match look(path) {
        Cached::Ours(p) => Some(p),
        _ => None,
    }
}

/// The cached probe if there is one for this CPU (no measuring): what
/// `train` uses, so a run never waits for a probe.
pub fn cached_peak() -> Option<Peak> {
    cache_path().and_then(|p| cached(&p))
}

/// The probe: cached, or measured now (and cached when the machine was
/// quiet). `None` when the cache is switched off (`TWOLAYER_PEAK=""`).
/// `again` measures even when a cached one exists.
pub fn peak(probe: &Probe, again: bool) -> Result<Option<Peak>> {
    match cache_path() {
        Some(path) => peak_at(&path, probe, again).map(Some),
        None => Ok(None),
    }
}

/// [`peak`] with the cache at `path`.
fn peak_at(path: &Path, probe: &Probe, again: bool) -> Result<Peak> {
    // A file there that is not a probe (a mistyped TWOLAYER_PEAK naming a
    // report, data, a device) is never replaced, nor measured for.
    if let Cached::Foreign = look(path) {
        return Err(Error::invalid(format!(
            "{} is not a peak probe file, and a probe never replaces another file; point {PEAK_VAR} elsewhere, or set it empty for no probe",
            path.display()
        )));
    }
    if !again {
        if let Some(p) = cached(path) {
            return Ok(p);
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
    }
    // One probe at a time (two at once would halve each other's cores);
    // the one that waited finds the other's result.
    let _lock =
        crate::lock::FileLock::wait_exclusive(path, PEAK_VAR, std::time::Duration::from_secs(120))?;
    if !again {
        if let Some(p) = cached(path) {
            return Ok(p);
        }
    }
    let watch = super::LoadWatch::start();
    let p = probe.measure();
    let quiet = watch
        .and_then(|w| w.finish())
        .is_none_or(|l| l.warnings().is_empty());
    if quiet && !matches!(look(path), Cached::Foreign) {
        crate::output::write_atomic(path, |w| {
            serde_json::to_writer_pretty(&mut *w, &p).map_err(std::io::Error::other)?;
            use std::io::Write;
            writeln!(w)
        })?;
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_measures_what_this_cpu_has_and_is_kept_only_for_it() {
        let quick = Probe {
            min_seconds: 0.01,
            trials: 1,
        };
        let p = quick.measure();
        let flags = relevant_flags();
        let has = |f: &str| flags.iter().any(|x| x == f);
        assert_eq!(p.f64.is_some(), has("avx2") && has("fma") || has("avx512f"));
        assert_eq!(p.bf16_dot.is_some(), has("avx512f") && has("avx512_bf16"));
        if let (Some(a), Some(b)) = (p.f64, p.f32) {
            assert!(a.gflops > 0.0 && b.gflops > 0.0, "{p:?}");
            assert_eq!(a.threads, allowed_cpus().len());
        }
        // Another CPU's probe (other flags, other cores) is not this one's.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("peak.json");
        std::fs::write(&f, serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(cached(&f), Some(p.clone()));
        let mut other = p.clone();
        other.cpu_flags.push("zz_other".into());
        std::fs::write(&f, serde_json::to_string(&other).unwrap()).unwrap();
        assert_eq!(cached(&f), None);
        let mut other = p.clone();
        other.cores += 1;
        std::fs::write(&f, serde_json::to_string(&other).unwrap()).unwrap();
        assert_eq!(cached(&f), None);
        std::fs::write(&f, "{ not json").unwrap();
        assert_eq!(cached(&f), None);
    }

    #[test]
    fn a_file_that_is_not_a_probe_is_never_replaced() {
        // TWOLAYER_PEAK naming something else (a report, data): refused
        // before anything is measured, and the file is left as it was.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("report.json");
        std::fs::write(&f, "{\"schema_version\": 3}").unwrap();
        let quick = Probe {
            min_seconds: 0.001,
            trials: 1,
        };
        let e = peak_at(&f, &quick, true).unwrap_err().to_string();
        assert!(e.contains("is not a peak probe file"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            "{\"schema_version\": 3}"
        );
        assert!(matches!(look(Path::new("/dev/null")), Cached::Foreign));
    }
}
