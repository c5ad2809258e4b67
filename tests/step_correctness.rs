//! The step's numbers: gradients against finite differences, the BLAS step
//! against a plain-loop step, and the two step forms against each other.

mod common;

use common::{as_f64, grads_of, loop_step, max_rel_diff, to_f64};
use ndarray::Array2;
use twolayer::step::{Gradients, Layout, LearningRates, NoExchange, NoProbe, Plan, Step, Update};
use twolayer::{Data, Real, Shape, StepMode, Trainer, Weights};

/// OpenBLAS keeps one thread count for the whole process, and each step
/// sets its plan's; the tests of this binary run on parallel threads. The
/// bit-identity checks below hold only when the very same calls run with
/// the same thread count (OpenBLAS's Haswell kernels split a GEMM
/// differently on 2 threads: seen failing one time in five while another
/// test ran a 2-thread plan), so the tests here take turns.
fn blas_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// loss(w1, w2) alone, through the library's step.
fn loss_of(data: &Data<f64>, w: &Weights<f64>) -> f64 {
    let shape = twolayer::net::checked_shape(data, w).unwrap();
    let mut step = Step::planned(shape, 1, StepMode::Explicit).unwrap();
    let mut w = w.clone();
    let mut g = Gradients::zeros(shape);
    step.run(
        data,
        &mut w,
        LearningRates::uniform(0.0),
        Update::Gradients(&mut g),
        &mut NoProbe,
    )
    .unwrap()
}

#[test]
fn gradients_match_finite_differences() {
    let _blas = blas_lock();
    for (i, &(n, d_in, h, d_out)) in [(5, 7, 6, 3), (9, 4, 11, 2), (3, 12, 8, 5)]
        .iter()
        .enumerate()
    {
        let shape = Shape::new(n, d_in, h, d_out).unwrap();
        let data = Data::<f64>::random(shape, 100 + i as u64);
        let w = Weights::<f64>::random(shape, 200 + i as u64);
        // Two shards with blocks of 2 rows: the gradient sums over blocks
        // and shards are part of what is checked; in both layouts (the
        // units layout hands g_w1 back transposed from its g_w1ᵀ sums).
        for (layout, mode) in [
            (Layout::Rows, StepMode::Explicit),
            (Layout::Units, StepMode::Fused),
        ] {
            let plan = Plan {
                shards: 2,
                block_rows: 2,
                blas_threads: 1,
                fused_gemm_update: false,
                layout,
            };
            let mut step = Step::primal(shape, plan, mode).unwrap();
            let (_, g) = grads_of(&mut step, &data, &w);

            // Central differences, relative step; the loss is piecewise
            // quadratic, so away from ReLU kinks this is exact up to rounding.
            let check = |which: usize, analytic: &Array2<f64>| {
                let target = if which == 1 { &w.w1 } else { &w.w2 };
                let mut worst = 0.0f64;
                for idx in ndarray::indices(target.dim()) {
                    let eps = 1e-6 * target[idx].abs().max(1.0);
                    let mut plus = w.clone();
                    let mut minus = w.clone();
                    let (p, m) = if which == 1 {
                        (&mut plus.w1, &mut minus.w1)
                    } else {
                        (&mut plus.w2, &mut minus.w2)
                    };
                    p[idx] += eps;
                    m[idx] -= eps;
                    let numeric = (loss_of(&data, &plus) - loss_of(&data, &minus)) / (2.0 * eps);
                    let scale = analytic[idx].abs().max(1.0);
                    worst = worst.max((numeric - analytic[idx]).abs() / scale);
                }
                assert!(
                    worst < 1e-5,
                    "w{which} gradient off by {worst:e} relative at shape {shape}, {layout:?}"
                );
            };
            check(1, &g.w1);
            check(2, &g.w2);
        }
    }
}

