//! The sweep report: its types and versioned JSON schema (documented in
//! docs/report-schema.md, machine-readable in docs/report-schema.json).
//! Its CSV, Markdown and chart renderings are in `render.rs`.
//!
//! Readers accept fields they do not know, so a newer writer's added
//! metric never breaks an older reader or a committed baseline; fields
//! added since version 1 are read with defaults from older reports. The
//! version changes only for a change an older reader would misread.

use super::env::Env;
use crate::error::{Error, Result};
use crate::output::write_atomic;
use crate::run::RunDescription;
use crate::scalar::Dtype;
use crate::stats::percentile;
use crate::step::{Form, StepMode};
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::path::Path;

/// The schema version this build writes and reads. Bump it only for a
/// change an older reader would misread (a field removed, renamed or given
/// another meaning); adding a field is not one.
pub const SCHEMA_VERSION: u32 = 1;

/// How long each point is measured.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// Untimed steps first (and as many GEMM-only rounds).
    pub warmup: usize,
    /// At least this many timed steps...
    pub min_steps: usize,
    /// ...and at least this many seconds of timed steps.
    pub budget_s: f64,
    /// Passes over the whole grid, each measuring every point for a share
    /// of its steps and budget; the samples are pooled. Several rounds
    /// spread a point's samples over the sweep, so a burst of noise on a
    /// shared machine hits a fraction of every point instead of all of one.
    #[serde(default = "one_round")]
    pub rounds: usize,
}

fn one_round() -> usize {
    1
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            warmup: 3,
            min_steps: 10,
            budget_s: 1.0,
            rounds: 1,
        }
    }
}

/// A point's parameters, as fields for machines.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PointId {
    /// Batch size N.
    pub n: usize,
    /// D_in.
    pub d_in: usize,
    /// H.
    pub hidden: usize,
    /// D_out.
    pub d_out: usize,
    /// `f32` or `f64`.
    pub dtype: Dtype,
    /// Thread budget.
    pub threads: usize,
    /// `fused` or `explicit`.
    pub step_mode: StepMode,
    /// MPI ranks (1 for one process).
    pub ranks: usize,
    /// `primal` or `dual`, as the baseline ran it.
    pub form: Form,
}

impl PointId {
    /// The identity of `p`.
    pub fn of(p: &PointReport) -> PointId {
        PointId {
            n: p.run.n,
            d_in: p.run.d_in,
            hidden: p.run.hidden,
            d_out: p.run.d_out,
            dtype: p.run.dtype,
            threads: p.run.threads,
            step_mode: p.run.step_mode,
            ranks: p.ranks(),
            form: p.run.form,
        }
    }
}

/// A whole sweep report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    /// Where and how it was measured.
    pub env: Env,
    /// How long each point was measured. (Read leniently: a grid file's
    /// `[timing]` refuses unknown keys, a report's does not.)
    #[serde(deserialize_with = "lenient_timing")]
    pub timing: Timing,
    /// One entry per point, in the order they ran.
    pub points: Vec<PointReport>,
    /// What the rest of the machine did while the sweep ran (absent from
    /// older reports, and where /proc/stat cannot be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<crate::machine::MachineLoad>,
    /// The cores' arithmetic peak per dtype the points' `core_peak_fraction`
    /// are fractions of (absent from older reports and without a probe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak: Option<crate::machine::peak::Peak>,
}

