//! One validated description of a training run, resolved in one place from
//! the flags, the checkpoint being resumed (if any) and the launch (one
//! process, or K ranks under mpirun). Fresh, resumed and MPI runs take the
//! same checks; nothing after this reads a flag that could contradict it.

use crate::cli::TrainArgs;
use std::path::{Path, PathBuf};
use twolayer::checkpoint::{AnyCheckpoint, DataSource, FileRef, MinibatchHeader};
use twolayer::dataset::batches::Schedule;
use twolayer::dataset::Dataset;
use twolayer::error::{Error, Result};
use twolayer::net::WeightInit;
use twolayer::npz;
use twolayer::run::RunDescription;
use twolayer::scalar::Dtype;
use twolayer::shape::Shape;
use twolayer::step::{Form, FormChoice, LearningRates, Plan, StepMode};
use twolayer::threads;
use twolayer::Loss;

/// Defaults of the reference experiment.
const DEFAULT_LR: f64 = 1e-6;
const DEFAULT_STEPS: usize = twolayer::step::dual::TRAIN_DEFAULT_STEPS;

use twolayer::epochs::{
    DEFAULT_BATCH as DATA_DEFAULT_BATCH, DEFAULT_EPOCHS as DATA_DEFAULT_EPOCHS,
    DEFAULT_LR as DATA_DEFAULT_LR,
};

