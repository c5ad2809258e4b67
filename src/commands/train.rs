//! `twolayer train`: set up the data and weights (seeded, from a .npz, or
//! from a checkpoint), train, print `t loss` lines and a summary, and write
//! the requested files — checkpoints along the way, and everything on
//! Ctrl-C or SIGTERM.

use crate::blas;
use crate::checkpoint::{file_sha256, AnyCheckpoint, Checkpoint, DataSource, Header};
use crate::cli::{ModeArg, TrainArgs};
use crate::error::{Error, Result};
use crate::net::{Data, Weights};
use crate::npz::{self, Init};
use crate::output;
use crate::scalar::{Dtype, Real};
use crate::shape::Shape;
use crate::step::{LearningRates, Plan, StepMode};
use crate::threads;
use crate::train::Trainer;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Defaults of the reference experiment.
const DEFAULT_LR: f64 = 1e-6;
const DEFAULT_STEPS: usize = 500;

/// Everything about a run that a checkpoint must carry besides weights and
/// losses.
struct RunConfig {
    total_steps: usize,
    lr: LearningRates,
    mode: StepMode,
    threads: usize,
    data: DataSource,
}

/// Runs `twolayer train` with these flags.
pub fn run(args: &TrainArgs) -> Result<()> {
    // Refuse unwritable outputs now, not after hours of training.
    for path in [&args.save, &args.losses, &args.checkpoint]
        .into_iter()
        .flatten()
    {
        output::check_writable(path)?;
    }
    if let Some(path) = &args.resume {
        return resume(args, path);
    }
    let threads = args.threads.unwrap_or_else(threads::available_cores);
    threads::set_budget(threads)?;
    let lr = LearningRates {
        w1: args.lr_w1.or(args.lr).unwrap_or(DEFAULT_LR),
        w2: args.lr_w2.or(args.lr).unwrap_or(DEFAULT_LR),
    };
    let mode = args.step_mode.map_or(StepMode::Fused, step_mode);
    let total_steps = args.steps.unwrap_or(DEFAULT_STEPS);
    match &args.init {
        Some(path) => {
            let (shape, dtype) = npz::peek_shape(path)?;
            check_flags_match(args, shape, dtype, &path.display().to_string())?;
            let data = DataSource::File {
                path: std::fs::canonicalize(path)
                    .map_err(|e| Error::read(path, e))?
                    .display()
                    .to_string(),
                sha256: file_sha256(path)?,
            };
            let cfg = RunConfig {
                total_steps,
                lr,
                mode,
                threads,
                data,
            };
            match npz::load_init(path)? {
                Init::F32(d, w) => train_and_report(args, Trainer::new(d, w, lr, mode)?, cfg),
                Init::F64(d, w) => train_and_report(args, Trainer::new(d, w, lr, mode)?, cfg),
            }
        }
        None => {
            let r = Shape::REFERENCE;
            let shape = Shape::new(
                args.n.unwrap_or(r.n),
                args.d_in.unwrap_or(r.d_in),
                args.hidden.unwrap_or(r.hidden),
                args.d_out.unwrap_or(r.d_out),
            )?;
            let dtype = args.dtype.unwrap_or(Dtype::F64);
            Plan::new(shape, dtype, threads, mode).check_fits_memory(shape, dtype, mode)?;
            let seed = args.seed.unwrap_or(0);
            let cfg = RunConfig {
                total_steps,
                lr,
                mode,
                threads,
                data: DataSource::Seeded { seed },
            };
            match dtype {
                Dtype::F32 => seeded::<f32>(args, shape, cfg, seed),
                Dtype::F64 => seeded::<f64>(args, shape, cfg, seed),
            }
        }
    }
}

fn seeded<F: Real>(args: &TrainArgs, shape: Shape, cfg: RunConfig, seed: u64) -> Result<()> {
    let data = Data::<F>::random(shape, seed);
    let weights = Weights::<F>::random(shape, seed);
    let trainer = Trainer::new(data, weights, cfg.lr, cfg.mode)?;
    train_and_report(args, trainer, cfg)
}