/// A set of samples (milliseconds, or GFLOP/s for a GEMM rate) in brief:
/// median and percentiles, mean and standard deviation, extremes, and how
/// many samples lie beyond Tukey's fences — the figures hyperfine,
/// criterion and pytest-benchmark give — with the samples themselves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "StatsOnDisk")]
pub struct Stats {
    /// 50th percentile.
    pub median: f64,
    /// 10th percentile.
    pub p10: f64,
    /// 90th percentile.
    pub p90: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Sample standard deviation (n − 1 in the denominator; 0 for one
    /// sample).
    pub sd: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Samples below Q1 − 1.5·IQR (the quartiles interpolated as the
    /// percentiles are).
    pub outliers_low: usize,
    /// Samples above Q3 + 1.5·IQR: on a shared machine, mostly the steps a
    /// neighbour or a late thread wake-up slowed.
    pub outliers_high: usize,
    /// Every sample, in the order taken.
    pub samples: Vec<f64>,
}

/// [`Stats`] as read: a version-1 report has only the median, the
/// percentiles and the samples; the rest is computed from the samples.
#[derive(Deserialize)]
struct StatsOnDisk {
    median: f64,
    p10: f64,
    p90: f64,
    mean: Option<f64>,
    sd: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    outliers_low: Option<usize>,
    outliers_high: Option<usize>,
    samples: Vec<f64>,
}

impl From<StatsOnDisk> for Stats {
    fn from(d: StatsOnDisk) -> Stats {
        let whole = Stats {
            median: d.median,
            p10: d.p10,
            p90: d.p90,
            mean: d.mean.unwrap_or(f64::NAN),
            sd: d.sd.unwrap_or(f64::NAN),
            min: d.min.unwrap_or(f64::NAN),
            max: d.max.unwrap_or(f64::NAN),
            outliers_low: d.outliers_low.unwrap_or(0),
            outliers_high: d.outliers_high.unwrap_or(0),
            samples: d.samples,
        };
        let recorded = [d.mean, d.sd, d.min, d.max].iter().all(Option::is_some)
            && d.outliers_low.is_some()
            && d.outliers_high.is_some();
        if recorded {
            return whole; // the usual case: no sort of every point's samples
        }
        let mut sorted = whole.samples.clone();
        sorted.sort_by(f64::total_cmp);
        let derived = Stats::from_samples(Vec::new()).with_summary_of(&sorted);
        Stats {
            mean: d.mean.unwrap_or(derived.mean),
            sd: d.sd.unwrap_or(derived.sd),
            min: d.min.unwrap_or(derived.min),
            max: d.max.unwrap_or(derived.max),
            outliers_low: d.outliers_low.unwrap_or(derived.outliers_low),
            outliers_high: d.outliers_high.unwrap_or(derived.outliers_high),
            ..whole
        }
    }
}

impl Stats {
    /// Every figure of `samples`, which are kept as given. NaN (and no
    /// outliers) for no samples.
    pub fn from_samples(samples: Vec<f64>) -> Stats {
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let blank = Stats {
            median: percentile(&sorted, 0.5),
            p10: percentile(&sorted, 0.1),
            p90: percentile(&sorted, 0.9),
            mean: f64::NAN,
            sd: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
            outliers_low: 0,
            outliers_high: 0,
            samples: Vec::new(),
        };
        Stats {
            samples,
            ..blank.with_summary_of(&sorted)
        }
    }

    /// `self` with mean, sd, extremes and outlier counts of `sorted`
    /// (samples in ascending order).
    fn with_summary_of(self, sorted: &[f64]) -> Stats {
        let n = sorted.len();
        if n == 0 {
            return self;
        }
        let mean = sorted.iter().sum::<f64>() / n as f64;
        let sd = if n > 1 {
            (sorted.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        let (q1, q3) = (percentile(sorted, 0.25), percentile(sorted, 0.75));
        let (lo, hi) = (q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1));
        Stats {
            mean,
            sd,
            min: sorted[0],
            max: sorted[n - 1],
            outliers_low: sorted.iter().filter(|&&v| v < lo).count(),
            outliers_high: sorted.iter().filter(|&&v| v > hi).count(),
            ..self
        }
    }
}

/// A report's `timing`, read without refusing unknown fields (a grid
/// file's refuses them, to catch typos; a report from a newer writer may
/// carry more).
fn lenient_timing<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Timing, D::Error> {
    #[derive(Deserialize)]
    struct Lenient {
        warmup: usize,
        min_steps: usize,
        budget_s: f64,
        #[serde(default = "one")]
        rounds: usize,
    }
    fn one() -> usize {
        1
    }
    let t = Lenient::deserialize(d)?;
    Ok(Timing {
        warmup: t.warmup,
        min_steps: t.min_steps,
        budget_s: t.budget_s,
        rounds: t.rounds,
    })
}

/// Median milliseconds per step spent in each phase, from instrumented
/// steps interleaved with the timed ones (every third sample). The phases
/// of one instrumented step add up to its time; `instrumented_step_ms` is
/// the median of those times, beside which the plain step's median can be
/// checked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseTimes {
    /// x·w1 and h_relu·w2.
    pub forward_gemms: f64,
    /// The ReLU pass.
    pub relu: f64,
    /// Loss and g_y.
    pub loss_grad: f64,
    /// g_y·w2ᵀ, h_reluᵀ·g_y, xᵀ·g_h (with the fused update).
    pub backward_gemms: f64,
    /// The ReLU mask.
    pub mask: f64,
    /// The first shard waiting at the join for the others (0 with one
    /// shard; absent from version-1 reports, which counted it in `update`).
    #[serde(default)]
    pub join: f64,
    /// Summing the shards' gradients and the update pass (0 for the fused
    /// step).
    pub update: f64,
    /// Median total time of the instrumented steps (absent from older
    /// reports: 0).
    #[serde(default)]
    pub instrumented_step_ms: f64,
}

impl PhaseTimes {
    /// (name, ms) in step order.
    pub fn named(&self) -> [(&'static str, f64); 7] {
        [
            ("forward_gemms", self.forward_gemms),
            ("relu", self.relu),
            ("loss_grad", self.loss_grad),
            ("backward_gemms", self.backward_gemms),
            ("mask", self.mask),
            ("join", self.join),
            ("update", self.update),
        ]
    }

    /// The phases' medians added up.
    pub fn sum(&self) -> f64 {
        self.named().iter().map(|(_, ms)| ms).sum()
    }
}

/// One measured point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointReport {
    /// The run timed: dtype, shape, threads, step mode and form (flat in
    /// the JSON, as before; `form` absent from older reports, which timed
    /// the primal step only).
    #[serde(flatten)]
    pub run: RunDescription,
    /// Number of timed steps.
    pub steps_timed: usize,
    /// Milliseconds per step.
    pub ms_per_step: Stats,
    /// N / median step time.
    pub samples_per_s: f64,
    /// Analytic FLOPs per step / median step time, in 1e9/s.
    pub gflops: f64,
    /// Median time of the step's five GEMMs alone (ms), interleaved with the step.
    pub gemm_ms: f64,
    /// The GEMM-alone samples, paired with `ms_per_step.samples`.
    pub gemm_ms_samples: Vec<f64>,
    /// gemm_ms / median step time: 1.0 means the step costs no more than its GEMMs.
    pub efficiency: f64,
    /// gflops / machine_gemm_gflops: the fraction of the machine's large
    /// square GEMM rate (not of the cores' peak; see `core_peak_fraction`).
    pub peak_fraction: f64,
    /// gflops / `core_peak_gflops`: the fraction of the cores' arithmetic
    /// peak for the dtype (the report's `peak` probe). Absent for the dual
    /// form (its GFLOP/s are primal-equivalent) and without a probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_peak_fraction: Option<f64>,
    /// The cores' peak for this dtype and thread count (the probe's rate ×
    /// threads / cores), GFLOP/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_peak_gflops: Option<f64>,
    /// The machine's large square GEMM rate, same dtype and threads, same
    /// run: the median of `machine_gemm`'s samples.
    pub machine_gemm_gflops: f64,
    /// The GEMM rate's samples (GFLOP/s), measured in every round of the
    /// sweep right before the first point of this dtype and thread count
    /// (absent from version-1 reports, which measured it once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_gemm: Option<Stats>,
    /// Median ms per phase.
    pub phases: PhaseTimes,
    /// Bytes of x, y, the weights and the step's buffers.
    pub workspace_bytes: u64,
    /// The process's peak RSS while measuring this point (under mpirun:
    /// summed over the ranks): the point's memory plus everything the
    /// process already held (the binary, OpenBLAS's buffers, allocator
    /// caches).
    pub peak_rss_bytes: u64,
    /// What the point itself added: the peak RSS while measuring it less
    /// the RSS just before its data and buffers were made, after the
    /// allocator returned the previous points' free memory (absent from
    /// version-1 reports: 0). Compare it with `workspace_bytes`.
    #[serde(default)]
    pub rss_growth_bytes: u64,
    /// The plan the step ran and where it came from (absent from older
    /// reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanReport>,
    /// Under mpirun: the data-parallel layout and what it cost. Absent in
    /// a single process's report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mpi: Option<MpiPoint>,
    /// What the point's own numbers say is off about them
    /// ([`super::quality::point_warnings`]); empty when nothing is (and
    /// in older reports).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// How a point's step divided its work ([`crate::Plan`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanReport {
    /// Shards, one per rayon thread.
    pub shards: usize,
    /// Rows per block.
    pub block_rows: usize,
    /// OpenBLAS threads per GEMM.
    pub blas_threads: usize,
    /// Whether the update ran inside the gradient GEMMs.
    pub fused_gemm_update: bool,
    /// How the blocks' activations lay ([`crate::step::Layout`]; `rows`
    /// in reports written before it existed).
    #[serde(default)]
    pub layout: crate::step::Layout,
    /// `the built-in rule`, or the wisdom file it came from.
    pub source: String,
}

impl PlanReport {
    /// The report of `plan`, from `source`.
    pub fn of(plan: crate::Plan, source: String) -> PlanReport {
        PlanReport {
            shards: plan.shards,
            block_rows: plan.block_rows,
            blas_threads: plan.blas_threads,
            fused_gemm_update: plan.fused_gemm_update,
            layout: plan.layout,
            source,
        }
    }
}

/// A point measured by K MPI ranks, each on its own rows with `threads`
/// threads (the point's thread count is per rank). The point's step times
/// are per step the slowest rank's; its GEMM times are each rank's own
/// shard's GEMMs, slowest rank; its GEMM rate and memory are summed over
/// the ranks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MpiPoint {
    /// Number of ranks K.
    pub ranks: usize,
    /// `overlap` or `blocking`.
    pub allreduce: String,
    /// Pieces g_w1's sum is started in (1 when blocking).
    pub allreduce_pieces: usize,
    /// Milliseconds per step inside MPI calls (the part of the allreduces
    /// the work did not hide), slowest rank, per step.
    pub allreduce_ms: Stats,
    /// Milliseconds per step of one rank alone on the whole batch with the
    /// same threads (the other ranks idle), same run.
    pub single_rank_ms: Stats,
    /// single_rank_ms median / (K × step median): 1.0 is perfect strong
    /// scaling.
    pub scaling_efficiency: f64,
    /// The MPI library, as it names itself.
    pub library: String,
}

impl PointReport {
    /// `(N, D_in, H, D_out)`.
    pub fn shape_label(&self) -> String {
        let r = &self.run;
        format!("({}, {}, {}, {})", r.n, r.d_in, r.hidden, r.d_out)
    }

