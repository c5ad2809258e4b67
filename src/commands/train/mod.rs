//! `twolayer train`: set up the data and weights (seeded, from a .npz, a
//! dataset, or a checkpoint), train, print `t loss` lines and a summary,
//! and write the requested files — checkpoints along the way, and
//! everything on Ctrl-C or SIGTERM.
//!
//! `mod.rs` runs one process on one batch; `epochs.rs` minibatch runs on a
//! dataset; `mpi.rs` a rank of an MPI job; `report.rs` what every run does
//! after each step and at its end (the `t loss` lines, checkpoints,
//! signals, the summary and the files).

mod epochs;
#[cfg(feature = "mpi")]
mod mpi;
mod report;

use super::run_spec::{self, Launch, RunSpec, Start, TrainerSettings};
use crate::cli::TrainArgs;
use crate::signals::Signals;
use report::{run_header, Reporter};
use std::path::Path;
use twolayer::checkpoint::{AnyCheckpoint, DataSource, Header};
use twolayer::error::{Error, Result};
use twolayer::net::{Data, Weights};
use twolayer::npz;
use twolayer::output;
use twolayer::scalar::{Dtype, Real};
use twolayer::shape::Shape;
use twolayer::step::{Form, Plan};
use twolayer::threads;
use twolayer::train::Trainer;

/// Runs `twolayer train` with these flags.
pub fn run(args: &TrainArgs) -> Result<()> {
    // Ctrl-C, SIGTERM and SIGHUP from here on stop the run cleanly, set-up
    // included.
    Signals::get()?;
    // A checkpoint is the file a run resumes from: one rule for every
    // target that cannot be (before, `-` was refused while /dev/null and
    // /dev/stdout were taken and then named in "continue with --resume").
    if let Some(p) = args.checkpoint.as_deref() {
        let what = if twolayer::input::is_stdio(p) {
            Some("standard output".to_string())
        } else {
            output::special_file(p).map(|k| format!("a {k}"))
        };
        if let Some(what) = what {
            return Err(Error::invalid(format!(
                "--checkpoint {}: a checkpoint is the file a run resumes from, which {what} cannot be; give it a path to a file",
                p.display()
            )));
        }
    }
    // A resumed run keeps checkpointing to the file it resumed from unless
    // told otherwise: the "continue with: twolayer train --resume F" that
    // a stopped run prints must itself be safe to stop again (before, a
    // second Ctrl-C lost everything since the resume).
    // (A resume file that is no regular file is refused as an input.)
    let resolved;
    let original = args;
    let args = match (&args.checkpoint, &args.resume) {
        (None, Some(r)) if std::fs::metadata(r).is_ok_and(|m| m.is_file()) => {
            resolved = TrainArgs {
                checkpoint: Some(r.clone()),
                ..args.clone()
            };
            &resolved
        }
        _ => args,
    };
    // Unwritable outputs were refused in main (commands/paths.rs), before
    // any work; the checkpoint a resume implies is checked here the same
    // way.
    if args.checkpoint.is_some() && !std::ptr::eq(args, original) {
        if let Some(p) = &args.checkpoint {
            output::check_writable(p)?;
        }
    }
    #[cfg(feature = "mpi")]
    if twolayer::distributed::launched_by_mpi() {
        return mpi::run(args);
    }
    // The checkpoint is this run's for as long as it runs: a second run
    // onto it is refused (before, two started together both exited 0,
    // each having written over the other's checkpoints).
    let _own = lock_checkpoint(args)?;
    let spec = run_spec::resolve(args, Launch::Single)?;
    check_files_distinct(args, &spec)?;
    threads::set_budget(spec.run.threads)?;
    if let Some(w) = threads::oversubscribed(spec.run.threads) {
        say!("twolayer: warning: {w}");
    }
    twolayer::with_storage!(spec.run.dtype, F => single::<F>(args, spec))
}