/// `--resume`: the checkpoint decides the data, shape, dtype and settings;
/// flags that contradict it are errors, never silently ignored.
fn resume(args: &TrainArgs, path: &Path) -> Result<()> {
    let ckpt = AnyCheckpoint::read(path)?;
    let h = ckpt.header().clone();
    let shape = h.shape()?;
    let what = format!("checkpoint {}", path.display());
    check_flags_match(args, shape, h.dtype()?, &what)?;
    let lr = h.lr();
    for (flag, given, have) in [
        ("--lr-w1", args.lr_w1.or(args.lr), lr.w1),
        ("--lr-w2", args.lr_w2.or(args.lr), lr.w2),
    ] {
        if let Some(v) = given.filter(|&v| v != have) {
            return Err(Error::invalid(format!(
                "{flag} {v} disagrees with {what} (lr {have}); a resumed run keeps its settings"
            )));
        }
    }
    let mode = h.step_mode()?;
    if let Some(m) = args.step_mode.map(step_mode).filter(|&m| m != mode) {
        return Err(Error::invalid(format!(
            "--step-mode {m:?} disagrees with {what} ({mode:?}); a resumed run keeps its settings"
        )));
    }
    let total_steps = args.steps.unwrap_or(h.total_steps);
    if total_steps < h.steps_done {
        return Err(Error::invalid(format!(
            "--steps {total_steps} is fewer than the {} steps {what} has already done",
            h.steps_done
        )));
    }
    let threads = args.threads.unwrap_or(h.threads);
    if threads != h.threads {
        eprintln!(
            "twolayer: warning: resuming on {threads} threads, the run used {}; the losses will match an unbroken run to rounding, not bit for bit",
            h.threads
        );
    }
    threads::set_budget(threads)?;
    let cfg = RunConfig {
        total_steps,
        lr,
        mode,
        threads,
        data: h.data.clone(),
    };
    match ckpt {
        AnyCheckpoint::F32(c) => resume_with(args, c, shape, cfg),
        AnyCheckpoint::F64(c) => resume_with(args, c, shape, cfg),
    }
}

fn resume_with<F: Real>(
    args: &TrainArgs,
    c: Checkpoint<F>,
    shape: Shape,
    cfg: RunConfig,
) -> Result<()> {
    let data = match &cfg.data {
        DataSource::Seeded { seed } => Data::<F>::random(shape, *seed),
        DataSource::File { path, sha256 } => {
            let p = Path::new(path);
            if &file_sha256(p)? != sha256 {
                return Err(Error::read(
                    p,
                    "the data file has changed since the checkpoint was written (SHA-256 differs); resuming would train on other data",
                ));
            }
            match npz::load_init(p)? {
                Init::F32(d, _) if F::DTYPE == Dtype::F32 => cast_data(d),
                Init::F64(d, _) if F::DTYPE == Dtype::F64 => cast_data(d),
                _ => {
                    return Err(Error::read(
                        p,
                        "the data file's dtype differs from the checkpoint's",
                    ))
                }
            }
        }
    };
    let trainer = Trainer::resume(data, c.weights, cfg.lr, cfg.mode, c.losses)?;
    train_and_report(args, trainer, cfg)
}

/// Same-dtype conversion (the match above guarantees G and F are one type).
fn cast_data<G: Real, F: Real>(d: Data<G>) -> Data<F> {
    Data {
        x: d.x.mapv(|v| F::from_f64(v.to_f64())),
        y: d.y.mapv(|v| F::from_f64(v.to_f64())),
    }
}

/// Flags that name a shape or dtype must agree with the file (an --init
/// file or a checkpoint) that decides them.
fn check_flags_match(args: &TrainArgs, shape: Shape, dtype: Dtype, what: &str) -> Result<()> {
    let flags = [args.n, args.d_in, args.hidden, args.d_out];
    for ((name, in_file), flag) in shape.named_dims().into_iter().zip(flags) {
        if let Some(v) = flag.filter(|&v| v != in_file) {
            return Err(Error::invalid(format!(
                "--{name} {v} disagrees with {what} (it has {name} = {in_file}); drop the flag or change the file"
            )));
        }
    }
    if let Some(d) = args.dtype.filter(|&d| d != dtype) {
        return Err(Error::invalid(format!(
            "--dtype {d} disagrees with {what}, which holds {dtype} arrays"
        )));
    }
    Ok(())
}

