//! Minibatch training over a [`Dataset`]: each step trains on the batch
//! its [`Schedule`] names, gathered into the trainer's batch buffer, so
//! the step is the same preallocated step as for one in-memory batch.
//!
//! Two ways to gather ([`Reader`]), because which is faster depends on
//! where the rows are and whether the step leaves a core free:
//!
//! - **Inline**: before each step the batch is gathered — by every thread
//!   of the pool when it is large or streamed, by the loop's own thread
//!   when it is a small batch in memory (splitting a 25 KB copy costs more
//!   than it saves). When the step fills every core, a reader beside it
//!   only takes turns with the GEMM threads (and stalls their barriers):
//!   measured at B = 4096, (1000, 100, 10), f64, 2 threads, the 1.6 GB
//!   dataset in the page cache, 30 ms/step inline against 37 ahead.
//! - **Ahead**: a reader thread fills the next batches (up to [`AHEAD`])
//!   while the step runs, and each is swapped in. It pays where the step
//!   leaves a core idle — small batches, whose plan runs on one thread
//!   because splitting them costs more than it gains — and where reads
//!   wait on the disk (a dataset larger than memory), which the step's
//!   computing then hides. Batches are handed over through atomic counters
//!   that both sides poll (spinning briefly, then yielding, then sleeping
//!   when the wait is long), not through a channel: at 30 µs a step a
//!   futex wake-up per batch is a large share of the step.
//!
//! [`Reader::auto`] picks ahead when the step's plan leaves a thread of the
//! budget idle, or when the data streams from files larger than half the
//! memory; inline otherwise. Either way the batches are the same rows in
//! the same order, so the losses are the same bits.

use crate::dataset::batches::Schedule;
use crate::dataset::{Dataset, Residency};
use crate::error::{Error, Result};
use crate::net::Data;
use crate::scalar::Real;
use crate::step::Plan;
use crate::train::{RunStats, Trainer};
use ndarray::Array2;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Batches the reader may be ahead of the step.
pub const AHEAD: u64 = 3;

/// How batches are read (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// Before each step, by the loop's thread or the pool's.
    Inline,
    /// By a reader thread, while the steps before run.
    Ahead,
}

impl Reader {
    /// Its name, as the train summary says it.
    pub fn name(self) -> &'static str {
        match self {
            Reader::Inline => "inline",
            Reader::Ahead => "ahead",
        }
    }
}

/// How a run asks for its batches to be read: what `--reader` takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReaderChoice {
    /// Ahead when the step leaves a core free or the data streams from
    /// files larger than half the memory, else inline ([`Reader::auto`]).
    #[default]
    Auto,
    /// Before each step.
    Inline,
    /// By a reader thread, while the step runs.
    Ahead,
}

crate::named!(ReaderChoice, "reader", {
    Auto => "auto", "ahead when the step leaves a core free or the data streams from large files, else inline",
    Inline => "inline", "before each step",
    Ahead => "ahead", "by a reader thread, while the step runs",
});

impl ReaderChoice {
    /// The reader for `data` under a step planned as `plan` on a budget of
    /// `threads` threads.
    pub fn resolve(self, data: &Dataset, plan: Plan, threads: usize) -> Reader {
        match self {
            ReaderChoice::Auto => Reader::auto(data, plan, threads),
            ReaderChoice::Inline => Reader::Inline,
            ReaderChoice::Ahead => Reader::Ahead,
        }
    }
}

