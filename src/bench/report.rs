//! The sweep report: its versioned JSON schema (documented in
//! docs/report-schema.md) and its CSV and Markdown renderings.

use super::env::Env;
use super::grid::Timing;
use crate::error::{human_bytes, Error, Result};
use crate::output::write_atomic;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// The schema version this build writes and reads. Bump it on any change
/// that an older reader would misread.
pub const SCHEMA_VERSION: u32 = 1;

/// A whole sweep report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    /// Where and how it was measured.
    pub env: Env,
    /// How long each point was measured.
    pub timing: Timing,
    /// One entry per point, in the order they ran.
    pub points: Vec<PointReport>,
}

/// Median, 10th and 90th percentiles, and the raw samples (milliseconds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stats {
    /// 50th percentile.
    pub median: f64,
    /// 10th percentile.
    pub p10: f64,
    /// 90th percentile.
    pub p90: f64,
    /// Every sample, in the order taken.
    pub samples: Vec<f64>,
}

impl Stats {
    /// Percentiles (linear interpolation between order statistics) of
    /// `samples`, which are kept as given. NaN for no samples.
    pub fn from_samples(samples: Vec<f64>) -> Stats {
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        Stats {
            median: percentile(&sorted, 0.5),
            p10: percentile(&sorted, 0.1),
            p90: percentile(&sorted, 0.9),
            samples,
        }
    }
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

/// Median milliseconds per step spent in each phase (from instrumented
/// steps run apart from the timed ones).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// The separate update pass (0 for the fused step).
    pub update: f64,
}

impl PhaseTimes {
    /// (name, ms) in step order.
    pub fn named(&self) -> [(&'static str, f64); 6] {
        [
            ("forward_gemms", self.forward_gemms),
            ("relu", self.relu),
            ("loss_grad", self.loss_grad),
            ("backward_gemms", self.backward_gemms),
            ("mask", self.mask),
            ("update", self.update),
        ]
    }
}

/// One measured point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// The machine's large square GEMM rate, same dtype and threads, same run.
    pub machine_gemm_gflops: f64,
    /// Median ms per phase.
    pub phases: PhaseTimes,
    /// Bytes of x, y, the weights and the step's buffers.
    pub workspace_bytes: u64,
    /// The process's peak RSS while measuring this point (under mpirun:
    /// summed over the ranks).
    pub peak_rss_bytes: u64,
    /// Under mpirun: the data-parallel layout and what it cost. Absent in
    /// a single process's report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mpi: Option<MpiPoint>,
}

/// A point measured by K MPI ranks, each on its own rows with `threads`
/// threads (the point's thread count is per rank). The point's step times
/// are per step the slowest rank's; its GEMM times are each rank's own
/// shard's GEMMs, slowest rank; its GEMM rate and memory are summed over
/// the ranks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
             single_rank_ms,scaling_efficiency\n",
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
                    let _ = writeln!(
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
                None => s.push_str(",1,,,,,\n"),
            }
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
        s.push_str(
            "| shape (N, D_in, H, D_out) | dtype | thr | ms/step median [p10, p90] | samples/s | GFLOP/s | % of GEMM rate | GEMMs alone ms | efficiency | biggest non-GEMM phase | memory |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|\n",
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
                "| {} | {} | {} | {} [{}, {}] | {:.0} | {:.1} | {:.0}% | {} | {:.2} | {name} {} | {} |",
                p.shape_label(),
                p.dtype,
                p.threads,
                fmt_ms(p.ms_per_step.median),
                fmt_ms(p.ms_per_step.p10),
                fmt_ms(p.ms_per_step.p90),
                p.samples_per_s,
                p.gflops,
                p.peak_fraction * 100.0,
                fmt_ms(p.gemm_ms),
                p.efficiency,
                fmt_ms(ms),
                human_bytes(p.workspace_bytes as f64),
            );
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
        // One line per dtype and thread count; a report merged from several
        // processes has several measurements of each: give their median.
        let mut by_kind: std::collections::BTreeMap<(String, usize), Vec<f64>> = Default::default();
        for p in &self.points {
            by_kind
                .entry((p.dtype.clone(), p.threads))
                .or_default()
                .push(p.machine_gemm_gflops);
        }
        let rates: Vec<String> = by_kind
            .into_iter()
            .map(|((dtype, threads), mut v)| {
                v.sort_by(f64::total_cmp);
                v.dedup();
                format!(
                    "{dtype} × {threads} threads: {:.1} GFLOP/s",
                    percentile(&v, 0.5)
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "\nGEMM rate (square {n}×{n} GEMM, same run): {}.",
            rates.join("; "),
            n = super::measure::MACHINE_GEMM_SIZE
        );
        s
    }

    /// Writes report.json, report.csv, report.md, gflops.svg and phases.svg
    /// into `dir` (created if missing), each atomically.
    /// A failure names the files written before it (a full disk once
    /// left three of five with no word of which).
    pub fn write_all(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
        let csv = self.to_csv();
        let md = self.to_markdown();
        let steps: [(&str, &dyn Fn() -> Result<()>); 5] = [
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
    }
}