/// The checkpoint of a trainer's current state.
fn snapshot<F: Real>(t: &Trainer<F>, cfg: &RunConfig) -> Checkpoint<F> {
    let s = t.shape();
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
            data: cfg.data.clone(),
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

fn train_and_report<F: Real>(
    args: &TrainArgs,
    mut trainer: Trainer<F>,
    cfg: RunConfig,
) -> Result<()> {
    let signals = Signals::install()?;
    let shape = trainer.shape();
    let first = trainer.steps_done();
    let to_run = cfg.total_steps - first;
    let last = cfg.total_steps.saturating_sub(1);

    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut write_err: Option<std::io::Error> = None;
    let mut ckpt_err: Option<Error> = None;
    let mut last_flush = Instant::now();
    let result = trainer.run(to_run, |t, step, loss| {
        if !(args.quiet || write_err.is_some() || !(step % args.log_every == 0 || step == last)) {
            // Same form as the reference's print(t, loss): shortest round-trip.
            if let Err(e) = writeln!(out, "{step} {loss:?}") {
                write_err = Some(e);
            } else if last_flush.elapsed() > Duration::from_millis(100) {
                // Long runs show progress; short ones are not slowed by syscalls.
                let _ = out.flush();
                last_flush = Instant::now();
            }
        }
        if let Some(p) = &args.checkpoint {
            if (step + 1) % args.checkpoint_every == 0 {
                if let Err(e) = snapshot(t, &cfg).write(p) {
                    ckpt_err = Some(e);
                    return ControlFlow::Break(());
                }
            }
        }
        if signals.caught().is_some() {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    if let Err(e) = out.flush() {
        write_err.get_or_insert(e);
    }
    drop(out);
    // A diverged run stops here: the last checkpoint written is the last
    // finite state, and no output of the broken state is written.
    let stats = result?;
    if let Some(e) = ckpt_err {
        return Err(e);
    }
    // A closed pipe (`twolayer train | head`) means the reader has seen
    // enough; the run itself and its files are still wanted.
    if let Some(e) = write_err.filter(|e| e.kind() != std::io::ErrorKind::BrokenPipe) {
        return Err(Error::write(Path::new("<stdout>"), e));
    }

    if let Some(p) = &args.checkpoint {
        snapshot(&trainer, &cfg).write(p)?;
    }
    if let Some(p) = &args.losses {
        output::write_losses(p, 0, trainer.losses())?;
    }
    if let Some(p) = &args.save {
        npz::save_weights(p, trainer.weights())?;
    }

    let gflops = shape.flops_per_step() / (stats.ms_per_step() * 1e-3) / 1e9;
    eprintln!(
        "twolayer: {} steps of {shape} {} in {:.3} s: {:.4} ms/step, {:.1} GFLOP/s; threads {} ({} shard(s) of {} rows in blocks of {}, OpenBLAS {} thread(s) per GEMM, {}); final loss {:?}",
        stats.steps,
        F::DTYPE,
        stats.elapsed.as_secs_f64(),
        stats.ms_per_step(),
        gflops,
        cfg.threads,
        trainer.plan().shards,
        shape.n.div_ceil(trainer.plan().shards),
        trainer.plan().block_rows,
        trainer.plan().blas_threads,
        blas::core_name(),
        trainer.losses().last().copied().unwrap_or(f64::NAN),
    );
    if let Some(signal) = signals.caught() {
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

/// The library's step mode for the command line's.
pub fn step_mode(m: ModeArg) -> StepMode {
    match m {
        ModeArg::Fused => StepMode::Fused,
        ModeArg::Explicit => StepMode::Explicit,
    }
}
