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
//! | `selftest-oversubscribe` | every shard's GEMMs ask OpenBLAS for all the threads, so shards × threads exceed the cores | the GEMMs' threads |
//! | `selftest-no-cblas` | h_reluᵀ·g_y gets operands with negative strides, which cblas cannot take: ndarray silently runs it on its own slower matrix multiply | the GEMMs' dispatch |

use ndarray::ArrayView2;

/// Block rows under `selftest-small-blocks`: in place of max(H, 128) rows
/// (f64) the blocks get this many, which makes each GEMM call thin.
#[cfg_attr(not(feature = "selftest-small-blocks"), allow(dead_code))]
pub const SMALL_BLOCK_ROWS: usize = 24;

/// The plan's (block rows, OpenBLAS threads per GEMM), worsened by the
/// features `selftest-small-blocks` and `selftest-oversubscribe`.
#[inline(always)]
pub(super) fn worsen_plan(
    block_rows: usize,
    blas_threads: usize,
    threads: usize,
) -> (usize, usize) {
    let _ = (threads, blas_threads);
    #[cfg(feature = "selftest-small-blocks")]
    let block_rows = block_rows.min(SMALL_BLOCK_ROWS);
    #[cfg(feature = "selftest-oversubscribe")]
    let blas_threads = threads;
    (block_rows, blas_threads)
}

/// The operands of g_w2 = h_reluᵀ·g_y. Under `selftest-no-cblas`, both
/// with their rows reversed: the product is the same sum over the block's
/// rows, taken in the opposite order, but negative strides leave cblas out.
#[inline(always)]
pub(super) fn operands_off_cblas<'a, F>(
    h_relu: ArrayView2<'a, F>,
    g_y: ArrayView2<'a, F>,
) -> (ArrayView2<'a, F>, ArrayView2<'a, F>) {
    #[cfg(feature = "selftest-no-cblas")]
    {
        use ndarray::s;
        (
            h_relu.slice_move(s![..;-1, ..]),
            g_y.slice_move(s![..;-1, ..]),
        )
    }
    #[cfg(not(feature = "selftest-no-cblas"))]
    (h_relu, g_y)
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
