//! The training loop: a [`Trainer`] owns the data, the weights and the
//! step's buffers, runs steps, keeps the loss history and stops on a loss
//! that is no longer finite.

use crate::error::{Error, Result};
use crate::net::{Data, Weights};

mod builder;
use crate::scalar::Real;
use crate::shape::Shape;
use crate::step::{self, Exchange, Form, LearningRates, Plan, Step, StepMode, Update};
pub use builder::{Bf16, DualForm, Primal, TrainerBuilder};
use ndarray::Array2;
use std::cell::OnceCell;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

/// The losses of the steps run, in memory that does not grow with the
/// step count (a run of 93 million steps once held 716 MiB of them):
/// every one — the older ones moved to an unnamed temporary file once
/// [`SPILL_AT`] are in memory, for the outputs that need them all (a
/// checkpoint, `--losses`) — or, when a run bounds them, only the latest
/// `window` to 2·`window`.
#[derive(Debug, Default)]
struct LossHistory {
    /// The losses in memory, of steps `first..first + kept.len()`.
    kept: Vec<f64>,
    /// The step of `kept[0]`.
    first: usize,
    /// Keep only about this many (the older ones are dropped, not
    /// spilled): at least this many, at most twice as many (the older half
    /// goes in one move, so a push costs O(1) amortised and never
    /// allocates once the buffer has grown to 2·window).
    window: Option<usize>,
    /// Losses of steps `0..first`, little-endian f64, when every loss is
    /// kept and some have left memory. `None` until the first spill.
    spill: Option<std::fs::File>,
    /// Keep at least this many in memory when spilling (an epoch's, for
    /// the epoch's mean).
    keep_in_memory: usize,
    /// Spill once this many are in memory ([`SPILL_AT`] unless a test
    /// says otherwise; 0 means [`SPILL_AT`]).
    spill_at: usize,
}

/// Losses in memory (8 MiB of them) before the older ones go to disk.
pub const SPILL_AT: usize = 1 << 20;

impl LossHistory {
    fn steps(&self) -> usize {
        self.first + self.kept.len()
    }

    fn push(&mut self, loss: f64) -> Result<()> {
        match self.window {
            Some(w) => {
                if self.kept.len() >= 2 * w {
                    let drop = self.kept.len() - w;
                    self.kept.drain(..drop);
                    self.first += drop;
                }
            }
            None => {
                let keep = self.keep_in_memory.max(1);
                let at = if self.spill_at == 0 {
                    SPILL_AT
                } else {
                    self.spill_at
                };
                if self.kept.len() >= at.max(2 * keep) {
                    self.spill_older(keep)?;
                }
            }
        }
        self.kept.push(loss);
        Ok(())
    }

    /// Moves all but the latest `keep` losses to the spill file.
    fn spill_older(&mut self, keep: usize) -> Result<()> {
        use std::io::Write;
        let n = self.kept.len().saturating_sub(keep);
        if n == 0 {
            return Ok(());
        }
        let spill_err = |e: std::io::Error| {
            Error::invalid(format!(
                "cannot move older losses to a temporary file ({e}); set TMPDIR to a folder with room"
            ))
        };
        if self.spill.is_none() {
            self.spill = Some(tempfile::tempfile().map_err(spill_err)?);
        }
        let f = self.spill.as_mut().expect("just made");
        let mut bytes = Vec::with_capacity(8 * n.min(1 << 16));
        for chunk in self.kept[..n].chunks(1 << 16) {
            bytes.clear();
            for l in chunk {
                bytes.extend_from_slice(&l.to_le_bytes());
            }
            f.write_all(&bytes).map_err(spill_err)?;
        }
        self.kept.drain(..n);
        self.first += n;
        // A resumed run starts with its whole history in memory: give the
        // room back once it is on disk.
        let cap = SPILL_AT.max(2 * keep) + 1;
        if self.kept.capacity() > 2 * cap {
            self.kept.shrink_to(cap);
        }
        Ok(())
    }

    fn since(&self, from: usize) -> Option<&[f64]> {
        self.kept.get(from.checked_sub(self.first)?..)
    }

