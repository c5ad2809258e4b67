//! What a run does after each step and at its end: the `t loss` lines,
//! periodic checkpoints, Ctrl-C and SIGTERM, and at the end the files and
//! the summary line.

use super::super::run_spec::RunSpec;
use crate::cli::TrainArgs;
use crate::signals::signal_name;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

mod files;
mod summary;
use twolayer::blas;
use twolayer::checkpoint::{
    self, AnyCheckpoint, CheckpointWriter, EpochRecord, Header, MinibatchHeader,
};
use twolayer::error::{Error, Result};
use twolayer::net::Weights;
use twolayer::output;
use twolayer::run::RunDescription;
use twolayer::scalar::Real;
use twolayer::shape::Shape;
use twolayer::step::{Form, PlanChoice};
use twolayer::train::Trainer;

/// The run's checkpoint header before its first step: what every
/// checkpoint of it records besides the trainer's state, which
/// [`checkpoint_header`] fills in. (`minibatch`: a minibatch run's
/// settings, taken out of the spec with its data.)
pub(super) fn run_header(spec: &RunSpec, minibatch: Option<&MinibatchHeader>) -> Header {
    Header {
        run: spec.run,
        steps_done: 0,
        total_steps: spec.total_steps,
        lr_w1: spec.lr.w1,
        lr_w2: spec.lr.w2,
        ranks: spec.ranks,
        data: spec.data.clone(),
        loss: spec.loss,
        minibatch: minibatch.cloned(),
        blas_core: Some(blas::core_name()),
        blas_library: Some(blas::Library::current().key()),
        plan: None,
        biases: spec.biases,
        best_weights: false,
        written_by: format!("twolayer {}", env!("CARGO_PKG_VERSION")),
    }
}

/// The whole problem's shape, from one process's trainer (whose batch is
/// its own rows only, under MPI).
fn global_shape<F: Real>(t: &Trainer<F>, n_total: usize) -> Shape {
    Shape {
        n: n_total,
        ..t.shape()
    }
}

/// Writes the checkpoint of a trainer's current state (`history`: a
/// minibatch run's epochs so far) through `writer`: what changed since its
/// last write, the losses streamed from the trainer (a long run's are
/// mostly on disk).
pub(super) fn write_checkpoint<F: Real>(
    writer: &mut CheckpointWriter,
    t: &Trainer<F>,
    run: &Header,
    n_total: usize,
    history: &[EpochRecord],
    best: Option<&Weights<F>>,
) -> Result<()> {
    let mut header = checkpoint_header(t, run, n_total);
    header.best_weights = best.is_some();
    writer
        .write(checkpoint::State {
            header: &header,
            losses_from: &mut |from, sink| t.for_each_loss_from(from, sink),
            epochs: history,
            epochs_base: 0,
            weights: t.weights(),
            dual: t.dual_parts(),
            best,
        })
        .map(drop)
}

/// The header of a trainer's checkpoint now: the run's, with the steps
/// done, the form and plan the step runs, the biases and the epochs so far.
fn checkpoint_header<F: Real>(t: &Trainer<F>, run: &Header, n_total: usize) -> Header {
    let form = t.form();
    // The epochs go in the file's log, not its header (and are not copied).
    let base = run.without_history();
    Header {
        run: RunDescription {
            form,
            ..run.run.with_shape(global_shape(t, n_total))
        },
        steps_done: t.steps_done(),
        // The bf16 step has no plan of shards and blocks. Under mpirun,
        // rank 0's: every rank lays the same choice out on its rows.
        plan: (form == Form::Primal && t.dtype() != twolayer::Dtype::Bf16)
            .then(|| PlanChoice::of(t.plan(), t.shape().n)),
        biases: t.weights_have_biases(),
        best_weights: false,
        ..base
    }
}

/// The `t loss` lines on their way to stdout, written so that a blocked
/// stdout (a pipe whose reader stopped reading) never holds a step boundary
/// past a signal: the lines collect in a buffer, and draining it waits for
/// room with poll(2) in 10 ms slices, checking for Ctrl-C, SIGTERM and
/// SIGHUP between them, then writes at most PIPE_BUF bytes — which a pipe
/// that poll calls writable takes without blocking. (Before, SIGTERM to
/// `train | sleep 8` acted only when the pipe drained.)
pub(super) struct StdoutLines {
    /// Lines not yet written.
    pub(super) buf: Vec<u8>,
}

