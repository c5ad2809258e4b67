//! `twolayer train`: set up the data and weights (seeded, from a .npz, or
//! from a checkpoint), train, print `t loss` lines and a summary, and write
//! the requested files — checkpoints along the way, and everything on
//! Ctrl-C or SIGTERM.

use super::run_spec::{self, Launch, Minibatch, RunSpec, Start};
use crate::cli::{ReaderArg, TrainArgs};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use twolayer::blas;
use twolayer::checkpoint::{Checkpoint, DataSource, EpochRecord, Header, MinibatchHeader};
use twolayer::error::{Error, Result};
use twolayer::net::{Data, Weights};
use twolayer::npz;
use twolayer::output;
use twolayer::scalar::{Dtype, Real};
use twolayer::shape::Shape;
use twolayer::step::{LearningRates, StepMode};
use twolayer::threads;
use twolayer::train::Trainer;
use twolayer::Loss;

/// Everything about a run that a checkpoint must carry besides weights and
/// losses.
struct RunConfig {
    total_steps: usize,
    lr: LearningRates,
    mode: StepMode,
    threads: usize,
    data: DataSource,
    /// MPI ranks the batch is split over (1: a single process).
    ranks: usize,
    /// The loss.
    loss: Loss,
    /// A minibatch run's settings (its history is the reporter's).
    minibatch: Option<MinibatchHeader>,
}

impl RunConfig {
    /// What a checkpoint of `spec` records.
    fn of(spec: &RunSpec) -> RunConfig {
        RunConfig {
            total_steps: spec.total_steps,
            lr: spec.lr,
            mode: spec.mode,
            threads: spec.threads,
            data: spec.data.clone(),
            ranks: spec.ranks,
            loss: spec.loss,
            minibatch: spec.minibatch.as_ref().map(|m| m.header.clone()),
        }
    }

    /// The whole problem's shape, from one process's trainer (whose batch
    /// is its own rows only, under MPI).
    fn global_shape<F: Real>(&self, t: &Trainer<F>, n_total: usize) -> Shape {
        Shape {
            n: n_total,
            ..t.shape()
        }
    }
}

/// Runs `twolayer train` with these flags.
pub fn run(args: &TrainArgs) -> Result<()> {
    // Refuse unwritable outputs now, not after hours of training.
    for path in [&args.save, &args.losses, &args.checkpoint, &args.metrics]
        .into_iter()
        .flatten()
    {
        output::check_writable(path)?;
    }
    #[cfg(feature = "mpi")]
    if twolayer::distributed::launched_by_mpi() {
        return distributed::run(args);
    }
    let spec = run_spec::resolve(args, Launch::Single)?;
    check_files_distinct(args, &spec)?;
    threads::set_budget(spec.threads)?;
    match spec.dtype {
        Dtype::F32 => single::<f32>(args, spec),
        Dtype::F64 => single::<f64>(args, spec),
    }
}

/// Refuses, before any work, outputs that name an input or each other.
fn check_files_distinct(args: &TrainArgs, spec: &RunSpec) -> Result<()> {
    let mut inputs: Vec<(&str, &Path)> = Vec::new();
    if let Some(p) = &args.init {
        inputs.push(("--init", p));
    }
    if let Some(p) = &args.resume {
        inputs.push(("--resume", p));
    }
    if let DataSource::File { path, .. } = &spec.data {
        inputs.push(("the run's data file", Path::new(path)));
    }
    if let Some(m) = &spec.minibatch {
        for f in m.dataset.files() {
            inputs.push(("--data", f));
        }
        for f in m.val.iter().flat_map(|v| v.files()) {
            inputs.push(("--val", f));
        }
    }
    if let Some(p) = &args.weights {
        inputs.push(("--weights", p));
    }
    let outputs: Vec<(&str, &Path)> = [
        ("--save", &args.save),
        ("--losses", &args.losses),
        ("--checkpoint", &args.checkpoint),
        ("--metrics", &args.metrics),
    ]
    .into_iter()
    .filter_map(|(f, p)| p.as_deref().map(|p| (f, p)))
    .collect();
    // Resuming writes the next checkpoint over the one it read: that is
    // the point of it, and it is written atomically.
    let outputs: Vec<(&str, &Path)> = match &args.resume {
        Some(r) => outputs
            .into_iter()
            .filter(|&(f, p)| {
                !(f == "--checkpoint"
                    && output::check_distinct(&[("--resume", r)], &[(f, p)]).is_err())
            })
            .collect(),
        None => outputs,
    };
    output::check_distinct(&inputs, &outputs)
}