    /// The losses of steps `from..`, in order, in chunks: the spilled ones
    /// read back a chunk at a time, then those in memory. With `from` 0,
    /// every loss kept (a bounded history keeps only the latest: see
    /// [`Trainer::keep_latest_losses`]); a `from` before the first loss a
    /// bounded history still holds is an error.
    fn for_each_from(
        &self,
        from: usize,
        f: &mut dyn FnMut(&[f64]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if from < self.first && self.spill.is_none() && self.window.is_some() {
            return Err(std::io::Error::other(format!(
                "the losses before step {} were not kept",
                self.first
            )));
        }
        if let (Some(file), true) = (&self.spill, from < self.first) {
            let mut bytes = vec![0u8; 8 << 16];
            let mut chunk = Vec::with_capacity(1 << 16);
            let mut at = 8 * from as u64;
            let total = 8 * self.first as u64;
            while at < total {
                let n = (total - at).min(bytes.len() as u64) as usize;
                file.read_exact_at(&mut bytes[..n], at)?;
                chunk.clear();
                chunk.extend(
                    bytes[..n]
                        .chunks_exact(8)
                        .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))),
                );
                f(&chunk)?;
                at += n as u64;
            }
        }
        f(&self.kept[from.saturating_sub(self.first).min(self.kept.len())..])
    }
}

/// A network being trained, with everything one step needs preallocated.
pub struct Trainer<F> {
    shape: Shape,
    data: Data<F>,
    /// The weights; in the dual form w1 holds w1_0 and stays as it is,
    /// and the current w1 = w1_0 + xᵀ·C is formed when read.
    weights: Weights<F>,
    /// The step, in the run's form, with all its buffers.
    step: Step<F>,
    /// The learning rates as given, in the units of `loss`.
    lr: LearningRates,
    /// What the step applies: `lr` for the sum, `lr / (N·D_out)` for the
    /// mean (the mean's gradient is the sum's divided by N·D_out).
    step_lr: LearningRates,
    loss: Loss,
    /// What a step's sum of squares is multiplied by to give `loss`.
    loss_scale: f64,
    losses: LossHistory,
    /// The current weights formed from the dual state, when they have
    /// been read since the last step.
    formed: OnceCell<Weights<F>>,
}

/// The loss a run minimises and reports. Its names (`sum`, `mean`) are
/// the command line's and the checkpoint header's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    /// Σ (y_pred − y)² over the batch: the reference's loss, and the
    /// default. Its gradient grows with the batch, so the learning rate
    /// must shrink as the batch grows.
    #[default]
    Sum,
    /// The sum divided by N·D_out, the mean over every element (what
    /// PyTorch's `MSELoss()` computes): one learning rate serves every
    /// batch size.
    Mean,
}

crate::named!(Loss, "loss", {
    Sum => "sum", "the sum of squared errors over the batch (the reference's)",
    Mean => "mean", "the mean over every element (PyTorch's MSELoss)",
});

impl Loss {
    /// What one sum-of-squares value is, in this loss, for a batch of
    /// `rows` rows of `d_out` outputs.
    pub fn scale(self, rows: usize, d_out: usize) -> f64 {
        match self {
            Loss::Sum => 1.0,
            Loss::Mean => 1.0 / (rows as f64 * d_out as f64),
        }
    }
}

impl<F> std::fmt::Debug for Trainer<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("shape", &self.shape)
            .field("lr", &self.lr)
            .field("steps_done", &self.losses.steps())
            .finish_non_exhaustive()
    }
}

/// Most loss-history entries reserved up front (8 MiB of f64).
pub const RESERVE_STEPS: usize = 1 << 20;

/// Timing of a [`Trainer::run`].
#[derive(Clone, Copy, Debug)]
pub struct RunStats {
    /// Steps run.
    pub steps: usize,
    /// Wall time of the steps: the loop's, without the time spent in its
    /// `on_step` callback (not of set-up).
    pub elapsed: Duration,
    /// Wall time spent in the `on_step` callback: the run's outputs
    /// (validation, checkpoints, metrics, log lines), apart from the steps.
    pub outputs: Duration,
}

impl RunStats {
    /// Milliseconds per step (outputs left out).
    pub fn ms_per_step(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e3 / self.steps.max(1) as f64
    }
}

/// The loop's clock: its wall time, split into the steps' and the
/// callback's (two clock reads per step, about 40 ns).
struct LoopClock {
    start: Instant,
    outputs: Duration,
}

impl LoopClock {
    fn start() -> Self {
        LoopClock {
            start: Instant::now(),
            outputs: Duration::ZERO,
        }
    }