impl StdoutLines {
    /// Buffered bytes past which the lines are written at the next step.
    const SOON: usize = 48 << 10;

    fn new() -> Self {
        StdoutLines {
            buf: Vec::with_capacity(64 << 10),
        }
    }

    /// Writes the buffer out: `Ok(true)` when all of it went, `Ok(false)`
    /// when a signal arrived while stdout could take nothing.
    fn drain(&mut self) -> std::io::Result<bool> {
        use std::os::fd::FromRawFd;
        // The process's fd 1, borrowed: ManuallyDrop keeps it open.
        // SAFETY: fd 1 is open for the life of the process (a closed one
        // fails the write with EBADF, reported as an error).
        let mut fd1 = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(1) });
        let mut at = 0;
        while at < self.buf.len() {
            let mut p = libc::pollfd {
                fd: 1,
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut p, 1, 10) };
            if ready == 0 {
                if crate::signals::Signals::get().is_ok_and(|s| s.caught().is_some()) {
                    self.buf.drain(..at);
                    return Ok(false);
                }
                continue;
            }
            let end = (at + libc::PIPE_BUF).min(self.buf.len());
            match fd1.write(&self.buf[at..end]) {
                Ok(n) => at += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                    ) => {}
                Err(e) => {
                    self.buf.clear();
                    return Err(e);
                }
            }
        }
        self.buf.clear();
        Ok(true)
    }
}

/// What happens after each step, on the lead process: the `t loss` line,
/// periodic checkpoints; and whether to stop. At the end of each epoch of
/// a minibatch run: the metrics line, and the best epoch's weights.
pub(super) struct Reporter<'a, F> {
    args: &'a TrainArgs,
    /// The run's checkpoint header before its first step ([`run_header`]).
    run: &'a Header,
    /// Where the primal step's plan came from, for the summary.
    plan_source: String,
    /// Rows of the whole batch (over all ranks).
    n_total: usize,
    /// Prints and writes files: the single process, or rank 0.
    lead: bool,
    last: usize,
    out: StdoutLines,
    write_err: Option<std::io::Error>,
    ckpt_err: Option<Error>,
    last_flush: Instant,
    /// A minibatch run's epochs so far: all of them when an output needs
    /// them (a checkpoint, the metrics file, the JSON summary), else only
    /// the last (a run with no outputs keeps flat memory).
    history: Vec<EpochRecord>,
    /// Whether every epoch's record is kept in `history`.
    keep_history: bool,
    /// The `--checkpoint` file's writer.
    ckpt: Option<CheckpointWriter>,
    /// The metrics file, open for appending (a line per epoch).
    metrics: Option<MetricsFile>,
    /// The weights of the best validation epoch so far, when kept
    /// (`--save-best`, or a checkpoint that holds them).
    best: Option<Weights<F>>,
    /// The epoch with the lowest validation loss so far, and that loss
    /// (kept as epochs come, not searched for in the history each time).
    best_epoch: Option<(u64, f64)>,
    /// The epoch early stopping ended the run after.
    pub(super) stopped_early: Option<u64>,
    /// Progress on a terminal (see [`Reporter::new`]).
    bar: Option<indicatif::ProgressBar>,
    /// A minibatch run's data: where its values were (`memory` or
    /// `streamed`) and how batches were gathered (`inline` or `ahead`).
    pub(super) feed: Option<(&'static str, &'static str)>,
    /// The run's memory estimate ([`RunSpec::memory_estimate`]), for the
    /// JSON summary.
    pub(super) memory_estimate: Option<u128>,
}

impl<'a, F: Real> Reporter<'a, F> {
    pub(super) fn new(
        args: &'a TrainArgs,
        run: &'a Header,
        plan_source: String,
        lead: bool,
        n_total: usize,
    ) -> Self {
        Reporter {
            args,
            run,
            plan_source,
            n_total,
            lead,
            last: run.total_steps.saturating_sub(1),
            out: StdoutLines::new(),
            write_err: None,
            ckpt_err: None,
            last_flush: Instant::now(),
            history: Vec::new(),
            keep_history: args.checkpoint.is_some()
                || args.metrics.is_some()
                || args.output.json.is_some(),
            ckpt: args.checkpoint.as_deref().map(|p| {
                // A run resumed from this very file appends to it.
                match &args.resume {
                    Some(r) if output::same_file(r, p) => CheckpointWriter::continuing(p),
                    _ => CheckpointWriter::new(p),
                }
            }),
            metrics: None,
            best: None,
            best_epoch: None,
            stopped_early: None,
            bar: progress_bar(args, run.total_steps, lead),
            feed: None,
            memory_estimate: None,
        }
    }

