//! The sweep report: its versioned JSON schema (documented in
//! docs/report-schema.md, machine-readable in docs/report-schema.json)
//! and its CSV and Markdown renderings.
//!
//! Readers accept fields they do not know, so a newer writer's added
//! metric never breaks an older reader or a committed baseline; fields
//! added since version 1 are read with defaults from older reports. The
//! version changes only for a change an older reader would misread.

use super::env::Env;
use super::grid::Timing;
use crate::error::{human_bytes, Error, Result};
use crate::output::write_atomic;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// The schema version this build writes and reads. Bump it only for a
/// change an older reader would misread (a field removed, renamed or given
/// another meaning); adding a field is not one.
pub const SCHEMA_VERSION: u32 = 1;

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
    pub load: Option<super::quality::MachineLoad>,
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
        let mut sorted = d.samples.clone();
        sorted.sort_by(f64::total_cmp);
        let derived = Stats::from_samples(Vec::new()).with_summary_of(&sorted);
        Stats {
            median: d.median,
            p10: d.p10,
            p90: d.p90,
            mean: d.mean.unwrap_or(derived.mean),
            sd: d.sd.unwrap_or(derived.sd),
            min: d.min.unwrap_or(derived.min),
            max: d.max.unwrap_or(derived.max),
            outliers_low: d.outliers_low.unwrap_or(derived.outliers_low),
            outliers_high: d.outliers_high.unwrap_or(derived.outliers_high),
            samples: d.samples,
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

/// The q-quantile of sorted values, interpolating linearly.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let (lo, frac) = (pos.floor() as usize, pos.fract());
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (sorted[hi] - sorted[lo]) * frac
        }
    }
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

fn primal() -> String {
    "primal".into()
}