    /// Runs `f`, counting its time as outputs'.
    fn outputs<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        self.outputs += t.elapsed();
        r
    }

    fn stats(&self, steps: usize) -> RunStats {
        RunStats {
            steps,
            elapsed: self.start.elapsed().saturating_sub(self.outputs),
            outputs: self.outputs,
        }
    }
}

/// What a run calls before each step to replace the batch in place
/// (`batch`, step index); none for one fixed batch.
type NextBatch<'a, F> = dyn FnMut(&mut Data<F>, usize) -> Result<()> + 'a;

impl<F: Real> Trainer<F> {
    /// A trainer for this data and these weights with the primal step, its
    /// work planned by the built-in rule for the threads of the rayon pool
    /// it is created in (see [`Plan`]), the update applied as `mode` says:
    /// [`Trainer::builder`] with its defaults. Checks that data and weights
    /// agree and are finite, and that the step's buffers fit in memory,
    /// before allocating them.
    pub fn new(
        data: Data<F>,
        weights: Weights<F>,
        lr: LearningRates,
        mode: StepMode,
    ) -> Result<Self> {
        Self::builder(data, weights, lr).mode(mode).build()
    }

    /// The run's element type: `F`'s, or bf16 for a trainer built with
    /// [`TrainerBuilder::bf16`].
    pub fn dtype(&self) -> crate::scalar::Dtype {
        self.step.dtype()
    }

    /// The form the step runs in.
    pub fn form(&self) -> Form {
        self.step.form()
    }

    /// In the dual form, w1_0 and C (w1 = w1_0 + xᵀ·C): what a checkpoint
    /// keeps to continue the run bit for bit.
    pub fn dual_parts(&self) -> Option<(&Array2<F>, &Array2<F>)> {
        self.step.dual_coef().map(|c| (&self.weights.w1, c))
    }

    /// The loss minimised and reported.
    pub fn loss(&self) -> Loss {
        self.loss
    }

    /// The problem's shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The weights as they are now. In the dual form w1 is formed (and
    /// allocated) at the first read after a step.
    pub fn weights(&self) -> &Weights<F> {
        match self.step.form() {
            Form::Primal => &self.weights,
            Form::Dual => self.formed.get_or_init(|| {
                let mut w1 = Array2::zeros(self.weights.w1.dim());
                self.step.w1_into(&self.data.x, &self.weights.w1, &mut w1);
                Weights {
                    w1,
                    w2: self.weights.w2.clone(),
                    biases: self.weights.biases.clone(),
                }
            }),
        }
    }

    /// Whether the model has biases (without forming the dual form's w1).
    pub fn weights_have_biases(&self) -> bool {
        self.weights.has_biases()
    }

    /// Takes the weights out, ending the trainer.
    pub fn into_weights(mut self) -> Weights<F> {
        if self.step.form() == Form::Dual {
            self.weights();
            return self.formed.take().expect("formed just now");
        }
        self.weights
    }

    /// The training data.
    pub fn data(&self) -> &Data<F> {
        &self.data
    }

    /// The losses in memory: of every step run so far (entry t is the
    /// loss before step t's update) for a run of fewer than [`SPILL_AT`]
    /// steps whose history is not bounded; else the latest ones, the first
    /// of them step `steps_done() - losses().len()`'s (the rest are on
    /// disk, or dropped: [`Trainer::for_each_loss`] reads them all).
    pub fn losses(&self) -> &[f64] {
        &self.losses.kept
    }

    /// The losses of steps `from..` (`None` when some of them are no
    /// longer kept).
    pub fn losses_since(&self, from: usize) -> Option<&[f64]> {
        self.losses.since(from)
    }

