//! Fault injection for the regression gate's self-test
//! (`scripts/gate-selftest.sh`): real slowdowns of the step, each built in
//! only by its own Cargo feature, so that the gate has something true to
//! catch. Without those features every function here is the identity and
//! compiles away; never enable them for anything but the self-test.
//!
//! | feature | what it breaks | acts through |
//! |---|---|---|
//! | `selftest-slow-step` | every step spins for 15% of its own time at its end | work outside the GEMMs |
//! | `selftest-small-blocks` | sharded plans walk their rows in blocks of [`SMALL_BLOCK_ROWS`] | the GEMMs' shapes |
//! | `selftest-oversubscribe` | twice as many shards as threads | the shards' sizes and their reduction |
//! | `selftest-one-gemm` | every plan is a wide one: no shards, both cores share each GEMM call | the split of the GEMMs over the cores |
//! | `selftest-creep` | every step spins for the fraction of its time set at build time in `TWOLAYER_SELFTEST_CREEP` | work outside the GEMMs, a little per merge |

/// Block rows under `selftest-small-blocks`: in place of max(H, 128) rows
/// (f64) or max(H, 256) (f32), or 32 for a batch of 64 on two threads,
/// thinner GEMM calls. (Blocks of 32 slowed the N = 1024 points by 1–31%
/// and left N = 64 alone: too uneven a fault to test the gate with.)
#[cfg_attr(not(feature = "selftest-small-blocks"), allow(dead_code))]
pub const SMALL_BLOCK_ROWS: usize = 16;

/// The plan's (shards, block rows) for a batch of `n`, worsened by
/// `selftest-small-blocks` (blocks of [`SMALL_BLOCK_ROWS`]) and
/// `selftest-oversubscribe` (twice as many shards as threads, so each core
/// runs two shards one after the other, in thinner blocks, and the update
/// sums twice as many gradient buffers). Wide plans are left alone.
#[inline(always)]
pub(super) fn worsen_plan(
    shards: usize,
    block_rows: usize,
    n: usize,
    wide: bool,
) -> (usize, usize) {
    let _ = (n, wide);
    #[cfg(feature = "selftest-oversubscribe")]
    let (shards, block_rows) = if wide {
        (shards, block_rows)
    } else {
        let shards = (2 * shards).min(n);
        (shards, block_rows.min(n.div_ceil(shards)).max(1))
    };
    #[cfg(feature = "selftest-small-blocks")]
    let block_rows = if wide {
        block_rows
    } else {
        block_rows.min(SMALL_BLOCK_ROWS)
    };
    (shards, block_rows)
}

/// Whether the plan treats the layers as wide (one multi-threaded GEMM per
/// product, see [`super::WIDE_LAYER`]); under `selftest-one-gemm` always,
/// as if the threshold had been lowered to 0: the batch's rows are no
/// longer split into shards, and both cores share each GEMM call.
#[inline(always)]
pub(super) fn worsen_wide(wide: bool) -> bool {
    cfg!(feature = "selftest-one-gemm") || wide
}

/// Lives for the length of a step, primal or dual. Under `selftest-slow-step` its drop
/// spins for 15% of the step's time, under `selftest-creep` for the
/// fraction [`creep`] gives; otherwise it holds nothing.
pub(super) struct StepGuard {
    #[cfg(any(feature = "selftest-slow-step", feature = "selftest-creep"))]
    started: std::time::Instant,
}

impl StepGuard {
    /// Starts timing a step.
    #[inline(always)]
    pub(super) fn start() -> StepGuard {
        StepGuard {
            #[cfg(any(feature = "selftest-slow-step", feature = "selftest-creep"))]
            started: std::time::Instant::now(),
        }
    }
}

/// The fraction of a step's time a `selftest-creep` build spins for: the
/// value of `TWOLAYER_SELFTEST_CREEP` when it was built (0 without it).
#[cfg(feature = "selftest-creep")]
fn creep() -> f64 {
    static F: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *F.get_or_init(|| {
        option_env!("TWOLAYER_SELFTEST_CREEP")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    })
}

#[cfg(any(feature = "selftest-slow-step", feature = "selftest-creep"))]
impl Drop for StepGuard {
    fn drop(&mut self) {
        #[cfg(feature = "selftest-slow-step")]
        let fraction = 0.15;
        #[cfg(all(feature = "selftest-creep", not(feature = "selftest-slow-step")))]
        let fraction = creep();
        let extra = self.started.elapsed().mul_f64(fraction);
        let t = std::time::Instant::now();
        while t.elapsed() < extra {
            std::hint::spin_loop();
        }
    }
}
