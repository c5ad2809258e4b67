//! One validated description of a training run, resolved in one place from
//! the flags, the checkpoint being resumed (if any) and the launch (one
//! process, or K ranks under mpirun). Fresh, resumed and MPI runs take the
//! same checks; nothing after this reads a flag that could contradict it.

use crate::cli::{ModeArg, TrainArgs};
use std::path::{Path, PathBuf};
use twolayer::checkpoint::{file_sha256, AnyCheckpoint, DataSource};
use twolayer::error::{Error, Result};
use twolayer::npz;
use twolayer::scalar::Dtype;
use twolayer::shape::Shape;
use twolayer::step::{LearningRates, Plan, StepMode};
use twolayer::threads;

/// Defaults of the reference experiment.
const DEFAULT_LR: f64 = 1e-6;
const DEFAULT_STEPS: usize = 500;

/// Where the run's data and weights come from.
pub enum Start {
    /// Standard normal x, y, w1, w2 from a seed.
    Seeded {
        /// The seed.
        seed: u64,
    },
    /// x, y, w1, w2 from an `--init` file.
    Init {
        /// The file.
        path: PathBuf,
    },
    /// Weights and losses from a checkpoint; data from its recorded source.
    Resume(Box<AnyCheckpoint>),
}

/// A run, resolved and checked.
pub struct RunSpec {
    /// The whole batch's shape (under MPI, every rank's rows together).
    pub shape: Shape,
    /// Element type.
    pub dtype: Dtype,
    /// Steps to have done at the end (a resumed run counts its past ones).
    pub total_steps: usize,
    /// Learning rates.
    pub lr: LearningRates,
    /// How the update is applied.
    pub mode: StepMode,
    /// This process's thread budget.
    pub threads: usize,
    /// MPI ranks (1: one process).
    pub ranks: usize,
    /// The data's source, as a checkpoint records it.
    pub data: DataSource,
    /// Where the data and weights come from.
    pub start: Start,
}

/// The library's step mode for the command line's.
pub fn step_mode(m: ModeArg) -> StepMode {
    match m {
        ModeArg::Fused => StepMode::Fused,
        ModeArg::Explicit => StepMode::Explicit,
    }
}

/// How the run was launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launch {
    /// One process on the whole batch.
    Single,
    /// One of `ranks` processes under mpirun, each on its own rows.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    Mpi {
        /// How many.
        ranks: usize,
    },
}

/// Resolves and checks the run `args` describe, launched as `launch`.
pub fn resolve(args: &TrainArgs, launch: Launch) -> Result<RunSpec> {
    let (ranks, mpi) = match launch {
        Launch::Single => (1, false),
        Launch::Mpi { ranks } => (ranks, true),
    };
    let spec = match &args.resume {
        Some(path) => from_checkpoint(args, path, ranks)?,
        None => fresh(args, ranks, mpi)?,
    };
    if mpi && spec.mode == StepMode::Fused {
        return Err(Error::invalid(
            "data-parallel training sums explicit gradients across ranks; drop --step-mode fused (or resume a fused run without mpirun)",
        ));
    }
    if spec.shape.n < ranks {
        return Err(Error::invalid(format!(
            "{ranks} ranks need at least {ranks} rows; the batch has {}",
            spec.shape.n
        )));
    }
    // Each process holds its rows (the largest share), the weights and its
    // workspace: refuse before anything is allocated or read.
    let local = Shape {
        n: spec.shape.n.div_ceil(ranks),
        ..spec.shape
    };
    Plan::new(local, spec.dtype, spec.threads, spec.mode)
        .check_fits_memory(local, spec.dtype, spec.mode)?;
    Ok(spec)
}

/// A fresh run: seeded, or from an `--init` file.
fn fresh(args: &TrainArgs, ranks: usize, mpi: bool) -> Result<RunSpec> {
    let lr = LearningRates {
        w1: args.lr_w1.or(args.lr).unwrap_or(DEFAULT_LR),
        w2: args.lr_w2.or(args.lr).unwrap_or(DEFAULT_LR),
    };
    let mode = match (args.step_mode.map(step_mode), mpi) {
        (Some(m), _) => m,
        (None, false) => StepMode::Fused,
        (None, true) => StepMode::Explicit,
    };
    let (shape, dtype, data, start) = match &args.init {
        Some(path) => {
            let (shape, dtype) = npz::peek_shape(path)?;
            check_flags_match(args, shape, dtype, &path.display().to_string())?;
            (
                shape,
                dtype,
                DataSource::file(path)?,
                Start::Init { path: path.clone() },
            )
        }
        None => {
            let r = Shape::REFERENCE;
            let shape = Shape::new(
                args.n.unwrap_or(r.n),
                args.d_in.unwrap_or(r.d_in),
                args.hidden.unwrap_or(r.hidden),
                args.d_out.unwrap_or(r.d_out),
            )?;
            let seed = args.seed.unwrap_or(0);
            (
                shape,
                args.dtype.unwrap_or(Dtype::F64),
                DataSource::Seeded { seed },
                Start::Seeded { seed },
            )
        }
    };
    Ok(RunSpec {
        shape,
        dtype,
        total_steps: args.steps.unwrap_or(DEFAULT_STEPS),
        lr,
        mode,
        threads: args.threads.unwrap_or_else(threads::available_cores),
        ranks,
        data,
        start,
    })
}

/// `--resume`: the checkpoint decides the data, shape, dtype, rates and
/// mode; flags that contradict it are errors, never silently ignored, in
/// one process and under mpirun alike.
fn from_checkpoint(args: &TrainArgs, path: &Path, ranks: usize) -> Result<RunSpec> {
    let ckpt = AnyCheckpoint::read(path)?;
    let h = ckpt.header().clone();
    let what = format!("checkpoint {}", path.display());
    if h.ranks != ranks {
        return Err(Error::invalid(if h.ranks == 1 {
            format!("{what} was written by a single process; resume it without mpirun (this run has {ranks} ranks)")
        } else {
            format!(
                "{what} was written by a {}-rank MPI job; resume it with mpirun -np {} (this run has {ranks})",
                h.ranks, h.ranks
            )
        }));
    }
    let shape = h.shape()?;
    let dtype = h.dtype()?;
    check_flags_match(args, shape, dtype, &what)?;
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
        say!(
            "twolayer: warning: resuming on {threads} threads, the run used {}; the losses will match an unbroken run to rounding, not bit for bit",
            h.threads
        );
    }
    check_source_unchanged(&h.data)?;
    Ok(RunSpec {
        shape,
        dtype,
        total_steps,
        lr,
        mode,
        threads,
        ranks,
        data: h.data.clone(),
        start: Start::Resume(Box::new(ckpt)),
    })
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

/// Fails when a checkpoint's data file is no longer the one the run used
/// (its SHA-256 differs): resuming would train on other data.
fn check_source_unchanged(src: &DataSource) -> Result<()> {
    if let DataSource::File { path, sha256 } = src {
        let p = Path::new(path);
        if &file_sha256(p)? != sha256 {
            return Err(Error::read(
                p,
                "the data file has changed since the checkpoint was written (SHA-256 differs); resuming would train on other data",
            ));
        }
    }
    Ok(())
}