impl Reader {
    /// Ahead when the step's plan runs on fewer threads than the budget
    /// (a core would idle during every step: the reader takes it); also
    /// ahead for streamed files larger than half the memory available
    /// (reads wait on the disk, and the step hides the wait); inline
    /// otherwise (the step fills the cores, and a gather from memory or
    /// the page cache is fastest done by all of them between steps).
    pub fn auto(data: &Dataset, plan: Plan, threads: usize) -> Reader {
        if plan.shards * plan.blas_threads < threads {
            return Reader::Ahead;
        }
        if data.residency() == Residency::Memory {
            return Reader::Inline;
        }
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

/// Seconds one core is expected to take choosing and gathering a batch of
/// `rows` rows of `data` where it now is: per row, a fixed cost (choosing
/// it by the permutation, a cache and TLB miss from memory; from files, a
/// system call) and its bytes at memory speed. Measured on the Intel Xeon
/// (examples/gather_cost.rs, 808-byte rows of a 160 MB dataset): 0.34 µs
/// a row from memory (11 µs for 32 rows, 60 for 200), 1.4 µs streamed
/// from the page cache.
pub fn gather_secs_estimate(data: &Dataset, rows: usize) -> f64 {
    let fixed = match data.residency() {
        Residency::Memory => 0.14e-6,
        Residency::Streamed => 1.2e-6,
    };
    let row_bytes = (data.d_in() + data.d_out()) as f64 * data.dtype().size() as f64;
    rows as f64 * (fixed + row_bytes / 4e9)
}

/// The built-in plan for minibatch steps of `shape` on `data` with
/// `threads` threads: the fixed-batch rule's ([`Plan::new`]), unless
/// running the step on one thread while a reader gathers the next batch
/// on another ([`Reader::Ahead`]) is expected to be faster than splitting
/// the step and gathering between steps — max(step on one thread,
/// gather) against (split step + gather), from [`crate::step::step_secs_estimate`]
/// and [`gather_secs_estimate`]. At a batch of 32 rows of (100, 100, 1)
/// f64 the rule itself already runs the step on one thread; at 200 rows
/// it splits (0.116 ms/step on two shards against 0.155 on one thread),
/// and the split step with the gather between steps (0.186) beat the
/// one-thread step fed by the reader (0.18–0.20).
pub fn plan(
    data: &Dataset,
    shape: crate::Shape,
    dtype: crate::Dtype,
    threads: usize,
    mode: crate::StepMode,
) -> Plan {
    let rule = Plan::new(shape, dtype, threads, mode);
    // Only a plan of shards on single-threaded GEMMs has a choice to make.
    if !(rule.shards > 1 && rule.blas_threads == 1) {
        return rule;
    }
    let (one, split) = crate::step::step_secs_estimate(shape, dtype, threads);
    let gather = gather_secs_estimate(data, shape.n);
    // Inline, the gather is split over the threads when it is large
    // enough to pay (InlineFill); ahead, the step reads a batch that the
    // reader's core wrote, a transfer between the cores' caches of about
    // the gather's own bytes (counted as a quarter of the gather: at a
    // batch of 200 rows of (100, 100, 1) the one-thread step took 0.165
    // ms on a fixed batch and 0.20 fed by the reader).
    let inline_gather = if inline_parts(data, shape.n, threads) > 1 {
        gather / threads as f64
    } else {
        gather
    };
    if (one + gather / 4.0).max(gather) <= split + inline_gather {
        Plan::new(shape, dtype, 1, mode)
    } else {
        rule
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
    let ring = Ring::new(data, schedule.batch(), first, first + steps as u64);
    std::thread::scope(|scope| {
        scope.spawn(|| ring.fill_all(data, schedule));
        let r = trainer.run_with(steps, |batch, t| ring.take(batch, t as u64), on_step);
        // The run may end before its last step (a break, an error): the
        // reader stops at its next poll, and the scope joins it.
        ring.stop.store(true, Ordering::Release);
        r
    })
}

/// The batches between a reader thread and the step: [`AHEAD`] buffers
/// used in turn, and two counters that say which are full. Slot `i %
/// AHEAD` holds the batch of step `first + i`. The reader fills batch `i`
/// once the step has taken batch `i − AHEAD` (so its slot holds the
/// buffer the step gave back) and then publishes `filled = i + 1`; the
/// step takes batch `i` once `filled > i`, swapping its own buffer into the
/// slot, and publishes `taken = i + 1`. Each slot's mutex is only ever
/// locked by one side at a time (the counters order them), so it never
/// blocks: it is there to make the hand-over safe, not to wait on.
struct Ring<F> {
    slots: Vec<Mutex<Data<F>>>,
    first: u64,
    end: u64,
    filled: AtomicU64,
    taken: AtomicU64,
    stop: AtomicBool,
    failed: Mutex<Option<Error>>,
}

impl<F: Real> Ring<F> {
    fn new(data: &Dataset, rows: usize, first: u64, end: u64) -> Self {
        Ring {
            slots: (0..AHEAD.min(end - first).max(1))
                .map(|_| Mutex::new(empty_batch(data, rows)))
                .collect(),
            first,
            end,
            filled: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            failed: Mutex::new(None),
        }
    }

    fn slot(&self, i: u64) -> std::sync::MutexGuard<'_, Data<F>> {
        self.slots[(i % self.slots.len() as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The reader thread: every batch from `first` to `end`, in order, or
    /// until the step stops or a read fails (the error is kept for the
    /// step to return).
    fn fill_all(&self, data: &Dataset, schedule: &Schedule) {
        let (mut rows, mut scratch) = (Vec::new(), Vec::new());
        let k = self.slots.len() as u64;
        for i in 0..self.end - self.first {
            if !wait_until(&self.stop, || self.taken.load(Ordering::Acquire) + k > i) {
                return;
            }
            schedule.batch_rows(self.first + i, &mut rows);
            let mut guard = self.slot(i);
            let buf = &mut *guard;
            if let Err(e) = data.gather(&rows, buf.x.view_mut(), buf.y.view_mut(), &mut scratch) {
                *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                self.stop.store(true, Ordering::Release);
                return;
            }
            drop(guard);
            self.filled.store(i + 1, Ordering::Release);
        }
    }

    /// Step `t`'s batch, swapped into `batch` (whose buffer goes back to
    /// the reader); the reader's error when it failed before reading it.
    fn take(&self, batch: &mut Data<F>, t: u64) -> Result<()> {
        let i = t - self.first;
        let ready = || self.filled.load(Ordering::Acquire) > i;
        if !wait_until(&self.stop, ready) && !ready() {
            return Err(self
                .failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .unwrap_or_else(|| Error::invalid("the batch reader stopped unexpectedly")));
        }
        std::mem::swap(batch, &mut *self.slot(i));
        self.taken.store(i + 1, Ordering::Release);
        Ok(())
    }
}

/// Polls `ready` until it holds (true) or `stop` is set (false): spinning
/// first (a hand-over between steps of tens of microseconds), then
/// yielding the core for about a millisecond, then sleeping 50 µs at a
/// time (a reader ahead by [`AHEAD`] batches waiting out a long step or a
/// validation, a step waiting on a disk), so a long wait does not hold a
/// core. Sleeping sooner cost the diabetes demo's 3 µs steps 40 µs each:
/// the reader slept through the steps it had to feed.
fn wait_until(stop: &AtomicBool, ready: impl Fn() -> bool) -> bool {
    let mut polls = 0u32;
    loop {
        if ready() {
            return true;
        }
        if stop.load(Ordering::Acquire) {
            return false;
        }
        polls = polls.saturating_add(1);
        if polls < 4_000 {
            std::hint::spin_loop();
        } else if polls < 6_000 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }
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

/// A gather from memory under this many bytes runs on one thread.
const SMALL_GATHER_BYTES: usize = 64 << 10;

/// How many of `threads` threads gather `rows` rows inline: one for a
/// small batch in memory (a few copies: splitting them costs a wake-up,
/// more than it saves; 32 rows of 101 f64 values are 26 KB), else all.
fn inline_parts(data: &Dataset, rows: usize, threads: usize) -> usize {
    let bytes = rows * (data.d_in() + data.d_out()) * data.dtype().size();
    if data.residency() == Residency::Memory && bytes < SMALL_GATHER_BYTES {
        1
    } else {
        threads
    }
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
        let part_rows = part.len();
        InlineFill {
            data,
            schedule,
            part,
            rows: Vec::new(),
            scratch: Vec::new(),
            threads: inline_parts(data, part_rows, rayon::current_num_threads()),
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