/// Where the run's data and weights come from.
pub enum Start {
    /// Standard normal x, y, w1, w2 from a seed (with --data: w1 and w2
    /// alone).
    Seeded {
        /// The seed.
        seed: u64,
        /// How the weights are drawn (`--weight-init`).
        init: WeightInit,
    },
    /// With --data: w1 and w2 from a `--weights` file.
    Weights {
        /// The file.
        path: PathBuf,
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
    /// The run: dtype, the whole batch's shape (under MPI, every rank's
    /// rows together), this process's thread budget, how the update is
    /// applied and how the step computes x·w1 — as the checkpoint header,
    /// the wisdom key and a report's point record it.
    pub run: RunDescription,
    /// Steps to have done at the end (a resumed run counts its past ones).
    pub total_steps: usize,
    /// Learning rates.
    pub lr: LearningRates,
    /// MPI ranks (1: one process).
    pub ranks: usize,
    /// The data's source, as a checkpoint records it.
    pub data: DataSource,
    /// Where the data and weights come from.
    pub start: Start,
    /// The loss minimised and reported.
    pub loss: Loss,
    /// With --data: the dataset and its batches.
    pub minibatch: Option<Minibatch>,
    /// Whether the model has biases b1, b2.
    pub biases: bool,
    /// The memory the run holds at its peak, estimated before anything is
    /// allocated (filled in by [`resolve`]): its data, weights, workspace
    /// and gradients, the batches read ahead, a dataset loaded into memory,
    /// the loss history's reservation, and the process itself
    /// ([`twolayer::shape::PROCESS_BYTES`]). The run is refused when it
    /// is over 90% of the memory available.
    pub memory_estimate: u128,
}

/// What building a run's trainer reads of its spec
/// (`train::build_trainer`), copied out so that the set-up can move the
/// spec's start (a checkpoint's weights) into the trainer.
#[derive(Clone, Copy, Debug)]
pub struct TrainerSettings {
    /// The run (dtype, shape, threads, mode, form).
    pub run: RunDescription,
    /// Learning rates.
    pub lr: LearningRates,
    /// The loss minimised and reported.
    pub loss: Loss,
}

impl RunSpec {
    /// What building its trainer reads.
    pub fn trainer_settings(&self) -> TrainerSettings {
        TrainerSettings {
            run: self.run,
            lr: self.lr,
            loss: self.loss,
        }
    }
}

/// A minibatch run's data, resolved.
pub struct Minibatch {
    /// The training data (and the validation rows, when split off).
    pub dataset: Dataset,
    /// A separate validation set (`--val`).
    pub val: Option<Dataset>,
    /// Which rows each step trains on.
    pub schedule: Schedule,
    /// What the checkpoint records of it.
    pub header: MinibatchHeader,
    /// Standard input's copy, when the data came from `--data -`.
    pub _stdin: Option<twolayer::input::Spooled>,
}

impl Minibatch {
    /// The data as epochs: the schedule, and validation on `--val` or the
    /// held-out rows.
    pub fn epochs(&self) -> twolayer::epochs::Epochs<'_> {
        twolayer::epochs::Epochs {
            data: &self.dataset,
            schedule: &self.schedule,
            validation: self.val.as_ref(),
        }
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
    for (flag, given) in [
        ("--batch", args.batch.is_some()),
        ("--epochs", args.epochs.is_some()),
        ("--metrics", args.metrics.is_some()),
        ("--save-best", args.save_best.is_some()),
        ("--patience", args.patience.is_some()),
    ] {
        if given && args.data.is_none() && args.resume.is_none() {
            return Err(Error::invalid(format!(
                "{flag} needs --data (minibatch training on a dataset)"
            )));
        }
    }
    // Before any file is read: bf16 needs the library's bf16 GEMM.
    if args.dtype == Some(Dtype::Bf16) {
        twolayer::step::bf16::require_sbgemm()?;
    }
    let spec = match (&args.resume, &args.data) {
        (Some(path), _) => from_checkpoint(args, path, ranks)?,
        (None, Some(files)) => with_data(args, files, ranks, mpi)?,
        (None, None) => fresh(args, ranks, mpi)?,
    };
    if let (true, Some(m)) = (mpi, &spec.minibatch) {
        if m.schedule.batch() < ranks {
            return Err(Error::invalid(format!(
                "{ranks} ranks need batches of at least {ranks} rows; --batch is {}",
                m.schedule.batch()
            )));
        }
    }
    let mut spec = spec;
    if mpi {
        for (flag, given) in [
            ("--patience", args.patience.is_some()),
            ("--save-best", args.save_best.is_some()),
        ] {
            if given {
                return Err(Error::invalid(format!(
                    "{flag} is not available under mpirun yet (only rank 0 validates); train in one process, or leave it out"
                )));
            }
        }
    }
    if mpi && spec.run.form == Form::Dual {
        if args.form == Some(FormChoice::Dual) {
            say!("twolayer: note: the dual form needs the whole batch in one process; under mpirun each rank trains its rows in the primal form");
        }
        spec.run.form = Form::Primal;
    }
    if mpi && spec.run.step_mode == StepMode::Fused {
        return Err(Error::invalid(
            "data-parallel training sums explicit gradients across ranks; drop --step-mode fused (or resume a fused run without mpirun)",
        ));
    }
    if spec.run.shape().n < ranks {
        return Err(Error::invalid(format!(
            "{ranks} ranks need at least {ranks} rows; the batch has {}",
            spec.run.shape().n
        )));
    }
    // Each process holds its rows (the largest share), the weights and its
    // workspace: refuse before anything is allocated or read.
    let local = Shape {
        n: spec.run.shape().n.div_ceil(ranks),
        ..spec.run.shape()
    };
    twolayer::step::Step::<f32>::available(spec.run.dtype)?;
    let plan = Plan::new(local, spec.run.dtype, spec.run.threads, spec.run.step_mode);
    plan.check_fits_memory(local, spec.run.dtype, spec.run.step_mode)?;
    let run_bytes = plan.training_bytes(local, spec.run.dtype, spec.run.step_mode);
    let run_bytes_total = run_bytes;
    if let Some(m) = spec.minibatch.as_mut() {
        // Every way of training on a dataset starts here: loaded into
        // memory when it fits beside the run (streamed under mpirun, where
        // each rank reads only its share of every batch), and every value
        // checked before the first step either way.
        let batches = u128::from(twolayer::minibatch::AHEAD)
            * local.data_elems()
            * spec.run.dtype.size() as u128;
        let run_bytes = u64::try_from(run_bytes + batches).unwrap_or(u64::MAX);
        let stream = args.stream || mpi;
        m.dataset.prepare(stream, run_bytes)?;
        if let Some(v) = m.val.as_mut() {
            v.prepare(stream, run_bytes.saturating_add(m.dataset.data_bytes()))?;
        }
    }
    // Everything else the run holds: batches read ahead, datasets loaded
    // into memory, the loss history's first reservation; the process's
    // own share is added by the check.
    let loaded = |d: &twolayer::dataset::Dataset| match d.residency() {
        twolayer::dataset::Residency::Memory => d.data_bytes() as u128,
        _ => 0,
    };
    let extra = spec.minibatch.as_ref().map_or(0, |m| {
        u128::from(twolayer::minibatch::AHEAD) * local.data_elems() * spec.run.dtype.size() as u128
            + loaded(&m.dataset)
            + m.val.as_ref().map_or(0, loaded)
    }) + 8 * spec.total_steps.min(twolayer::train::RESERVE_STEPS) as u128;
    spec.memory_estimate = twolayer::shape::PROCESS_BYTES + run_bytes_total + extra;
    local.check_bytes_fit(run_bytes_total + extra, spec.run.dtype)?;
    Ok(spec)
}

/// A fresh run: seeded, or from an `--init` file.
fn fresh(args: &TrainArgs, ranks: usize, mpi: bool) -> Result<RunSpec> {
    let lr = LearningRates {
        w1: args.lr_w1.or(args.lr).unwrap_or(DEFAULT_LR),
        w2: args.lr_w2.or(args.lr).unwrap_or(DEFAULT_LR),
    };
    let mode = match (args.step_mode, mpi) {
        (Some(m), _) => m,
        (None, false) => StepMode::Fused,
        (None, true) => StepMode::Explicit,
    };
    let (shape, dtype, data, start) = match &args.init {
        Some(path) => {
            let (shape, stored) = npz::peek_shape(path)?;
            check_shape_flags(args, shape, &path.display().to_string())?;
            // An explicit --dtype other than the file's casts its arrays
            // (f64 → f32 rounds to nearest), and says so.
            let dtype = args.dtype.unwrap_or(stored);
            if dtype.storage().dtype() != stored {
                say!(
                    "twolayer: note: {} holds {stored} arrays; training in {dtype} as --dtype asks (each value rounded to {})",
                    path.display(),
                    dtype.storage().dtype()
                );
            }
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
                Start::Seeded {
                    seed,
                    init: args
                        .weight_init
                        .map_or(WeightInit::Normal, WeightInit::from),
                },
            )
        }
    };
    let total_steps = args.steps.unwrap_or(DEFAULT_STEPS);
    Ok(RunSpec {
        run: RunDescription::new(
            shape,
            dtype,
            args.threads.unwrap_or_else(threads::available_cores),
            mode,
            fixed_batch_form(args.form, mode, mpi, shape, total_steps, dtype)?,
        ),
        total_steps,
        lr,
        ranks,
        data,
        start,
        loss: args.loss.unwrap_or_default(),
        minibatch: None,
        biases: args.bias,
        memory_estimate: 0,
    })
}

