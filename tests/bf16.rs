//! bf16 mixed precision (`--dtype bf16`, crates/twolayer/src/step/bf16.rs): the step
//! against a plain-loop step doing the same arithmetic (bf16 operands,
//! f32 results), against the f32 step, and in the trainer with batches
//! swapped in. Where the linked OpenBLAS has no `cblas_sbgemm` (Debian's
//! 0.3.21, the fallback library), every test checks the one-line error
//! instead.

mod common;

use half::bf16;
use ndarray::{Array1, Array2};
use std::ops::ControlFlow;
use twolayer::net::Biases;
use twolayer::step::{Gradients, NoProbe, Update};
use twolayer::{Data, LearningRates, Shape, Step, StepMode, Trainer, Weights};

/// Whether the linked library has the bf16 GEMM.
fn has_sbgemm() -> bool {
    twolayer::blas::Library::current().bf16_gemm
}

/// The bf16 step, or (without `cblas_sbgemm`) a check of the error a user
/// gets and `None`.
fn bf16_step(shape: Shape, mode: StepMode) -> Option<Step<f32>> {
    match Step::<f32>::bf16(shape, 2, mode) {
        Ok(s) => {
            assert!(has_sbgemm(), "built a bf16 step without cblas_sbgemm");
            Some(s)
        }
        Err(e) => {
            assert!(!has_sbgemm(), "the library has cblas_sbgemm: {e}");
            let e = e.to_string();
            assert!(
                e.contains("cblas_sbgemm") && e.contains("build-openblas.sh") && !e.contains('\n'),
                "{e}"
            );
            None
        }
    }
}

fn bf(v: f32) -> f32 {
    bf16::from_f32(v).to_f32()
}

/// Values on a coarse grid: `k · step` for k in −range..=range, from a
/// seed, so that the products and sums below are exact in f32.
fn grid(rows: usize, cols: usize, step: f32, range: i64, seed: u64) -> Array2<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    Array2::from_shape_fn((rows, cols), |_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s % (2 * range as u64 + 1)) as i64 - range) as f32 * step
    })
}

/// The bf16 step's arithmetic written as loops (docs in crates/twolayer/src/step/bf16.rs):
/// every GEMM operand rounded to bf16, products summed in f64 and rounded
/// once to f32, the passes in f32. Returns (loss, gradients).
fn reference(data: &Data<f32>, w: &Weights<f32>) -> (f64, Gradients<f32>) {
    let (n, d_in) = data.x.dim();
    let (hidden, d_out) = w.w2.dim();
    let b = w.biases.as_ref().unwrap();
    let mut h = Array2::<f32>::zeros((n, hidden));
    for i in 0..n {
        for j in 0..hidden {
            let s: f64 = (0..d_in)
                .map(|k| bf(data.x[[i, k]]) as f64 * bf(w.w1[[k, j]]) as f64)
                .sum();
            let z = s as f32 + b.b1[j];
            h[[i, j]] = if z < 0.0 { -0.0 } else { z + 0.0 };
        }
    }
    let h_bf = h.mapv(bf);
    let mut loss = 0.0f64;
    let mut g_y = Array2::<f32>::zeros((n, d_out));
    for i in 0..n {
        for o in 0..d_out {
            let s: f64 = (0..hidden)
                .map(|j| h_bf[[i, j]] as f64 * bf(w.w2[[j, o]]) as f64)
                .sum();
            let d = s as f32 + b.b2[o] - data.y[[i, o]];
            loss += d as f64 * d as f64;
            g_y[[i, o]] = 2.0 * d;
        }
    }
    let g_y_bf = g_y.mapv(bf);
    let mut g = Gradients {
        w1: Array2::zeros((d_in, hidden)),
        w2: Array2::zeros((hidden, d_out)),
        biases: Some(Biases {
            b1: Array1::zeros(hidden),
            b2: Array1::zeros(d_out),
        }),
    };
    for j in 0..hidden {
        for o in 0..d_out {
            let s: f64 = (0..n)
                .map(|i| h_bf[[i, j]] as f64 * g_y_bf[[i, o]] as f64)
                .sum();
            g.w2[[j, o]] = s as f32;
        }
    }
    let mut g_h = Array2::<f32>::zeros((n, hidden));
    for i in 0..n {
        for j in 0..hidden {
            let s: f64 = (0..d_out)
                .map(|o| g_y_bf[[i, o]] as f64 * bf(w.w2[[j, o]]) as f64)
                .sum();
            g_h[[i, j]] = if h[[i, j]].is_sign_negative() {
                0.0
            } else {
                s as f32
            };
        }
    }
    let g_h_bf = g_h.mapv(bf);
    for k in 0..d_in {
        for j in 0..hidden {
            let s: f64 = (0..n)
                .map(|i| bf(data.x[[i, k]]) as f64 * g_h_bf[[i, j]] as f64)
                .sum();
            g.w1[[k, j]] = s as f32;
        }
    }
    let gb = g.biases.as_mut().unwrap();
    gb.b1 = g_h.sum_axis(ndarray::Axis(0));
    gb.b2 = g_y.sum_axis(ndarray::Axis(0));
    (loss, g)
}

