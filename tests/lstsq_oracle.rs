//! Convergence oracle: with w1 held fixed (its learning rate 0), training is
//! gradient descent on the convex ‖h_relu·w2 − y‖², whose minimiser LAPACK
//! gives directly. The trained w2 must approach it, and the loss must approach
//! the least-squares residual.

mod common;

use common::max_rel_diff;
use ndarray::Array2;
use ndarray_linalg::{EigValsh, LeastSquaresSvd, UPLO};
use twolayer::{Data, LearningRates, Shape, StepMode, Trainer, Weights};

#[test]
fn w2_converges_to_the_least_squares_solution() {
    let shape = Shape::new(200, 30, 12, 4).unwrap();
    let data = Data::<f64>::random(shape, 11);
    let w = Weights::<f64>::random(shape, 12);

    // The oracle, computed independently of the trainer.
    let h_relu: Array2<f64> = data.x.dot(&w.w1).mapv(|v| v.max(0.0));
    let lstsq = h_relu.least_squares(&data.y).unwrap();
    let w2_star = lstsq.solution;
    let residual: f64 = lstsq
        .residual_sum_of_squares
        .expect("overdetermined system has residuals")
        .sum();

    // Step size from the curvature: the Hessian of the loss in w2 is
    // 2·h_reluᵀ·h_relu; lr = 1/λ_max contracts the error by (1 − λ_min/λ_max)
    // per step. Enough steps to shrink it by 1e-12.
    let hess = h_relu.t().dot(&h_relu) * 2.0;
    let eig = hess.eigvalsh(UPLO::Lower).unwrap();
    let (lmin, lmax) = (eig[0], eig[eig.len() - 1]);
    assert!(lmin > 0.0, "h_relu must have full column rank");
    let lr = 1.0 / lmax;
    let steps = ((1e-12f64).ln() / (1.0 - lmin / lmax).ln()).ceil() as usize;
    assert!(
        steps < 200_000,
        "badly conditioned test problem: {steps} steps"
    );

    let w1_before = w.w1.clone();
    let mut t = Trainer::new(data, w, LearningRates { w1: 0.0, w2: lr }, StepMode::Fused).unwrap();
    t.run(steps, |_, _, _| std::ops::ControlFlow::Continue(()))
        .unwrap();

    assert_eq!(
        t.weights().w1,
        w1_before,
        "w1 moved with a zero learning rate"
    );
    let gap = max_rel_diff(&t.weights().w2, &w2_star, 1e-6);
    assert!(
        gap < 1e-8,
        "w2 is {gap:e} (relative) from the LAPACK solution after {steps} steps"
    );
    let final_loss = *t.losses().last().unwrap();
    assert!(
        (final_loss - residual).abs() <= 1e-9 * residual,
        "loss {final_loss} vs least-squares residual {residual}"
    );
    // And it did start far from the optimum.
    assert!(t.losses()[0] > 10.0 * residual);
}
