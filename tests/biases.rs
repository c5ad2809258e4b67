//! The model with biases (y_pred = relu(x·w1 + b1)·w2 + b2, as
//! `nn.Linear` has them): the bias gradients against finite differences,
//! and the step in every layout, mode and form against the plain-loop step.
//! (Its trajectories against numpy, PyTorch's formulas, are in
//! minibatch.rs; MPI in distributed.rs.)

mod common;

use common::{as_f64, grads_of, loop_step_biased, max_rel_diff, to_f64};
use ndarray::Array1;
use twolayer::net::Biases;
use twolayer::step::{Form, Layout, LearningRates, NoExchange, NoProbe, Plan, Step, Update};
use twolayer::{Data, Real, Shape, StepMode, Trainer, Weights};

/// See step_correctness.rs: bit-level checks need the same OpenBLAS
/// thread count throughout, so the tests here take turns.
fn blas_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Seeded weights with biases that are not zero (so that every term of
/// the bias math is exercised), a few of b1 negative enough to switch
/// units off.
fn biased<F: Real>(shape: Shape, seed: u64) -> Weights<F> {
    let mut w = Weights::<F>::random(shape, seed);
    let v = |n: usize, k: f64| {
        Array1::from_shape_fn(n, |i| F::from_f64(((i as f64 + 1.0) * k).sin() * 1.5))
    };
    w.biases = Some(Biases {
        b1: v(shape.hidden, 0.7 + seed as f64),
        b2: v(shape.d_out, 1.3 + seed as f64),
    });
    w
}

fn loss_of(data: &Data<f64>, w: &Weights<f64>) -> f64 {
    let shape = twolayer::net::checked_shape(data, w).unwrap();
    let mut step = Step::planned(shape, 1, StepMode::Explicit).unwrap();
    grads_of(&mut step, data, w).0
}

#[test]
fn bias_gradients_match_finite_differences() {
    let _blas = blas_lock();
    for (i, &(n, d_in, h, d_out)) in [(5, 7, 6, 3), (9, 4, 11, 2)].iter().enumerate() {
        let shape = Shape::new(n, d_in, h, d_out).unwrap();
        let data = Data::<f64>::random(shape, 100 + i as u64);
        let w = biased::<f64>(shape, 200 + i as u64);
        // Two shards in blocks of 2 rows: the bias sums over blocks and
        // shards are part of what is checked.
        let plan = Plan {
            shards: 2,
            block_rows: 2,
            blas_threads: 1,
            fused_gemm_update: false,
            layout: Layout::Rows,
        };
        let mut step = Step::primal(shape, plan, StepMode::Explicit).unwrap();
        let (_, g) = grads_of(&mut step, &data, &w);
        let gb = g.biases.as_ref().expect("bias gradients");
        for (which, analytic) in [(1, &gb.b1), (2, &gb.b2)] {
            let mut worst = 0.0f64;
            for j in 0..analytic.len() {
                let bump = |sign: f64| {
                    let mut p = w.clone();
                    let b = p.biases.as_mut().unwrap();
                    let v = if which == 1 { &mut b.b1 } else { &mut b.b2 };
                    v[j] += sign * 1e-6;
                    loss_of(&data, &p)
                };
                let numeric = (bump(1.0) - bump(-1.0)) / 2e-6;
                worst = worst.max((numeric - analytic[j]).abs() / analytic[j].abs().max(1.0));
            }
            assert!(
                worst < 1e-5,
                "b{which} gradient off by {worst:e} at {shape}"
            );
        }
        // The weight gradients are still right with biases in the model.
        let eps = 1e-6;
        let mut plus = w.clone();
        plus.w1[[1, 2]] += eps;
        let mut minus = w.clone();
        minus.w1[[1, 2]] -= eps;
        let numeric = (loss_of(&data, &plus) - loss_of(&data, &minus)) / (2.0 * eps);
        assert!((numeric - g.w1[[1, 2]]).abs() < 1e-5 * g.w1[[1, 2]].abs().max(1.0));
    }
}

/// Trains `steps` steps in F with biases — through a [`Trainer`] in
/// `mode` and `form` under `plan` (the primal form), or through the
/// exchanged step with `pieces` — and with plain loops in f64 from the same
/// start; returns the worst relative gaps in the losses and in the final
/// weights and biases.
fn against_loops<F: Real>(shape: Shape, steps: usize, how: How, lr: LearningRates) -> (f64, f64) {
    let data = Data::<F>::random(shape, 7);
    let w = biased::<F>(shape, 8);
    let (d64, mut w64) = as_f64(&data, &w);
    let mut ours: Box<dyn FnMut() -> (f64, Weights<F>)> = match how {
        How::Trainer { mode, form, plan } => {
            let b = Trainer::builder(data.clone(), w.clone(), lr).mode(mode);
            let mut t = match plan {
                Some(p) => b.plan(p).build_in(form),
                None => b.build_in(form),
            }
            .unwrap();
            Box::new(move || {
                let l = t.step().unwrap();
                (l, t.weights().clone())
            })
        }
        How::Exchanged { pieces } => {
            let mut step = Step::<F>::planned(shape, 2, StepMode::Explicit).unwrap();
            let mut w = w.clone();
            Box::new(move || {
                let update = Update::Exchanged {
                    exchange: &mut NoExchange,
                    pieces,
                };
                let l = step.run(&data, &mut w, lr, update, &mut NoProbe).unwrap();
                (l, w.clone())
            })
        }
    };
    let mut worst_loss = 0.0f64;
    let mut last = None;
    for _ in 0..steps {
        let (l, w) = ours();
        let b = w64.biases.as_mut().unwrap();
        let theirs = loop_step_biased(
            &d64.x,
            &d64.y,
            &mut w64.w1,
            &mut w64.w2,
            Some((&mut b.b1, &mut b.b2)),
            lr.w1,
            lr.w2,
        );
        worst_loss = worst_loss.max((l - theirs).abs() / theirs.abs());
        last = Some(w);
    }
    let w = last.unwrap();
    let (b, b64) = (w.biases.as_ref().unwrap(), w64.biases.as_ref().unwrap());
    let row = |a: &Array1<F>| to_f64(&a.clone().insert_axis(ndarray::Axis(0)));
    let row64 = |a: &Array1<f64>| a.clone().insert_axis(ndarray::Axis(0));
    let gaps = [
        max_rel_diff(&to_f64(&w.w1), &w64.w1, 1.0),
        max_rel_diff(&to_f64(&w.w2), &w64.w2, 1.0),
        max_rel_diff(&row(&b.b1), &row64(&b64.b1), 1.0),
        max_rel_diff(&row(&b.b2), &row64(&b64.b2), 1.0),
    ];
    (worst_loss, gaps.into_iter().fold(0.0, f64::max))
}

#[derive(Clone, Copy)]
enum How {
    Trainer {
        mode: StepMode,
        form: Form,
        plan: Option<Plan>,
    },
    Exchanged {
        pieces: usize,
    },
}

#[test]
fn the_step_with_biases_is_the_plain_loop_step_in_every_layout_mode_and_form() {
    let _blas = blas_lock();
    let lr = LearningRates { w1: 1e-4, w2: 2e-4 };
    for shape in [
        Shape::new(7, 13, 5, 3).unwrap(),
        Shape::new(12, 9, 6, 1).unwrap(),
    ] {
        let p = |shards: usize, block_rows: usize, fused: bool, layout| Plan {
            shards,
            block_rows,
            blas_threads: 1,
            fused_gemm_update: fused,
            layout,
        };
        let mut cases: Vec<(String, How)> = Vec::new();
        for (name, plan) in [
            ("fused in the GEMMs", p(1, shape.n, true, Layout::Rows)),
            ("one shard in blocks of 3", p(1, 3, false, Layout::Rows)),
            ("two shards in blocks of 4", p(2, 4, false, Layout::Rows)),
            (
                "two shards in blocks of 4, a row per unit",
                p(2, 4, false, Layout::Units),
            ),
            (
                "one shard in one block, a row per unit",
                p(1, shape.n, false, Layout::Units),
            ),
        ] {
            cases.push((
                name.into(),
                How::Trainer {
                    mode: StepMode::Fused,
                    form: Form::Primal,
                    plan: Some(plan),
                },
            ));
        }
        cases.push((
            "explicit gradients".into(),
            How::Trainer {
                mode: StepMode::Explicit,
                form: Form::Primal,
                plan: None,
            },
        ));
        cases.push((
            "dual form".into(),
            How::Trainer {
                mode: StepMode::Fused,
                form: Form::Dual,
                plan: None,
            },
        ));
        for pieces in [1, 3] {
            cases.push((
                format!("exchanged in {pieces} pieces"),
                How::Exchanged { pieces },
            ));
        }
        for (name, how) in cases {
            let (l, w) = against_loops::<f64>(shape, 6, how, lr);
            assert!(
                l < 1e-12 && w < 1e-12,
                "{name} at {shape}, f64: loss {l:e}, weights {w:e}"
            );
            let (l, w) = against_loops::<f32>(shape, 6, how, lr);
            assert!(
                l < 1e-5 && w < 1e-5,
                "{name} at {shape}, f32: loss {l:e}, weights {w:e}"
            );
        }
    }
}

#[test]
fn zero_biases_train_exactly_as_no_biases_until_they_move() {
    let _blas = blas_lock();
    // With lr 0 for both layers nothing moves: the loss with zero biases
    // is the no-bias model's to the bit (adding +0.0 changes no value).
    let shape = Shape::new(9, 11, 7, 2).unwrap();
    let data = Data::<f64>::random(shape, 3);
    let w = Weights::<f64>::random(shape, 4);
    let zero = LearningRates::uniform(0.0);
    let mut a = Trainer::new(data.clone(), w.clone(), zero, StepMode::Fused).unwrap();
    let mut b = Trainer::new(data, w.with_zero_biases(), zero, StepMode::Fused).unwrap();
    assert_eq!(a.step().unwrap(), b.step().unwrap());
    assert_eq!(
        b.weights().biases.as_ref().unwrap().b1,
        Array1::<f64>::zeros(7)
    );
}

#[test]
fn a_diverged_step_leaves_the_biases_as_they_were() {
    let _blas = blas_lock();
    let shape = Shape::new(6, 5, 4, 2).unwrap();
    let mut data = Data::<f64>::random(shape, 1);
    data.y[[2, 1]] = 1e300;
    for form in [Form::Primal, Form::Dual] {
        let w = biased::<f64>(shape, 2);
        let mut t = Trainer::builder(data.clone(), w.clone(), LearningRates::uniform(1e-3))
            .build_in(form)
            .unwrap();
        assert!(t.step().is_err(), "{form:?}: the loss overflows");
        assert_eq!(t.weights().biases, w.biases, "{form:?}");
    }
}

#[test]
fn a_bias_of_the_wrong_length_or_not_finite_is_refused_by_name() {
    let shape = Shape::new(4, 3, 5, 2).unwrap();
    let data = Data::<f64>::random(shape, 0);
    let mut w = biased::<f64>(shape, 1);
    w.biases.as_mut().unwrap().b2 = Array1::zeros(3);
    let e = Trainer::new(
        data.clone(),
        w,
        LearningRates::uniform(0.1),
        StepMode::Fused,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("b2") && e.contains("D_out = 2"), "{e}");
    let mut w = biased::<f64>(shape, 1);
    w.biases.as_mut().unwrap().b1[3] = f64::NAN;
    let e = Trainer::new(data, w, LearningRates::uniform(0.1), StepMode::Fused)
        .unwrap_err()
        .to_string();
    assert!(e.contains("'b1'") && e.contains("[3]"), "{e}");
}
