//! How a step divides its work ([`Plan`]): shards, blocks, threads, and
//! the bytes its buffers take (the buffers themselves are the shards' and
//! the blocks', `shards.rs` and `block.rs`).
//!
//! Every line of the step's math but the weight gradients is a function of
//! each row of x alone; only g_w1 and g_w2 sum over rows. So the batch is
//! split into one *shard* of rows per thread, and each shard walks its rows
//! in *blocks* of a few hundred: for each block, forward and backward run
//! back to back while the block of x is still in cache, and the block's
//! g_w1, g_w2 are added into the shard's own gradient buffers (GEMM with
//! beta = 1). Each shard runs on its own core with single-threaded GEMMs.
//! When all shards are done, one pass sums their gradients and applies the
//! update.
//!
//! Why: on this machine (Debian's OpenBLAS 0.3.21, Zen 4) a single-threaded
//! dgemm of 128–256 rows against w1 runs at ~47 GFLOP/s, against ~34 for all
//! 4,096 rows at once and ~61 for both cores sharing one multi-threaded
//! call; two cores each on their own blocks make ~90. It also removes the
//! N×H buffers: the workspace holds a block, not the batch.

use super::{selftest, StepMode};
use crate::error::Result;
use crate::scalar::{Dtype, Real};
use crate::shape::Shape;
use std::ops::Range;

/// How a block's activations lie in memory, which decides what OpenBLAS
/// packs on which side of the two big GEMMs (x·w1 and xᵀ·g_h).
///
/// OpenBLAS packs each call's two operands into panels and runs its
/// micro-kernel over them; for a given product, which matrix lands on the
/// kernel's long (M) side follows from the layouts of the operands and the
/// result. With H = 100 and a block of x on the short side (the `Rows`
/// layout: h = x_b·w1 is, in OpenBLAS's column-major terms, w1ᵀ's 100 rows
/// by the block's columns), the f64 kernel (16×2 on AVX-512) runs below its
/// rate: measured single-threaded at (4096, 1000, 100) f64 on the
/// COOPERLAKE build, blocks of 512 rows, x·w1 ran at 55 GFLOP/s in `Rows`
/// and 60 in `Units`, xᵀ·g_h at 59 against 65 — 9% less time for the
/// pair. In f32 it goes the other way (123 against 117 GFLOP/s for x·w1),
/// so the plan picks the layout per dtype and `tune` tries both.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// A row per example, as the math is written: h and g_h are B×H, the
    /// shards' g_w1 sums D_in×H.
    #[default]
    Rows,
    /// A row per hidden unit: hᵀ and g_hᵀ are H×B, the shards' g_w1 sums
    /// are g_w1ᵀ (H×D_in), added into w1 transposed by the update pass.
    /// Not for a plan whose update is inside the GEMMs (w1 is D_in×H), nor
    /// for a step summed across processes, which sends g_w1 in pieces of
    /// its rows.
    Units,
}

impl Layout {
    /// Its name: `rows` or `units`.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Rows => "rows",
            Layout::Units => "units",
        }
    }
}

/// How a step divides its work: `shards` groups of consecutive rows, one
/// per rayon thread, each walked in blocks of at most `block_rows` rows,
/// with OpenBLAS running `blas_threads` threads inside each GEMM, and its
/// activations laid out as `layout` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Number of shards (≤ threads, ≤ N).
    pub shards: usize,
    /// Rows per block.
    pub block_rows: usize,
    /// OpenBLAS threads per GEMM call (shards × blas_threads ≤ threads).
    pub blas_threads: usize,
    /// Whether the update lives inside the gradient GEMMs: a fused step
    /// whose single shard holds the whole batch in one block.
    pub fused_gemm_update: bool,
    /// How the blocks' activations lie ([`Layout::Rows`] whenever the
    /// update is in the GEMMs).
    pub layout: Layout,
}

