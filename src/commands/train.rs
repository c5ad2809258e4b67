//! `twolayer train`: set up the data and weights (seeded or from a .npz),
//! train, print `t loss` lines and a summary, write the requested files.

use crate::blas;
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
use std::time::{Duration, Instant};

/// Runs `twolayer train` with these flags.
pub fn run(args: &TrainArgs) -> Result<()> {
    let threads = args.threads.unwrap_or_else(threads::available_cores);
    threads::set_budget(threads)?;
    // Refuse unwritable outputs now, not after hours of training.
    for path in [&args.save, &args.losses].into_iter().flatten() {
        output::check_writable(path)?;
    }
    match &args.init {
        Some(path) => {
            let (shape, dtype) = npz::peek_shape(path)?;
            check_flags_match_file(args, shape, dtype, path)?;
            match npz::load_init(path)? {
                Init::F32(d, w) => train_and_report(args, d, w, threads),
                Init::F64(d, w) => train_and_report(args, d, w, threads),
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
            let mode = step_mode(args.step_mode);
            Plan::new(shape, dtype, threads, mode).check_fits_memory(shape, dtype, mode)?;
            match dtype {
                Dtype::F32 => seeded::<f32>(args, shape, threads),
                Dtype::F64 => seeded::<f64>(args, shape, threads),
            }
        }
    }
}

fn seeded<F: Real>(args: &TrainArgs, shape: Shape, threads: usize) -> Result<()> {
    let data = Data::<F>::random(shape, args.seed);
    let weights = Weights::<F>::random(shape, args.seed);
    train_and_report(args, data, weights, threads)
}

/// With --init the file decides the shape and dtype; flags that say
/// otherwise are an error rather than silently ignored.
fn check_flags_match_file(
    args: &TrainArgs,
    shape: Shape,
    dtype: Dtype,
    path: &std::path::Path,
) -> Result<()> {
    let flags = [args.n, args.d_in, args.hidden, args.d_out];
    for ((name, in_file), flag) in shape.named_dims().into_iter().zip(flags) {
        if let Some(v) = flag.filter(|&v| v != in_file) {
            return Err(Error::invalid(format!(
                "--{name} {v} disagrees with {} (its arrays have {name} = {in_file}); drop the flag or change the file",
                path.display()
            )));
        }
    }
    if let Some(d) = args.dtype.filter(|&d| d != dtype) {
        return Err(Error::invalid(format!(
            "--dtype {d} disagrees with {}, which holds {dtype} arrays",
            path.display()
        )));
    }
    Ok(())
}

fn train_and_report<F: Real>(
    args: &TrainArgs,
    data: Data<F>,
    weights: Weights<F>,
    threads: usize,
) -> Result<()> {
    let lr = LearningRates {
        w1: args.lr_w1.unwrap_or(args.lr),
        w2: args.lr_w2.unwrap_or(args.lr),
    };
    let mut trainer = Trainer::new(data, weights, lr, step_mode(args.step_mode))?;
    let shape = trainer.shape();

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout);
    let mut write_err: Option<std::io::Error> = None;
    let mut last_flush = Instant::now();
    let last = args.steps - 1;
    let result = trainer.run(args.steps, |t, loss| {
        if args.quiet || write_err.is_some() || !(t % args.log_every == 0 || t == last) {
            return;
        }
        // Same form as the reference's print(t, loss): shortest round-trip.
        if let Err(e) = writeln!(out, "{t} {loss:?}") {
            write_err = Some(e);
        } else if last_flush.elapsed() > Duration::from_millis(100) {
            // Long runs show progress; short ones are not slowed by syscalls.
            let _ = out.flush();
            last_flush = Instant::now();
        }
    });
    if let Err(e) = out.flush() {
        write_err.get_or_insert(e);
    }
    drop(out);
    let stats = result?;
    // A closed pipe (`twolayer train | head`) means the reader has seen
    // enough; the run itself and its files are still wanted.
    if let Some(e) = write_err.filter(|e| e.kind() != std::io::ErrorKind::BrokenPipe) {
        return Err(Error::write(std::path::Path::new("<stdout>"), e));
    }

    if let Some(p) = &args.losses {
        output::write_losses(p, 0, trainer.losses())?;
    }
    if let Some(p) = &args.save {
        npz::save_weights(p, trainer.weights())?;
    }

    let gflops = shape.flops_per_step() / (stats.ms_per_step() * 1e-3) / 1e9;
    eprintln!(
        "twolayer: {} steps of {shape} {} in {:.3} s: {:.4} ms/step, {:.1} GFLOP/s; threads {threads} ({} shard(s) of {} rows in blocks of {}, OpenBLAS {} thread(s) per GEMM, {}); final loss {:?}",
        stats.steps,
        F::DTYPE,
        stats.elapsed.as_secs_f64(),
        stats.ms_per_step(),
        gflops,
        trainer.plan().shards,
        shape.n.div_ceil(trainer.plan().shards),
        trainer.plan().block_rows,
        trainer.plan().blas_threads,
        blas::core_name(),
        trainer.losses().last().copied().unwrap_or(f64::NAN),
    );
    Ok(())
}

/// The library's step mode for the command line's.
pub fn step_mode(m: ModeArg) -> StepMode {
    match m {
        ModeArg::Fused => StepMode::Fused,
        ModeArg::Explicit => StepMode::Explicit,
    }
}
