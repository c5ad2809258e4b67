//! The summary of a run at its end: the one line on stderr (steps, time,
//! rate and its share of the cores' peak, how the step ran, the library,
//! memory, the final loss) and the same facts as JSON (`--json FILE`).

use super::{global_shape, Reporter};
use crate::signals::signal_name;
use std::io::Write;
use twolayer::blas;
use twolayer::checkpoint::EpochRecord;
use twolayer::error::{Error, Result};
use twolayer::output;
use twolayer::scalar::Real;
use twolayer::step::Form;
use twolayer::train::{RunStats, Trainer};

/// The summary line as JSON (`train --json FILE`).
#[derive(serde::Serialize)]
struct Summary {
    /// Steps this process ran.
    steps: usize,
    /// Steps done in all (a resumed run counts its past ones).
    steps_done: usize,
    total_steps: usize,
    n: usize,
    d_in: usize,
    hidden: usize,
    d_out: usize,
    dtype: &'static str,
    /// Wall time of the steps run (set-up and outputs excluded).
    seconds: f64,
    /// Wall time of the run's outputs between steps: validation,
    /// checkpoints, metrics, the `t loss` lines.
    outputs_seconds: f64,
    ms_per_step: f64,
    /// From the analytic count 4·N·D_in·H + 6·N·H·D_out (the primal
    /// step's, whatever form ran).
    gflops: f64,
    /// `primal` or `dual`.
    form: &'static str,
    /// Where the primal step's plan came from.
    plan_source: String,
    /// From the FLOPs of the form that ran (the dual's h = P + G·C is
    /// 2·N²·H where the primal's two big products are 4·N·D_in·H).
    gflops_done: f64,
    /// `gflops` / `core_peak_gflops`, when a peak probe is cached (primal
    /// form, one process).
    #[serde(skip_serializing_if = "Option::is_none")]
    core_peak_fraction: Option<f64>,
    /// The cores' peak for the dtype and the run's threads, GFLOP/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    core_peak_gflops: Option<f64>,
    threads: usize,
    shards: usize,
    block_rows: usize,
    /// The blocks' layout: `rows` (a row per example) or `units` (a row
    /// per hidden unit).
    layout: &'static str,
    blas_threads: usize,
    blas_core: String,
    /// The OpenBLAS library that ran: version, target, native or generic,
    /// bf16 GEMM, path.
    blas_library: blas::Library,
    ranks: usize,
    loss: &'static str,
    final_loss: Option<f64>,
    peak_rss_bytes: Option<u64>,
    /// The memory the run was estimated to hold at its peak, before it
    /// allocated anything (the check refuses a run over 90% of the memory
    /// available).
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_estimate_bytes: Option<u64>,
    /// A minibatch run's epochs.
    epochs: Vec<EpochRecord>,
    /// The signal that stopped the run early, if one did.
    stopped_by: Option<&'static str>,
    /// Early stopping: the epoch the run stopped after, when its patience
    /// ran out.
    stopped_early_after_epoch: Option<u64>,
    /// The epoch with the lowest validation loss, and that loss.
    best_epoch: Option<u64>,
    best_val_loss: Option<f64>,
    /// A minibatch run's data: `memory` (loaded once) or `streamed` (read
    /// from its files a batch at a time).
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'static str>,
    /// How a minibatch run's batches were gathered: `inline` (before each
    /// step) or `ahead` (by a reader thread while the step ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    reader: Option<&'static str>,
    /// What in the environment slowed the run (as a sweep report's
    /// `env.warnings`).
    environment_warnings: Vec<String>,
}