/// Seeded weights: standard normal, or scaled for their layers.
fn seeded_weights<F: Real>(shape: Shape, seed: u64, scaled: bool) -> Weights<F> {
    let mut w = Weights::<F>::random(shape, seed);
    if scaled {
        // He for the ReLU layer, LeCun for the linear output.
        let (s1, s2) = (
            F::from_f64((2.0 / shape.d_in as f64).sqrt()),
            F::from_f64((1.0 / shape.hidden as f64).sqrt()),
        );
        w.w1.mapv_inplace(|v| v * s1);
        w.w2.mapv_inplace(|v| v * s2);
    }
    w
}

/// One process on the whole batch.
fn single<F: Real>(args: &TrainArgs, mut spec: RunSpec) -> Result<()> {
    if let Some(mb) = spec.minibatch.take() {
        return minibatches::<F>(args, spec, mb);
    }
    let cfg = RunConfig::of(&spec);
    let trainer = match spec.start {
        Start::Seeded { seed, scaled } => Trainer::new(
            Data::<F>::random(spec.shape, seed),
            seeded_weights::<F>(spec.shape, seed, scaled),
            spec.lr,
            spec.mode,
        )?,
        Start::Weights { .. } => unreachable!("--weights needs --data"),
        Start::Init { path } => {
            let (d, w) = npz::load_init(&path)?.into_typed::<F>();
            Trainer::new(d, w, spec.lr, spec.mode)?
        }
        Start::Resume(c) => {
            let (w, losses) = c.into_typed::<F>();
            let data = data_from_source::<F>(&spec.data, spec.shape, 0..spec.shape.n)?;
            Trainer::resume(data, w, spec.lr, spec.mode, losses)?
        }
    };
    train_and_report(args, trainer.with_loss(spec.loss), cfg)
}

/// One process on minibatches of a dataset, validating at the end of
/// every epoch.
fn minibatches<F: Real>(args: &TrainArgs, spec: RunSpec, mb: Minibatch) -> Result<()> {
    let cfg = RunConfig {
        minibatch: Some(mb.header.clone()),
        ..RunConfig::of(&spec)
    };
    let batch = mb.schedule.batch();
    let (weights, losses) = match spec.start {
        Start::Seeded { seed, scaled } => {
            (seeded_weights::<F>(spec.shape, seed, scaled), Vec::new())
        }
        Start::Weights { path } => (npz::load_weights_file::<F>(&path)?, Vec::new()),
        Start::Resume(c) => c.into_typed::<F>(),
        Start::Init { .. } => unreachable!("--data conflicts with --init"),
    };
    let batch_buf = twolayer::minibatch::empty_batch::<F>(&mb.dataset, batch);
    let mut trainer =
        Trainer::resume(batch_buf, weights, spec.lr, spec.mode, losses)?.with_loss(spec.loss);
    let signals = Signals::install()?;
    let mut rep = Reporter::new(args, &cfg, true, batch);
    rep.history = mb.header.history.clone();
    let per_epoch = mb.schedule.batches_per_epoch() as usize;
    let epochs = cfg.total_steps.div_ceil(per_epoch);
    let to_run = cfg.total_steps - trainer.steps_done();
    let mut val_err: Option<Error> = None;
    let reader = match args.reader {
        ReaderArg::Auto => twolayer::minibatch::Reader::auto(&mb.dataset),
        ReaderArg::Inline => twolayer::minibatch::Reader::Inline,
        ReaderArg::Ahead => twolayer::minibatch::Reader::Ahead,
    };
    let result = twolayer::minibatch::run(
        &mut trainer,
        &mb.dataset,
        &mb.schedule,
        reader,
        to_run,
        |t, step, loss| {
            if (step + 1).is_multiple_of(per_epoch) {
                match end_of_epoch(t, &mb, (step + 1) / per_epoch, epochs) {
                    Ok(r) => rep.push_epoch(r),
                    Err(e) => {
                        val_err = Some(e);
                        return ControlFlow::Break(());
                    }
                }
            }
            rep.on_step(t, step, loss, signals.caught().is_some())
        },
    );
    if let Some(e) = val_err {
        return Err(e);
    }
    let extra = format!(
        "; minibatches of {batch} of {} training rows ({} per epoch{}, read {}), epoch {} of {epochs}",
        mb.schedule.train_rows(),
        per_epoch,
        match (mb.schedule.val_rows(), &mb.val) {
            (0, None) => String::new(),
            (0, Some(v)) => format!(", validated on {} rows", v.rows()),
            (n, _) => format!(", {n} rows held out for validation"),
        },
        match reader {
            twolayer::minibatch::Reader::Inline => "inline",
            twolayer::minibatch::Reader::Ahead => "ahead",
        },
        trainer.steps_done().div_ceil(per_epoch),
    );
    rep.finish(&trainer, result, signals.caught(), &extra)
}