/// A plan as the tuner measures it and the wisdom file keeps it,
/// independent of N: one measured on part of a batch applies to the whole
/// batch ([`PlanChoice::plan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PlanChoice {
    /// Shards, one per rayon thread.
    pub shards: usize,
    /// OpenBLAS threads per GEMM.
    pub blas_threads: usize,
    /// Rows per block; 0 for each shard's rows in one block.
    pub block_rows: usize,
    /// The blocks' layout (absent from wisdom written before it existed:
    /// those plans are [`Layout::Rows`]).
    #[serde(default)]
    pub layout: Layout,
}

/// Block sizes the tuner tries, besides a shard's whole rows.
pub const CANDIDATE_BLOCKS: [usize; 6] = [64, 128, 256, 512, 1024, 2048];

impl PlanChoice {
    /// The plan for a batch of `shape`: shards at most N, blocks at most a
    /// shard's rows, the update fused into the GEMMs when `mode` is fused
    /// and one shard holds the batch in one block, the layout as chosen
    /// where the plan allows it ([`Layout::Units`] only in fused mode
    /// without the update in the GEMMs).
    pub fn plan(&self, shape: Shape, mode: StepMode) -> Plan {
        let shards = self.shards.clamp(1, shape.n);
        let per_shard = shape.n.div_ceil(shards);
        let block_rows = match self.block_rows {
            0 => per_shard,
            b => b.min(per_shard),
        }
        .max(1);
        let fused_gemm_update = mode == StepMode::Fused && shards == 1 && block_rows >= shape.n;
        Plan {
            shards,
            block_rows,
            blas_threads: self.blas_threads.max(1),
            fused_gemm_update,
            layout: Layout::allowed(self.layout, mode, fused_gemm_update),
        }
    }

    /// The choice that gives `plan` at a batch of `n` rows.
    pub fn of(plan: Plan, n: usize) -> PlanChoice {
        PlanChoice {
            shards: plan.shards,
            blas_threads: plan.blas_threads,
            block_rows: if plan.block_rows >= n.div_ceil(plan.shards) {
                0
            } else {
                plan.block_rows
            },
            layout: plan.layout,
        }
    }

    /// Every choice the tuner tries on `threads` threads for batches of
    /// `rows` rows in `mode`: each split of the threads into shards ×
    /// OpenBLAS threads, with blocks of [`CANDIDATE_BLOCKS`] rows smaller
    /// than a shard and of a shard's whole rows, each in both layouts where
    /// the plan would keep the layout (in fused mode, unless the update is
    /// in the GEMMs); and, with more than one thread, the whole step on one
    /// thread.
    pub fn candidates(threads: usize, rows: usize, mode: StepMode) -> Vec<PlanChoice> {
        let threads = threads.max(1);
        let mut out = Vec::new();
        for shards in (1..=threads).filter(|s| threads.is_multiple_of(*s) && *s <= rows.max(1)) {
            let per_shard = rows.div_ceil(shards);
            for block_rows in CANDIDATE_BLOCKS
                .into_iter()
                .filter(|&b| b < per_shard)
                .chain([0])
            {
                let fused = mode == StepMode::Fused && shards == 1 && block_rows == 0;
                for layout in [Layout::Rows, Layout::Units] {
                    if Layout::allowed(layout, mode, fused) == layout {
                        out.push(PlanChoice {
                            shards,
                            blas_threads: threads / shards,
                            block_rows,
                            layout,
                        });
                    }
                }
            }
        }
        if threads > 1 {
            // One thread for the whole step: a small step gains nothing
            // from the others ([`too_small_to_split`]), which then gather
            // the next batch of a minibatch run.
            out.push(PlanChoice {
                shards: 1,
                blas_threads: 1,
                block_rows: 0,
                layout: Layout::Rows,
            });
        }
        out
    }
}

impl std::fmt::Display for PlanChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} shard(s) × {} OpenBLAS thread(s), ",
            self.shards, self.blas_threads
        )?;
        match self.block_rows {
            0 => write!(f, "each shard in one block")?,
            b => write!(f, "blocks of {b} rows")?,
        }
        match self.layout {
            Layout::Rows => Ok(()),
            Layout::Units => write!(f, ", a row per hidden unit"),
        }
    }
}

