//! `twolayer train --data` in one process: minibatches of a dataset,
//! validated at the end of every epoch.

use super::super::run_spec::{Minibatch, RunSpec, Start};
use super::report::{run_header, Reporter};
use super::{build_trainer, Begin};
use crate::cli::TrainArgs;
use crate::signals::Signals;
use std::ops::ControlFlow;
use twolayer::error::{Error, Result};
use twolayer::npz;
use twolayer::scalar::Real;

/// One process on minibatches of a dataset, validating at the end of
/// every epoch.
pub(super) fn minibatches<F: Real>(args: &TrainArgs, spec: RunSpec, mb: Minibatch) -> Result<()> {
    let run = run_header(&spec, Some(&mb.header));
    let batch = mb.schedule.batch();
    let mut best = None;
    let settings = spec.trainer_settings();
    let batch_buf = twolayer::minibatch::empty_batch::<F>(&mb.dataset, batch);
    let begin = match spec.start {
        Start::Seeded { seed, init } => Begin::fresh(
            batch_buf,
            twolayer::Weights::seeded(spec.run.shape(), seed, init, spec.biases),
        ),
        Start::Weights { path } => Begin::fresh(batch_buf, npz::load_weights_file::<F>(&path)?),
        Start::Resume(mut c) => {
            best = c.take_best::<F>();
            Begin::resumed(batch_buf, *c, false)
        }
        Start::Init { .. } => unreachable!("--data conflicts with --init"),
    }
    .with_biases(spec.biases);
    let best_before = twolayer::checkpoint::MinibatchHeader::best_epoch(&mb.header.history);
    if let (Some(p), None, Some((e, _))) = (&args.save_best, &best, best_before) {
        return Err(Error::invalid(format!(
            "--save-best {}: the checkpoint does not hold the weights of its best epoch so far ({e}): it was written by a run without --save-best",
            p.display()
        )));
    }
    if mb.header.patience_spent(&mb.header.history) {
        say!(
            "twolayer: nothing to do: the run stopped early after epoch {}, its validation loss no better for {} epochs",
            mb.header.history.last().map_or(0, |r| r.epoch),
            mb.header.patience.unwrap_or(0)
        );
        return Ok(());
    }
    // The minibatch rule weighs the gather beside the step.
    let rule = twolayer::minibatch::plan(
        &mb.dataset,
        spec.run.shape(),
        spec.run.dtype,
        spec.run.threads,
        spec.run.step_mode,
    );
    let (trainer, plan_source) = build_trainer(args, settings, begin, Some(rule), batch, true)?;
    let mut trainer = super::bound_losses(args, trainer, mb.schedule.batches_per_epoch() as usize);
    let signals = Signals::get()?;
    signals.before_training()?;
    let mut rep = Reporter::new(args, &run, plan_source, true, batch);
    rep.start_epochs(mb.header.history.clone(), best);
    let per_epoch = mb.schedule.batches_per_epoch() as usize;
    let epochs = run.total_steps.div_ceil(per_epoch);
    let to_run = run.total_steps - trainer.steps_done();
    let reader = args
        .reader
        .resolve(&mb.dataset, trainer.plan(), spec.run.threads);
    rep.feed = Some((mb.dataset.residency().name(), reader.name()));
    rep.memory_estimate = Some(spec.memory_estimate);
    let result = twolayer::epochs::run(
        &mut trainer,
        &mb.epochs(),
        reader,
        to_run,
        None,
        |t, end| {
            if let Some(r) = end.epoch {
                let epoch = r.epoch;
                rep.push_epoch(r, epochs, t);
                if rep.patience_spent(mb.header.patience) {
                    // Early stopping: this step's checkpoint and the
                    // outputs are still written.
                    rep.stopped_early = Some(epoch);
                    let _ = rep.on_step(t, end.step, end.loss, true);
                    return ControlFlow::Break(());
                }
            }
            rep.on_step(t, end.step, end.loss, signals.caught().is_some())
        },
    );
    let extra = format!(
        "; minibatches of {batch} of {} training rows ({} per epoch{}, data {}, gathered {}), epoch {} of {epochs}",
        mb.schedule.train_rows(),
        per_epoch,
        match (mb.schedule.val_rows(), &mb.val) {
            (0, None) => String::new(),
            (0, Some(v)) => format!(", validated on {} rows", v.rows()),
            (n, _) => format!(", {n} rows held out for validation"),
        },
        match mb.dataset.residency() {
            twolayer::dataset::Residency::Memory => "in memory",
            twolayer::dataset::Residency::Streamed => "streamed from its files",
        },
        reader.name(),
        trainer.steps_done().div_ceil(per_epoch),
    );
    rep.finish(&trainer, result, signals.caught(), &extra)
}
