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

/// The height of the f64 GEMM micro-kernel of the kernel set that runs,
/// where it is known: 16 for OpenBLAS's AVX-512 sets (SkylakeX, Cooperlake,
/// Sapphire Rapids all run `dgemm_kernel_16x2_skylakex`: 16 rows of the
/// column-major result by 2 columns per tile), `None` for any other set.
/// [`crate::Plan::new`] reads it to pick the block layout.
pub fn dgemm_kernel_rows() -> Option<usize> {
    static ROWS: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| {
        let core = core_name().to_ascii_lowercase();
        ["skylakex", "cooperlake", "sapphirerapids"]
            .contains(&core.as_str())
            .then_some(16)
    })
}

/// The OpenBLAS library this process runs: which build, where it was
/// loaded from, and whether it has the bf16 GEMM. Reports, the train
/// summary, checkpoints and wisdom keys carry it, so that two figures from
/// different libraries are never compared as if they were one.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Library {
    /// The release, e.g. `0.3.34`.
    pub version: String,
    /// What it was built for: the one target of a native build
    /// (`COOPERLAKE`, `SAPPHIRERAPIDS`, …), or `DYNAMIC_ARCH` for a generic
    /// build that picks its kernels at run time (Debian's).
    pub target: String,
    /// Built for one CPU target (scripts/build-openblas.sh), rather than
    /// a generic build.
    pub native: bool,
    /// `cblas_sbgemm` (bf16 inputs, f32 result) is in the library.
    pub bf16_gemm: bool,
    /// The file the loader took it from.
    pub path: String,
}

impl Library {
    /// The library running in this process.
    pub fn current() -> Library {
        let config = config();
        let words: Vec<&str> = config.split_whitespace().collect();
        let generic = words.contains(&"DYNAMIC_ARCH");
        // A single-target build names its target in upper case among the
        // build options (`OpenBLAS 0.3.34 NO_AFFINITY COOPERLAKE MAX_THREADS=64`).
        let target = if generic {
            "DYNAMIC_ARCH".to_string()
        } else {
            words
                .iter()
                .skip(2)
                .find(|w| {
                    !w.contains('=')
                        && !w.starts_with("NO_")
                        && !w.starts_with("USE_")
                        && w.chars()
                            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
                })
                .map(|w| w.to_string())
                .unwrap_or_else(|| core_name().to_uppercase())
        };
        Library {
            version: version(),
            target,
            native: !generic,
            bf16_gemm: sbgemm_symbol().is_some(),
            path: loaded_from(),
        }
    }

    /// One line for people: `OpenBLAS 0.3.34, native COOPERLAKE build, bf16
    /// GEMM (path)`.
    pub fn describe(&self) -> String {
        format!(
            "OpenBLAS {}, {} build, {} ({})",
            self.version,
            if self.native {
                format!("native {}", self.target)
            } else {
                "generic DYNAMIC_ARCH".to_string()
            },
            if self.bf16_gemm {
                "bf16 GEMM"
            } else {
                "no bf16 GEMM"
            },
            self.path
        )
    }

    /// Whether `openblas_get_config()` names this library's target (a
    /// consistency check of the parse above).
    pub fn config_mentions_target(&self) -> bool {
        config().split_whitespace().any(|w| w == self.target)
    }

    /// The short name that keys tuned plans and tells reports apart:
    /// `0.3.34-COOPERLAKE` or `0.3.21-DYNAMIC_ARCH`.
    pub fn key(&self) -> String {
        format!("{}-{}", self.version, self.target)
    }
}

/// The folder the build linked OpenBLAS from (`system` for the system's
/// own library), as build.rs found it.
pub const LINKED_FROM: &str = env!("TWOLAYER_BLAS_LINKED");

/// `cblas_sbgemm`, looked up at run time: Debian's 0.3.21 does not have
/// it, and the same binaries must load against either library.
pub(crate) fn sbgemm_symbol() -> Option<*mut std::ffi::c_void> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only
    // looks the symbol up.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"cblas_sbgemm".as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// `cblas_sbgemm`'s C signature (OpenBLAS's cblas.h): row or column
/// order, the two transposes, M, N, K, alpha, A (bf16), lda, B (bf16),
/// ldb, beta, C (f32), ldc; `blasint` is a C int in these builds.
type SbgemmFn = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const u16,
    c_int,
    *const u16,
    c_int,
    f32,
    *mut f32,
    c_int,
);