fn close(a: &Array2<f32>, b: &Array2<f32>, what: &str) {
    for (x, y) in a.iter().zip(b) {
        assert!(
            (x - y).abs() <= 1e-5 * y.abs().max(1.0),
            "{what}: {x} against {y}"
        );
    }
}

/// On data whose products and partial sums are exact in f32 (so every
/// bf16 rounding of an intermediate is the same in both), the bf16 step's
/// loss, gradients and update are the plain loops' — to f32 summation
/// order in the two N-long sums.
#[test]
fn the_bf16_step_is_the_plain_loop_mixed_precision_step() {
    // N = 100: a full chunk of 64 rows and a partial one.
    let shape = Shape::new(100, 12, 8, 2).unwrap();
    let Some(mut step) = bf16_step(shape, StepMode::Explicit) else {
        return;
    };
    let data = Data {
        x: grid(100, 12, 0.5, 2, 1),
        y: grid(100, 2, 0.25, 8, 2),
    };
    let w = Weights {
        w1: grid(12, 8, 0.125, 4, 3),
        w2: grid(8, 2, 0.125, 4, 4),
        biases: Some(Biases {
            b1: grid(1, 8, 0.125, 4, 5).row(0).to_owned(),
            b2: grid(1, 2, 0.125, 4, 6).row(0).to_owned(),
        }),
    };
    let (want_loss, want) = reference(&data, &w);
    let mut g = Gradients {
        w1: Array2::zeros((12, 8)),
        w2: Array2::zeros((8, 2)),
        biases: Some(Biases {
            b1: Array1::zeros(8),
            b2: Array1::zeros(2),
        }),
    };
    let lr = LearningRates::uniform(1e-3);
    let mut w_run = w.clone();
    let loss = step
        .run(
            &data,
            &mut w_run,
            lr,
            Update::Gradients(&mut g),
            &mut NoProbe,
        )
        .unwrap();
    assert_eq!(w_run, w, "handing gradients back changed the weights");
    assert!(
        (loss - want_loss).abs() <= 1e-12 * want_loss,
        "{loss} against {want_loss}"
    );
    close(&g.w1, &want.w1, "g_w1");
    close(&g.w2, &want.w2, "g_w2");
    let (gb, wb) = (g.biases.as_ref().unwrap(), want.biases.as_ref().unwrap());
    close(
        &gb.b1.clone().insert_axis(ndarray::Axis(0)),
        &wb.b1.clone().insert_axis(ndarray::Axis(0)),
        "g_b1",
    );
    close(
        &gb.b2.clone().insert_axis(ndarray::Axis(0)),
        &wb.b2.clone().insert_axis(ndarray::Axis(0)),
        "g_b2",
    );

    // The step's own update: w − lr·g, in f32 (lr·g rounded, then
    // subtracted), from the same gradients.
    let mut updated = w.clone();
    let loss2 = step
        .run(&data, &mut updated, lr, Update::Sgd, &mut NoProbe)
        .unwrap();
    assert_eq!(loss2, loss, "the same step twice gave two losses");
    let expect = |w: &Array2<f32>, g: &Array2<f32>| {
        let mut w = w.clone();
        w.zip_mut_with(g, |w, &g| *w -= 1e-3f32 * g);
        w
    };
    let g_own = step.gradients().unwrap();
    assert_eq!(
        g_own.w1, g.w1,
        "Sgd and Gradients computed different gradients"
    );
    assert_eq!(updated.w1, expect(&w.w1, &g.w1));
    assert_eq!(updated.w2, expect(&w.w2, &g.w2));
    // The next step reads the bf16 copies the update made: the same as a
    // fresh step on the updated weights.
    let mut again = updated.clone();
    let next = step
        .run(&data, &mut again, lr, Update::Sgd, &mut NoProbe)
        .unwrap();
    let mut fresh_step = bf16_step(shape, StepMode::Explicit).unwrap();
    let mut fresh = updated.clone();
    let fresh_loss = fresh_step
        .run(&data, &mut fresh, lr, Update::Sgd, &mut NoProbe)
        .unwrap();
    assert_eq!(next, fresh_loss);
    assert_eq!(again, fresh);
}

