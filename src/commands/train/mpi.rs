//! `mpirun -np K twolayer train …`: one rank of a data-parallel job (see
//! [`twolayer::distributed`], which runs the steps): this rank's rows or
//! its part of every minibatch, rank 0 reporting.

use super::super::run_spec::{self, Launch, RunSpec, Start};
use super::report::{run_header, Reporter};
use super::{check_files_distinct, data_from_source, Begin};
use crate::cli::TrainArgs;
use crate::signals::Signals;
use std::ops::ControlFlow;
use twolayer::checkpoint::{self, DataSource};
use twolayer::distributed::{Cluster, Summing};
use twolayer::error::{Error, Result};
use twolayer::net::Weights;
use twolayer::npz;
use twolayer::scalar::Real;
use twolayer::shape::Shape;
use twolayer::step::{Plan, PlanChoice};
use twolayer::threads;

/// Runs the job on this rank. An error on any rank aborts every rank
/// (the others would otherwise wait in the next allreduce for ever).
pub fn run(args: &TrainArgs) -> Result<()> {
    let cluster = Cluster::init()?;
    match run_rank(args, &cluster) {
        Ok(()) => Ok(()),
        // Said now, before MPI is finalised: under a Ctrl-C to mpirun the
        // job is torn down around the ranks' finalise, and the "continue
        // with" line was lost. The error still carries the exit status.
        Err(Error::Interrupted { signal, msg }) => {
            say!("twolayer: {msg}");
            Err(Error::Interrupted {
                signal,
                msg: String::new(),
            })
        }
        Err(e) => cluster.abort(&e.to_string()),
    }
}

fn run_rank(args: &TrainArgs, cluster: &Cluster) -> Result<()> {
    #[cfg(feature = "fault-injection")]
    let panic_at = fault_step(cluster);
    #[cfg(not(feature = "fault-injection"))]
    let panic_at: Option<usize> = None;

    let k = cluster.size();
    // Rank 0 writes the checkpoint, and owns it for the job.
    let _own = if cluster.rank() == 0 {
        super::lock_checkpoint(args)?
    } else {
        None
    };
    // The same checks as one process; mpirun binds each rank to its
    // cores, and the default thread budget follows.
    let spec = run_spec::resolve(args, Launch::Mpi { ranks: k })?;
    agree(args, cluster, &spec)?;
    check_files_distinct(args, &spec)?;
    threads::set_budget(spec.run.threads)?;
    if let Some(w) = threads::oversubscribed(spec.run.threads) {
        say!("twolayer: warning: {w}");
    }
    twolayer::with_storage!(spec.run.dtype, F => run_typed::<F>(args, cluster, spec, panic_at))
}

/// Fails on every rank unless every rank resolved the same run: the same
/// shape, dtype, steps, rates, modes and summing, and the same data and
/// starting weights by content (each rank hashes its own files, which may
/// be node-local copies). Ranks that differed once crashed (another dtype),
/// hung (other steps or summing) or trained silently on a mix of data.
fn agree(args: &TrainArgs, cluster: &Cluster, spec: &RunSpec) -> Result<()> {
    use sha2::{Digest, Sha256};
    let start = match &spec.start {
        Start::Seeded { seed, init } => format!("seeded {seed} init {}", init.name()),
        Start::Init { .. } => "the --init file (its SHA-256 is in the data)".into(),
        Start::Weights { path } => format!("weights {}", checkpoint::file_sha256(path)?),
        Start::Resume(c) => format!(
            "checkpoint at step {} with losses {:?}",
            c.header().steps_done,
            c.header()
        ),
    };
    let (overlap, pieces) = args.mpi.overlap_and_pieces();
    let fields = [
        (
            "shape and dtype",
            format!("{} {}", spec.run.shape(), spec.run.dtype),
        ),
        ("number of steps", spec.total_steps.to_string()),
        (
            "learning rates",
            format!("{:?}", (spec.lr.w1.to_bits(), spec.lr.w2.to_bits())),
        ),
        (
            "step mode and loss",
            format!("{:?} {:?}", spec.run.step_mode, spec.loss),
        ),
        (
            "--allreduce and --allreduce-pieces",
            format!("{overlap} {pieces}"),
        ),
        ("data (by SHA-256)", content(&spec.data)),
        (
            "minibatch settings",
            format!(
                "{:?}",
                spec.minibatch.as_ref().map(|m| {
                    let h = &m.header;
                    let val: Option<Vec<&str>> = h
                        .val
                        .as_ref()
                        .map(|v| v.iter().map(|f| f.sha256.as_str()).collect());
                    (
                        h.rows,
                        h.batch,
                        h.seed,
                        h.val_fraction.map(f64::to_bits),
                        val,
                    )
                })
            ),
        ),
        ("starting weights", start),
    ];
    for (what, text) in fields {
        let d = Sha256::digest(text.as_bytes());
        let d = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
        if !cluster.identical_everywhere(d) {
            return Err(Error::invalid(format!(
                "the ranks disagree on the {what}: every rank must run the same command on the same data"
            )));
        }
    }
    Ok(())
}

