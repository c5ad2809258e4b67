//! Plans measured, not assumed, as FFTW's planner does: for a shape,
//! dtype, thread count and step mode, time every [`PlanChoice`] on this
//! machine and keep the fastest; [`wisdom`] remembers it for train and
//! sweep.
//!
//! The search times the candidates on a sub-batch of [`tuning_rows`] rows
//! (a step of about [`TUNE_STEP_FLOPS`]), since a plan's cost per row
//! hardly depends on N once every shard holds a few blocks: a candidate's
//! blocks are rows, and "a shard's whole rows" stays that on the full
//! batch. Two rounds, each candidate timed in turn so that noise hits all
//! of them alike: three steps of every candidate (their fastest counts),
//! then seven more of the best third (their median decides) — more for
//! short steps, so that each round lasts 0.05 s and 0.2 s at least.
//!
//! [`exhaustive`] times every candidate on the whole batch instead,
//! interleaved: the yardstick the tuned plan is checked against.

pub mod wisdom;

use crate::error::Result;
use crate::net::{Data, Weights};
use crate::scalar::Real;
use crate::shape::Shape;
use crate::stats::median;
use crate::step::{LearningRates, NoProbe, PlanChoice, Step, StepMode, Update};
use std::time::Instant;

/// FLOPs of one step of the sub-batch the tuner times on (about 30 ms in
/// f64 on two Zen 4 cores: the tuning of a reference shape then takes
/// 1–6 s).
pub const TUNE_STEP_FLOPS: f64 = 3e9;

/// The learning rate the tuner trains with (as the benchmarks do: no
/// shape diverges, every step computes on finite numbers).
const TUNE_LR: f64 = 1e-12;

/// What a tuning found.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// The fastest choice.
    pub best: PlanChoice,
    /// Rows of the sub-batch it was timed on.
    pub rows: usize,
    /// Every candidate with its time per step (ms, on `rows` rows): the
    /// finalists' median, the others' fastest of three.
    pub timings: Vec<(PlanChoice, f64)>,
    /// Wall time of the whole search, seconds.
    pub seconds: f64,
}

/// Rows the tuner times a step of `shape` on: enough for a step of about
/// [`TUNE_STEP_FLOPS`], at least 512 (or N) and at most N.
pub fn tuning_rows(shape: Shape) -> usize {
    let per_row = shape.flops_per_step() / shape.n as f64;
    let rows = (TUNE_STEP_FLOPS / per_row).ceil() as usize;
    rows.max(512).min(shape.n)
}

/// Finds the fastest plan for `shape` in `F` on the threads of the rayon
/// pool it runs in.
pub fn tune<F: Real>(shape: Shape, mode: StepMode) -> Result<Tuning> {
    let start = Instant::now();
    let threads = rayon::current_num_threads();
    let rows = tuning_rows(shape);
    let sub = Shape { n: rows, ..shape };
    let candidates = PlanChoice::candidates(threads, rows, mode);
    let mut bench = Bench::<F>::new(sub, mode, &candidates)?;
    // How long a step takes, from one untimed step of each candidate:
    // short steps get more passes, so that each round lasts long enough
    // for noise to average out (a 0.3 ms step timed 7 times is a coin
    // toss on a shared machine).
    let all: Vec<usize> = (0..candidates.len()).collect();
    let step_s = bench.warm(&all);
    let passes = |least: usize, seconds: f64| {
        ((seconds / step_s.max(1e-6)).ceil() as usize).clamp(least, 2000)
    };
    // Round 1: at least three steps each (0.05 s of them), in turn; the
    // fastest of each counts.
    let first = bench.rounds(&all, passes(3, 0.05));
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| min(&first[a]).total_cmp(&min(&first[b])));
    let keep = order.len().div_ceil(3).max(3).min(order.len());
    let finalists = &order[..keep];
    // Round 2: at least seven more steps of the finalists (0.2 s of
    // them), in turn; the median.
    let second = bench.rounds(finalists, passes(7, 0.2));
    let mut timings: Vec<(PlanChoice, f64)> = (0..candidates.len())
        .map(|i| (candidates[i], min(&first[i])))
        .collect();
    for &i in finalists {
        timings[i].1 = median(&second[i]);
    }
    let best = finalists
        .iter()
        .copied()
        .min_by(|&a, &b| timings[a].1.total_cmp(&timings[b].1))
        .map(|i| candidates[i])
        .expect("at least one candidate");
    Ok(Tuning {
        best,
        rows,
        timings,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Every candidate for `shape` timed on the whole batch, `rounds` steps
/// each, in turn (after one untimed step each): (choice, median ms per
/// step), in candidate order. Runs on the threads of the current pool.
pub fn exhaustive<F: Real>(
    shape: Shape,
    mode: StepMode,
    rounds: usize,
) -> Result<Vec<(PlanChoice, f64)>> {
    let threads = rayon::current_num_threads();
    let candidates = PlanChoice::candidates(threads, shape.n, mode);
    let mut bench = Bench::<F>::new(shape, mode, &candidates)?;
    let all: Vec<usize> = (0..candidates.len()).collect();
    let times = bench.rounds(&all, rounds.max(1));
    Ok(candidates
        .into_iter()
        .zip(times)
        .map(|(c, t)| (c, median(&t)))
        .collect())
}

/// One batch, its weights, and a workspace per candidate plan.
struct Bench<F> {
    data: Data<F>,
    weights: Weights<F>,
    /// One step per candidate plan.
    steps: Vec<Step<F>>,
}

impl<F: Real> Bench<F> {
    fn new(shape: Shape, mode: StepMode, candidates: &[PlanChoice]) -> Result<Self> {
        let mut steps = Vec::with_capacity(candidates.len());
        for c in candidates {
            steps.push(Step::primal(shape, c.plan(shape, mode), mode)?);
        }
        Ok(Bench {
            data: Data::random(shape, 0),
            weights: Weights::random(shape, 0),
            steps,
        })
    }

    /// One untimed step of each candidate in `which`: the mean time of
    /// one, in seconds.
    fn warm(&mut self, which: &[usize]) -> f64 {
        let t = Instant::now();
        for &i in which {
            self.step(i);
        }
        t.elapsed().as_secs_f64() / which.len().max(1) as f64
    }

    /// `steps` passes over the candidates `which`, one timed step of each
    /// per pass (after one untimed step each): their times in ms, indexed
    /// like the steps (empty for the others).
    fn rounds(&mut self, which: &[usize], steps: usize) -> Vec<Vec<f64>> {
        let mut out = vec![Vec::new(); self.steps.len()];
        self.warm(which);
        for _ in 0..steps {
            for &i in which {
                let t = Instant::now();
                self.step(i);
                out[i].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        out
    }

    fn step(&mut self, i: usize) {
        let loss = self.steps[i].run(
            &self.data,
            &mut self.weights,
            LearningRates::uniform(TUNE_LR),
            Update::Sgd,
            &mut NoProbe,
        );
        std::hint::black_box(loss.expect("a step built for this batch and these weights"));
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}