    /// A line on stderr, above the progress bar when there is one.
    fn say(&self, line: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| say!("{line}")),
            None => say!("{line}"),
        }
    }

    /// A minibatch run's start: the epochs done before (a resumed run's),
    /// the best epoch's weights a checkpoint kept, and the metrics file
    /// begun — its header and those epochs, written atomically; each
    /// epoch from here on is appended as one line. A metrics file that
    /// cannot be begun does not stop the run: it is tried again, whole, at
    /// the end, and reported with the other outputs.
    pub(super) fn start_epochs(&mut self, history: Vec<EpochRecord>, best: Option<Weights<F>>) {
        self.best_epoch = MinibatchHeader::best_epoch(&history);
        self.history = history;
        self.best = best;
        if let (Some(p), true) = (&self.args.metrics, self.lead) {
            match MetricsFile::begin(p, &self.history) {
                Ok(m) => self.metrics = Some(m),
                Err(e) => {
                    self.ckpt_err.get_or_insert(e);
                }
            }
        }
    }

    /// Whether early stopping with `patience` ends the run now: that many
    /// epochs have passed since the best one.
    pub(super) fn patience_spent(&self, patience: Option<u64>) -> bool {
        match (patience, self.best_epoch, self.history.last()) {
            (Some(p), Some((best, _)), Some(last)) => last.epoch - best >= p,
            _ => false,
        }
    }

    /// Records a finished epoch (of `epochs`) of trainer `t`: prints it,
    /// appends its metrics line,
    /// and when it is the best so far and the best is kept, copies the
    /// weights (`t`'s now, those the epoch validated).
    pub(super) fn push_epoch(&mut self, r: EpochRecord, epochs: usize, t: &Trainer<F>) {
        // `-q`: none of the human-readable text, the epoch lines included.
        if self.lead && !self.args.output.quiet {
            let (e, l) = (r.epoch, r.train_loss);
            self.say(&match (r.val_loss, r.val_mse) {
                (Some(v), Some(m)) => format!(
                    "twolayer: epoch {e}/{epochs}: train loss {l:.6e}, val loss {v:.6e}, val mse {m:.6e}"
                ),
                _ => format!("twolayer: epoch {e}/{epochs}: train loss {l:.6e}"),
            });
        }
        let improved = match (r.val_loss, self.best_epoch) {
            (Some(v), Some((_, best))) => v < best,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if let (true, Some(v)) = (improved, r.val_loss) {
            self.best_epoch = Some((r.epoch, v));
        }
        if let Some(m) = &mut self.metrics {
            if let Err(e) = m.append(&r) {
                self.ckpt_err.get_or_insert(e);
                self.metrics = None;
            }
        }
        if !self.keep_history {
            self.history.clear();
        }
        self.history.push(r);
        let keep = self.best.is_some() || self.args.save_best.is_some();
        if improved && keep && self.lead {
            let w = t.weights();
            match &mut self.best {
                // Same shapes: copied in place, no allocation.
                Some(b) => {
                    b.w1.assign(&w.w1);
                    b.w2.assign(&w.w2);
                    if let (Some(bb), Some(wb)) = (&mut b.biases, &w.biases) {
                        bb.b1.assign(&wb.b1);
                        bb.b2.assign(&wb.b2);
                    }
                }
                None => self.best = Some(w.clone()),
            }
        }
    }

    /// After step `step` with loss `loss`; `stop` says a signal arrived
    /// (on any process).
    pub(super) fn on_step(
        &mut self,
        t: &Trainer<F>,
        step: usize,
        loss: f64,
        stop: bool,
    ) -> ControlFlow<()> {
        if !self.lead {
            return if stop {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            };
        }
        if let Some(b) = &self.bar {
            b.set_position(step as u64 + 1);
        }
        let a = self.args;
        if !(a.output.quiet
            || stdout_taken(a)
            || self.write_err.is_some()
            || !(step.is_multiple_of(a.log_every) || step == self.last))
        {
            // Same form as the reference's print(t, loss): shortest round-trip.
            let _ = writeln!(self.out.buf, "{step} {loss:?}");
            // Long runs show progress; short ones are not slowed by syscalls.
            if self.out.buf.len() > StdoutLines::SOON
                || self.last_flush.elapsed() > Duration::from_millis(100)
            {
                self.last_flush = Instant::now();
                match self.out.drain() {
                    Ok(true) => {}
                    // A signal arrived while stdout was blocked (a reader
                    // that stopped reading): act on it now.
                    Ok(false) => return ControlFlow::Break(()),
                    // Stdout is gone (a closed pipe) or full: stop at this
                    // step boundary; the files are still written.
                    Err(e) => {
                        self.write_err = Some(e);
                        return ControlFlow::Break(());
                    }
                }
            }
        }
        if let Some(w) = &mut self.ckpt {
            if (step + 1).is_multiple_of(a.checkpoint_every) {
                if let Err(e) = write_checkpoint(
                    w,
                    t,
                    self.run,
                    self.n_total,
                    &self.history,
                    self.best.as_ref(),
                ) {
                    self.ckpt_err = Some(e);
                    return ControlFlow::Break(());
                }
            }
        }
        if stop {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    /// After the loop: the run's result, then outputs, the summary line
    /// (with `extra` appended), and the interruption notice.
    pub(super) fn finish(
        mut self,
        trainer: &Trainer<F>,
        result: Result<twolayer::train::RunStats>,
        signal: Option<i32>,
        extra: &str,
    ) -> Result<()> {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if let Err(e) = self.out.drain() {
            self.write_err.get_or_insert(e);
        }
        // A diverged run stops here: the last checkpoint written is the last
        // finite state, and no output of the broken state is written.
        let stats = match (result, &self.args.checkpoint) {
            (Err(e @ Error::Diverged { .. }), Some(ck)) if self.lead => {
                // Say where to go on from, and how — or that there is
                // nothing to go on from (it diverged before the first
                // checkpoint was written).
                return Err(Error::invalid(match AnyCheckpoint::read(ck) {
                    Ok(c) => format!(
                        "{e}; the last checkpoint, {}, holds the state after {} steps: go on from it at a smaller rate with twolayer train --resume {} --lr RATE --change-lr",
                        ck.display(),
                        c.header().steps_done,
                        ck.display()
                    ),
                    Err(_) => format!(
                        "{e}; it diverged before its first checkpoint was written, so {} holds nothing to go on from: start again at a smaller rate",
                        ck.display()
                    ),
                }));
            }
            (r, _) => r?,
        };
        // A checkpoint or metrics write that failed during the run stopped
        // it (or not, for metrics); either way every other output is still
        // written below, and the failures reported together after them.
        let failed: Vec<Error> = self.ckpt_err.take().into_iter().collect();
        if !self.lead {
            return failed.into_iter().next().map_or(Ok(()), Err);
        }
        if stats.steps == 0 && signal.is_none() && self.stopped_early.is_none() {
            // A resume of a finished run: nothing ran, nothing to report
            // (no "0 steps … GFLOP/s").
            say!(
                "twolayer: nothing to do: {} of {} steps were already done (raise --steps or --epochs to go on)",
                trainer.steps_done(),
                self.run.total_steps
            );
            return Ok(());
        }
        // The files first, whatever happened to stdout: a full disk under
        // `> train.log` must not cost the weights (files.rs).
        self.write_files(trainer, failed)?;
        let (args, run) = (self.args, self.run);
        // A closed pipe (`twolayer train | head`) means the reader has seen
        // enough: the run ends quietly, its files written. Any other
        // failure of stdout is an error, reported after the files.
        if let Some(e) = self.write_err {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(Error::write(
                Path::new("<stdout>"),
                format!(
                    "{e}; stopped after step {}, and every other output was written",
                    trainer.steps_done()
                ),
            ));
        }
        // The summary line and its JSON (summary.rs).
        self.summarise(trainer, &stats, signal, extra)?;
        for w in twolayer::kernel_set::warning()
            .into_iter()
            .chain(twolayer::blas::spin_warning())
        {
            say!("twolayer: note: {}", w.trim_start_matches("note: "));
        }
        if twolayer::kernel_set::forced_below_cpu().is_some() && self.lead {
            // What the forced set costs here: a quick 1024² f64 GEMM in
            // this process and in a child with OpenBLAS's own choice
            // (about 0.2 s; only on a machine that forces a set).
            let t = run.run.threads;
            let size = 1024;
            let forced =
                twolayer::bench::measure::square_gemm_gflops(twolayer::scalar::Dtype::F64, t, size);
            let own = super::super::own_kernels::OwnChoice::measure(t, size);
            say!("twolayer: measured: {}", own.describe(forced));
        }
        if let Some(signal) = signal {
            if trainer.steps_done() < run.total_steps {
                let name = signal_name(signal);
                let how = match &args.checkpoint {
                    Some(p) => format!(
                        "checkpoint written to {}; continue with: twolayer train --resume {}",
                        p.display(),
                        p.display()
                    ),
                    None => "no --checkpoint was given, so the run cannot be resumed".to_string(),
                };
                return Err(Error::Interrupted {
                    signal,
                    msg: format!(
                        "stopped by {name} after step {} of {}; {how}",
                        trainer.steps_done(),
                        run.total_steps
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Every loss of the run as `t loss` lines (see [`output::write_losses`]),
/// streamed from the trainer.
fn write_all_losses<F: Real>(path: &Path, t: &Trainer<F>) -> Result<()> {
    output::write_atomic(path, |w| {
        let mut step = 0usize;
        t.for_each_loss(&mut |chunk| {
            for l in chunk {
                writeln!(w, "{step} {l:?}")?;
                step += 1;
            }
            Ok(())
        })
    })
}

/// A progress bar of the run's steps on stderr, for the lead process, when
/// stderr is a terminal and the `t loss` lines are not scrolling past on
/// one (`-q`, stdout redirected or taken by an output): a long run then
/// shows where it is and when it will end. (indicatif draws at most 20
/// times a second; setting the position is an atomic store.)
fn progress_bar(
    args: &TrainArgs,
    total_steps: usize,
    lead: bool,
) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    let lines_on_terminal =
        !args.output.quiet && !stdout_taken(args) && std::io::stdout().is_terminal();
    if !lead || lines_on_terminal || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total_steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "twolayer: [{bar:30}] step {pos}/{len} ({per_sec}, ETA {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    Some(bar)
}

/// Whether an output of the run goes to standard output (`-`): the `t loss`
/// lines then stay off it.
pub(super) fn stdout_taken(a: &TrainArgs) -> bool {
    [&a.save, &a.losses, &a.metrics, &a.output.json, &a.save_best]
        .into_iter()
        .flatten()
        .any(|p| twolayer::input::is_stdio(p))
}

/// The metrics CSV's header line.
const METRICS_HEADER: &str = "epoch,step,train_loss,val_loss,val_mse\n";

/// One epoch's metrics line.
fn metrics_line(r: &EpochRecord) -> String {
    let opt = |v: Option<f64>| v.map(|v| format!("{v:?}")).unwrap_or_default();
    format!(
        "{},{},{:?},{},{}\n",
        r.epoch,
        r.step,
        r.train_loss,
        opt(r.val_loss),
        opt(r.val_mse)
    )
}

/// The epoch records as CSV, with a header line, written whole and
/// atomically.
pub(super) fn write_metrics(path: &Path, history: &[EpochRecord]) -> Result<()> {
    let mut text = String::from(METRICS_HEADER);
    for r in history {
        text.push_str(&metrics_line(r));
    }
    output::write_atomic(path, |w| w.write_all(text.as_bytes()))
}

/// The metrics file during a run: begun whole (header and the epochs
/// before), then one line appended per epoch — one write(2) each, no
/// rewrite and no fsync until the end, so an epoch costs a line, not the
/// file (rewriting it every epoch was quadratic in the epochs and, with
/// its fsync, cost more than small epochs' steps).
/// With `--metrics -` the lines go to standard output as they come.
struct MetricsFile {
    path: std::path::PathBuf,
    /// `None`: standard output.
    file: Option<std::fs::File>,
}

impl MetricsFile {
    fn begin(path: &Path, history: &[EpochRecord]) -> Result<Self> {
        write_metrics(path, history)?;
        let file = if twolayer::input::is_stdio(path) {
            None
        } else {
            Some(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(|e| Error::write(path, e))?,
            )
        };
        Ok(MetricsFile {
            path: path.to_path_buf(),
            file,
        })
    }

    fn append(&mut self, r: &EpochRecord) -> Result<()> {
        let line = metrics_line(r);
        match &mut self.file {
            Some(f) => f.write_all(line.as_bytes()),
            None => {
                let mut out = std::io::stdout().lock();
                out.write_all(line.as_bytes()).and_then(|()| out.flush())
            }
        }
        .map_err(|e| Error::write(&self.path, e))
    }

    fn finish(self) -> Result<()> {
        match self.file {
            Some(f) => f.sync_all().map_err(|e| Error::write(&self.path, e)),
            None => Ok(()),
        }
    }
}