/// The bf16 GEMM of the loaded library: `C ← alpha·op(A)·op(B) + beta·C`
/// with bf16 A and B and f32 C, row-major.
#[derive(Clone, Copy, Debug)]
pub struct Sbgemm(SbgemmFn);

/// A GEMM operand's transpose, as cblas names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    /// op(A) = A.
    No,
    /// op(A) = Aᵀ.
    Yes,
}

impl Sbgemm {
    /// The library's `cblas_sbgemm`, or `None` when it has none (Debian's
    /// 0.3.21).
    pub fn get() -> Option<Sbgemm> {
        // SAFETY: the symbol is OpenBLAS's cblas_sbgemm, whose C signature
        // is `SbgemmFn`.
        sbgemm_symbol()
            .map(|p| Sbgemm(unsafe { std::mem::transmute::<*mut std::ffi::c_void, SbgemmFn>(p) }))
    }

    /// `c (m×n) ← alpha·op(a)·op(b) + beta·c`, all row-major and dense:
    /// op(a) is m×k (a stored m×k, or k×m when transposed), op(b) k×n.
    ///
    /// # Panics
    /// When a slice's length is not its matrix's, or a dimension exceeds
    /// a C int (callers check shapes against [`crate::shape::MAX_DIM`]
    /// before allocating, so neither happens from a checked run).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        ta: Trans,
        tb: Trans,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        a: &[u16],
        b: &[u16],
        beta: f32,
        c: &mut [f32],
    ) {
        assert_eq!(a.len(), m * k, "A is not {m}×{k}");
        assert_eq!(b.len(), k * n, "B is not {k}×{n}");
        assert_eq!(c.len(), m * n, "C is not {m}×{n}");
        let int = |v: usize| c_int::try_from(v).expect("a GEMM dimension fits a C int");
        // Row-major leading dimensions: the stored row's length.
        let lda = match ta {
            Trans::No => k,
            Trans::Yes => m,
        };
        let ldb = match tb {
            Trans::No => n,
            Trans::Yes => k,
        };
        let t = |t: Trans| match t {
            Trans::No => CBLAS_NO_TRANS,
            Trans::Yes => CBLAS_TRANS,
        };
        // SAFETY: the lengths are checked above against the dimensions the
        // call reads and writes; A and B are only read.
        unsafe {
            (self.0)(
                CBLAS_ROW_MAJOR,
                t(ta),
                t(tb),
                int(m),
                int(n),
                int(k),
                alpha,
                a.as_ptr(),
                int(lda.max(1)),
                b.as_ptr(),
                int(ldb.max(1)),
                beta,
                c.as_mut_ptr(),
                int(n.max(1)),
            )
        }
    }
}

/// cblas's enum values.
const CBLAS_ROW_MAJOR: c_int = 101;
const CBLAS_NO_TRANS: c_int = 111;
const CBLAS_TRANS: c_int = 112;

/// The path of the shared object that holds OpenBLAS in this process.
fn loaded_from() -> String {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: dladdr fills `info` for an address inside a loaded object;
    // openblas_get_config is such an address.
    let ok = unsafe {
        libc::dladdr(
            openblas_get_config as *const libc::c_void,
            info.as_mut_ptr(),
        )
    };
    if ok == 0 {
        return "unknown".into();
    }
    // SAFETY: dladdr succeeded, so `info` is initialised.
    let info = unsafe { info.assume_init() };
    if info.dli_fname.is_null() {
        return "unknown".into();
    }
    // SAFETY: a NUL-terminated path owned by the loader.
    let path = unsafe { cstr(info.dli_fname) };
    std::fs::canonicalize(&path)
        .map(|p| p.display().to_string())
        .unwrap_or(path)
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
    let closed = crate::output::stdout_closed_at_start();
    if closed {
        // Started with stdout closed (`>&-`): so is the new image, which
        // then knows it (crate::output::check_stdout_open) instead of
        // taking the /dev/null the runtime put there for a real stdout.
        // SAFETY: runs just before exec, closing one descriptor.
        unsafe {
            cmd.pre_exec(|| {
                libc::close(1);
                Ok(())
            });
        }
    }
    // `exec` only returns on failure.
    let e = cmd.args(args).env(THREAD_TIMEOUT_VAR, SHORT_SPIN).exec();
    if closed {
        // Put /dev/null back on descriptor 1 (the lowest free number), so
        // that no file opened from here on takes it.
        // SAFETY: open(2) of a constant path.
        unsafe {
            libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        }
    }
    Some(e)
}