/// The lock on the run's checkpoint file, held while the run lives (the
/// single process, or rank 0 of an MPI job).
pub(super) fn lock_checkpoint(args: &TrainArgs) -> Result<Option<twolayer::lock::FileLock>> {
    args.checkpoint
        .as_deref()
        .map(|p| twolayer::lock::FileLock::try_exclusive(p, "--checkpoint"))
        .transpose()
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
    let init_file = spec.data.file_path();
    if let Some(path) = &init_file {
        inputs.push(("the run's data file", path));
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
    // The tuned plans are read too (from --wisdom, TWOLAYER_WISDOM or the
    // default file): an output onto them would destroy them.
    let wisdom = crate::cli::wisdom_path(&args.wisdom, args.no_wisdom);
    if let Some(p) = &wisdom {
        inputs.push(("the wisdom file", p));
    }
    let outputs: Vec<(&str, &Path)> = [
        ("--save", &args.save),
        ("--losses", &args.losses),
        ("--checkpoint", &args.checkpoint),
        ("--metrics", &args.metrics),
        ("--json", &args.output.json),
        ("--save-best", &args.save_best),
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
    output::check_distinct(&inputs, &outputs)?;
    // A checkpoint already at --checkpoint is another run's state (hours
    // of it, perhaps): a new run does not replace it unless told to, nor
    // does a resumed run checkpointing anywhere but the file it resumed
    // from (before, `--resume a.ck --checkpoint b.ck` replaced b.ck).
    let onto_other = |p: &Path| match &args.resume {
        None => true,
        Some(r) => !twolayer::input::same_file(p, r),
    };
    if let Some(p) = args.checkpoint.as_deref().filter(|p| onto_other(p)) {
        let existing = std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file() && m.len() > 0);
        if existing && !args.replace_checkpoint {
            return Err(Error::invalid(match AnyCheckpoint::read(p) {
                Ok(c) => format!(
                    "--checkpoint {} already holds a checkpoint of another run ({} of {} steps done): continue it with --resume {}, or pass --replace-checkpoint to start a new run over it",
                    p.display(),
                    c.header().steps_done,
                    c.header().total_steps,
                    p.display()
                ),
                Err(_) => format!(
                    "--checkpoint {} already holds a file that is not a checkpoint: pass --replace-checkpoint to write over it",
                    p.display()
                ),
            }));
        }
    }
    Ok(())
}

/// `w` with zero biases added when the run has biases (a checkpoint's or a
/// weights file's own biases are kept).
pub(super) fn with_biases<F: Real>(w: Weights<F>, biases: bool) -> Weights<F> {
    if biases {
        w.with_zero_biases()
    } else {
        w
    }
}

/// One process on the whole batch.
fn single<F: Real>(args: &TrainArgs, mut spec: RunSpec) -> Result<()> {
    if let Some(mb) = spec.minibatch.take() {
        return epochs::minibatches::<F>(args, spec, mb);
    }
    let run = run_header(&spec, None);
    let shape = spec.run.shape();
    let settings = spec.trainer_settings();
    let begin = match spec.start {
        Start::Seeded { seed, init } => Begin::fresh(
            Data::<F>::random(shape, seed),
            Weights::seeded(shape, seed, init, spec.biases),
        ),
        Start::Weights { .. } => unreachable!("--weights needs --data"),
        Start::Init { path } => {
            let (d, w) = npz::load_init(&path)?.into_typed::<F>();
            Begin::fresh(d, with_biases(w, spec.biases))
        }
        Start::Resume(c) => {
            let data = data_from_source::<F>(&spec.data, shape, 0..shape.n)?;
            Begin::resumed(data, *c, spec.run.form == Form::Dual)
        }
    };
    let (trainer, plan_source) = build_trainer(args, settings, begin, None, shape.n, true)?;
    let estimate = spec.memory_estimate;
    train_and_report(args, trainer, &run, plan_source, estimate)
}

/// Where a run starts, in its element type: the rows of its first batch
/// (under mpirun, this rank's), the weights, the losses of the steps
/// already done, for a dual run resumed C (the weights then hold w1_0),
/// and the plan the checkpoint ran with.
pub(super) struct Begin<F> {
    data: Data<F>,
    weights: Weights<F>,
    losses: Vec<f64>,
    coef: Option<ndarray::Array2<F>>,
    checkpoint_plan: Option<twolayer::step::PlanChoice>,
}

impl<F: Real> Begin<F> {
    /// A run with no steps done.
    pub fn fresh(data: Data<F>, weights: Weights<F>) -> Self {
        Begin {
            data,
            weights,
            losses: Vec::new(),
            coef: None,
            checkpoint_plan: None,
        }
    }

    /// Zero biases added to the weights when the run has biases (a
    /// checkpoint's or a weights file's own are kept).
    pub fn with_biases(mut self, biases: bool) -> Self {
        self.weights = with_biases(self.weights, biases);
        self
    }

    /// A run continued from checkpoint `c` on `data`; in the dual form
    /// from w1_0 and C, bit for bit, when `dual` (one process on the whole
    /// batch), else from the weights it formed.
    pub fn resumed(data: Data<F>, c: AnyCheckpoint, dual: bool) -> Self {
        let checkpoint_plan = c.header().plan;
        let parts = if dual { c.dual_typed::<F>() } else { None };
        let (w, losses) = c.into_typed::<F>();
        let (weights, coef) = match parts {
            Some((w1_0, coef)) => (
                Weights {
                    w1: w1_0,
                    w2: w.w2,
                    biases: w.biases,
                },
                Some(coef),
            ),
            None => (w, None),
        };
        Begin {
            data,
            weights,
            losses,
            coef,
            checkpoint_plan,
        }
    }
}

/// The one place a run's trainer is built, by every way of training (one
/// process on a fixed batch, `--data` epochs, each rank under mpirun;
/// fresh or resumed), with where its plan came from, for the summary.
///
/// The step is the one the run asks for: bf16 mixed precision, the dual
/// form (from C when resumed), or the primal step laid out by the first of
/// (1) the checkpoint's plan, for the same bits, (2) a tuned plan from the
/// wisdom file, (3) `rule` (the minibatch rule's for `--data`, the ranks'
/// common one under mpirun; `None`: the built-in rule's for the batch). A stored plan is sized for `begin`'s rows, which
/// under mpirun are the rank's share. The loss's mean is over `rows` (the
/// whole batch, across ranks). `lead`: whether this process speaks (rank 0
/// under mpirun).
pub(super) fn build_trainer<F: Real>(
    args: &TrainArgs,
    spec: TrainerSettings,
    begin: Begin<F>,
    rule: Option<Plan>,
    rows: usize,
    lead: bool,
) -> Result<(Trainer<F>, String)> {
    let Begin {
        data,
        weights,
        losses,
        coef,
        checkpoint_plan,
    } = begin;
    let local = Shape {
        n: data.x.nrows(),
        ..spec.run.shape()
    };
    let mode = spec.run.step_mode;
    let builder = Trainer::builder(data, weights, spec.lr)
        .mode(mode)
        .threads(spec.run.threads)
        .resumed(losses)
        .loss_over(spec.loss, rows);
    let rule_source = "the built-in rule".to_string();
    if spec.run.dtype == Dtype::Bf16 {
        let trainer = builder.bf16().build()?;
        if lead {
            warn_if_bf16_is_slower();
        }
        return Ok((trainer, rule_source));
    }
    if let Some(c) = coef {
        return Ok((builder.dual_from(c).build()?, rule_source));
    }
    if spec.run.form == Form::Dual {
        return Ok((builder.dual().build()?, rule_source));
    }
    // Asked only now: a bf16 or dual run has no plan to look up.
    match stored_plan(args, spec, checkpoint_plan, lead) {
        Some((choice, source)) => Ok((builder.plan(choice.plan(local, mode)).build()?, source)),
        None => match rule {
            Some(plan) => Ok((builder.plan(plan).build()?, rule_source)),
            // The builder's own: the built-in rule for its batch and threads.
            None => Ok((builder.build()?, rule_source)),
        },
    }
}

/// The primal step's plan when one is stored for this run, with where it
/// came from: a checkpoint's (for the same bits), else a tuned one from the
/// wisdom file; `None` leaves the rule's. Asked by [`build_trainer`] alone.
fn stored_plan(
    args: &TrainArgs,
    spec: TrainerSettings,
    checkpoint_plan: Option<twolayer::step::PlanChoice>,
    lead: bool,
) -> Option<(twolayer::step::PlanChoice, String)> {
    let from_checkpoint = checkpoint_plan.filter(|p| {
            // The resume's thread budget holds over what the file says:
            // OpenBLAS starts the threads a plan asks for, while shards
            // beyond the budget only queue on rayon's threads (a resume on
            // fewer threads runs the same shards, for the same bits).
            let within = p.shards >= 1 && p.blas_threads >= 1 && p.blas_threads <= spec.run.threads;
            if !within && lead {
                say!(
                    "twolayer: warning: the checkpoint's plan asks for {} OpenBLAS thread(s) per GEMM, over the budget of {} thread(s); using the built-in plan, so the losses will match an unbroken run to rounding, not bit for bit",
                    p.blas_threads,
                    spec.run.threads
                );
            }
            within
        });
    match from_checkpoint {
        Some(p) => Some((p, "the checkpoint".to_string())),
        None => twolayer::tune::wisdom::Tuned::open(
            crate::cli::wisdom_path(&args.wisdom, args.no_wisdom).as_deref(),
        )
        .and_then(|w| w.lookup(spec.run))
        .map(|(p, src)| (p, src.to_string())),
    }
}

/// Warns when the bf16 GEMM is slower than f32's here (no AMX: OpenBLAS's
/// bf16 kernels, or its generic ones on a CPU without bf16 instructions),
/// stating the two rates measured.
fn warn_if_bf16_is_slower() {
    let threads = rayon::current_num_threads();
    // 512² takes a few milliseconds each; the best of three reps.
    let bf = twolayer::bench::measure::square_gemm_gflops(Dtype::Bf16, threads, 512);
    let f = twolayer::bench::measure::square_gemm_gflops(Dtype::F32, threads, 512);
    if bf < f {
        let flags = twolayer::machine::cpu_flags();
        let what = if flags.iter().any(|f| f == "amx_bf16") {
            "AMX is present but this OpenBLAS build does not use it"
        } else if flags.iter().any(|f| f == "avx512_bf16") {
            "this CPU has AVX512_BF16 dot products but no AMX"
        } else {
            "this CPU has no bf16 instructions: OpenBLAS runs generic kernels"
        };
        say!(
            "twolayer: warning: --dtype bf16 runs slower than f32 here: the bf16 GEMM measured {bf:.0} GFLOP/s against f32's {f:.0} at 512² on {threads} thread(s) ({:.2}x; {what}); bf16 pays where the CPU has AMX",
            bf / f
        );
    }
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
        DataSource::File { path, path_hex, .. } => npz::load_rows::<F>(
            &twolayer::checkpoint::stored_path(path, path_hex.as_deref()),
            rows,
        ),
        DataSource::Dataset { .. } => Err(Error::invalid(
            "a minibatch run's data is read a batch at a time, not as one batch",
        )),
    }
}