impl Layout {
    /// `wanted`, where a plan in `mode` (with the update in the GEMMs when
    /// `fused_gemm_update`) can have it; [`Layout::Rows`] otherwise.
    fn allowed(wanted: Layout, mode: StepMode, fused_gemm_update: bool) -> Layout {
        if mode == StepMode::Fused && !fused_gemm_update {
            wanted
        } else {
            Layout::Rows
        }
    }
}

/// Rows a shard needs for the units layout to pay, and its blocks' rows.
const UNITS_MIN_ROWS: usize = 256;
/// Rows a shard would have below which a batch of wide inputs runs as
/// one shard on OpenBLAS's threads.
const SHORT_BATCH_ROWS: usize = 128;
/// Inputs at most this wide are split in blocks of [`NARROW_BLOCK`] rows.
const NARROW_INPUT: usize = 128;
/// Rows of a block of narrow inputs.
const NARROW_BLOCK: usize = 64;

/// One core's GEMM rate the split rule assumes, in f64 FLOP/s (twice that
/// in f32): what the single-threaded step reached at minibatch shapes on
/// the Intel Xeon (Sapphire Rapids kernels), 45–53 GFLOP/s.
const CORE_F64_FLOPS: f64 = 50e9;
/// What splitting a step over shards costs beyond its GEMMs: a fork and
/// join of rayon's threads, and a pass that sums the shards' weight
/// gradients and applies the update (the one-shard step applies it inside
/// its GEMMs). Fitted to the grid of docs/performance.md ("Plans for small
/// batches", Intel Xeon, 2 threads, `tune --exhaustive`): splitting costs
/// about 6 µs plus 2.5 ns per weight (f64) — one thread won at (64, 256,
/// 256, 1) (0.315 against 0.379 ms/step split), two shards at (64, 100,
/// 1024, 1) and (128, 100, 100, 1).
const SPLIT_FIXED_SECS: f64 = 6e-6;
/// See [`SPLIT_FIXED_SECS`].
const SPLIT_SECS_PER_F64_WEIGHT: f64 = 2.5e-9;

/// The seconds the split rule expects a step of `shape` to take on one
/// thread, and split into a shard per thread over `threads`: the GEMMs at
/// one core's rate, divided among the shards, plus the fork/join and the
/// pass over the weights that sums the shards.
pub fn step_secs_estimate(shape: Shape, dtype: Dtype, threads: usize) -> (f64, f64) {
    let scale = 8.0 / dtype.size() as f64; // f32 runs twice the FLOPs per second
    let one = shape.flops_per_step() / (CORE_F64_FLOPS * scale);
    let split = one / threads.max(1) as f64
        + SPLIT_FIXED_SECS
        + SPLIT_SECS_PER_F64_WEIGHT / scale * shape.weight_elems() as f64;
    (one, split)
}

/// Whether a step of `shape` on `threads` threads gains less from
/// splitting its rows over them than the split costs
/// ([`step_secs_estimate`]). At (32, 100, 100, 1) f64 one thread ran the
/// step in 0.022 ms and two shards in 0.063; at (512, 100, 100, 1) two
/// shards 0.38 against 0.63.
pub fn too_small_to_split(shape: Shape, dtype: Dtype, threads: usize) -> bool {
    if threads <= 1 {
        return true;
    }
    let (one, split) = step_secs_estimate(shape, dtype, threads);
    split >= one
}

/// Below this H or D_in the GEMMs are too thin for OpenBLAS's own threads
/// to pay; at or above both, one multi-threaded call per product is as
/// fast as a shard per core, and needs no gradient sum across shards.
pub const WIDE_LAYER: usize = 512;