/// The form of a run on one fixed batch: as asked, or by [`Form::auto`]
/// (primal under mpirun, where each rank has part of the batch, and with
/// explicit gradients, which the dual form does not make).
fn fixed_batch_form(
    asked: Option<FormChoice>,
    mode: StepMode,
    mpi: bool,
    shape: Shape,
    steps: usize,
    dtype: Dtype,
) -> Result<Form> {
    match asked.unwrap_or_default() {
        FormChoice::Dual if dtype == Dtype::Bf16 => Err(Error::invalid(
            "--form dual runs in f32 or f64; --dtype bf16 runs the primal step with bf16 GEMMs",
        )),
        // Under mpirun each rank has part of the batch: primal (a note
        // says so when dual was asked for).
        FormChoice::Auto if mpi => Ok(Form::Primal),
        FormChoice::Dual if mpi => Ok(Form::Dual),
        asked => asked.resolve(shape, steps, mode, dtype).map_err(|_| {
            Error::invalid(
                "--form dual applies its update itself; it cannot run with --step-mode explicit",
            )
        }),
    }
}

/// A fresh minibatch run on `--data`.
fn with_data(args: &TrainArgs, files: &[PathBuf], ranks: usize, mpi: bool) -> Result<RunSpec> {
    if args.form == Some(FormChoice::Dual) {
        return Err(Error::invalid(
            "--form dual needs one fixed batch; --data trains on a new batch every step",
        ));
    }
    // `--data -`: standard input, copied to a temporary file (the readers
    // seek). It cannot be read again, so such a run cannot be resumed.
    let mut stdin = None;
    let mut resolved = Vec::with_capacity(files.len());
    for f in files {
        let (p, spooled) = twolayer::input::resolve_stdin(f, &crate::signals::stop_waiting)?;
        if spooled.is_some() {
            if stdin.is_some() {
                return Err(Error::invalid(
                    "standard input can be read once: give one - at most",
                ));
            }
            if args.checkpoint.is_some() {
                return Err(Error::invalid(
                    "--checkpoint with --data -: a resumed run reads its data again, and standard input cannot be; save the data to a file",
                ));
            }
            stdin = spooled;
        }
        resolved.push(p);
    }
    let files = &resolved[..];
    let dataset = Dataset::open(files)?;
    let what = files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(" and ");
    for (flag, given, have) in [
        ("--d-in", args.d_in, dataset.d_in()),
        ("--d-out", args.d_out, dataset.d_out()),
    ] {
        if let Some(v) = given.filter(|&v| v != have) {
            return Err(Error::invalid(format!(
                "{flag} {v} disagrees with {what}, whose data has {have}; drop the flag"
            )));
        }
    }
    let (hidden, start) = match &args.weights {
        Some(path) => {
            let (d_in, hidden, d_out, _) = npz::peek_weights(path)?;
            if (d_in, d_out) != (dataset.d_in(), dataset.d_out()) {
                return Err(Error::invalid(format!(
                    "the weights in {} are for {d_in} inputs and {d_out} outputs, but the data has {} and {}",
                    path.display(),
                    dataset.d_in(),
                    dataset.d_out()
                )));
            }
            if let Some(h) = args.hidden.filter(|&h| h != hidden) {
                return Err(Error::invalid(format!(
                    "--hidden {h} disagrees with {}, whose weights have H = {hidden}",
                    path.display()
                )));
            }
            let has = npz::weights_have_biases(path)?;
            if has && args.no_bias {
                return Err(Error::invalid(format!(
                    "the weights in {} have biases (b1, b2) and --no-bias trains without: drop one",
                    path.display()
                )));
            }
            if !has && !args.no_bias {
                say!(
                    "twolayer: note: {} has no biases; b1 and b2 start at zero (--no-bias trains without them)",
                    path.display()
                );
            }
            (hidden, Start::Weights { path: path.clone() })
        }
        None => (
            args.hidden.unwrap_or(Shape::REFERENCE.hidden),
            Start::Seeded {
                seed: args.seed.unwrap_or(0),
                init: args.weight_init.map_or(WeightInit::Torch, WeightInit::from),
            },
        ),
    };
    let seed = args.seed.unwrap_or(0);
    let val_rows_hint = twolayer::dataset::batches::held_out(dataset.rows(), args.val_fraction);
    let batch = args.batch.unwrap_or_else(|| {
        DATA_DEFAULT_BATCH.min(dataset.rows().saturating_sub(val_rows_hint).max(1)) as usize
    });
    let schedule = Schedule::new(dataset.rows(), batch, seed, args.val_fraction)?;
    let val = match &args.val {
        Some(v) => {
            // Validating on the rows trained on measures nothing: refused,
            // not taken silently.
            for (vf, tf) in v.iter().flat_map(|vf| files.iter().map(move |tf| (vf, tf))) {
                if twolayer::input::same_file(vf, tf) {
                    return Err(Error::invalid(format!(
                        "--val {} is the training data ({}): validating on the rows trained on measures nothing; hold rows out with --val-fraction, or give other data",
                        vf.display(),
                        tf.display()
                    )));
                }
            }
            let val = Dataset::open(v)?;
            if (val.d_in(), val.d_out()) != (dataset.d_in(), dataset.d_out()) {
                return Err(Error::invalid(format!(
                    "the validation data is {}→{} but the training data is {}→{}",
                    val.d_in(),
                    val.d_out(),
                    dataset.d_in(),
                    dataset.d_out()
                )));
            }
            Some(val)
        }
        None => None,
    };
    let per_epoch = schedule.batches_per_epoch();
    let total_steps = match (args.epochs, args.steps) {
        (Some(e), _) => (e as u64).checked_mul(per_epoch),
        (None, Some(s)) => Some(s as u64),
        (None, None) => DATA_DEFAULT_EPOCHS.checked_mul(per_epoch),
    }
    .and_then(|t| usize::try_from(t).ok())
    .ok_or_else(|| Error::invalid("--epochs × batches per epoch is too many steps"))?;
    let shape = Shape::new(batch, dataset.d_in(), hidden, dataset.d_out())?;
    let refs = |fs: &[PathBuf]| {
        fs.iter()
            .map(|f| {
                // The fingerprint is for resuming: a run that writes no
                // checkpoint (and no rank to agree with) needs none.
                if args.checkpoint.is_some() || mpi {
                    FileRef::of(f)
                } else {
                    FileRef::unhashed(f)
                }
            })
            .collect::<Result<Vec<_>>>()
    };
    let header = MinibatchHeader {
        rows: dataset.rows(),
        batch,
        seed,
        val_fraction: args.val_fraction,
        val: args.val.as_deref().map(refs).transpose()?,
        history: Vec::new(),
        patience: args.patience.map(|p| p as u64),
    };
    if args.patience.is_some() && args.val.is_none() && schedule.val_rows() == 0 {
        return Err(Error::invalid(
            "--patience stops on the validation loss: hold rows out with --val-fraction, or give --val",
        ));
    }
    if args.save_best.is_some() && args.val.is_none() && schedule.val_rows() == 0 {
        return Err(Error::invalid(
            "--save-best keeps the epoch with the best validation loss: hold rows out with --val-fraction, or give --val",
        ));
    }
    let dtype = args.dtype.unwrap_or(dataset.dtype());
    if dtype.storage().dtype() != dataset.dtype() {
        say!(
            "twolayer: note: the data holds {} values; training in {dtype} as --dtype asks (each value converted as it is read)",
            dataset.dtype()
        );
    }
    let spec = fresh_common(args, mpi, shape, dtype);
    Ok(RunSpec {
        lr: LearningRates {
            w1: args.lr_w1.or(args.lr).unwrap_or(DATA_DEFAULT_LR),
            w2: args.lr_w2.or(args.lr).unwrap_or(DATA_DEFAULT_LR),
        },
        loss: args.loss.unwrap_or(Loss::Mean),
        biases: !args.no_bias,
        memory_estimate: 0,
        total_steps,
        ranks,
        data: DataSource::Dataset {
            files: refs(files)?,
        },
        start,
        minibatch: Some(Minibatch {
            dataset,
            val,
            schedule,
            header,
            _stdin: stdin,
        }),
        ..spec
    })
}

