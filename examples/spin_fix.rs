//! What the one call before the first GEMM is worth (the crate docs, "One
//! call before the first GEMM"): the reference experiment's steps in fresh
//! processes with `OPENBLAS_THREAD_TIMEOUT` set as
//! `blas::reexec_with_short_spin()` sets it, and unset (OpenBLAS's default
//! spin), alternating, K rounds; medians and the per-round ratio.
//!
//! `cargo run --release --example spin_fix -- [ROUNDS] [THREADS] [N D_IN H D_OUT]`
//! (defaults 7, the cores available, the reference shape). A library user who skips the
//! call gets the "unset" column.

use std::process::Command;
use twolayer::{Data, LearningRates, Shape, StepMode, Trainer, Weights};

/// In a child: 500 steps of `shape` after 50 untimed; prints ms/step.
fn child(threads: usize, shape: Shape) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let mut t = Trainer::new(
            Data::<f64>::random(shape, 0),
            Weights::random(shape, 0),
            LearningRates::uniform(1e-9),
            StepMode::Fused,
        )
        .unwrap();
        for _ in 0..50 {
            t.step().unwrap();
        }
        let s = t
            .run(500, |_, _, _| std::ops::ControlFlow::Continue(()))
            .unwrap();
        println!("{}", s.ms_per_step());
    });
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let d: Vec<usize> = args[3..7].iter().map(|v| v.parse().unwrap()).collect();
        return child(
            args[2].parse().unwrap(),
            Shape::new(d[0], d[1], d[2], d[3]).unwrap(),
        );
    }
    let rounds: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(7);
    let threads: usize = args
        .get(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(twolayer::threads::available_cores);
    let dims: Vec<String> = match args.get(3..7) {
        Some(d) => d.to_vec(),
        None => ["64", "1000", "100", "10"].map(String::from).to_vec(),
    };
    let shape = Shape::new(
        dims[0].parse().unwrap(),
        dims[1].parse().unwrap(),
        dims[2].parse().unwrap(),
        dims[3].parse().unwrap(),
    )
    .unwrap();
    let run = |short: bool| -> f64 {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.args(["--child", &threads.to_string()]).args(&dims);
        if short {
            c.env("OPENBLAS_THREAD_TIMEOUT", twolayer::blas::SHORT_SPIN);
        } else {
            c.env_remove("OPENBLAS_THREAD_TIMEOUT");
        }
        let out = c.output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (mut with, mut without, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        // Alternate which goes first, so drift hits both alike.
        let (a, b) = if r % 2 == 0 {
            let a = run(true);
            (a, run(false))
        } else {
            let b = run(false);
            (run(true), b)
        };
        println!("round {r}: short spin {a:.4} ms/step, default spin {b:.4} ms/step");
        with.push(a);
        without.push(b);
        ratio.push(b / a);
    }
    println!(
        "shape {shape} f64, {threads} threads, OpenBLAS {}: median {:.4} ms/step with the call, {:.4} without; without/with per round: median {:.2}x",
        twolayer::blas::core_name(),
        median(&mut with),
        median(&mut without),
        median(&mut ratio)
    );
}