/// Every way a step can be laid out for `shape`: one shard with the update
/// in the GEMMs, one shard in blocks, several shards in blocks, and
/// OpenBLAS's own threads; the sharded ones also with a row per hidden
/// unit (fused mode only).
fn plans(shape: Shape) -> Vec<Plan> {
    let p = |shards: usize, block_rows: usize, blas_threads: usize, fused: bool, layout| Plan {
        shards: shards.min(shape.n),
        block_rows,
        blas_threads,
        fused_gemm_update: fused,
        layout,
    };
    let (rows, units) = (Layout::Rows, Layout::Units);
    vec![
        p(1, shape.n, 1, true, rows),
        p(1, shape.n, 2, true, rows),
        p(1, 3, 1, false, rows),
        p(2, 4, 1, false, rows),
        p(3, shape.n, 1, false, rows),
        p(1, 3, 1, false, units),
        p(2, 4, 1, false, units),
        p(3, shape.n, 1, false, units),
        p(1, shape.n, 2, false, units),
    ]
}

/// Trains `steps` steps with the library in F under `plan` and with plain
/// loops in f64 from the same start, and returns the worst relative gaps
/// in the losses and in the final weights.
fn blas_vs_loops<F: Real>(shape: Shape, steps: usize, plan: Plan, explicit: bool) -> (f64, f64) {
    let data = Data::<F>::random(shape, 7);
    let mut w = Weights::<F>::random(shape, 8);
    let (d64, mut w64) = as_f64(&data, &w);
    let lr = LearningRates { w1: 1e-5, w2: 2e-5 };
    let mode = if explicit {
        StepMode::Explicit
    } else {
        StepMode::Fused
    };
    let mut step = Step::<F>::primal(shape, plan, mode).unwrap();
    let mut g = Gradients::<F>::zeros(shape);
    let mut worst_loss = 0.0f64;
    for _ in 0..steps {
        let ours = if explicit {
            // Gradients handed back, then the one SGD update.
            let loss = step
                .run(&data, &mut w, lr, Update::Gradients(&mut g), &mut NoProbe)
                .unwrap();
            twolayer::step::apply_sgd(&mut w, &g, lr);
            loss
        } else {
            step.run(&data, &mut w, lr, Update::Sgd, &mut NoProbe)
                .unwrap()
        };
        let theirs = loop_step(&d64.x, &d64.y, &mut w64.w1, &mut w64.w2, lr.w1, lr.w2);
        worst_loss = worst_loss.max((ours - theirs).abs() / theirs.abs());
    }
    let wt = &w;
    let worst_w = max_rel_diff(&to_f64(&wt.w1), &w64.w1, 1.0).max(max_rel_diff(
        &to_f64(&wt.w2),
        &w64.w2,
        1.0,
    ));
    (worst_loss, worst_w)
}

#[test]
fn blas_step_matches_plain_loops_on_odd_shapes() {
    let _blas = blas_lock();
    let shapes = [
        Shape::new(7, 13, 5, 3).unwrap(),
        Shape::new(33, 257, 65, 9).unwrap(),
        Shape::new(1, 9, 1, 1).unwrap(),
    ];
    for shape in shapes {
        for plan in plans(shape) {
            let explicit_ok = !plan.fused_gemm_update && plan.layout == Layout::Rows;
            for explicit in [false, true].into_iter().filter(|&e| !e || explicit_ok) {
                let (l, w) = blas_vs_loops::<f64>(shape, 6, plan, explicit);
                assert!(
                    l < 1e-12 && w < 1e-10,
                    "f64 {shape} {plan:?} explicit={explicit}: loss {l:e}, weights {w:e}"
                );
                // f32 carries ~7 digits; the gap grows a little with each step.
                let (l, w) = blas_vs_loops::<f32>(shape, 6, plan, explicit);
                assert!(
                    l < 1e-4 && w < 1e-4,
                    "f32 {shape} {plan:?} explicit={explicit}: loss {l:e}, weights {w:e}"
                );
            }
        }
    }
}

#[test]
fn fused_and_explicit_steps_agree() {
    let _blas = blas_lock();
    let shape = Shape::new(40, 70, 30, 6).unwrap();
    let mk = |mode| {
        Trainer::new(
            Data::<f64>::random(shape, 1),
            Weights::random(shape, 2),
            LearningRates::uniform(1e-4),
            mode,
        )
        .unwrap()
    };
    let (mut a, mut b) = (mk(StepMode::Fused), mk(StepMode::Explicit));
    a.run(20, |_, _, _| std::ops::ControlFlow::Continue(()))
        .unwrap();
    b.run(20, |_, _, _| std::ops::ControlFlow::Continue(()))
        .unwrap();
    for (x, y) in a.losses().iter().zip(b.losses()) {
        assert!((x - y).abs() <= 1e-12 * y.abs(), "{x} vs {y}");
    }
    assert!(max_rel_diff(&a.weights().w1, &b.weights().w1, 1.0) < 1e-12);
}