/// Losses a run keeps at least when no output needs them all.
const LOSS_WINDOW: usize = 1 << 16;

/// A trainer whose loss history is bounded when nothing the run writes
/// needs every loss (no `--losses`, no `--checkpoint`), and otherwise kept
/// whole with the older losses on disk: either way the memory of a run
/// stays the same whatever its step count. `per_epoch`: the losses an
/// epoch's summary averages (1 for a fixed batch), kept in memory.
pub(super) fn bound_losses<F: Real>(
    args: &TrainArgs,
    trainer: Trainer<F>,
    per_epoch: usize,
) -> Trainer<F> {
    let trainer = trainer.keep_in_memory(per_epoch);
    if args.losses.is_some() || args.checkpoint.is_some() {
        trainer
    } else {
        trainer.keep_latest_losses(LOSS_WINDOW.max(per_epoch))
    }
}

fn train_and_report<F: Real>(
    args: &TrainArgs,
    trainer: Trainer<F>,
    run: &Header,
    plan_source: String,
    memory_estimate: u128,
) -> Result<()> {
    let mut trainer = bound_losses(args, trainer, 1);
    let signals = Signals::get()?;
    signals.before_training()?;
    let to_run = run.total_steps - trainer.steps_done();
    let n = trainer.shape().n;
    let mut rep = Reporter::new(args, run, plan_source, true, n);
    rep.memory_estimate = Some(memory_estimate);
    let result = trainer.run(to_run, |t, step, loss| {
        rep.on_step(t, step, loss, signals.caught().is_some())
    });
    rep.finish(&trainer, result, signals.caught(), "")
}