/// The settings a fresh run takes from flags alone.
fn fresh_common(args: &TrainArgs, mpi: bool, shape: Shape, dtype: Dtype) -> RunSpec {
    let mode = match (args.step_mode, mpi) {
        (Some(m), _) => m,
        (None, false) => StepMode::Fused,
        (None, true) => StepMode::Explicit,
    };
    let threads = args.threads.unwrap_or_else(threads::available_cores);
    RunSpec {
        run: RunDescription::new(shape, dtype, threads, mode, Form::Primal),
        total_steps: args.steps.unwrap_or(DEFAULT_STEPS),
        lr: LearningRates {
            w1: args.lr_w1.or(args.lr).unwrap_or(DEFAULT_LR),
            w2: args.lr_w2.or(args.lr).unwrap_or(DEFAULT_LR),
        },
        ranks: 1,
        data: DataSource::Seeded { seed: 0 },
        start: Start::Seeded {
            seed: 0,
            init: WeightInit::Normal,
        },
        loss: args.loss.unwrap_or_default(),
        minibatch: None,
        biases: args.bias,
        memory_estimate: 0,
    }
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
    let dtype = h.run.dtype;
    check_flags_match(args, shape, dtype, &what)?;
    let mut lr = h.lr();
    let given = (args.lr_w1.or(args.lr), args.lr_w2.or(args.lr));
    if args.change_lr {
        // Deliberately going on at another rate (after a divergence, say):
        // the checkpoints from here on record the new one.
        if given == (None, None) {
            return Err(Error::invalid(
                "--change-lr needs the new rate: --lr, --lr-w1 or --lr-w2",
            ));
        }
        lr = LearningRates {
            w1: given.0.unwrap_or(lr.w1),
            w2: given.1.unwrap_or(lr.w2),
        };
    }
    for (flag, given, have) in [("--lr-w1", given.0, lr.w1), ("--lr-w2", given.1, lr.w2)] {
        if let Some(v) = given.filter(|&v| v != have) {
            return Err(Error::invalid(format!(
                "{flag} {v} disagrees with {what} (lr {have}); a resumed run keeps its settings (add --change-lr to go on at the new rate)"
            )));
        }
    }
    let mode = h.run.step_mode;
    if let Some(m) = args.step_mode.filter(|&m| m != mode) {
        return Err(Error::invalid(format!(
            "--step-mode {m} disagrees with {what} ({mode}); a resumed run keeps its settings"
        )));
    }
    let form = h.form();
    let asked = match args.form {
        Some(FormChoice::Primal) => Some(Form::Primal),
        Some(FormChoice::Dual) => Some(Form::Dual),
        Some(FormChoice::Auto) | None => None,
    };
    if let Some(f) = asked.filter(|&f| f != form) {
        return Err(Error::invalid(format!(
            "--form {} disagrees with {what} ({}); a resumed run keeps its settings",
            f.name(),
            form.name()
        )));
    }
    let total_steps = args.steps.unwrap_or(h.total_steps);
    if total_steps < h.steps_done {
        return Err(Error::invalid(format!(
            "--steps {total_steps} is fewer than the {} steps {what} has already done",
            h.steps_done
        )));
    }
    let threads = args.threads.unwrap_or(h.run.threads);
    if threads != h.run.threads {
        say!(
            "twolayer: warning: resuming on {threads} threads, the run used {}; the losses will match an unbroken run to rounding, not bit for bit",
            h.run.threads
        );
    }
    if let Some(core) = h.blas_core.as_deref() {
        let now = twolayer::blas::core_name();
        if core != now {
            say!(
                "twolayer: warning: resuming under OpenBLAS's {now} kernels, the run used {core} kernels; they round differently, so the losses will match an unbroken run to rounding, not bit for bit"
            );
        }
    }
    if let Some(lib) = h.blas_library.as_deref() {
        let now = twolayer::blas::Library::current().key();
        if lib != now {
            say!(
                "twolayer: warning: resuming with OpenBLAS {now}, the run used OpenBLAS {lib}; they round differently, so the losses will match an unbroken run to rounding, not bit for bit"
            );
        }
    }
    check_source_unchanged(&h.data)?;
    let loss = h.loss;
    if let Some(l) = args.loss.filter(|&l| l != loss) {
        return Err(Error::invalid(format!(
            "--loss {} disagrees with {what} ({}); a resumed run keeps its settings",
            l.name(),
            loss.name()
        )));
    }
    for (flag, given, want) in [
        ("--bias", args.bias, true),
        ("--no-bias", args.no_bias, false),
    ] {
        if given && h.biases != want {
            return Err(Error::invalid(format!(
                "{flag} disagrees with {what} (a model {} biases); a resumed run keeps its settings",
                if h.biases { "with" } else { "without" }
            )));
        }
    }
    if let Some(p) = args.patience {
        let had = h.minibatch.as_ref().and_then(|m| m.patience);
        if had != Some(p as u64) {
            return Err(Error::invalid(format!(
                "--patience {p} disagrees with {what} ({}); a resumed run keeps its settings",
                match had {
                    Some(q) => format!("patience {q}"),
                    None => "no early stopping".into(),
                }
            )));
        }
    }
    if args.weight_init.is_some() {
        return Err(Error::invalid(format!(
            "--weight-init draws a new run's weights; {what} continues its own"
        )));
    }
    // Flags a resumed run would otherwise ignore: refused, never dropped
    // silently (before, these three went through with exit 0).
    for (flag, given, why) in [
        (
            "--val-fraction",
            args.val_fraction.is_some(),
            "its validation split",
        ),
        ("--val", args.val.is_some(), "its validation data"),
        ("--weights", args.weights.is_some(), "its own weights"),
    ] {
        if given {
            return Err(Error::invalid(format!(
                "{flag} sets up a new run; {what} continues with {why}: drop {flag}"
            )));
        }
    }
    let minibatch = match (&h.minibatch, &h.data) {
        (Some(m), DataSource::Dataset { files }) => Some(resume_minibatch(m, files, &what)?),
        (None, _) => {
            if args.epochs.is_some() {
                return Err(Error::invalid(format!(
                    "--epochs needs a minibatch run, and {what} is not one"
                )));
            }
            None
        }
        _ => {
            return Err(Error::read(
                path,
                "bad checkpoint header: minibatch settings without a dataset",
            ))
        }
    };
    // --batch alone may come with --resume (--data and the flags that
    // need it cannot): it must agree with the run, as --lr must.
    if let Some(b) = args.batch {
        match &minibatch {
            Some(m) if m.header.batch != b => {
                return Err(Error::invalid(format!(
                    "--batch {b} disagrees with {what} (batches of {}); a resumed run keeps its settings",
                    m.header.batch
                )))
            }
            Some(_) => {}
            None => {
                return Err(Error::invalid(format!(
                    "--batch needs a minibatch run, and {what} is not one"
                )))
            }
        }
    }
    let total_steps = match (&minibatch, args.epochs) {
        (Some(m), Some(e)) => {
            let t = e as u64 * m.schedule.batches_per_epoch();
            if (t as usize) < h.steps_done {
                return Err(Error::invalid(format!(
                    "--epochs {e} is fewer than the {} steps {what} has already done",
                    h.steps_done
                )));
            }
            t as usize
        }
        _ => total_steps,
    };
    Ok(RunSpec {
        run: RunDescription::new(shape, dtype, threads, mode, form),
        total_steps,
        lr,
        ranks,
        data: h.data.clone(),
        start: Start::Resume(Box::new(ckpt)),
        loss,
        minibatch,
        biases: h.biases,
        memory_estimate: 0,
    })
}