#[test]
fn zero_w1_still_learns_because_relu_passes_at_zero() {
    let _blas = blas_lock();
    // h = x·0 = 0 everywhere. The reference zeroes the gradient only where
    // h < 0, so g_h = g_hrelu and w1 moves; PyTorch's convention (0 at 0)
    // would leave it at zero for ever.
    let shape = Shape::new(16, 12, 8, 4).unwrap();
    let data = Data::<f64>::random(shape, 3);
    let mut w = Weights::<f64>::random(shape, 4);
    w.w1.fill(0.0);
    let mut t = Trainer::new(data, w, LearningRates::uniform(1e-3), StepMode::Fused).unwrap();
    t.step().unwrap();
    assert!(
        t.weights().w1.iter().any(|&v| v != 0.0),
        "w1 stayed at zero"
    );
    // And the first step's update is exactly the plain-loop one.
    let (d64, mut w64) = as_f64(t.data(), &{
        let mut w = Weights::<f64>::random(shape, 4);
        w.w1.fill(0.0);
        w
    });
    loop_step(&d64.x, &d64.y, &mut w64.w1, &mut w64.w2, 1e-3, 1e-3);
    assert!(max_rel_diff(&t.weights().w1, &w64.w1, 1e-30) < 1e-12);
}

#[test]
fn non_finite_loss_stops_with_the_step_and_keeps_the_last_weights() {
    let _blas = blas_lock();
    let shape = Shape::new(64, 100, 50, 10).unwrap();
    let mut t = Trainer::new(
        Data::<f64>::random(shape, 5),
        Weights::random(shape, 6),
        LearningRates::uniform(1.0),
        StepMode::Fused,
    )
    .unwrap();
    let mut before = t.weights().clone();
    let err = loop {
        match t.step() {
            Ok(_) => before = t.weights().clone(),
            Err(e) => break e,
        }
    };
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("at step {}", t.steps_done())),
        "{msg}"
    );
    assert!(msg.contains("smaller --lr"), "{msg}");
    assert_eq!(&before, t.weights(), "weights changed by the diverged step");
}

#[test]
fn exchanged_gradients_equal_plain_ones_for_any_pieces() {
    let _blas = blas_lock();
    // The exchanged form defers each shard's last g_w1 GEMM and runs it in
    // row ranges; with one process it must give `gradients`' numbers. Odd
    // sizes, several shards and blocks (the last one short), 1 to D_in
    // pieces, f32 and f64.
    fn check<F: Real>(shape: Shape, plan: Plan) {
        let data = Data::<F>::random(shape, 31);
        let w = Weights::<F>::random(shape, 32);
        let mut step = Step::primal(shape, plan, StepMode::Explicit).unwrap();
        let (want_loss, want) = grads_of(&mut step, &data, &w);
        let lr0 = LearningRates::uniform(0.0);
        for pieces in [1, 2, 3, 7, shape.d_in, shape.d_in + 5] {
            // Stale values must not leak into the result: the step's
            // buffers first hold another point's gradients.
            let mut other = Weights::<F>::random(shape, 33 + pieces as u64);
            let exchange = &mut NoExchange;
            let update = Update::Exchanged { exchange, pieces };
            step.run(&data, &mut other, lr0, update, &mut NoProbe)
                .unwrap();
            let mut same = w.clone();
            let update = Update::Exchanged { exchange, pieces };
            let loss = step
                .run(&data, &mut same, lr0, update, &mut NoProbe)
                .unwrap();
            // A rate of 0 leaves the weights as they were.
            assert!(same == w);
            let got = step
                .gradients()
                .expect("an explicit step keeps its gradients");
            // The loss and g_w2 come from the very same calls in both forms.
            assert_eq!(loss, want_loss, "{shape} {plan:?} pieces {pieces}");
            assert!(got.w2 == want.w2, "{shape} {plan:?} pieces {pieces}");
            if pieces == 1 || shape.d_in == 1 {
                // One piece is the same cblas call on the same operands:
                // the same bits.
                assert!(got.w1 == want.w1, "{shape} {plan:?} pieces {pieces}");
            } else {
                // A row range of a GEMM's output is the same dot products,
                // but OpenBLAS blocks and vectorises a smaller call
                // differently. With its Cooperlake kernels the pieces give
                // the same bits here; with its Haswell kernels they differ
                // in the last bits (measured over these 60 cases: at most
                // 2.6e-16 of the largest entry in f64, 9.4e-8 in f32, about
                // one unit of rounding). Allow 16 units.
                let (a, b) = (to_f64(&got.w1), to_f64(&want.w1));
                let largest = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                let gap = max_rel_diff(&a, &b, largest);
                let bound = 16.0 * F::epsilon().to_f64();
                assert!(
                    gap <= bound,
                    "{shape} {plan:?} pieces {pieces}: g_w1 differs by {gap:e} > {bound:e}"
                );
            }
        }
    }
    for (n, d_in, h, d_out) in [(33, 257, 65, 9), (7, 13, 5, 3), (1, 9, 1, 1)] {
        let shape = Shape::new(n, d_in, h, d_out).unwrap();
        for (shards, block_rows) in [(1, n), (1, 4), (3, 5), (2, 1)] {
            let plan = Plan {
                shards: shards.min(n),
                block_rows,
                blas_threads: 1,
                fused_gemm_update: false,
                layout: Layout::Rows,
            };
            check::<f64>(shape, plan);
            check::<f32>(shape, plan);
        }
    }
}