/// The record of epoch `epoch` (from 1), just finished: the mean of its
/// losses and, when there is validation data, the validation error;
/// printed to stderr.
fn end_of_epoch<F: Real>(
    t: &Trainer<F>,
    mb: &Minibatch,
    epoch: usize,
    epochs: usize,
) -> Result<EpochRecord> {
    use twolayer::predict::{evaluate, Rows};
    let per_epoch = mb.schedule.batches_per_epoch() as usize;
    let losses = &t.losses()[t.steps_done() - per_epoch..];
    let train_loss = losses.iter().sum::<f64>() / losses.len() as f64;
    let batch = mb.schedule.batch();
    let errors = match (&mb.val, mb.schedule.val_rows()) {
        (Some(v), _) => Some(evaluate(v, Rows::All, t.weights(), batch)?),
        (None, 0) => None,
        (None, _) => Some(evaluate(
            &mb.dataset,
            Rows::Validation(&mb.schedule),
            t.weights(),
            batch,
        )?),
    };
    let val_loss = errors.map(|e| match t.loss() {
        Loss::Sum => e.sum_sq * batch as f64 / e.rows as f64,
        Loss::Mean => e.mse(),
    });
    let r = EpochRecord {
        epoch: epoch as u64,
        step: t.steps_done() as u64,
        train_loss,
        val_loss,
        val_mse: errors.map(|e| e.mse()),
    };
    match (r.val_loss, r.val_mse) {
        (Some(l), Some(m)) => say!(
            "twolayer: epoch {epoch}/{epochs}: train loss {train_loss:.6e}, val loss {l:.6e}, val mse {m:.6e}"
        ),
        _ => say!("twolayer: epoch {epoch}/{epochs}: train loss {train_loss:.6e}"),
    }
    Ok(r)
}

/// The epoch records as CSV, with a header line.
fn write_metrics(path: &Path, history: &[EpochRecord]) -> Result<()> {
    let opt = |v: Option<f64>| v.map(|v| format!("{v:?}")).unwrap_or_default();
    let mut text = String::from("epoch,step,train_loss,val_loss,val_mse\n");
    for r in history {
        text.push_str(&format!(
            "{},{},{:?},{},{}\n",
            r.epoch,
            r.step,
            r.train_loss,
            opt(r.val_loss),
            opt(r.val_mse)
        ));
    }
    output::write_atomic(path, |w| w.write_all(text.as_bytes()))
}

/// Rows `rows` of a run's data: regenerated from its seed, or read (those
/// rows alone) from its `--init` file.
fn data_from_source<F: Real>(
    src: &DataSource,
    shape: Shape,
    rows: std::ops::Range<usize>,
) -> Result<Data<F>> {
    match src {
        DataSource::Seeded { seed } => Ok(Data::random_rows(shape, *seed, rows.start, rows.len())),
        DataSource::File { path, .. } => npz::load_rows::<F>(Path::new(path), rows),
        DataSource::Dataset { .. } => Err(Error::invalid(
            "a minibatch run's data is read a batch at a time, not as one batch",
        )),
    }
}

/// The checkpoint of a trainer's current state (`history`: a minibatch
/// run's epochs so far).
fn snapshot<F: Real>(
    t: &Trainer<F>,
    cfg: &RunConfig,
    n_total: usize,
    history: &[EpochRecord],
) -> Checkpoint<F> {
    let s = cfg.global_shape(t, n_total);
    Checkpoint {
        header: Header {
            dtype: F::DTYPE.name().into(),
            n: s.n,
            d_in: s.d_in,
            hidden: s.hidden,
            d_out: s.d_out,
            steps_done: t.steps_done(),
            total_steps: cfg.total_steps,
            lr_w1: cfg.lr.w1,
            lr_w2: cfg.lr.w2,
            step_mode: match cfg.mode {
                StepMode::Fused => "fused",
                StepMode::Explicit => "explicit",
            }
            .into(),
            threads: cfg.threads,
            ranks: cfg.ranks,
            data: cfg.data.clone(),
            loss: cfg.loss.name().into(),
            minibatch: cfg.minibatch.clone().map(|m| MinibatchHeader {
                history: history.to_vec(),
                ..m
            }),
            written_by: format!("twolayer {}", env!("CARGO_PKG_VERSION")),
        },
        losses: t.losses().to_vec(),
        weights: t.weights().clone(),
    }
}

