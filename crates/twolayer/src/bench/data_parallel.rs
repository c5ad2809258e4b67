//! `mpirun -np K twolayer sweep …`: every point measured by K ranks, each
//! on its own rows of the batch, with the gradients summed across them as
//! `mpirun -np K twolayer train` sums them (feature `mpi`).
//!
//! Per point and round, every rank:
//!
//! 1. runs the data-parallel step (its rows' gradients, summed through the
//!    MPI [`Exchange`](crate::step::Exchange), the same update everywhere)
//!    interleaved with its own shard's GEMMs alone, and times both and the
//!    time spent inside MPI calls; rank 0 decides when to stop, so every
//!    rank runs the same steps;
//! 2. times its shard's phases (instrumented local steps, no exchange);
//! 3. idles while rank 0 alone runs the whole batch with the same threads
//!    (the single-process step), which gives the scaling efficiency
//!    T₁ / (K · T_K) in the same run.
//!
//! Step, GEMM and MPI-call times are the slowest rank's, sample by sample;
//! GEMM rates and memory are summed over the ranks.

use super::env::Env;
use super::grid::{Grid, Point, Timing};
use super::measure::{
    machine_gemm_gflops, phase_samples, Interleaved, MemoryWatch, Samples, BENCH_LR,
};
use super::report::{MpiPoint, Report, Stats, SCHEMA_VERSION};
use super::run::{pools, GemmRates, Progress};
use crate::distributed::Cluster;
use crate::error::{Error, Result};
use crate::net::{Data, Weights};
use crate::scalar::Real;
use crate::shape::Shape;
use crate::step::{Exchange, LearningRates, NoProbe, Plan, Step, StepMode, Update};
use std::time::Instant;

/// How the ranks sum their gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllreducePlan {
    /// Non-blocking allreduces started as each part is final.
    pub overlap: bool,
    /// Pieces g_w1's sum is started in.
    pub pieces: usize,
}

/// The MPI-only measurements of one point, from one or more rounds.
#[derive(Clone, Debug, Default)]
struct MpiSamples {
    allreduce_ms: Vec<f64>,
    single_rank_ms: Vec<f64>,
}

/// Measures every point of `grid` across the ranks of `cluster`, telling
/// `progress` (rank 0's shows it; the others pass `()`). Every rank
/// returns the same report; rank 0 is the one to print and write it.
pub fn run_grid_mpi(
    grid: &Grid,
    cluster: &Cluster,
    how: AllreducePlan,
    progress: &mut dyn Progress,
) -> Result<Report> {
    let env = Env::capture();
    let pools = pools(grid)?;
    let rounds = grid.timing.rounds.max(1);
    progress.start(
        &format!("sweep ×{} ranks", cluster.size()),
        grid.points.len() * rounds,
    );

    // GEMM rates: every rank at once, summed.
    let mut rates = GemmRates::default();
    let rate = |dtype, threads| {
        let mine = pools[&threads].install(|| machine_gemm_gflops(dtype, threads));
        cluster.sum(mine)
    };
    let mut samples: Vec<Option<(Samples, MpiSamples)>> = vec![None; grid.points.len()];
    for round in 0..rounds {
        for (p, acc) in grid.points.iter().zip(samples.iter_mut()) {
            progress.next(p, round, rounds);
            let pool = &pools[&p.threads];
            rates.sample_if_due(round, p, || rate(p.dtype, p.threads));
            let handoff = Handoff(cluster);
            let (s, m) = pool.install(|| measure_point_mpi(*p, grid.timing, handoff.get(), how))?;
            match acc {
                Some((a, am)) => {
                    a.merge(s);
                    am.allreduce_ms.extend(m.allreduce_ms);
                    am.single_rank_ms.extend(m.single_rank_ms);
                }
                None => *acc = Some((s, m)),
            }
            progress.done();
        }
    }
    rates.complete(rate);
    progress.finish();
    let library = mpi::environment::library_version()
        .unwrap_or_else(|_| "unknown".into())
        .lines()
        .next()
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let k = cluster.size();
    let points = samples
        .into_iter()
        .map(|s| {
            let (s, m) = s.expect("every point measured");
            let point = s.point;
            // No core-peak fraction: the ranks may span machines.
            let mut r = s.into_report(rates.of(&point), None);
            let single = Stats::from_samples(m.single_rank_ms);
            r.mpi = Some(MpiPoint {
                ranks: k,
                allreduce: if how.overlap { "overlap" } else { "blocking" }.into(),
                allreduce_pieces: if how.overlap { how.pieces } else { 1 },
                allreduce_ms: Stats::from_samples(m.allreduce_ms),
                scaling_efficiency: single.median / (k as f64 * r.ms_per_step.median),
                single_rank_ms: single,
                library: library.clone(),
            });
            r
        })
        .collect();
    Ok(Report {
        schema_version: SCHEMA_VERSION,
        env,
        timing: grid.timing,
        points,
        load: None,
        peak: None,
    })
}