/// A trainer at `shape` in `form`, seeded data and weights.
fn trainer_in<F: Real>(shape: Shape, form: twolayer::step::Form, lr: LearningRates) -> Trainer<F> {
    Trainer::builder(Data::<F>::random(shape, 7), Weights::random(shape, 8), lr)
        .build_in(form)
        .unwrap()
}

#[test]
fn the_dual_form_follows_the_primal_trajectory() {
    use twolayer::step::Form;
    let _blas = blas_lock();
    // The seed shape at the reference's rate: the same trajectory in exact
    // arithmetic, so the losses and the formed weights agree to rounding
    // (the numpy parity bounds: 1e-9 on the losses, 1e-12 on weights).
    let shape = Shape::REFERENCE;
    let lr = LearningRates::uniform(1e-6);
    let mut p = trainer_in::<f64>(shape, Form::Primal, lr);
    let mut d = trainer_in::<f64>(shape, Form::Dual, lr);
    assert_eq!(d.form(), Form::Dual);
    // Before any step the dual weights are the primal's, bit for bit.
    assert_eq!(p.weights(), d.weights());
    let go = |_: &Trainer<f64>, _, _| std::ops::ControlFlow::Continue(());
    p.run(500, go).unwrap();
    d.run(500, go).unwrap();
    let (lp, ld) = (p.losses(), d.losses());
    assert!(lp[499] < 1e-3 * lp[0], "the run did not learn");
    let worst = lp
        .iter()
        .zip(ld)
        .filter(|(a, _)| **a > 1e-5)
        .map(|(a, b)| (a - b).abs() / a.abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-9, "losses differ by {worst:e}");
    let w = max_rel_diff(&d.weights().w1, &p.weights().w1, 1.0).max(max_rel_diff(
        &d.weights().w2,
        &p.weights().w2,
        1.0,
    ));
    assert!(w < 1e-12, "weights differ by {w:e}");
    // Reading the weights between steps changes nothing.
    let mut again = trainer_in::<f64>(shape, Form::Dual, lr);
    for _ in 0..500 {
        again.step().unwrap();
        let _ = again.weights();
    }
    assert_eq!(again.losses(), d.losses());
    assert_eq!(again.weights(), d.weights());

    // f32: within f32's rounding of the primal.
    let mut p = trainer_in::<f32>(shape, Form::Primal, lr);
    let mut d = trainer_in::<f32>(shape, Form::Dual, lr);
    let go = |_: &Trainer<f32>, _, _| std::ops::ControlFlow::Continue(());
    p.run(100, go).unwrap();
    d.run(100, go).unwrap();
    for (a, b) in p.losses().iter().zip(d.losses()) {
        assert!((a - b).abs() <= 1e-3 * a.abs(), "{a} vs {b}");
    }
}