impl Plan {
    /// The plan for `shape` in `dtype` on `threads` threads.
    ///
    /// Wide layers (H and D_in both ≥ [`WIDE_LAYER`]): one shard, the
    /// whole batch in one block, OpenBLAS on all threads — measured at
    /// (8192, 4096, 1024, 256) f64, 1587 ms per step against 1635 for a
    /// shard per core.
    ///
    /// Otherwise one shard per thread, single-threaded GEMMs, blocks of
    /// max(H, 128) rows in f64 and max(H, 256) in f32, a row per example;
    /// but in f64 in fused mode, where OpenBLAS runs its AVX-512 kernels and
    /// their 16-row tiles do not divide H, a row per hidden unit
    /// ([`Layout::Units`]) in blocks of max(H, 256). Measured on Zen 4
    /// with Debian's OpenBLAS, single-threaded GEMMs against w1 with H = 100
    /// peak at 128–256 rows (f64 ~47 GFLOP/s, f32 ~99) and fall off beyond
    /// 512; all 4,096 rows at once run at ~34, and both cores sharing one
    /// call at ~61 in f64. On the Intel machine with the COOPERLAKE build,
    /// `train` in 7–9 interleaved rounds, units against rows (D_in 1000,
    /// D_out 10, f64): N = 4096, H = 100 14.5 against 15.4 ms per step;
    /// N = 2048: H = 100 8.24 / 8.40, H = 200 14.6 / 15.0, H = 128 10.06 /
    /// 9.94, H = 256 17.5 / 17.3; N = 1024: H = 100 4.94 / 5.20, H = 256
    /// 11.2 / 10.2. Where H fills the kernel's tiles the rows layout
    /// wastes nothing and the units layout's transposed update (D_in×H
    /// elements a step) costs more than it saves.
    pub fn new(shape: Shape, dtype: Dtype, threads: usize, mode: StepMode) -> Plan {
        let wide = selftest::worsen_wide(shape.hidden >= WIDE_LAYER && shape.d_in >= WIDE_LAYER);
        // A step too small to split runs on one thread (the rest of the
        // budget idles, or gathers the next batch: crate::minibatch).
        let threads = if !wide && too_small_to_split(shape, dtype, threads) {
            1
        } else {
            threads.max(1)
        };
        let h_splits_tiles =
            crate::blas::dgemm_kernel_rows().is_some_and(|m| !shape.hidden.is_multiple_of(m));
        // Narrow inputs (D_in ≤ NARROW_INPUT) are split into blocks of
        // NARROW_BLOCK rows: a block's activations then stay in L1/L2
        // between its GEMMs and passes, where the GEMMs gain little from
        // longer blocks (measured on the Intel Xeon, f64 on 2 threads,
        // `tune --exhaustive`, 7 rounds: blocks of 64 rows best at (256,
        // 512 and 1024, 100, 100, 1), by 11–40% over the blocks of 128–256
        // rows made for D_in = 1000, and at (256 and 512, 100, 1024, 1);
        // at (512, 256, 256, 1) whole shards were 12% faster).
        // (With H under 64 a block's activations are small anyway, and
        // blocks of 64 rows ran 3–5x slower than whole shards at (256 and
        // 512, 32, 32, 1).)
        let narrow = shape.d_in <= NARROW_INPUT && shape.hidden >= NARROW_BLOCK && threads > 1;
        // Wide inputs but a short batch: OpenBLAS's own threads inside each
        // GEMM beat shards, which would each be a few dozen rows and need a
        // pass summing D_in·H gradients (measured at (64 and 128, 1024,
        // 100, 1) f64: one shard on 2 OpenBLAS threads 0.41 and 0.61
        // ms/step, 2 shards 0.50 and 0.82; at 256 rows the shards won).
        let short_wide_input =
            shape.d_in >= WIDE_LAYER && shape.n.div_ceil(threads) < SHORT_BATCH_ROWS;
        // The units layout pays for its transposed update only with enough
        // rows a shard (measured at (128, 100, 100, 1): shards of 64 rows
        // 0.096 ms/step in rows against 0.123 in units; at 256, 512 and
        // 1024 units was best or level).
        let long_shards = shape.n.div_ceil(threads)
            >= if narrow {
                2 * NARROW_BLOCK
            } else {
                UNITS_MIN_ROWS
            };
        let layout = if dtype == Dtype::F64
            && !wide
            && mode == StepMode::Fused
            && h_splits_tiles
            && long_shards
        {
            Layout::Units
        } else {
            Layout::Rows
        };
        let (shards, blas_threads, block_rows) = if wide || short_wide_input {
            (1, threads, shape.n)
        } else {
            let shards = threads.min(shape.n);
            let min_rows = match layout {
                Layout::Units => UNITS_MIN_ROWS,
                Layout::Rows => 1024 / dtype.size(), // 128 in f64, 256 in f32
            };
            let rows = if narrow {
                NARROW_BLOCK
            } else {
                shape.hidden.max(min_rows)
            }
            .min(shape.n.div_ceil(shards))
            .max(1);
            (shards, 1, rows)
        };
        let (shards, block_rows) = selftest::worsen_plan(shards, block_rows, shape.n, wide);
        let fused_gemm_update = mode == StepMode::Fused && shards == 1 && block_rows >= shape.n;
        Plan {
            shards,
            block_rows,
            blas_threads,
            fused_gemm_update,
            layout: Layout::allowed(layout, mode, fused_gemm_update),
        }
    }