/// A `&Cluster` lent to the pool thread that runs a `pool.install`.
struct Handoff<'a>(&'a Cluster);

// SAFETY: MPI runs with MPI_THREAD_SERIALIZED ([`Cluster::init`]): any
// thread may call it, one call at a time. `pool.install` blocks the lending
// thread until its closure returns, and every MPI call inside comes from
// the one pool thread running that closure (the step's parallel sections
// make none), so no two calls ever overlap.
unsafe impl Sync for Handoff<'_> {}

impl<'a> Handoff<'a> {
    fn get(&self) -> &'a Cluster {
        self.0
    }
}

fn measure_point_mpi(
    point: Point,
    timing: Timing,
    cluster: &Cluster,
    how: AllreducePlan,
) -> Result<(Samples, MpiSamples)> {
    // bf16 runs store f32: the f32 arrays, with the bf16 step.
    crate::with_storage!(point.dtype, F => measure::<F>(point, timing, cluster, how))
}

fn measure<F: Real + mpi::traits::Equivalence>(
    point: Point,
    timing: Timing,
    cluster: &Cluster,
    how: AllreducePlan,
) -> Result<(Samples, MpiSamples)> {
    let rounds = timing.rounds.max(1);
    let min_steps = timing.min_steps.div_ceil(rounds);
    let budget_s = timing.budget_s / rounds as f64;
    let shape = point.shape;
    let k = cluster.size();
    if shape.n < k {
        return Err(Error::invalid(format!(
            "N = {} is fewer rows than the {k} ranks",
            shape.n
        )));
    }
    let rows = cluster.rows(shape.n);
    let local = Shape {
        n: rows.len(),
        ..shape
    };
    let mode = StepMode::Explicit;
    let plan = Plan::new(local, F::DTYPE, point.threads, mode);
    let memory = MemoryWatch::start();

    // This rank's rows of the single-process data, and the same weights
    // everywhere.
    let data = Data::<F>::random_rows(shape, 0, rows.start, rows.len());
    let mut weights = Weights::<F>::random(shape, 0);
    let mut step = Step::<F>::new(
        point.dtype,
        crate::step::Form::Primal,
        &data,
        &weights,
        plan,
        mode,
    )?;
    let lr = LearningRates::uniform(BENCH_LR);
    let mut exchange = cluster.exchange(how.overlap);
    let pieces = if how.overlap { how.pieces } else { 1 };
    // The data-parallel step, as `mpirun … twolayer train` runs it, and
    // the same step's GEMMs alone.
    let dp_step = |step: &mut Step<F>, weights: &mut Weights<F>, exchange: &mut dyn Exchange<F>| {
        step.run(
            &data,
            weights,
            lr,
            Update::Exchanged { exchange, pieces },
            &mut NoProbe,
        )
    };
    let gemms_only = |step: &mut Step<F>, weights: &mut Weights<F>| {
        step.run(&data, weights, lr, Update::GemmsOnly, &mut NoProbe)
    };

    // Untimed steps: the data-parallel step, then the GEMMs alone.
    for _ in 0..timing.warmup {
        dp_step(&mut step, &mut weights, &mut exchange)?;
    }
    for _ in 0..timing.warmup.max(1) {
        gemms_only(&mut step, &mut weights)?;
    }
    exchange.reset_time();

    // The step and this rank's GEMMs alone, interleaved; rank 0 decides
    // when there are enough samples, so every rank runs the same steps.
    let mut timed = Interleaved::default();
    let mut mpi_ms = Vec::new();
    while cluster.lead_decides(timed.wants_more(min_steps, budget_s)) {
        let before = exchange.busy_ms();
        let t0 = Instant::now();
        let loss = dp_step(&mut step, &mut weights, &mut exchange)?;
        let t1 = Instant::now();
        gemms_only(&mut step, &mut weights)?;
        std::hint::black_box(loss);
        timed.push(t0, t1, Instant::now());
        mpi_ms.push(exchange.busy_ms() - before);
    }
    let Interleaved {
        mut step_ms,
        mut gemm_ms,
        ..
    } = timed;
    for v in [&mut step_ms, &mut gemm_ms, &mut mpi_ms] {
        cluster.max_each(v);
    }

    // Phases of this rank's own rows (no exchange), every rank at once.
    let phases = phase_samples(step_ms.len(), |timer| {
        step.run(&data, &mut weights, lr, Update::Sgd, timer)
            .map(drop)
    })?;
    let (peak_rss, rss_growth) = memory.peak_and_growth();
    let peak_rss = cluster.sum(peak_rss as f64) as u64;
    let rss_growth = cluster.sum(rss_growth as f64) as u64;
    let bytes = plan.training_bytes(local, point.dtype, mode);
    let workspace = cluster.sum(bytes as f64) as u64;
    drop((step, data));

    // Rank 0 alone on the whole batch, as one process would train it.
    let count = step_ms.len();
    let single = cluster
        .on_lead_alone(|| single_rank::<F>(point, timing.warmup, count, budget_s))
        .transpose()?
        .unwrap_or_default();
    let mut single_rank_ms = single;
    // Every rank reports the same numbers: rank 0's, handed round.
    let mut len = [single_rank_ms.len() as f64];
    cluster.max_each(&mut len);
    single_rank_ms.resize(len[0] as usize, 0.0);
    cluster.max_each(&mut single_rank_ms);

    Ok((
        Samples {
            point,
            mode,
            step_ms,
            gemm_ms,
            phases,
            workspace_bytes: workspace,
            peak_rss_bytes: peak_rss,
            rss_growth_bytes: rss_growth,
            plan: (plan, "the built-in rule".to_string()),
        },
        MpiSamples {
            allreduce_ms: mpi_ms,
            single_rank_ms,
        },
    ))
}