    /// The point's shape (as the report gives it, not checked: the FLOP
    /// count of a shape in f64 does not overflow).
    pub fn shape(&self) -> crate::shape::Shape {
        self.run.shape()
    }

    /// What identifies a point across two reports (the last field is the
    /// number of MPI ranks, 1 for a single process).
    pub fn key(&self) -> (usize, usize, usize, usize, Dtype, usize, StepMode, usize) {
        let r = &self.run;
        (
            r.n,
            r.d_in,
            r.hidden,
            r.d_out,
            r.dtype,
            r.threads,
            r.step_mode,
            self.ranks(),
        )
    }

    /// Median of the per-step ratios step time / its GEMMs' time (NaN
    /// without samples).
    pub fn median_step_per_gemm(&self) -> f64 {
        let r: Vec<f64> = self
            .ms_per_step
            .samples
            .iter()
            .zip(&self.gemm_ms_samples)
            .map(|(s, g)| s / g)
            .collect();
        crate::stats::median(&r)
    }

    /// MPI ranks that measured the point (1 for a single process).
    pub fn ranks(&self) -> usize {
        self.mpi.as_ref().map_or(1, |m| m.ranks)
    }
}

impl Report {
    /// Reads a report, refusing other schema versions with a clear message.
    pub fn read(path: &Path) -> Result<Report> {
        let text = crate::input::read_text(path, crate::input::REPORT_LIMIT)?;
        // One pass when the report is whole and of this version (a report
        // can hold millions of samples); the version is looked at on its
        // own only to say why one is not.
        let parsed: std::result::Result<Report, _> = serde_json::from_str(&text);
        #[derive(Deserialize)]
        struct Version {
            schema_version: Option<serde_json::Value>,
        }
        let version = match &parsed {
            Ok(r) => Some(u64::from(r.schema_version)),
            Err(_) => {
                let v: Version = serde_json::from_str(&text)
                    .map_err(|e| Error::read(path, format!("not valid JSON ({e})")))?;
                v.schema_version.as_ref().and_then(|v| v.as_u64())
            }
        };
        match version {
            Some(v) if v == SCHEMA_VERSION as u64 => {}
            Some(v) => {
                return Err(Error::read(
                    path,
                    format!(
                    "report schema version {v}, but this twolayer reads version {SCHEMA_VERSION}"
                ),
                ))
            }
            None => {
                return Err(Error::read(
                    path,
                    "not a twolayer report (no schema_version)",
                ))
            }
        }
        parsed.map_err(|e| {
            Error::read(
                path,
                format!("does not match report schema {SCHEMA_VERSION} ({e})"),
            )
        })
    }