/// One measured point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointReport {
    /// Batch size N.
    pub n: usize,
    /// Input width D_in.
    pub d_in: usize,
    /// Hidden width H.
    pub hidden: usize,
    /// Output width D_out.
    pub d_out: usize,
    /// `f32` or `f64`.
    pub dtype: String,
    /// Thread budget (rayon and OpenBLAS).
    pub threads: usize,
    /// `fused` or `explicit`.
    pub step_mode: String,
    /// The step's form: `primal` or `dual` (absent from older reports,
    /// which timed the primal step only).
    #[serde(default = "primal")]
    pub form: String,
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
    /// gflops / machine_gemm_gflops.
    pub peak_fraction: f64,
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
        format!(
            "({}, {}, {}, {})",
            self.n, self.d_in, self.hidden, self.d_out
        )
    }

    /// What identifies a point across two reports (the last field is the
    /// number of MPI ranks, 1 for a single process).
    pub fn key(&self) -> (usize, usize, usize, usize, String, usize, String, usize) {
        (
            self.n,
            self.d_in,
            self.hidden,
            self.d_out,
            self.dtype.clone(),
            self.threads,
            self.step_mode.clone(),
            self.ranks(),
        )
    }

    /// Median of the per-step ratios step time / its GEMMs' time (NaN
    /// without samples).
    pub fn median_step_per_gemm(&self) -> f64 {
        let mut r: Vec<f64> = self
            .ms_per_step
            .samples
            .iter()
            .zip(&self.gemm_ms_samples)
            .map(|(s, g)| s / g)
            .collect();
        r.sort_by(f64::total_cmp);
        percentile(&r, 0.5)
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
        // The version first, without building the whole document twice (a
        // report can hold millions of samples).
        #[derive(Deserialize)]
        struct Version {
            schema_version: Option<serde_json::Value>,
        }
        let version: Version = serde_json::from_str(&text)
            .map_err(|e| Error::read(path, format!("not valid JSON ({e})")))?;
        match version.schema_version.as_ref().and_then(|v| v.as_u64()) {
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
        serde_json::from_str(&text).map_err(|e| {
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

    /// The points as CSV, one row each, with a header row.
    pub fn to_csv(&self) -> String {
        let mut s = String::from(
            "n,d_in,hidden,d_out,dtype,threads,step_mode,steps_timed,ms_median,ms_p10,ms_p90,\
             samples_per_s,gflops,gemm_ms,efficiency,peak_fraction,machine_gemm_gflops,\
             forward_gemms_ms,relu_ms,loss_grad_ms,backward_gemms_ms,mask_ms,update_ms,\
             workspace_bytes,peak_rss_bytes,ranks,allreduce,allreduce_pieces,allreduce_ms,\
             single_rank_ms,scaling_efficiency,join_ms,instrumented_step_ms,ms_mean,ms_sd,\
             ms_min,ms_max,outliers_low,outliers_high,rss_growth_bytes,machine_gemm_gflops_min,\
             machine_gemm_gflops_max,form\n",
        );
        for p in &self.points {
            let ph = &p.phases;
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                p.n,
                p.d_in,
                p.hidden,
                p.d_out,
                p.dtype,
                p.threads,
                p.step_mode,
                p.steps_timed,
                p.ms_per_step.median,
                p.ms_per_step.p10,
                p.ms_per_step.p90,
                p.samples_per_s,
                p.gflops,
                p.gemm_ms,
                p.efficiency,
                p.peak_fraction,
                p.machine_gemm_gflops,
                ph.forward_gemms,
                ph.relu,
                ph.loss_grad,
                ph.backward_gemms,
                ph.mask,
                ph.update,
                p.workspace_bytes,
                p.peak_rss_bytes
            );
            s.pop(); // the newline: the MPI columns follow
            match &p.mpi {
                Some(m) => {
                    let _ = write!(
                        s,
                        ",{},{},{},{},{},{}",
                        m.ranks,
                        m.allreduce,
                        m.allreduce_pieces,
                        m.allreduce_ms.median,
                        m.single_rank_ms.median,
                        m.scaling_efficiency
                    );
                }
                None => s.push_str(",1,,,,,"),
            }
            // Columns added after the first schema: at the end, so that
            // readers of the older columns by position still work.
            let st = &p.ms_per_step;
            let (rate_min, rate_max) = p
                .machine_gemm
                .as_ref()
                .map_or((p.machine_gemm_gflops, p.machine_gemm_gflops), |r| {
                    (r.min, r.max)
                });
            let _ = writeln!(
                s,
                ",{},{},{},{},{},{},{},{},{},{},{},{}",
                ph.join,
                ph.instrumented_step_ms,
                st.mean,
                st.sd,
                st.min,
                st.max,
                st.outliers_low,
                st.outliers_high,
                p.rss_growth_bytes,
                rate_min,
                rate_max,
                p.form
            );
        }
        s
    }

    /// A Markdown table of the points, fit to paste into a pull request,
    /// preceded by the environment in brief.
    pub fn to_markdown(&self) -> String {
        let e = &self.env;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "twolayer {} ({}) on {}, {} cores; OpenBLAS {} ({}); {}; {}\n",
            e.crate_version,
            e.git_commit,
            e.cpu_model,
            e.cores,
            e.openblas_version,
            e.openblas_core,
            e.rustc,
            e.date
        );
        for w in &e.warnings {
            let _ = writeln!(s, "Slowed by the environment: {w}.\n");
        }
        s.push_str(
            "| shape (N, D_in, H, D_out) | dtype | thr | ms/step median [p10, p90] | mean ± sd | outliers | samples/s | GFLOP/s | % of GEMM rate | GEMMs alone ms | efficiency | biggest non-GEMM phase | workspace / RSS growth |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|\n",
        );
        for p in &self.points {
            let (name, ms) = p
                .phases
                .named()
                .into_iter()
                .filter(|(n, _)| !n.ends_with("gemms"))
                .fold(("none", 0.0), |best, x| if x.1 > best.1 { x } else { best });
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} [{}, {}] | {} ± {} | {} | {:.0} | {:.1} | {:.0}% | {} | {:.2} | {name} {} | {} / {} |",
                p.shape_label(),
                // The dual form's GFLOP/s are primal-equivalent (the primal
                // step's FLOP count over the dual step's time).
                if p.form == "dual" {
                    format!("{} dual", p.dtype)
                } else {
                    p.dtype.clone()
                },
                p.threads,
                fmt_ms(p.ms_per_step.median),
                fmt_ms(p.ms_per_step.p10),
                fmt_ms(p.ms_per_step.p90),
                fmt_ms(p.ms_per_step.mean),
                fmt_ms(p.ms_per_step.sd),
                p.ms_per_step.outliers_low + p.ms_per_step.outliers_high,
                p.samples_per_s,
                p.gflops,
                p.peak_fraction * 100.0,
                fmt_ms(p.gemm_ms),
                p.efficiency,
                fmt_ms(ms),
                human_bytes(p.workspace_bytes as f64),
                human_bytes(p.rss_growth_bytes as f64),
            );
        }
        // Whether the figures can be taken as they stand.
        let flagged: Vec<&PointReport> = self
            .points
            .iter()
            .filter(|p| !p.warnings.is_empty())
            .collect();
        if flagged.is_empty() && self.env.warnings.is_empty() {
            s.push_str("\nMeasurement: clean (no point with too many outliers, too wide a spread, an impossible ratio or phases that miss the step; no other load seen).\n");
        } else if !flagged.is_empty() {
            let _ = writeln!(
                s,
                "\n**Measurement not clean** at {} of {} points; take these figures with care:\n",
                flagged.len(),
                self.points.len()
            );
            for p in flagged {
                for w in &p.warnings {
                    let _ = writeln!(s, "- {} {} ×{}: {w}", p.shape_label(), p.dtype, p.threads);
                }
            }
        }
        if self.points.iter().any(|p| p.mpi.is_some()) {
            s.push_str(
                "\nData-parallel (MPI): thr is per rank; scaling efficiency = one rank alone on the whole batch / (K × step).\n\n\
                 | shape (N, D_in, H, D_out) | dtype | ranks × thr | allreduce | ms/step median | in MPI calls ms | 1 rank alone ms | scaling efficiency |\n\
                 |---|---|---:|---|---:|---:|---:|---:|\n",
            );
            for p in &self.points {
                let Some(m) = &p.mpi else { continue };
                let how = if m.allreduce == "overlap" {
                    format!("overlap, {} pieces", m.allreduce_pieces)
                } else {
                    m.allreduce.clone()
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} × {} | {how} | {} | {} | {} | {:.2} |",
                    p.shape_label(),
                    p.dtype,
                    m.ranks,
                    p.threads,
                    fmt_ms(p.ms_per_step.median),
                    fmt_ms(m.allreduce_ms.median),
                    fmt_ms(m.single_rank_ms.median),
                    m.scaling_efficiency
                );
            }
        }
        // One line per dtype and thread count: the median of the rate's
        // samples with their range (a report merged from several
        // processes holds each process's samples: all are pooled).
        let mut by_kind: std::collections::BTreeMap<(String, usize), Vec<f64>> = Default::default();
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.points {
            let samples = p
                .machine_gemm
                .as_ref()
                .map_or(vec![p.machine_gemm_gflops], |r| r.samples.clone());
            // Every point of a kind carries its process's same samples.
            let key = (p.dtype.clone(), p.threads);
            if seen.insert((
                key.clone(),
                samples.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            )) {
                by_kind.entry(key).or_default().extend(samples);
            }
        }
        let rates: Vec<String> = by_kind
            .into_iter()
            .map(|((dtype, threads), v)| {
                let st = Stats::from_samples(v);
                format!(
                    "{dtype} × {threads} threads: {:.1} GFLOP/s [{:.1}, {:.1}] over {} samples",
                    st.median,
                    st.min,
                    st.max,
                    st.samples.len()
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "\nGEMM rate (square {n}×{n} GEMM, sampled through the same run; median [min, max]): {}.",
            rates.join("; "),
            n = super::measure::MACHINE_GEMM_SIZE
        );
        s
    }

    /// The files [`Report::write_all`] writes into its folder.
    pub const FILES: [&'static str; 6] = [
        "report.json",
        "report.csv",
        "report.md",
        "gflops.svg",
        "phases.svg",
        "scaling.svg",
    ];

    /// Writes report.json, report.csv, report.md, gflops.svg, phases.svg
    /// and scaling.svg into `dir` (created if missing), each atomically.
    /// A failure names the files written before it (a full disk once
    /// left three of five with no word of which).
    pub fn write_all(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
        let csv = self.to_csv();
        let md = self.to_markdown();
        let steps: [(&str, &dyn Fn() -> Result<()>); 6] = [
            ("report.json", &|| self.write_json(&dir.join("report.json"))),
            ("report.csv", &|| {
                write_atomic(&dir.join("report.csv"), |w| w.write_all(csv.as_bytes()))
            }),
            ("report.md", &|| {
                write_atomic(&dir.join("report.md"), |w| w.write_all(md.as_bytes()))
            }),
            ("gflops.svg", &|| {
                super::charts::write_gflops_chart(self, dir)
            }),
            ("phases.svg", &|| {
                super::charts::write_phases_chart(self, dir)
            }),
            ("scaling.svg", &|| {
                super::charts::write_scaling_chart(self, dir)
            }),
        ];
        let mut done: Vec<&str> = Vec::new();
        for (name, write) in steps {
            if let Err(e) = write() {
                return Err(Error::invalid(format!(
                    "{e}; written before it: {}",
                    if done.is_empty() {
                        "nothing".to_string()
                    } else {
                        done.join(", ")
                    }
                )));
            }
            done.push(name);
        }
        Ok(())
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
