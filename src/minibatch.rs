//! Minibatch training over a [`Dataset`]: each step trains on the batch
//! its [`Schedule`] names, gathered into a spare buffer by a reader thread
//! while the step before it runs, then swapped into the trainer — so the
//! step is the same preallocated step as for one in-memory batch, and the
//! reads cost it nothing but the swap when the disk keeps up.
//!
//! Three batch buffers take turns: the one the step is training on, and
//! up to two being filled or waiting. Memory is three batches, whatever
//! the dataset's size.

use crate::dataset::batches::Schedule;
use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::net::Data;
use crate::scalar::Real;
use crate::train::{RunStats, Trainer};
use ndarray::Array2;
use std::ops::ControlFlow;
use std::sync::mpsc;

/// Batches the reader may be ahead of the step.
const AHEAD: u64 = 2;

/// A zero batch of `rows` rows of `data`'s widths: what a minibatch
/// trainer is created with (its rows are replaced before every step).
pub fn empty_batch<F: Real>(data: &Dataset, rows: usize) -> Data<F> {
    Data {
        x: Array2::zeros((rows, data.d_in())),
        y: Array2::zeros((rows, data.d_out())),
    }
}

/// Runs up to `steps` steps of `trainer` on the batches `schedule` cuts
/// from `data`, continuing from the trainer's step count (a resumed run
/// picks up mid-epoch), calling `on_step(trainer, t, loss)` after each as
/// [`Trainer::run`] does. The trainer's batch must have the schedule's
/// rows and the data's widths.
pub fn run<F: Real>(
    trainer: &mut Trainer<F>,
    data: &Dataset,
    schedule: &Schedule,
    steps: usize,
    on_step: impl FnMut(&Trainer<F>, usize, f64) -> ControlFlow<()> + Send,
) -> Result<RunStats> {
    let shape = trainer.shape();
    if (shape.n, shape.d_in, shape.d_out) != (schedule.batch(), data.d_in(), data.d_out()) {
        return Err(Error::invalid(format!(
            "the trainer's batch ({shape}) does not match batches of {} rows of {}→{} data",
            schedule.batch(),
            data.d_in(),
            data.d_out()
        )));
    }
    let first = trainer.steps_done() as u64;
    let end = first + steps as u64;
    std::thread::scope(|scope| {
        // Jobs: (step, a buffer to fill). Results: the filled buffer, or
        // the read's error (after which the reader stops).
        let (job_tx, job_rx) = mpsc::channel::<(u64, Data<F>)>();
        let (done_tx, done_rx) = mpsc::sync_channel::<Result<(u64, Data<F>)>>(AHEAD as usize);
        scope.spawn(move || {
            let (mut rows, mut scratch) = (Vec::new(), Vec::new());
            for (t, mut buf) in job_rx {
                schedule.batch_rows(t, &mut rows);
                let r = data
                    .gather(&rows, buf.x.view_mut(), buf.y.view_mut(), &mut scratch)
                    .map(|()| (t, buf));
                let failed = r.is_err();
                if done_tx.send(r).is_err() || failed {
                    break;
                }
            }
        });
        for t in first..end.min(first + AHEAD) {
            let _ = job_tx.send((t, empty_batch(data, schedule.batch())));
        }
        trainer.run_with(
            steps,
            move |batch, t| {
                let (got, mut filled) = done_rx
                    .recv()
                    .map_err(|_| Error::invalid("the batch reader stopped unexpectedly"))??;
                debug_assert_eq!(got, t as u64);
                std::mem::swap(batch, &mut filled);
                let next = t as u64 + AHEAD;
                if next < end {
                    // The buffer just trained on is refilled for a later step.
                    let _ = job_tx.send((next, filled));
                }
                Ok(())
            },
            on_step,
        )
    })
}
