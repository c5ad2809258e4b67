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
//! | `selftest-oversubscribe` | twice as many shards as threads | the split of the GEMMs over the cores |
//! | `selftest-no-cblas` | x·w1 gets operands with negative strides, which cblas cannot take: ndarray silently runs it on its own slower matrix multiply | the GEMMs' dispatch |

#[cfg(feature = "selftest-no-cblas")]
use ndarray::ArrayView2;

/// Block rows under `selftest-small-blocks`: in place of max(H, 128) rows
/// (f64) or max(H, 256) (f32), thinner GEMM calls. (Batches of 64 on two
/// threads already run in blocks of 32, so only larger batches slow down.)
#[cfg_attr(not(feature = "selftest-small-blocks"), allow(dead_code))]
pub const SMALL_BLOCK_ROWS: usize = 32;

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

/// h = x·w1 under `selftest-no-cblas`: the same product with the rows of
/// x and of h both taken in reverse order. Row i of h is still row i of x
/// times w1, but negative strides leave cblas out, and ndarray silently
/// runs its own slower matrix multiply.
#[cfg(feature = "selftest-no-cblas")]
pub(super) fn x_w1_off_cblas<F: crate::Real>(
    x: &ArrayView2<F>,
    w1: &ndarray::Array2<F>,
    h: &mut ndarray::ArrayViewMut2<F>,
) {
    use ndarray::s;
    let mut h_rev = h.slice_mut(s![..;-1, ..]);
    ndarray::linalg::general_mat_mul(F::one(), &x.slice(s![..;-1, ..]), w1, F::zero(), &mut h_rev);
}

/// Lives for the length of a step. Under `selftest-slow-step` its drop
/// spins for 15% of the step's time; otherwise it holds nothing.
pub(super) struct StepGuard {
    #[cfg(feature = "selftest-slow-step")]
    started: std::time::Instant,
}

impl StepGuard {
    /// Starts timing a step.
    #[inline(always)]
    pub(super) fn start() -> StepGuard {
        StepGuard {
            #[cfg(feature = "selftest-slow-step")]
            started: std::time::Instant::now(),
        }
    }
}

#[cfg(feature = "selftest-slow-step")]
impl Drop for StepGuard {
    fn drop(&mut self) {
        let extra = self.started.elapsed().mul_f64(0.15);
        let t = std::time::Instant::now();
        while t.elapsed() < extra {
            std::hint::spin_loop();
        }
    }
}