    /// The rows of shard `i` of a batch of `n`: consecutive, sizes
    /// differing by at most one.
    pub fn shard_rows(&self, n: usize, i: usize) -> Range<usize> {
        let (q, r) = (n / self.shards, n % self.shards);
        let start = i * q + i.min(r);
        start..start + q + usize::from(i < r)
    }

    /// The blocks of a shard's `rows`, in order: each block's rows and the
    /// beta its weight-gradient GEMMs use, 0 for the shard's first block
    /// (its products overwrite the shard's sums) and 1 after (they add).
    pub(super) fn blocks<F: Real>(
        &self,
        rows: Range<usize>,
    ) -> impl Iterator<Item = (Range<usize>, F)> {
        let b = self.block_rows;
        (rows.start..rows.end).step_by(b.max(1)).map(move |start| {
            let beta = if start == rows.start {
                F::zero()
            } else {
                F::one()
            };
            (start..(start + b).min(rows.end), beta)
        })
    }

    /// Elements a workspace under this plan holds: per shard, the block
    /// buffers (2·B·H + B·D_out) and, unless the update is in the GEMMs,
    /// its gradient sums (D_in·H + H·D_out).
    pub fn workspace_elems(&self, shape: Shape) -> u128 {
        let (b, d, h, o) = (
            self.block_rows as u128,
            shape.d_in as u128,
            shape.hidden as u128,
            shape.d_out as u128,
        );
        let grads = if self.fused_gemm_update {
            0
        } else {
            d * h + h * o
        };
        self.shards as u128 * (2 * b * h + b * o + grads)
    }

    /// Bytes a training run holds at once: x, y, the weights, this plan's
    /// workspace, and the explicit [`Gradients`](super::Gradients) in explicit mode.
    pub fn training_bytes(&self, shape: Shape, dtype: Dtype, mode: StepMode) -> u128 {
        if dtype == Dtype::Bf16 {
            // The bf16 step has its own buffers, whatever the plan.
            return super::bf16::training_bytes(shape);
        }
        let grads = if mode == StepMode::Explicit {
            shape.weight_elems()
        } else {
            0
        };
        (shape.data_elems() + shape.weight_elems() + self.workspace_elems(shape) + grads)
            * dtype.size() as u128
    }

    /// Fails with the bytes needed when a run under this plan would not fit
    /// in the memory available now. Call before allocating.
    pub fn check_fits_memory(&self, shape: Shape, dtype: Dtype, mode: StepMode) -> Result<()> {
        shape.check_bytes_fit(self.training_bytes(shape, dtype, mode), dtype)
    }
}