    /// Writes the report as pretty JSON, atomically.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        write_atomic(path, |w| {
            serde_json::to_writer_pretty(&mut *w, self).map_err(std::io::Error::other)?;
            writeln!(w)
        })
    }
}

/// Milliseconds with about four significant digits.
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.1}")
    } else if ms >= 1.0 {
        format!("{ms:.3}")
    } else {
        format!("{ms:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate() {
        let s = Stats::from_samples(vec![5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((s.median, s.p10, s.p90), (3.0, 1.4, 4.6));
        assert_eq!(s.samples, [5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((s.mean, s.min, s.max), (3.0, 1.0, 5.0));
        assert!((s.sd - 2.5f64.sqrt()).abs() < 1e-15);
        assert_eq!((s.outliers_low, s.outliers_high), (0, 0));
    }

    #[test]
    fn outliers_lie_beyond_tukeys_fences() {
        // -10, -4.9, 1, 2, …, 9, 14.9, 20: quartiles 2 and 8 (IQR 6),
        // fences at -7 and 17.
        let mut v: Vec<f64> = (1..=9).map(f64::from).collect();
        v.extend([20.0, -10.0, 14.9, -4.9]);
        let s = Stats::from_samples(v);
        assert_eq!((s.outliers_low, s.outliers_high), (1, 1));
        let one = Stats::from_samples(vec![2.0]);
        assert_eq!((one.mean, one.sd, one.min, one.max), (2.0, 0.0, 2.0, 2.0));
    }

    #[test]
    fn a_version_1_report_is_read_with_its_new_figures_computed() {
        let v1 = r#"{"median": 2.0, "p10": 1.2, "p90": 2.8, "samples": [1.0, 2.0, 3.0]}"#;
        let s: Stats = serde_json::from_str(v1).unwrap();
        assert_eq!(
            (s.median, s.mean, s.sd, s.min, s.max),
            (2.0, 2.0, 1.0, 1.0, 3.0)
        );
        // A field this build does not know is no error.
        let newer = r#"{"median": 2.0, "p10": 1.2, "p90": 2.8, "samples": [2.0], "p99": 3.0}"#;
        assert!(serde_json::from_str::<Stats>(newer).is_ok());
    }
}