/// Against the f32 step on the same data and weights: close (the bf16
/// roundings of x, the weights and the activations, about 2⁻⁹ each), and
/// not the same (the GEMMs are bf16's, not f32's).
#[test]
fn the_bf16_gradients_are_the_f32_gradients_to_bf16_rounding() {
    let shape = Shape::new(256, 64, 32, 4).unwrap();
    let Some(mut step) = bf16_step(shape, StepMode::Explicit) else {
        return;
    };
    let data = Data::<f32>::random(shape, 7);
    let w = Weights::<f32>::random(shape, 8);
    let lr = LearningRates::uniform(1e-4);
    let grads = |step: &mut Step<f32>| {
        let mut g = Gradients::zeros(shape);
        let loss = step
            .run(
                &data,
                &mut w.clone(),
                lr,
                Update::Gradients(&mut g),
                &mut NoProbe,
            )
            .unwrap();
        (loss, g)
    };
    let (loss, g) = grads(&mut step);
    let (loss32, g32) = grads(&mut Step::<f32>::planned(shape, 2, StepMode::Explicit).unwrap());
    let rel = |a: &Array2<f32>, b: &Array2<f32>| {
        let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (d / n).sqrt()
    };
    for (what, r) in [("g_w1", rel(&g.w1, &g32.w1)), ("g_w2", rel(&g.w2, &g32.w2))] {
        assert!(r > 1e-5 && r < 3e-2, "{what}: relative difference {r:e}");
    }
    let lr_ = (loss - loss32).abs() / loss32;
    assert!(lr_ > 0.0 && lr_ < 1e-2, "loss {loss} against {loss32}");
}

/// A minibatch run replaces the batch in the trainer's buffer, in place:
/// the bf16 step must convert it again. The trainer's run with batches
/// swapped in equals steps on the batches given one by one.
#[test]
fn a_trainer_in_bf16_converts_every_new_batch() {
    let shape = Shape::new(96, 40, 16, 3).unwrap();
    let batches = [Data::<f32>::random(shape, 1), Data::<f32>::random(shape, 2)];
    let w0 = Weights::<f32>::random(shape, 3);
    let lr = LearningRates::uniform(1e-5);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let trainer = pool.install(|| {
        Trainer::builder(batches[0].clone(), w0.clone(), lr)
            .bf16()
            .build()
    });
    let mut trainer = match trainer {
        Ok(t) => t,
        Err(e) => {
            assert!(!has_sbgemm(), "{e}");
            assert!(e.to_string().contains("cblas_sbgemm"), "{e}");
            return;
        }
    };
    assert_eq!(trainer.dtype(), twolayer::Dtype::Bf16);
    let mut losses = Vec::new();
    pool.install(|| {
        trainer
            .run_with(
                6,
                |b, t| {
                    b.x.assign(&batches[t % 2].x);
                    b.y.assign(&batches[t % 2].y);
                    Ok(())
                },
                |_, _, l| {
                    losses.push(l);
                    ControlFlow::Continue(())
                },
            )
            .unwrap()
    });
    let mut step = bf16_step(shape, StepMode::Fused).unwrap();
    let mut w = w0.clone();
    for (t, want) in losses.iter().enumerate() {
        let l = pool
            .install(|| step.run(&batches[t % 2], &mut w, lr, Update::Sgd, &mut NoProbe))
            .unwrap();
        assert_eq!(l, *want, "step {t}");
    }
    assert_eq!(trainer.weights(), &w);
}