/// Flags set by SIGINT and SIGTERM, checked at every step boundary.
struct Signals {
    int: Arc<AtomicBool>,
    term: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> Result<Signals> {
        let s = Signals {
            int: Arc::new(AtomicBool::new(false)),
            term: Arc::new(AtomicBool::new(false)),
        };
        for (sig, flag) in [
            (signal_hook::consts::SIGINT, &s.int),
            (signal_hook::consts::SIGTERM, &s.term),
        ] {
            signal_hook::flag::register(sig, Arc::clone(flag))
                .map_err(|e| Error::invalid(format!("cannot install a signal handler: {e}")))?;
        }
        Ok(s)
    }

    /// The signal that arrived, if any.
    fn caught(&self) -> Option<i32> {
        if self.int.load(Ordering::Relaxed) {
            Some(signal_hook::consts::SIGINT)
        } else if self.term.load(Ordering::Relaxed) {
            Some(signal_hook::consts::SIGTERM)
        } else {
            None
        }
    }
}

/// What happens after each step, on the lead process: the `t loss` line,
/// periodic checkpoints; and whether to stop.
struct Reporter<'a> {
    args: &'a TrainArgs,
    cfg: &'a RunConfig,
    /// Rows of the whole batch (over all ranks).
    n_total: usize,
    /// Prints and writes files: the single process, or rank 0.
    lead: bool,
    last: usize,
    out: std::io::BufWriter<std::io::Stdout>,
    write_err: Option<std::io::Error>,
    ckpt_err: Option<Error>,
    last_flush: Instant,
    /// A minibatch run's epochs so far.
    history: Vec<EpochRecord>,
}

impl<'a> Reporter<'a> {
    fn new(args: &'a TrainArgs, cfg: &'a RunConfig, lead: bool, n_total: usize) -> Self {
        Reporter {
            args,
            cfg,
            n_total,
            lead,
            last: cfg.total_steps.saturating_sub(1),
            out: std::io::BufWriter::new(std::io::stdout()),
            write_err: None,
            ckpt_err: None,
            last_flush: Instant::now(),
            history: Vec::new(),
        }
    }

    /// Records a finished epoch, and rewrites the metrics file with it.
    fn push_epoch(&mut self, r: EpochRecord) {
        self.history.push(r);
        if let (Some(p), true) = (&self.args.metrics, self.lead) {
            if let Err(e) = write_metrics(p, &self.history) {
                self.ckpt_err.get_or_insert(e);
            }
        }
    }