impl<F: Real> Reporter<'_, F> {
    /// Says the summary line (with `extra` appended: what the MPI driver
    /// adds) and writes the JSON summary when asked for.
    pub(super) fn summarise(
        &mut self,
        trainer: &Trainer<F>,
        stats: &RunStats,
        signal: Option<i32>,
        extra: &str,
    ) -> Result<()> {
        let (args, run) = (self.args, self.run);
        let shape = global_shape(trainer, self.n_total);
        let gflops = shape.flops_per_step() / (stats.ms_per_step() * 1e-3) / 1e9;
        let plan = trainer.plan();
        let form = trainer.form();
        // What the step's products cost in the form that ran.
        let done_flops = form.flops_per_step(shape);
        let done_gflops = done_flops / (stats.ms_per_step() * 1e-3) / 1e9;
        let how = match form {
            Form::Primal if trainer.dtype() == twolayer::Dtype::Bf16 => {
                "bf16 mixed precision: the whole batch through each GEMM, bf16 operands and f32 results (cblas_sbgemm), the passes and the update in f32".into()
            }
            Form::Primal => format!(
                "{} shard(s) of {} rows in blocks of {}{}, plan from {}",
                plan.shards,
                trainer.data().x.nrows().div_ceil(plan.shards),
                plan.block_rows,
                match plan.layout {
                    twolayer::step::Layout::Rows => "",
                    twolayer::step::Layout::Units => ", a row per hidden unit",
                },
                self.plan_source
            ),
            Form::Dual => "dual form: w1 = w1_0 + xᵀ·C, one N×N by N×H product for x·w1".into(),
        };
        // Of the cores' peak, when a probe is cached (a run never waits for
        // one: `twolayer info` or a sweep measures it); not across ranks,
        // which may be other machines, nor for the dual form, whose rate
        // is primal-equivalent.
        let core_peak = (form == Form::Primal && run.ranks == 1)
            .then(twolayer::machine::peak::cached_peak)
            .flatten()
            .and_then(|p| p.fraction(trainer.dtype(), run.run.threads, gflops));
        let rate = match form {
            Form::Primal => match core_peak {
                Some((f, r)) => format!(
                    "{gflops:.1} GFLOP/s ({:.0}% of the cores' {} peak, {:.1} GFLOP/s {})",
                    f * 100.0,
                    trainer.dtype(),
                    r.gflops,
                    r.instruction.name()
                ),
                None => format!("{gflops:.1} GFLOP/s"),
            },
            Form::Dual => format!(
                "{gflops:.1} GFLOP/s primal-equivalent ({done_gflops:.1} GFLOP/s of the dual form's own products)"
            ),
        };
        let best = self.best_epoch;
        if let Some(e) = self.stopped_early {
            let (b, l) = best.expect("early stopping needs a validated epoch");
            say!(
                "twolayer: stopped early after epoch {e}: the validation loss has not improved for {} epochs, since epoch {b} ({l:.6e}){}",
                e - b,
                if args.save_best.is_some() {
                    format!("; --save-best holds epoch {b}'s weights")
                } else {
                    String::new()
                }
            );
        }
        say!(
            "twolayer: {} steps of {shape} {}{} in {:.3} s: {:.4} ms/step, {rate}; outputs between steps {:.3} s; threads {} ({how}, OpenBLAS {} thread(s) per GEMM, {} kernels of OpenBLAS {}){extra}; peak RSS {}; final loss {:?}",
            stats.steps,
            trainer.dtype(),
            if trainer.weights_have_biases() { " with biases" } else { "" },
            stats.elapsed.as_secs_f64(),
            stats.ms_per_step(),
            stats.outputs.as_secs_f64(),
            run.run.threads,
            // What OpenBLAS uses (it caps a larger request at its build's
            // maximum), not what the plan asked for.
            blas::threads(),
            blas::core_name(),
            {
                let lib = blas::Library::current();
                if lib.native {
                    format!("{} native {}", lib.version, lib.target)
                } else {
                    format!("{} generic", lib.version)
                }
            },
            twolayer::machine::peak_rss_bytes()
                .map(|b| twolayer::error::human_bytes(b as f64))
                .unwrap_or_else(|| "unknown".into()),
            trainer.last_loss().unwrap_or(f64::NAN),
        );
        if let Some(p) = &args.output.json {
            let summary = Summary {
                steps: stats.steps,
                steps_done: trainer.steps_done(),
                total_steps: run.total_steps,
                n: shape.n,
                d_in: shape.d_in,
                hidden: shape.hidden,
                d_out: shape.d_out,
                dtype: trainer.dtype().name(),
                seconds: stats.elapsed.as_secs_f64(),
                outputs_seconds: stats.outputs.as_secs_f64(),
                ms_per_step: stats.ms_per_step(),
                gflops,
                form: form.name(),
                gflops_done: done_gflops,
                core_peak_fraction: core_peak.map(|c| c.0),
                core_peak_gflops: core_peak.map(|c| c.1.gflops),
                plan_source: self.plan_source.clone(),
                threads: run.run.threads,
                shards: plan.shards,
                block_rows: plan.block_rows,
                layout: plan.layout.name(),
                blas_threads: blas::threads(),
                blas_core: blas::core_name(),
                blas_library: blas::Library::current(),
                ranks: run.ranks,
                loss: run.loss.name(),
                final_loss: trainer.last_loss(),
                peak_rss_bytes: twolayer::machine::peak_rss_bytes(),
                memory_estimate_bytes: self.memory_estimate.map(|b| b.min(u64::MAX as u128) as u64),
                epochs: self.history.clone(),
                stopped_by: signal.map(signal_name),
                stopped_early_after_epoch: self.stopped_early,
                best_epoch: best.map(|b| b.0),
                best_val_loss: best.map(|b| b.1),
                data: self.feed.map(|f| f.0),
                reader: self.feed.map(|f| f.1),
                environment_warnings: twolayer::kernel_set::environment_warnings(),
            };
            let text = serde_json::to_string_pretty(&summary)
                .map_err(|e| Error::invalid(format!("cannot write JSON: {e}")))?;
            output::write_atomic(p, |w| w.write_all(text.as_bytes()))?;
        }
        Ok(())
    }
}
