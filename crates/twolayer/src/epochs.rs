//! Whole epochs of minibatch training: what the end of an epoch records
//! (the mean of its training losses; the validation loss and mean squared
//! error) and the loop that hands each step, with the record of the epoch
//! it ends, to the caller, who may stop the run there (early stopping, an
//! error) or at any step (a [`Cancel`] from another thread, a signal).
//!
//! Every front end trains a dataset through this: the command line's
//! `train --data` (one process; its MPI ranks take [`Epochs::record`]) and
//! a binding. Steps are counted from 0 over the whole run (a resumed run
//! goes on counting); epoch `e` (from 1) ends with step `e·B − 1`, for `B`
//! batches per epoch.

use crate::checkpoint::EpochRecord;
use crate::dataset::batches::Schedule;
use crate::dataset::Dataset;
use crate::error::Result;
use crate::minibatch::Reader;
use crate::predict::{evaluate, Rows};
use crate::scalar::Real;
use crate::train::{Loss, RunStats, Trainer};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The learning rate of a run on a dataset when not told (`train --data`,
/// a binding's estimator; docs/design.md §1b): made to learn on data as
/// people bring it (standardised or not far from it) without tuning, with
/// the mean loss (so the rate does not depend on the batch) and weights
/// and biases drawn as PyTorch's `nn.Linear` draws them; the rate, batch
/// and epoch count were measured on the diabetes demo and README's example.
pub const DEFAULT_LR: f64 = 0.01;
/// Rows per batch of a run on a dataset (fewer when the training rows are
/// fewer).
pub const DEFAULT_BATCH: u64 = 32;
/// Epochs of a run on a dataset when not told.
pub const DEFAULT_EPOCHS: u64 = 20;

/// A dataset as epochs: its rows, the schedule of minibatches over them,
/// and where validation is measured (a separate dataset, else the rows
/// the schedule holds out, if any).
#[derive(Clone, Copy, Debug)]
pub struct Epochs<'a> {
    /// The training rows (and the held-out rows, when the schedule keeps
    /// some).
    pub data: &'a Dataset,
    /// Which rows each step trains on.
    pub schedule: &'a Schedule,
    /// A separate validation set; with one, held-out rows are not used.
    pub validation: Option<&'a Dataset>,
}

impl Epochs<'_> {
    /// Steps in one epoch.
    pub fn steps_per_epoch(&self) -> usize {
        self.schedule.batches_per_epoch() as usize
    }

    /// Whether a validation error is measured at each epoch's end.
    pub fn validates(&self) -> bool {
        self.validation.is_some() || self.schedule.val_rows() > 0
    }

    /// The record of epoch `epoch` (from 1), which `t`'s last step ended:
    /// the mean of its steps' losses and, when there is validation data,
    /// the validation error of `t`'s weights, as a loss on the training
    /// loss's scale (the mean squared error for `mean`; for `sum`, the sum
    /// over the validation rows scaled to a batch) and as the mean squared
    /// error over every element. Evaluated a batch of rows at a time.
    pub fn record<F: Real>(&self, t: &Trainer<F>, epoch: usize) -> Result<EpochRecord> {
        let per_epoch = self.steps_per_epoch();
        let losses = t
            .losses_since(t.steps_done() - per_epoch)
            .expect("a bounded history keeps at least an epoch's losses");
        let train_loss = losses.iter().sum::<f64>() / losses.len() as f64;
        let batch = self.schedule.batch();
        let errors = match (self.validation, self.schedule.val_rows()) {
            (Some(v), _) => Some(evaluate(v, Rows::All, t.weights(), batch)?),
            (None, 0) => None,
            (None, _) => Some(evaluate(
                self.data,
                Rows::Validation(self.schedule),
                t.weights(),
                batch,
            )?),
        };
        Ok(EpochRecord {
            epoch: epoch as u64,
            step: t.steps_done() as u64,
            train_loss,
            val_loss: errors.map(|e| match t.loss() {
                Loss::Sum => e.sum_sq * batch as f64 / e.rows as f64,
                Loss::Mean => e.mse(),
            }),
            val_mse: errors.map(|e| e.mse()),
        })
    }

    /// The record of the epoch that step `step` (from 0) ends, if it ends
    /// one.
    pub fn record_at<F: Real>(&self, t: &Trainer<F>, step: usize) -> Result<Option<EpochRecord>> {
        let per_epoch = self.steps_per_epoch();
        if (step + 1).is_multiple_of(per_epoch) {
            self.record(t, (step + 1) / per_epoch).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// A request to stop a run, from any thread: the run ends after the step
/// it is in (its weights those of the last finished step). Clones share
/// the request.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A token not yet cancelled.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Asks the run to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether a stop was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What the loop tells the caller after a step.
#[derive(Clone, Debug)]
pub struct StepEnd {
    /// The step, from 0 over the whole run.
    pub step: usize,
    /// Its loss (on the batch, before the update).
    pub loss: f64,
    /// The record of the epoch it ends, if it ends one.
    pub epoch: Option<EpochRecord>,
}

/// Trains `steps` steps of `epochs` (read as `reader` says), telling
/// `on_step` after each, with the epoch's record at an epoch's end; the
/// run stops after a step where `on_step` breaks or `cancel` was
/// cancelled. A validation that fails (a read error) ends the run with
/// its error. Returns the trainer's [`RunStats`] of the steps run.
pub fn run<F: Real>(
    trainer: &mut Trainer<F>,
    epochs: &Epochs,
    reader: Reader,
    steps: usize,
    cancel: Option<&Cancel>,
    mut on_step: impl FnMut(&Trainer<F>, StepEnd) -> ControlFlow<()> + Send,
) -> Result<RunStats> {
    // An epoch's record is the mean of its losses: they must still be in
    // memory at its end (a long run moves older ones to disk, or drops
    // them).
    trainer.hold_latest_losses(epochs.steps_per_epoch());
    let mut failed = None;
    let stats = crate::minibatch::run(
        trainer,
        epochs.data,
        epochs.schedule,
        reader,
        steps,
        |t, step, loss| {
            let epoch = match epochs.record_at(t, step) {
                Ok(r) => r,
                Err(e) => {
                    failed = Some(e);
                    return ControlFlow::Break(());
                }
            };
            let flow = on_step(t, StepEnd { step, loss, epoch });
            if cancel.is_some_and(Cancel::is_cancelled) {
                return ControlFlow::Break(());
            }
            flow
        },
    )?;
    match failed {
        Some(e) => Err(e),
        None => Ok(stats),
    }
}