    /// After step `step` with loss `loss`; `stop` says a signal arrived
    /// (on any process).
    fn on_step<F: Real>(
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
        let a = self.args;
        if !(a.quiet
            || self.write_err.is_some()
            || !(step.is_multiple_of(a.log_every) || step == self.last))
        {
            // Same form as the reference's print(t, loss): shortest round-trip.
            if let Err(e) = writeln!(self.out, "{step} {loss:?}") {
                // Stdout is gone (a closed pipe) or full: stop at this step
                // boundary; the files are still written.
                self.write_err = Some(e);
                return ControlFlow::Break(());
            } else if self.last_flush.elapsed() > Duration::from_millis(100) {
                // Long runs show progress; short ones are not slowed by syscalls.
                let _ = self.out.flush();
                self.last_flush = Instant::now();
            }
        }
        if let Some(p) = &a.checkpoint {
            if (step + 1).is_multiple_of(a.checkpoint_every) {
                if let Err(e) = snapshot(t, self.cfg, self.n_total, &self.history).write(p) {
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
    fn finish<F: Real>(
        mut self,
        trainer: &Trainer<F>,
        result: Result<twolayer::train::RunStats>,
        signal: Option<i32>,
        extra: &str,
    ) -> Result<()> {
        if let Err(e) = self.out.flush() {
            self.write_err.get_or_insert(e);
        }
        // A diverged run stops here: the last checkpoint written is the last
        // finite state, and no output of the broken state is written.
        let stats = result?;
        if let Some(e) = self.ckpt_err {
            return Err(e);
        }
        if !self.lead {
            return Ok(());
        }
        // The files first, whatever happened to stdout: a full disk under
        // `> train.log` must not cost the weights.
        let (args, cfg) = (self.args, self.cfg);
        if let Some(p) = &args.checkpoint {
            snapshot(trainer, cfg, self.n_total, &self.history).write(p)?;
        }
        if let Some(p) = &args.metrics {
            write_metrics(p, &self.history)?;
        }
        if let Some(p) = &args.losses {
            output::write_losses(p, 0, trainer.losses())?;
        }
        if let Some(p) = &args.save {
            npz::save_weights(p, trainer.weights())?;
        }
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
        let shape = cfg.global_shape(trainer, self.n_total);
        let gflops = shape.flops_per_step() / (stats.ms_per_step() * 1e-3) / 1e9;
        let plan = trainer.plan();
        say!(
            "twolayer: {} steps of {shape} {} in {:.3} s: {:.4} ms/step, {:.1} GFLOP/s; threads {} ({} shard(s) of {} rows in blocks of {}, OpenBLAS {} thread(s) per GEMM, {}){extra}; peak RSS {}; final loss {:?}",
            stats.steps,
            F::DTYPE,
            stats.elapsed.as_secs_f64(),
            stats.ms_per_step(),
            gflops,
            cfg.threads,
            plan.shards,
            trainer.data().x.nrows().div_ceil(plan.shards),
            plan.block_rows,
            plan.blas_threads,
            blas::core_name(),
            twolayer::shape::peak_rss_bytes()
                .map(|b| twolayer::error::human_bytes(b as f64))
                .unwrap_or_else(|| "unknown".into()),
            trainer.losses().last().copied().unwrap_or(f64::NAN),
        );
        if let Some(signal) = signal {
            if trainer.steps_done() < cfg.total_steps {
                let name = if signal == signal_hook::consts::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
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
                        cfg.total_steps
                    ),
                });
            }
        }
        Ok(())
    }
}

fn train_and_report<F: Real>(
    args: &TrainArgs,
    mut trainer: Trainer<F>,
    cfg: RunConfig,
) -> Result<()> {
    let signals = Signals::install()?;
    let to_run = cfg.total_steps - trainer.steps_done();
    let n = trainer.shape().n;
    let mut rep = Reporter::new(args, &cfg, true, n);
    let result = trainer.run(to_run, |t, step, loss| {
        rep.on_step(t, step, loss, signals.caught().is_some())
    });
    rep.finish(&trainer, result, signals.caught(), "")
}

/// `mpirun -np K twolayer train …`: data-parallel training (see
/// [`twolayer::distributed`]).
#[cfg(feature = "mpi")]
mod distributed {
    use super::*;
    use twolayer::distributed::{digest, Cluster};

    /// Runs the job on this rank. An error on any rank aborts every rank
    /// (the others would otherwise wait in the next allreduce for ever).
    pub fn run(args: &TrainArgs) -> Result<()> {
        let cluster = Cluster::init()?;
        match run_rank(args, &cluster) {
            Ok(()) => Ok(()),
            Err(e @ Error::Interrupted { .. }) => Err(e),
            Err(e) => cluster.abort(&e.to_string()),
        }
    }

    fn run_rank(args: &TrainArgs, cluster: &Cluster) -> Result<()> {
        #[cfg(feature = "fault-injection")]
        let panic_at = fault_step(cluster);
        #[cfg(not(feature = "fault-injection"))]
        let panic_at: Option<usize> = None;

        let k = cluster.size();
        // The same checks as one process; mpirun binds each rank to its
        // cores, and the default thread budget follows.
        let spec = run_spec::resolve(args, Launch::Mpi { ranks: k })?;
        check_files_distinct(args, &spec)?;
        threads::set_budget(spec.threads)?;
        match spec.dtype {
            Dtype::F32 => run_typed::<f32>(args, cluster, spec, panic_at),
            Dtype::F64 => run_typed::<f64>(args, cluster, spec, panic_at),
        }
    }