/// Step times of one process on the whole batch with `point.threads`
/// threads (the plan and fused step `twolayer train` would use): as many
/// steps as the ranks timed, or fewer once `budget_s` and a tenth of them
/// are both spent (it is K times the work per step).
fn single_rank<F: Real>(
    point: Point,
    warmup: usize,
    count: usize,
    budget_s: f64,
) -> Result<Vec<f64>> {
    let shape = point.shape;
    let mut step = Step::<F>::planned(shape, point.threads, StepMode::Fused)?;
    let data = Data::<F>::random(shape, 0);
    let mut weights = Weights::<F>::random(shape, 0);
    let lr = LearningRates::uniform(BENCH_LR);
    let mut sgd =
        |weights: &mut Weights<F>| step.run(&data, weights, lr, Update::Sgd, &mut NoProbe);
    for _ in 0..warmup {
        sgd(&mut weights)?;
    }
    let mut out = Vec::with_capacity(count);
    let mut spent = 0.0;
    while out.len() < count.max(1) && (spent < budget_s || out.len() < count.div_ceil(10).max(3)) {
        let t = Instant::now();
        std::hint::black_box(sgd(&mut weights)?);
        let dt = t.elapsed().as_secs_f64();
        spent += dt;
        out.push(dt * 1e3);
    }
    Ok(out)
}
