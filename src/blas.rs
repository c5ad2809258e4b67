//! The only module that talks to OpenBLAS directly: its thread count, what
//! it was built as, and the idle-spin setting that must be in place before
//! the library starts.
//!
//! OpenBLAS (pthreads build) keeps its worker threads busy-waiting for about
//! 2^28 cycles after every call (`OPENBLAS_THREAD_TIMEOUT`, read once when
//! the library loads). On a 2-core machine a spinning worker holds the core
//! that rayon's passes and the next small GEMM need: the first version of
//! the step, with multi-threaded GEMMs at every shape, measured 1.20 ms per
//! reference step spinning against 0.48 ms with the spin cut. Today's
//! sharded step runs single-threaded GEMMs for narrow layers and the cost
//! is within noise (`examples/spin_fix.rs`: 0.96–1.12x); the binary still
//! re-executes itself with `OPENBLAS_THREAD_TIMEOUT` set (see
//! [`reexec_with_short_spin`]) unless the user has set it, since wide
//! plans and other machines keep OpenBLAS's workers between calls.

use std::ffi::CStr;
use std::os::raw::{c_char, c_int};

// Link OpenBLAS (through blas-src → openblas-src, `system` feature).
use blas_src as _;

extern "C" {
    fn openblas_set_num_threads(num_threads: c_int);
    fn openblas_get_num_threads() -> c_int;
    fn openblas_get_config() -> *const c_char;
    fn openblas_get_corename() -> *mut c_char;
}

/// The variable OpenBLAS reads, once at load time, for how long idle
/// workers spin: 2^value cycles, clamped to 4..=30.
pub const THREAD_TIMEOUT_VAR: &str = "OPENBLAS_THREAD_TIMEOUT";

/// The value [`reexec_with_short_spin`] sets: 2^4 = 16 cycles, so a worker
/// sleeps as soon as its share of a GEMM is done.
pub const SHORT_SPIN: &str = "4";

/// Runs `f` with OpenBLAS on `threads` threads, then puts the count back:
/// for measurements outside the step (the machine's GEMM rate). The step
/// itself sets its plan's count as it starts ([`set_threads`]).
pub fn with_threads<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    let before = self::threads();
    set_threads(threads);
    let r = f();
    set_threads(before);
    r
}

/// Sets how many threads OpenBLAS uses for the calls that follow (a no-op
/// when it already uses that many, so a step may call it every time).
/// OpenBLAS keeps one count for the whole process, so one owner sets it:
/// the step, from its [`Plan`](crate::Plan), as each step starts.
pub fn set_threads(threads: usize) {
    let t = threads.clamp(1, c_int::MAX as usize) as c_int;
    // SAFETY: plain getter and setter in OpenBLAS; any positive value is
    // accepted.
    unsafe {
        if openblas_get_num_threads() != t {
            openblas_set_num_threads(t)
        }
    }
}

/// How many threads OpenBLAS will use for the next call.
pub fn threads() -> usize {
    // SAFETY: plain getter.
    unsafe { openblas_get_num_threads() }.max(1) as usize
}

/// OpenBLAS's build description, e.g. `OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Cooperlake MAX_THREADS=64`.
pub fn config() -> String {
    // SAFETY: returns a pointer to a static NUL-terminated string.
    unsafe { cstr(openblas_get_config()) }
}

/// The kernel set OpenBLAS picked for this CPU, e.g. `Cooperlake`.
pub fn core_name() -> String {
    // SAFETY: returns a pointer to a static NUL-terminated string.
    unsafe { cstr(openblas_get_corename()) }
}

/// The OpenBLAS version, parsed from [`config`] (`0.3.21`), or `unknown`.
pub fn version() -> String {
    config()
        .split_whitespace()
        .nth(1)
        .filter(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .unwrap_or("unknown")
        .to_string()
}

unsafe fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        return "unknown".into();
    }
    CStr::from_ptr(p).to_string_lossy().trim().to_string()
}

/// Every `OPENBLAS_*` variable in the environment, sorted, as `NAME=value`.
pub fn env_vars() -> Vec<String> {
    let mut v: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("OPENBLAS_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    v.sort();
    v
}

/// A note when OpenBLAS's idle workers keep spinning in this process:
/// `OPENBLAS_THREAD_TIMEOUT` unset (the library default, 2^28 cycles; the
/// binary sets it before OpenBLAS loads unless it could not) or longer
/// than [`SHORT_SPIN`].
pub fn spin_warning() -> Option<String> {
    let value = std::env::var(THREAD_TIMEOUT_VAR).ok();
    let short: u32 = SHORT_SPIN.parse().expect("a number");
    match value.as_deref().map(|v| v.trim().parse::<u32>()) {
        Some(Ok(v)) if v <= short => None,
        _ => Some(format!(
            "OpenBLAS's idle threads spin after each call ({THREAD_TIMEOUT_VAR}={}): a spinning thread holds a core the step's other work needs; examples/spin_fix.rs measures the cost (0.96–1.12x at the reference shape with today's plans, 2.5x with multi-threaded GEMMs at every shape)",
            value.as_deref().unwrap_or("unset")
        )),
    }
}

/// Makes sure OpenBLAS's idle workers do not spin: when
/// `OPENBLAS_THREAD_TIMEOUT` is unset, sets it to [`SHORT_SPIN`] and
/// replaces the process with a fresh copy of itself (same arguments), since
/// OpenBLAS reads the variable only when it loads. Returns only when no
/// re-execution was needed or when it failed (then with the error, and the
/// caller carries on with the spin in place). A value the user set is kept.
pub fn reexec_with_short_spin() -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(THREAD_TIMEOUT_VAR).is_some() {
        return None;
    }
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return Some(e),
    };
    let mut args = std::env::args_os();
    let argv0 = args.next();
    let mut cmd = std::process::Command::new(exe);
    if let Some(a0) = argv0 {
        cmd.arg0(a0);
    }
    // `exec` only returns on failure.
    Some(cmd.args(args).env(THREAD_TIMEOUT_VAR, SHORT_SPIN).exec())
}