    fn run_typed<F: Real + mpi::traits::Equivalence>(
        args: &TrainArgs,
        cluster: &Cluster,
        mut spec: RunSpec,
        panic_at: Option<usize>,
    ) -> Result<()> {
        let shape = spec.shape;
        let rows = cluster.rows(shape.n);
        let k = cluster.size();
        let mb = spec.minibatch.take();
        let cfg = RunConfig {
            minibatch: mb.as_ref().map(|m| m.header.clone()),
            ..RunConfig::of(&spec)
        };
        let (lr, mode, total_steps) = (spec.lr, spec.mode, spec.total_steps);
        let (weights, losses) = match spec.start {
            Start::Resume(c) => c.into_typed::<F>(),
            Start::Init { path } => (npz::load_weights::<F>(&path)?, Vec::new()),
            Start::Weights { path } => (npz::load_weights_file::<F>(&path)?, Vec::new()),
            Start::Seeded { seed, scaled } => {
                (seeded_weights::<F>(shape, seed, scaled), Vec::new())
            }
        };
        // This rank's rows only: generated, cut from the file, or (a
        // minibatch run) its share of every batch, read as it comes.
        let data = match &mb {
            Some(m) => twolayer::minibatch::empty_batch::<F>(&m.dataset, rows.len()),
            None => data_from_source::<F>(&spec.data, shape, rows.clone())?,
        };
        let mut trainer =
            Trainer::resume(data, weights, lr, mode, losses)?.with_loss_over(spec.loss, shape.n);
        let signals = Signals::install()?;
        let lead = cluster.rank() == 0;
        let mut rep = Reporter::new(args, &cfg, lead, shape.n);
        let (overlap, pieces) = args.mpi.overlap_and_pieces();
        let mut exchange = cluster.exchange(overlap);
        let to_run = total_steps - trainer.steps_done();
        let mut val_err: Option<Error> = None;
        let mut after_step = |t: &Trainer<F>, step: usize, loss: f64| {
            if panic_at == Some(step) {
                panic!(
                    "fault injection: rank {} panics at step {step}",
                    cluster.rank()
                );
            }
            if let (Some(m), true) = (&mb, lead) {
                let per_epoch = m.schedule.batches_per_epoch() as usize;
                if (step + 1).is_multiple_of(per_epoch) {
                    let epochs = total_steps.div_ceil(per_epoch);
                    match end_of_epoch(t, m, (step + 1) / per_epoch, epochs) {
                        Ok(r) => rep.push_epoch(r),
                        // The other ranks wait in the next sum until the
                        // error aborts the job.
                        Err(e) => {
                            val_err = Some(e);
                            return ControlFlow::Break(());
                        }
                    }
                }
            }
            // Every rank must stop at the same step: decide together.
            let stop = cluster.any(signals.caught().is_some());
            rep.on_step(t, step, loss, stop)
        };
        let result = match &mb {
            Some(m) => twolayer::minibatch::run_exchanged(
                &mut trainer,
                &m.dataset,
                &m.schedule,
                rows.clone(),
                &mut exchange,
                pieces,
                to_run,
                &mut after_step,
            ),
            None => trainer.run_exchanged(to_run, &mut exchange, pieces, &mut after_step),
        };
        if let Some(e) = val_err {
            return Err(e);
        }
        if result.is_ok()
            && !cluster
                .identical_everywhere(digest(&[&trainer.weights().w1, &trainer.weights().w2]))
        {
            return Err(Error::invalid(
                "the weights differ between ranks after training",
            ));
        }
        let allreduce_ms = cluster.max(exchange.ms_per_step());
        let how = if overlap {
            format!("overlapped, g_w1 in {pieces} pieces")
        } else {
            "blocking".to_string()
        };
        let extra = format!(
            "; {k} MPI ranks of {}-{} rows{}, allreduce {allreduce_ms:.3} ms/step in MPI calls (slowest rank; {how}), weights identical on all ranks",
            shape.n / k,
            shape.n.div_ceil(k),
            if mb.is_some() { " of every minibatch" } else { "" }
        );
        let signal = if cluster.any(signals.caught().is_some()) {
            signals.caught().or(Some(signal_hook::consts::SIGINT))
        } else {
            None
        };
        rep.finish(&trainer, result, signal, &extra)
    }

    /// `TWOLAYER_FAULT_PANIC=RANK:STEP`: that rank panics after that step
    /// (feature `fault-injection`, for the failure tests only).
    #[cfg(feature = "fault-injection")]
    fn fault_step(cluster: &Cluster) -> Option<usize> {
        let v = std::env::var("TWOLAYER_FAULT_PANIC").ok()?;
        let (rank, step) = v.split_once(':')?;
        (rank.parse::<usize>().ok()? == cluster.rank()).then(|| step.parse().ok())?
    }
}