#[test]
fn the_dual_step_is_the_plain_loop_step() {
    use twolayer::step::Form;
    let _blas = blas_lock();
    // One step from the same start against the plain-loop step: the dual
    // w1 = w1_0 + xᵀ·C is the loop's w1 − lr·xᵀ·g_h; w2 the same update.
    let shape = Shape::new(24, 40, 16, 5).unwrap();
    let lr = LearningRates { w1: 1e-4, w2: 2e-4 };
    let mut d = trainer_in::<f64>(shape, Form::Dual, lr);
    let (x, mut w) = as_f64(d.data(), d.weights());
    d.step().unwrap();
    d.step().unwrap();
    loop_step(&x.x, &x.y, &mut w.w1, &mut w.w2, lr.w1, lr.w2);
    loop_step(&x.x, &x.y, &mut w.w1, &mut w.w2, lr.w1, lr.w2);
    let gap = max_rel_diff(&to_f64(&d.weights().w1), &w.w1, 1e-30);
    assert!(gap < 1e-12, "w1 differs by {gap:e}");
    assert!(max_rel_diff(&to_f64(&d.weights().w2), &w.w2, 1e-30) < 1e-12);
    // A layer held fixed stays exactly as it was.
    let lr = LearningRates { w1: 0.0, w2: 1e-3 };
    let mut d = trainer_in::<f64>(shape, Form::Dual, lr);
    let w1 = d.weights().w1.clone();
    d.step().unwrap();
    assert_eq!(d.weights().w1, w1);
}

#[test]
fn a_diverged_dual_step_keeps_the_last_weights() {
    use twolayer::step::Form;
    let _blas = blas_lock();
    let shape = Shape::new(64, 100, 50, 10).unwrap();
    let mut t = trainer_in::<f64>(shape, Form::Dual, LearningRates::uniform(1.0));
    let mut before = t.weights().clone();
    let err = loop {
        match t.step() {
            Ok(_) => before = t.weights().clone(),
            Err(e) => break e,
        }
    };
    assert!(err.to_string().contains("smaller --lr"), "{err}");
    assert_eq!(&before, t.weights(), "weights changed by the diverged step");
    // Explicit gradients have no dual form.
    let e = Trainer::builder(
        Data::<f64>::random(shape, 1),
        Weights::random(shape, 2),
        LearningRates::uniform(1e-6),
    )
    .mode(StepMode::Explicit)
    .dual()
    .build()
    .unwrap_err();
    assert!(e.to_string().contains("primal"), "{e}");
}

#[test]
fn the_automatic_form_follows_the_flops() {
    use twolayer::step::Form;
    let s = |n, d, h, o| Shape::new(n, d, h, o).unwrap();
    assert_eq!(Form::auto(Shape::REFERENCE, 500), Form::Dual);
    // More rows than inputs: G would cost more than x·w1.
    assert_eq!(Form::auto(s(4096, 1000, 100, 10), 500), Form::Primal);
    assert_eq!(Form::auto(s(8192, 4096, 1024, 256), 500), Form::Primal);
    // One step: G and P cost more than they save.
    assert_eq!(Form::auto(Shape::REFERENCE, 1), Form::Primal);
    // N = D_in: 2·N²·H per step is half of 4·N·D_in·H, before G and P.
    assert_eq!(Form::auto(s(1000, 1000, 100, 10), 500), Form::Primal);
    assert_eq!(Form::auto(s(500, 1000, 100, 10), 500), Form::Dual);
}

#[test]
fn the_units_layout_is_refused_where_g_w1_must_keep_its_rows() {
    let shape = Shape::new(8, 5, 3, 2).unwrap();
    let units = |fused: bool| Plan {
        shards: 1,
        block_rows: 8,
        blas_threads: 1,
        fused_gemm_update: fused,
        layout: Layout::Units,
    };
    // Explicit mode (an exchanged step sends g_w1 in pieces of its rows),
    // and an update inside the GEMMs (which write w1 as it is).
    for (plan, mode) in [
        (units(false), StepMode::Explicit),
        (units(true), StepMode::Fused),
    ] {
        let e = Step::<f64>::primal(shape, plan, mode).unwrap_err();
        assert!(e.to_string().contains("units layout"), "{e}");
    }
    assert!(Step::<f64>::primal(shape, units(false), StepMode::Fused).is_ok());
}
