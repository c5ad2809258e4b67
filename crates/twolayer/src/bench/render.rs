//! A report's renderings as text: CSV and the Markdown table (with each
//! point's warnings, [`super::quality`]). The report's types know nothing
//! of them; the command line writes them, and its SVG charts, into a
//! sweep's `--out` folder.

use super::report::{fmt_ms, PointReport, Report, Stats};
use crate::error::human_bytes;
use crate::scalar::Dtype;
use crate::step::Form;
use std::fmt::Write as _;

impl Report {
    /// The points as CSV, one row each, with a header row.
    pub fn to_csv(&self) -> String {
        let mut s = String::from(
            "n,d_in,hidden,d_out,dtype,threads,step_mode,steps_timed,ms_median,ms_p10,ms_p90,\
             samples_per_s,gflops,gemm_ms,efficiency,peak_fraction,machine_gemm_gflops,\
             forward_gemms_ms,relu_ms,loss_grad_ms,backward_gemms_ms,mask_ms,update_ms,\
             workspace_bytes,peak_rss_bytes,ranks,allreduce,allreduce_pieces,allreduce_ms,\
             single_rank_ms,scaling_efficiency,join_ms,instrumented_step_ms,ms_mean,ms_sd,\
             ms_min,ms_max,outliers_low,outliers_high,rss_growth_bytes,machine_gemm_gflops_min,\
             machine_gemm_gflops_max,form,core_peak_fraction,core_peak_gflops\n",
        );
        for p in &self.points {
            let ph = &p.phases;
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                p.run.n,
                p.run.d_in,
                p.run.hidden,
                p.run.d_out,
                p.run.dtype,
                p.run.threads,
                p.run.step_mode,
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
                p.run.form
            );
            s.pop();
            let opt = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
            let _ = writeln!(
                s,
                ",{},{}",
                opt(p.core_peak_fraction),
                opt(p.core_peak_gflops)
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
        if let Some(peak) = &self.peak {
            let rates: Vec<String> = peak
                .rates()
                .iter()
                .map(|(what, r)| {
                    format!("{what} {:.1} GFLOP/s ({})", r.gflops, r.instruction.name())
                })
                .collect();
            let _ = writeln!(
                s,
                "The cores' peak ({} threads, one pinned per core, register-only loops): {}. \"% of peak\" is of the dtype's peak for the point's threads; \"% of GEMM rate\" of this run's large square GEMM.\n",
                peak.cores,
                rates.join("; ")
            );
        }
        s.push_str(
            "| shape (N, D_in, H, D_out) | dtype | thr | ms/step median [p10, p90] | mean ± sd | outliers | samples/s | GFLOP/s | % of peak | % of GEMM rate | GEMMs alone ms | efficiency | biggest non-GEMM phase | workspace / RSS growth |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|\n",
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
                "| {} | {} | {} | {} [{}, {}] | {} ± {} | {} | {:.0} | {:.1} | {} | {:.0}% | {} | {:.2} | {name} {} | {} / {} |",
                p.shape_label(),
                // The dual form's GFLOP/s are primal-equivalent (the primal
                // step's FLOP count over the dual step's time).
                if p.run.form == Form::Dual {
                    format!("{} dual", p.run.dtype)
                } else {
                    p.run.dtype.to_string()
                },
                p.run.threads,
                fmt_ms(p.ms_per_step.median),
                fmt_ms(p.ms_per_step.p10),
                fmt_ms(p.ms_per_step.p90),
                fmt_ms(p.ms_per_step.mean),
                fmt_ms(p.ms_per_step.sd),
                p.ms_per_step.outliers_low + p.ms_per_step.outliers_high,
                p.samples_per_s,
                p.gflops,
                p.core_peak_fraction
                    .zip(p.core_peak_gflops)
                    .map_or("–".into(), |(f, g)| format!("{:.0}% of {g:.0}", f * 100.0)),
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
                    let _ = writeln!(
                        s,
                        "- {} {} ×{}: {w}",
                        p.shape_label(),
                        p.run.dtype,
                        p.run.threads
                    );
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
                    p.run.dtype,
                    m.ranks,
                    p.run.threads,
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
        let mut by_kind: std::collections::BTreeMap<(Dtype, usize), Vec<f64>> = Default::default();
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.points {
            let samples = p
                .machine_gemm
                .as_ref()
                .map_or(vec![p.machine_gemm_gflops], |r| r.samples.clone());
            // Every point of a kind carries its process's same samples.
            let key = (p.run.dtype, p.run.threads);
            if seen.insert((key, samples.iter().map(|v| v.to_bits()).collect::<Vec<_>>())) {
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
}