    /// Every loss of the run that is kept — all of them unless
    /// [`Trainer::keep_latest_losses`] bounded them — in order, in chunks,
    /// to `f`: the form outputs that need the whole history read it in
    /// (a long run's older losses are on disk, not in memory).
    pub fn for_each_loss(
        &self,
        f: &mut dyn FnMut(&[f64]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        self.losses.for_each_from(0, f)
    }

    /// The losses of steps `from..` (all kept unless the history is
    /// bounded), in order, in chunks, to `f`: what a checkpoint appends
    /// to the history it holds already.
    pub fn for_each_loss_from(
        &self,
        from: usize,
        f: &mut dyn FnMut(&[f64]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        self.losses.for_each_from(from, f)
    }

    /// Moves the older losses to disk once `n` are in memory, instead of
    /// [`SPILL_AT`] (for tests of long runs that are not long).
    pub fn spill_losses_after(mut self, n: usize) -> Self {
        self.losses.spill_at = n.max(1);
        self
    }

    /// Keeps at least `n` of the latest losses in memory (an epoch's, for
    /// its mean) when older ones move to disk.
    pub fn keep_in_memory(mut self, n: usize) -> Self {
        self.losses.keep_in_memory = n;
        self
    }

    /// Makes sure the latest `n` losses stay in memory, whatever the
    /// settings before (at most raising them): what a loop that reads the
    /// last `n` losses back (an epoch's, for its mean) asks for itself.
    pub(crate) fn hold_latest_losses(&mut self, n: usize) {
        self.losses.keep_in_memory = self.losses.keep_in_memory.max(n);
        if let Some(w) = &mut self.losses.window {
            *w = (*w).max(n);
        }
    }

    /// The last step's loss.
    pub fn last_loss(&self) -> Option<f64> {
        self.losses.kept.last().copied()
    }

    /// Keeps only about the latest `window` losses (at least one), so that
    /// the memory of a run does not grow with its step count: for runs
    /// whose outputs do not need every loss (no loss file, no checkpoint).
    /// Steps before are counted, not kept.
    pub fn keep_latest_losses(mut self, window: usize) -> Self {
        self.losses.window = Some(window.max(1));
        self
    }

    /// How many steps have run.
    pub fn steps_done(&self) -> usize {
        self.losses.steps()
    }

    /// Runs one step and returns its loss (of the weights before the
    /// update). When the loss is not finite the update is not applied, the
    /// weights stay the last finite ones, and the error names the step.
    pub fn step(&mut self) -> Result<f64> {
        let t = self.losses.steps();
        // In the dual form, the weights formed before this step are stale
        // (dropping them frees; nothing is allocated).
        self.formed.take();
        // The step leaves the weights alone when its loss is not finite.
        let loss = self.step.run(
            &self.data,
            &mut self.weights,
            self.step_lr,
            Update::Sgd,
            &mut step::NoProbe,
        )?;
        self.finish_step(t, loss)
    }

    /// [`Trainer::step`] whose gradients and loss are summed through
    /// `exchange` while they are computed ([`Update::Exchanged`], g_w1's
    /// sum started in `pieces` parts): data-parallel training sums them
    /// over every process there, and every process then applies the same
    /// update. Needs [`StepMode::Explicit`] and the primal form.
    pub fn step_exchanged(&mut self, exchange: &mut dyn Exchange<F>, pieces: usize) -> Result<f64> {
        let t = self.losses.steps();
        let loss = self.step.run(
            &self.data,
            &mut self.weights,
            self.step_lr,
            Update::Exchanged { exchange, pieces },
            &mut step::NoProbe,
        )?;
        self.finish_step(t, loss)
    }

    /// Checks step `t`'s loss and records it.
    fn finish_step(&mut self, t: usize, loss: f64) -> Result<f64> {
        check_finite_loss(t, loss, self.lr)?;
        // 1.0 for the sum: the multiplication is exact.
        let loss = loss * self.loss_scale;
        self.losses.push(loss)?;
        Ok(loss)
    }

    /// How the step divides its work.
    pub fn plan(&self) -> Plan {
        self.step.plan()
    }

    /// Reserves room in the loss history for `steps` more steps, so that
    /// running them does not allocate — up to [`RESERVE_STEPS`] at a time:
    /// a run of 10^10 steps must not ask for 80 GB before its first step
    /// (the history then grows by doubling, one allocation per doubling,
    /// between steps).
    pub fn reserve(&mut self, steps: usize) {
        let cap = self.losses.window.map_or(RESERVE_STEPS, |w| 2 * w);
        self.losses.kept.reserve(steps.min(RESERVE_STEPS).min(cap));
    }

    /// Runs up to `steps` steps, calling `on_step(trainer, t, loss)` after
    /// each; the callback may stop the run early by returning
    /// `ControlFlow::Break` (for a checkpoint or a signal it can read the
    /// trainer's state). Room for the loss history is reserved up front, so
    /// steps do not allocate.
    ///
    /// The loop runs on a thread of rayon's pool: the shards then split from
    /// inside the pool (the other workers steal them) instead of injecting
    /// a job from outside and blocking on it at every step, which costs a
    /// wake-up per step and, in rayon's injector queue, an allocation every
    /// 63 steps.
    pub fn run(
        &mut self,
        steps: usize,
        on_step: impl FnMut(&Self, usize, f64) -> ControlFlow<()> + Send,
    ) -> Result<RunStats> {
        rayon::scope(|_| self.run_loop(steps, None, &mut { on_step }, &mut |t| t.step()))
    }

    /// [`Trainer::run`] with `next_batch(batch, t)` called before step `t`:
    /// it may replace the rows the step trains on (a minibatch run swaps
    /// in a buffer filled while the previous step ran). The batch keeps
    /// its shape; a changed shape is an error.
    pub fn run_with(
        &mut self,
        steps: usize,
        mut next_batch: impl FnMut(&mut Data<F>, usize) -> Result<()> + Send,
        mut on_step: impl FnMut(&Self, usize, f64) -> ControlFlow<()> + Send,
    ) -> Result<RunStats> {
        // On a thread of rayon's pool (see `run`).
        rayon::scope(|_| {
            self.run_loop(steps, Some(&mut next_batch), &mut on_step, &mut |t| {
                t.step()
            })
        })
    }

    /// The loop every run goes through: `next_batch`, then `step`, then
    /// `on_step` (timed apart, as outputs), until `steps` steps have run or
    /// `on_step` breaks.
    fn run_loop(
        &mut self,
        steps: usize,
        mut next_batch: Option<&mut NextBatch<'_, F>>,
        on_step: &mut dyn FnMut(&Self, usize, f64) -> ControlFlow<()>,
        step: &mut dyn FnMut(&mut Self) -> Result<f64>,
    ) -> Result<RunStats> {
        self.reserve(steps);
        let mut clock = LoopClock::start();
        let mut done = 0;
        let dims = (self.data.x.dim(), self.data.y.dim());
        while done < steps {
            let t = self.losses.steps();
            if let Some(next_batch) = next_batch.as_mut() {
                next_batch(&mut self.data, t)?;
                self.check_batch(dims)?;
                // The bf16 step's copy of x is of the rows before.
                self.step.batch_replaced();
            }
            let loss = step(self)?;
            done += 1;
            if clock.outputs(|| on_step(self, t, loss)).is_break() {
                break;
            }
        }
        Ok(clock.stats(done))
    }

    /// [`Trainer::run`] on the calling thread, each step summed through
    /// `exchange` (see [`Trainer::step_exchanged`]). For callers whose
    /// exchange or callback cannot move to another thread (an MPI
    /// communicator, say).
    pub fn run_exchanged(
        &mut self,
        steps: usize,
        exchange: &mut dyn Exchange<F>,
        pieces: usize,
        on_step: impl FnMut(&Self, usize, f64) -> ControlFlow<()>,
    ) -> Result<RunStats> {
        self.run_loop(steps, None, &mut { on_step }, &mut |t| {
            t.step_exchanged(exchange, pieces)
        })
    }

    /// [`Trainer::run_exchanged`] with `next_batch(batch, t)` called before
    /// step `t`, as [`Trainer::run_with`] does.
    pub fn run_exchanged_with(
        &mut self,
        steps: usize,
        exchange: &mut dyn Exchange<F>,
        pieces: usize,
        mut next_batch: impl FnMut(&mut Data<F>, usize) -> Result<()>,
        mut on_step: impl FnMut(&Self, usize, f64) -> ControlFlow<()>,
    ) -> Result<RunStats> {
        self.run_loop(steps, Some(&mut next_batch), &mut on_step, &mut |t| {
            t.step_exchanged(exchange, pieces)
        })
    }

    /// Fails when a batch swapped in changed the shape or layout.
    fn check_batch(&self, dims: ((usize, usize), (usize, usize))) -> Result<()> {
        let standard = self.data.x.is_standard_layout() && self.data.y.is_standard_layout();
        if (self.data.x.dim(), self.data.y.dim()) != dims || !standard {
            return Err(Error::invalid(
                "a batch must keep the trainer's shape and be row-major",
            ));
        }
        Ok(())
    }

    /// The learning rates.
    pub fn lr(&self) -> LearningRates {
        self.lr
    }

    /// How the update is applied.
    pub fn mode(&self) -> StepMode {
        self.step.mode()
    }
}

/// Fails with [`Error::Diverged`] when `loss` is NaN or infinite.
fn check_finite_loss(step: usize, loss: f64, lr: LearningRates) -> Result<()> {
    if loss.is_finite() {
        Ok(())
    } else {
        Err(Error::Diverged {
            step,
            value: loss,
            lr: lr.max(),
        })
    }
}