/// A data source by content alone (ranks may read copies at other paths).
fn content(d: &DataSource) -> String {
    match d {
        DataSource::Seeded { seed } => format!("seed {seed}"),
        DataSource::File { sha256, .. } => sha256.clone(),
        DataSource::Dataset { files } => files
            .iter()
            .map(|f| f.sha256.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn run_typed<F: Real + mpi::traits::Equivalence>(
    args: &TrainArgs,
    cluster: &Cluster,
    mut spec: RunSpec,
    panic_at: Option<usize>,
) -> Result<()> {
    let shape = spec.run.shape();
    let rows = cluster.rows(shape.n);
    let k = cluster.size();
    let mb = spec.minibatch.take();
    let run = run_header(&spec, mb.as_ref().map(|m| &m.header));
    let total_steps = spec.total_steps;
    let settings = spec.trainer_settings();
    // This rank's rows only: generated, cut from the file, or (a
    // minibatch run) its share of every batch, read as it comes.
    let data = match &mb {
        Some(m) => twolayer::minibatch::empty_batch::<F>(&m.dataset, rows.len()),
        None => data_from_source::<F>(&spec.data, shape, rows.clone())?,
    };
    let begin = match spec.start {
        // Under mpirun every rank runs the primal form (run_spec), from
        // the weights a dual checkpoint formed.
        Start::Resume(c) => Begin::resumed(data, *c, false),
        Start::Init { path } => Begin::fresh(data, npz::load_weights::<F>(&path)?),
        Start::Weights { path } => Begin::fresh(data, npz::load_weights_file::<F>(&path)?),
        Start::Seeded { seed, init } => {
            Begin::fresh(data, Weights::seeded(shape, seed, init, spec.biases))
        }
    };
    let begin = begin.with_biases(spec.biases);
    let lead = cluster.rank() == 0;
    // The plan: the checkpoint's, a tuned one, or the built-in rule's for
    // the largest share of rows (rank 0's), which every rank lays out on
    // its own rows. One choice for all ranks is what rank 0's checkpoint
    // records, so a resumed job runs every rank's plan as before.
    let mode = spec.run.step_mode;
    let largest = Shape {
        n: shape.n.div_ceil(k),
        ..shape
    };
    let rule = PlanChoice::of(
        Plan::new(
            largest,
            spec.run.dtype.storage().dtype(),
            spec.run.threads,
            mode,
        ),
        largest.n,
    )
    .plan(
        Shape {
            n: rows.len(),
            ..shape
        },
        mode,
    );
    let (mut trainer, plan_source) =
        super::build_trainer(args, settings, begin, Some(rule), shape.n, lead)?;
    let signals = Signals::get()?;
    let mut rep = Reporter::new(args, &run, plan_source, lead, shape.n);
    if let Some(m) = &mb {
        rep.start_epochs(m.header.history.clone(), None);
    }
    let (overlap, pieces) = args.mpi.overlap_and_pieces();
    let to_run = total_steps - trainer.steps_done();
    let mut val_err: Option<Error> = None;
    let end = twolayer::distributed::train(
        cluster,
        &mut trainer,
        mb.as_ref().map(|m| (&m.dataset, &m.schedule)),
        Summing { overlap, pieces },
        to_run,
        || signals.caught(),
        |t, step, loss, stop| {
            if panic_at == Some(step) {
                panic!(
                    "fault injection: rank {} panics at step {step}",
                    cluster.rank()
                );
            }
            if let (Some(m), true) = (&mb, lead) {
                let epochs = total_steps.div_ceil(m.schedule.batches_per_epoch() as usize);
                match m.epochs().record_at(t, step) {
                    Ok(Some(r)) => rep.push_epoch(r, epochs, t),
                    Ok(None) => {}
                    // The other ranks wait in the next sum until the
                    // error aborts the job.
                    Err(e) => {
                        val_err = Some(e);
                        return ControlFlow::Break(());
                    }
                }
            }
            rep.on_step(t, step, loss, stop)
        },
    );
    if let Some(e) = val_err {
        return Err(e);
    }
    let how = if overlap {
        format!("overlapped, g_w1 in {pieces} pieces")
    } else {
        "blocking".to_string()
    };
    let extra = format!(
        "; {k} MPI ranks of {}-{} rows{}, allreduce {:.3} ms/step in MPI calls (slowest rank; {how}), weights identical on all ranks",
        shape.n / k,
        shape.n.div_ceil(k),
        if mb.is_some() { " of every minibatch" } else { "" },
        end.allreduce_ms,
    );
    rep.finish(&trainer, end.result, end.signal, &extra)
}

/// `TWOLAYER_FAULT_PANIC=RANK:STEP`: that rank panics after that step
/// (feature `fault-injection`, for the failure tests only).
#[cfg(feature = "fault-injection")]
fn fault_step(cluster: &Cluster) -> Option<usize> {
    let v = std::env::var("TWOLAYER_FAULT_PANIC").ok()?;
    let (rank, step) = v.split_once(':')?;
    (rank.parse::<usize>().ok()? == cluster.rank()).then(|| step.parse().ok())?
}
