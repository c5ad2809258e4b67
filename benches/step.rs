//! criterion benchmarks of one training step at the reference shapes, in
//! f32 and f64, with throughput in samples (rows of the batch) per second.
//!
//! `cargo bench --bench step` runs them; set OPENBLAS_THREAD_TIMEOUT=4 in
//! the environment to match what the `twolayer` binary does for itself.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use twolayer::step::{Form, LearningRates, NoProbe, Plan, Step, StepMode, Update};
use twolayer::{Data, Real, Shape, Weights};

fn bench_shape<F: Real>(c: &mut Criterion, shape: Shape) {
    let data = Data::<F>::random(shape, 0);
    let mut w = Weights::<F>::random(shape, 0);
    let threads = twolayer::threads::available_cores();
    // The step in the form `twolayer train` runs for the shape.
    let plan = Plan::new(shape, F::DTYPE, threads, StepMode::Fused);
    let form = Form::as_train_runs(shape);
    let mut step = Step::new(F::DTYPE, form, &data, &w, plan, StepMode::Fused).unwrap();
    let lr = LearningRates::uniform(1e-12);
    let mut group = c.benchmark_group(format!("step/{}", F::DTYPE));
    group.throughput(Throughput::Elements(shape.n as u64));
    if shape.flops_per_step() > 1e10 {
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(20));
    }
    group.bench_function(BenchmarkId::new(form.name(), shape), |b| {
        b.iter(|| {
            step.run(&data, &mut w, lr, Update::Sgd, &mut NoProbe)
                .unwrap()
        })
    });
    group.finish();
}

fn steps(c: &mut Criterion) {
    twolayer::threads::set_budget(twolayer::threads::available_cores()).unwrap();
    let shapes = [
        Shape::REFERENCE,
        Shape::new(4096, 1000, 100, 10).unwrap(),
        Shape::new(65536, 1000, 100, 10).unwrap(),
        Shape::new(8192, 4096, 1024, 256).unwrap(),
    ];
    for shape in shapes {
        bench_shape::<f32>(c, shape);
        bench_shape::<f64>(c, shape);
    }
}

criterion_group!(benches, steps);
criterion_main!(benches);