/// Training in bf16 learns what f32 learns: on a teacher network's
/// targets, 300 steps bring the loss within 2% of f32's run, both well
/// below where they started.
#[test]
fn bf16_training_follows_f32_training() {
    let shape = Shape::new(256, 32, 16, 2).unwrap();
    if bf16_step(shape, StepMode::Fused).is_none() {
        return;
    }
    let teacher = Weights::<f32>::random(shape, 11);
    let x = Data::<f32>::random(shape, 12).x;
    let y = x.dot(&teacher.w1).mapv(|v| v.max(0.0)).dot(&teacher.w2);
    let data = Data { x, y };
    let run = |bf16: bool| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            let b = Trainer::builder(
                data.clone(),
                Weights::<f32>::random(shape, 13),
                LearningRates::uniform(2e-5),
            );
            let mut t = if bf16 { b.bf16().build() } else { b.build() }.unwrap();
            let mut losses = Vec::new();
            t.run(300, |_, _, l| {
                losses.push(l);
                ControlFlow::Continue(())
            })
            .unwrap();
            losses
        })
    };
    let (b, f) = (run(true), run(false));
    let (first, last_b, last_f) = (f[0], *b.last().unwrap(), *f.last().unwrap());
    assert!(
        last_f < 0.2 * first,
        "f32 did not learn: {first} → {last_f}"
    );
    assert!(
        (last_b - last_f).abs() <= 0.02 * last_f,
        "bf16 {last_b} against f32 {last_f} (from {first})"
    );
}

