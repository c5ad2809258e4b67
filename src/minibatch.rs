//! Minibatch training over a [`Dataset`]: each step trains on the batch
//! its [`Schedule`] names, gathered into the trainer's batch buffer, so
//! the step is the same preallocated step as for one in-memory batch.
//!
//! Two ways to read ([`Reader`]), because which is faster depends on where
//! the rows are:
//!
//! - **Inline**: before each step, every thread of the pool reads its
//!   share of the batch's rows. When the rows are in the page cache, a
//!   read is a memory copy, and a copy needs a core: on a machine whose
//!   cores the step already fills, a reader thread running beside the
//!   step only takes turns with the GEMM threads (and stalls the GEMMs'
//!   barriers while it does). Measured at B = 4096, (1000, 100, 10), f64,
//!   2 threads, with the 1.6 GB dataset in the page cache: 30 ms/step
//!   inline against 37 ms/step ahead (one batch in memory, not three).
//! - **Ahead**: a reader thread fills the next batches (up to two) while
//!   the step runs, and they are swapped in. When reads wait on the disk
//!   (a dataset larger than memory, or not yet cached) the step's
//!   computing hides that wait, which inline reading cannot.
//!
//! [`Reader::auto`] picks inline when the dataset fits comfortably in
//! memory (so it stays cached after the first epoch), ahead otherwise.

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

/// How batches are read (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// By the pool's threads, before each step.
    Inline,
    /// By a reader thread, while the steps before run.
    Ahead,
}

/// How a run asks for its batches to be read: what `--reader` takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ReaderChoice {
    /// Inline when the data fits in half the memory available, else ahead
    /// ([`Reader::auto`]).
    #[default]
    Auto,
    /// By every thread, before each step.
    Inline,
    /// By a reader thread, while the steps before run.
    Ahead,
}

impl ReaderChoice {
    /// The reader for `data`.
    pub fn resolve(self, data: &Dataset) -> Reader {
        match self {
            ReaderChoice::Auto => Reader::auto(data),
            ReaderChoice::Inline => Reader::Inline,
            ReaderChoice::Ahead => Reader::Ahead,
        }
    }
}

impl Reader {
    /// Inline when the dataset's files take at most half the memory
    /// available (they stay in the page cache), ahead otherwise.
    pub fn auto(data: &Dataset) -> Reader {
        let bytes: u64 = data
            .files()
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum();
        if bytes <= crate::machine::available_memory_bytes() / 2 {
            Reader::Inline
        } else {
            Reader::Ahead
        }
    }
}

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
    reader: Reader,
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
    if reader == Reader::Inline {
        let mut fill = InlineFill::new(data, schedule, 0..schedule.batch());
        return trainer.run_with(steps, |batch, t| fill.fill(batch, t), on_step);
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

/// Data-parallel minibatch training: this process holds positions `part`
/// of every batch (its share of the batch's rows, in the batch's ascending
/// order) and reads only those rows; the step's gradients and loss are
/// summed over every process through `exchange` ([`Trainer::run_exchanged`]),
/// so each process applies the update of the whole batch. The trainer's
/// batch must have `part.len()` rows.
#[allow(clippy::too_many_arguments)]
pub fn run_exchanged<F: Real>(
    trainer: &mut Trainer<F>,
    data: &Dataset,
    schedule: &Schedule,
    part: std::ops::Range<usize>,
    exchange: &mut dyn crate::step::Exchange<F>,
    pieces: usize,
    steps: usize,
    on_step: impl FnMut(&Trainer<F>, usize, f64) -> ControlFlow<()>,
) -> Result<RunStats> {
    let shape = trainer.shape();
    if (shape.n, shape.d_in, shape.d_out) != (part.len(), data.d_in(), data.d_out())
        || part.end > schedule.batch()
    {
        return Err(Error::invalid(format!(
            "the trainer's batch ({shape}) does not match rows {}..{} of batches of {} rows of {}→{} data",
            part.start,
            part.end,
            schedule.batch(),
            data.d_in(),
            data.d_out()
        )));
    }
    let mut fill = InlineFill::new(data, schedule, part);
    trainer.run_exchanged_with(
        steps,
        exchange,
        pieces,
        |batch, t| fill.fill(batch, t),
        on_step,
    )
}

/// Inline reading: before step t, every thread of the pool reads its
/// share of positions `part` of batch t's rows into the trainer's batch.
struct InlineFill<'a> {
    data: &'a Dataset,
    schedule: &'a Schedule,
    part: std::ops::Range<usize>,
    rows: Vec<u64>,
    scratch: Vec<Vec<u8>>,
    threads: usize,
}

impl<'a> InlineFill<'a> {
    fn new(data: &'a Dataset, schedule: &'a Schedule, part: std::ops::Range<usize>) -> Self {
        InlineFill {
            data,
            schedule,
            part,
            rows: Vec::new(),
            scratch: Vec::new(),
            threads: rayon::current_num_threads(),
        }
    }

    fn fill<F: Real>(&mut self, batch: &mut Data<F>, t: usize) -> Result<()> {
        self.schedule.batch_rows(t as u64, &mut self.rows);
        self.data.gather_parallel(
            &self.rows[self.part.clone()],
            batch.x.view_mut(),
            batch.y.view_mut(),
            &mut self.scratch,
            self.threads,
        )
    }
}