/// The dataset and batches of a resumed minibatch run, after checking its
/// files are the ones it was trained on.
fn resume_minibatch(m: &MinibatchHeader, files: &[FileRef], what: &str) -> Result<Minibatch> {
    // The training files were checked with the run's data source.
    for f in m.val.iter().flatten() {
        f.check_unchanged()?;
    }
    let paths = |fs: &[FileRef]| fs.iter().map(FileRef::path_buf).collect::<Vec<_>>();
    let dataset = Dataset::open(&paths(files))?;
    if dataset.rows() != m.rows {
        return Err(Error::invalid(format!(
            "{what} was trained on {} rows, the data now has {}",
            m.rows,
            dataset.rows()
        )));
    }
    let val = m
        .val
        .as_deref()
        .map(|v| Dataset::open(&paths(v)))
        .transpose()?;
    let schedule = Schedule::new(m.rows, m.batch, m.seed, m.val_fraction)?;
    Ok(Minibatch {
        dataset,
        val,
        schedule,
        header: m.clone(),
        _stdin: None,
    })
}

/// Flags that name a shape or dtype must agree with the file (an --init
/// file or a checkpoint) that decides them.
fn check_flags_match(args: &TrainArgs, shape: Shape, dtype: Dtype, what: &str) -> Result<()> {
    check_shape_flags(args, shape, what)?;
    if let Some(d) = args.dtype.filter(|&d| d != dtype) {
        return Err(Error::invalid(format!(
            "--dtype {d} disagrees with {what}, which holds {dtype} arrays"
        )));
    }
    Ok(())
}

/// Flags that name a dimension must agree with the file that decides it.
fn check_shape_flags(args: &TrainArgs, shape: Shape, what: &str) -> Result<()> {
    let flags = [args.n, args.d_in, args.hidden, args.d_out];
    for ((name, in_file), flag) in shape.named_dims().into_iter().zip(flags) {
        if let Some(v) = flag.filter(|&v| v != in_file) {
            return Err(Error::invalid(format!(
                "--{name} {v} disagrees with {what} (it has {name} = {in_file}); drop the flag or change the file"
            )));
        }
    }
    Ok(())
}

/// Fails when a checkpoint's data file is no longer the one the run used
/// (its SHA-256 differs): resuming would train on other data.
fn check_source_unchanged(src: &DataSource) -> Result<()> {
    match src {
        DataSource::Seeded { .. } => Ok(()),
        // An --init file was hashed whole: the same check as a dataset's.
        DataSource::File {
            path,
            path_hex,
            sha256,
        } => FileRef {
            path: path.clone(),
            path_hex: path_hex.clone(),
            sha256: sha256.clone(),
            sampled: false,
        }
        .check_unchanged(),
        DataSource::Dataset { files } => files.iter().try_for_each(FileRef::check_unchanged),
    }
}