/// `twolayer train --dtype bf16` end to end: it trains (in bf16: the
/// summary and the checkpoint say so), a run resumed from its checkpoint
/// gives the unbroken run's losses bit for bit, and the flags it cannot
/// honour are one-line errors. Without `cblas_sbgemm`: the one-line error.
#[test]
fn train_dtype_bf16_checkpoints_and_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    let base = [
        "train",
        "--dtype",
        "bf16",
        "--n",
        "300",
        "--d-in",
        "50",
        "--hidden",
        "20",
        "--d-out",
        "3",
        "--lr",
        "1e-5",
        "--threads",
        "2",
    ];
    let whole = common::bin()
        .args(base)
        .args([
            "--steps",
            "30",
            "--losses",
            &p("whole.txt"),
            "--json",
            &p("s.json"),
        ])
        .output()
        .unwrap();
    if !has_sbgemm() {
        assert!(!whole.status.success());
        let e = common::stderr(&whole);
        assert!(
            e.contains("cblas_sbgemm") && e.trim().lines().count() == 1,
            "{e}"
        );
        return;
    }
    assert!(whole.status.success(), "{}", common::stderr(&whole));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("s.json")).unwrap()).unwrap();
    assert_eq!(s["dtype"], "bf16");
    let half = common::bin()
        .args(base)
        .args(["--steps", "15", "--checkpoint", &p("c.ckpt")])
        .output()
        .unwrap();
    assert!(half.status.success(), "{}", common::stderr(&half));
    let c = twolayer::checkpoint::AnyCheckpoint::read(&d.join("c.ckpt")).unwrap();
    assert_eq!(c.header().run.dtype, twolayer::Dtype::Bf16);
    assert!(
        c.header().plan.is_none(),
        "the bf16 step has no plan to record"
    );
    let rest = common::bin()
        .args([
            "train",
            "--resume",
            &p("c.ckpt"),
            "--steps",
            "30",
            "--losses",
            &p("resumed.txt"),
        ])
        .output()
        .unwrap();
    assert!(rest.status.success(), "{}", common::stderr(&rest));
    let (a, b) = (
        std::fs::read_to_string(p("whole.txt")).unwrap(),
        std::fs::read_to_string(p("resumed.txt")).unwrap(),
    );
    assert_eq!(a.lines().count(), 30);
    assert_eq!(a, b, "the resumed bf16 run left the unbroken one");
    // The unbroken bf16 run is not the f32 run (the GEMMs are bf16's).
    // The same flags, in f32.
    let f32_flags = base.map(|a| if a == "bf16" { "f32" } else { a });
    let f32run = common::bin()
        .args(f32_flags)
        .args(["--steps", "30", "--losses", &p("f32.txt")])
        .output()
        .unwrap();
    assert!(f32run.status.success(), "{}", common::stderr(&f32run));
    assert_ne!(a, std::fs::read_to_string(p("f32.txt")).unwrap());

    let dual: Vec<&str> = base.iter().copied().chain(["--form", "dual"]).collect();
    let other = ["train", "--resume", &p("c.ckpt"), "--dtype", "f32"];
    for (args, needle) in [
        (&dual[..], "--form dual runs in f32 or f64"),
        (&other[..], "disagrees"),
    ] {
        let o = common::bin().args(args).output().unwrap();
        assert!(!o.status.success(), "{args:?} ran");
        let e = common::stderr(&o);
        assert!(
            e.contains(needle) && e.trim().lines().count() == 1,
            "{args:?}: {e}"
        );
    }
}

/// A sweep takes bf16 as a dtype: its points run the bf16 step and carry
/// their own GEMM rate (the bf16 GEMM's, 2048²); `tune` says it has
/// nothing to plan there.
#[test]
fn sweep_and_tune_take_bf16_points() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("sw");
    let o = common::bin()
        .args([
            "sweep", "--n", "128", "--d-in", "40", "--hidden", "16", "--d-out", "2",
        ])
        .args([
            "--dtype",
            "f32,bf16",
            "--threads",
            "2",
            "--min-steps",
            "3",
            "--budget",
            "0.05",
        ])
        .args(["--out", out.to_str().unwrap(), "-q"])
        .output()
        .unwrap();
    if !has_sbgemm() {
        assert!(!o.status.success());
        assert!(
            common::stderr(&o).contains("cblas_sbgemm"),
            "{}",
            common::stderr(&o)
        );
        return;
    }
    assert!(o.status.success(), "{}", common::stderr(&o));
    let r = twolayer::bench::report::Report::read(&out.join("report.json")).unwrap();
    let bf = r
        .points
        .iter()
        .find(|p| p.run.dtype == twolayer::Dtype::Bf16)
        .unwrap();
    let f = r
        .points
        .iter()
        .find(|p| p.run.dtype == twolayer::Dtype::F32)
        .unwrap();
    assert!(bf.machine_gemm_gflops > 0.0 && bf.machine_gemm_gflops != f.machine_gemm_gflops);
    assert_eq!(
        bf.workspace_bytes as u128,
        twolayer::step::bf16::training_bytes(bf.shape())
    );
    let w = d.join("w.json");
    let o = common::bin()
        .args([
            "tune",
            "--wisdom",
            w.to_str().unwrap(),
            "--n",
            "128",
            "--d-in",
            "40",
        ])
        .args([
            "--hidden",
            "16",
            "--d-out",
            "2",
            "--dtype",
            "bf16",
            "--threads",
            "2",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("not tuned: the bf16 step"));
}
