//! Measuring one point of a sweep: the step's time, its five GEMMs alone
//! and the phase breakdown, all interleaved so that they see the same
//! machine (the phases from separate instrumented steps, so the timers
//! never touch the reported step time); the point's memory; and the
//! machine's own GEMM rate.

use super::grid::{Point, Timing};
use super::report::{PhaseTimes, PlanReport, PointReport, Stats};
use crate::blas;
use crate::error::Result;
use crate::net::{Data, Weights};
use crate::scalar::{Dtype, Real};
use crate::step::dual::Dual;
use crate::step::{Form, LearningRates, Phase, Plan, PlanChoice, Probe, Step, StepMode, Update};
use crate::tune::wisdom::PlanSource;
use ndarray::linalg::general_mat_mul;
use ndarray::Array2;
use std::time::Instant;

/// The learning rate benchmarks train with: small enough that no shape
/// diverges (the reference's 1e-6 does from N = 4096 on), so every step
/// works on finite numbers, and the weights still change each step.
pub const BENCH_LR: f64 = 1e-12;

/// Most samples kept per point, whatever the budget (a grid asking for
/// more steps is refused: [`crate::bench::grid`]).
pub const MAX_SAMPLES: usize = 100_000;

/// Times every phase of the step it is handed to. Each phase runs from
/// the end of the one before (the first from the timer's start) to its own
/// end, so the phases of a step add up to the step.
pub(super) struct PhaseTimer {
    start: Instant,
    last: Instant,
    ms: [f64; Phase::COUNT],
}

impl PhaseTimer {
    fn start() -> PhaseTimer {
        let now = Instant::now();
        PhaseTimer {
            start: now,
            last: now,
            ms: [0.0; Phase::COUNT],
        }
    }
}

/// The instrumented steps of a point: per phase, and in total (ms).
#[derive(Clone, Debug, Default)]
pub struct PhaseSamples {
    /// Each phase's times, in [`Phase::ALL`] order.
    pub per_phase: [Vec<f64>; Phase::COUNT],
    /// Each instrumented step's whole time, start to end of its last phase.
    pub total: Vec<f64>,
}

impl PhaseSamples {
    /// Times one instrumented step, which `step` runs with the timer.
    pub(super) fn take<T>(&mut self, step: impl FnOnce(&mut PhaseTimer) -> T) -> T {
        let mut timer = PhaseTimer::start();
        let out = step(&mut timer);
        for (acc, v) in self.per_phase.iter_mut().zip(timer.ms) {
            acc.push(v);
        }
        self.total
            .push((timer.last - timer.start).as_secs_f64() * 1e3);
        out
    }

    fn merge(&mut self, other: PhaseSamples) {
        for (a, b) in self.per_phase.iter_mut().zip(other.per_phase) {
            a.extend(b);
        }
        self.total.extend(other.total);
    }

    fn len(&self) -> usize {
        self.total.len()
    }
}

impl Probe for PhaseTimer {
    fn done(&mut self, phase: Phase) {
        let now = Instant::now();
        self.ms[phase.index()] += (now - self.last).as_secs_f64() * 1e3;
        self.last = now;
    }
}

/// Adapts a closure to [`Probe`].
struct FnProbe<'a>(&'a mut (dyn FnMut(Phase) + Send));

impl Probe for FnProbe<'_> {
    fn done(&mut self, phase: Phase) {
        (self.0)(phase)
    }
}

/// The raw measurements of one point, from one or more rounds.
#[derive(Clone, Debug)]
pub struct Samples {
    /// What was measured.
    pub point: Point,
    /// How the step applied its update.
    pub mode: StepMode,
    /// Step times, ms.
    pub step_ms: Vec<f64>,
    /// GEMM-only times, ms, each taken right after the step of the same index.
    pub gemm_ms: Vec<f64>,
    /// The instrumented steps' phases.
    pub phases: PhaseSamples,
    /// Bytes of data, weights and buffers.
    pub workspace_bytes: u64,
    /// Peak RSS seen while measuring.
    pub peak_rss_bytes: u64,
    /// Peak RSS while measuring less the RSS just before (see
    /// `MemoryWatch`).
    pub rss_growth_bytes: u64,
    /// The plan the step ran, and where it came from.
    pub plan: (Plan, String),
}

impl Samples {
    /// Adds another round's samples of the same point.
    pub fn merge(&mut self, other: Samples) {
        self.step_ms.extend(other.step_ms);
        self.gemm_ms.extend(other.gemm_ms);
        self.phases.merge(other.phases);
        self.peak_rss_bytes = self.peak_rss_bytes.max(other.peak_rss_bytes);
        self.rss_growth_bytes = self.rss_growth_bytes.max(other.rss_growth_bytes);
    }

    /// The point's entry in a report, with the machine's GEMM rate
    /// samples (GFLOP/s) of its dtype and thread count.
    pub fn into_report(
        self,
        machine_gemm: &[f64],
        peak: Option<&crate::machine::peak::Peak>,
    ) -> PointReport {
        let shape = self.point.shape;
        let median = |v: &[f64]| Stats::from_samples(v.to_vec()).median;
        let phase = |p: Phase| median(&self.phases.per_phase[p.index()]);
        let phases = PhaseTimes {
            forward_gemms: phase(Phase::ForwardGemms),
            relu: phase(Phase::Relu),
            loss_grad: phase(Phase::LossGrad),
            backward_gemms: phase(Phase::BackwardGemms),
            mask: phase(Phase::Mask),
            join: phase(Phase::Join),
            update: phase(Phase::Update),
            instrumented_step_ms: median(&self.phases.total),
        };
        let machine_gemm = Stats::from_samples(machine_gemm.to_vec());
        let machine_gemm_gflops = machine_gemm.median;
        let steps = Stats::from_samples(self.step_ms);
        let gemm = Stats::from_samples(self.gemm_ms);
        let gflops = shape.flops_per_step() / (steps.median * 1e-3) / 1e9;
        let core_peak = peak
            .filter(|_| self.point.form == Form::Primal)
            .and_then(|p| p.fraction(self.point.dtype, self.point.threads, gflops));
        let mut report = PointReport {
            run: self.point.run(self.mode),
            steps_timed: steps.samples.len(),
            samples_per_s: shape.n as f64 / (steps.median * 1e-3),
            gflops,
            gemm_ms: gemm.median,
            efficiency: gemm.median / steps.median,
            peak_fraction: gflops / machine_gemm_gflops,
            core_peak_fraction: core_peak.map(|c| c.0),
            core_peak_gflops: core_peak.map(|c| c.1.gflops),
            machine_gemm_gflops,
            machine_gemm: Some(machine_gemm),
            ms_per_step: steps,
            gemm_ms_samples: gemm.samples,
            phases,
            workspace_bytes: self.workspace_bytes,
            peak_rss_bytes: self.peak_rss_bytes,
            rss_growth_bytes: self.rss_growth_bytes,
            // The dual form runs no plan of shards and blocks.
            plan: (self.point.form == Form::Primal)
                .then(|| PlanReport::of(self.plan.0, self.plan.1)),
            mpi: None,
            warnings: Vec::new(),
        };
        report.warnings = super::quality::point_warnings(&report);
        report
    }
}

/// Measures one point for one round on the current thread, which must be
/// inside a rayon pool of `point.threads` threads (the sweep runner sees to
/// it): `timing.budget_s / timing.rounds` seconds and `min_steps / rounds`
/// steps (rounded up). The step runs the `tuned` plan when given (a
/// wisdom file's, with where it came from), else the built-in rule's.
pub fn measure_point(
    point: Point,
    timing: Timing,
    mode: StepMode,
    tuned: Option<(PlanChoice, PlanSource)>,
) -> Result<Samples> {
    // bf16 runs store f32: the f32 arrays, with the bf16 step.
    crate::with_storage!(point.dtype, F => measure::<F>(point, timing, mode, tuned))
}

fn measure<F: Real>(
    point: Point,
    timing: Timing,
    mode: StepMode,
    tuned: Option<(PlanChoice, PlanSource)>,
) -> Result<Samples> {
    let rounds = timing.rounds.max(1);
    let min_steps = timing.min_steps.div_ceil(rounds);
    let budget_s = timing.budget_s / rounds as f64;
    let shape = point.shape;
    let (plan, source) = match tuned {
        Some((choice, source)) => (choice.plan(shape, mode), source),
        None => (
            Plan::new(shape, F::DTYPE, point.threads, mode),
            PlanSource::Rule,
        ),
    };
    plan.check_fits_memory(shape, point.dtype, mode)?;
    let memory = MemoryWatch::start();

    let data = Data::<F>::random(shape, 0);
    let mut weights = Weights::<F>::random(shape, 0);
    let lr = LearningRates::uniform(BENCH_LR);

    // The step in the point's form, built as the Trainer builds it (the
    // primal step on the plan, fused or with explicit gradients, or the
    // dual form's step on C), run through the same call.
    let mut step = Step::<F>::new(point.dtype, point.form, &data, &weights, plan, mode)?;
    let mut run =
        |update: Update<'_, F>, w: &mut Weights<F>, probe: &mut (dyn FnMut(Phase) + Send)| {
            step.run(&data, w, lr, update, &mut FnProbe(probe))
        };
    for _ in 0..timing.warmup {
        run(Update::Sgd, &mut weights, &mut |_| {})?;
    }
    for _ in 0..timing.warmup.max(1) {
        run(Update::GemmsOnly, &mut weights, &mut |_| {})?;
    }

    // Step and GEMMs alone, interleaved sample by sample; after every
    // third, an instrumented step for the phases (at least 3, at most
    // 200), so that the phases see the machine the timed steps saw.
    let mut timed = Interleaved::default();
    let mut phases = PhaseSamples::default();
    while timed.wants_more(min_steps, budget_s) {
        let t0 = Instant::now();
        let loss = run(Update::Sgd, &mut weights, &mut |_| {})?;
        let t1 = Instant::now();
        run(Update::GemmsOnly, &mut weights, &mut |_| {})?;
        std::hint::black_box(loss);
        timed.push(t0, t1, Instant::now());
        if timed.step_ms.len() % 3 == 0 && phases.len() < MAX_PHASE_SAMPLES {
            phases.take(|timer| run(Update::Sgd, &mut weights, &mut |p| timer.done(p)))?;
        }
    }
    while phases.len() < MIN_PHASE_SAMPLES {
        phases.take(|timer| run(Update::Sgd, &mut weights, &mut |p| timer.done(p)))?;
    }
    let Interleaved {
        step_ms, gemm_ms, ..
    } = timed;
    let (peak_rss_bytes, rss_growth_bytes) = memory.peak_and_growth();
    Ok(Samples {
        point,
        mode,
        step_ms,
        gemm_ms,
        phases,
        workspace_bytes: match point.form {
            Form::Primal => plan.training_bytes(shape, point.dtype, mode) as u64,
            Form::Dual => {
                ((shape.data_elems() + shape.weight_elems()) * F::DTYPE.size() as u128
                    + Dual::<F>::bytes(shape, F::DTYPE)) as u64
            }
        },
        peak_rss_bytes,
        rss_growth_bytes,
        plan: (plan, source.to_string()),
    })
}

/// Fewest instrumented steps per point and round.
const MIN_PHASE_SAMPLES: usize = 3;
/// Most instrumented steps per point and round.
const MAX_PHASE_SAMPLES: usize = 200;

/// A point's timed samples: each a step, then its GEMMs alone, back to
/// back on the same buffers.
#[derive(Debug, Default)]
pub(super) struct Interleaved {
    /// Step times, ms.
    pub(super) step_ms: Vec<f64>,
    /// GEMM-only times, ms, each taken right after the step of the same index.
    pub(super) gemm_ms: Vec<f64>,
    /// Seconds spent in timed steps so far.
    stepping_s: f64,
}

impl Interleaved {
    /// Whether the point needs another sample: fewer than `min_steps`
    /// taken, or under `budget_s` seconds of stepping, and below
    /// [`MAX_SAMPLES`].
    pub(super) fn wants_more(&self, min_steps: usize, budget_s: f64) -> bool {
        let taken = self.step_ms.len();
        (taken < min_steps || self.stepping_s < budget_s) && taken < MAX_SAMPLES
    }

    /// Records a sample: the step ran from `t0` to `t1`, its GEMMs alone
    /// from `t1` to `t2`.
    pub(super) fn push(&mut self, t0: Instant, t1: Instant, t2: Instant) {
        self.step_ms.push((t1 - t0).as_secs_f64() * 1e3);
        self.gemm_ms.push((t2 - t1).as_secs_f64() * 1e3);
        self.stepping_s += (t1 - t0).as_secs_f64();
    }
}

/// The phase breakdown apart from the timed steps: a third as many
/// instrumented steps as `timed` (3 to 200); `step` runs one with the
/// timer it is given. (The data-parallel sweep, whose timed steps
/// exchange gradients, times its phases this way on each rank's own rows.)
#[cfg(feature = "mpi")]
pub(super) fn phase_samples(
    timed: usize,
    mut step: impl FnMut(&mut PhaseTimer) -> Result<()>,
) -> Result<PhaseSamples> {
    let mut phases = PhaseSamples::default();
    for _ in 0..(timed / 3).clamp(MIN_PHASE_SAMPLES, MAX_PHASE_SAMPLES) {
        phases.take(&mut step)?;
    }
    Ok(phases)
}

/// Side of the square GEMM that measures the machine's GEMM rate.
pub const MACHINE_GEMM_SIZE: usize = 2048;

/// One sample of the machine's GEMM rate in GFLOP/s for a dtype and
/// thread count: the best of 3 timed `C ← A·B` of [`MACHINE_GEMM_SIZE`]²
/// matrices (after one untimed). The best, not the median: it estimates
/// what the machine can do, and on a shared machine noise only ever makes
/// a GEMM slower. A sweep takes one sample per round, interleaved with
/// its points, and reports their spread. Must run inside a rayon pool of
/// `threads` threads.
pub fn machine_gemm_gflops(dtype: Dtype, threads: usize) -> f64 {
    square_gemm_gflops(dtype, threads, MACHINE_GEMM_SIZE)
}

/// [`machine_gemm_gflops`] for `size`² matrices: a smaller size for a
/// quick estimate (train's note on a forced kernel set uses 1024²).
pub fn square_gemm_gflops(dtype: Dtype, threads: usize, size: usize) -> f64 {
    blas::with_threads(threads, || match dtype {
        Dtype::F32 => square_gemm::<f32>(size),
        Dtype::F64 => square_gemm::<f64>(size),
        Dtype::Bf16 => square_sbgemm(size),
    })
}

fn square_gemm<F: Real>(s: usize) -> f64 {
    let a = Array2::<F>::from_shape_fn((s, s), |(i, j)| {
        F::from_f64(((i * 7 + j) % 13) as f64 * 0.1)
    });
    let b = a.t().to_owned();
    let mut c = Array2::<F>::zeros((s, s));
    let mut best = f64::INFINITY;
    for rep in 0..4 {
        let t = Instant::now();
        // C = A·B: (s×s)·(s×s); alpha = 1, beta = 0.
        general_mat_mul(F::one(), &a, &b, F::zero(), &mut c);
        if rep > 0 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    std::hint::black_box(&c);
    2.0 * (s as f64).powi(3) / best / 1e9
}

/// [`square_gemm`] with bf16 operands and an f32 result (`cblas_sbgemm`);
/// NaN without it.
fn square_sbgemm(s: usize) -> f64 {
    let Some(gemm) = blas::Sbgemm::get() else {
        return f64::NAN;
    };
    let a: Vec<u16> = (0..s * s)
        .map(|k| half::bf16::from_f32(((k * 7) % 13) as f32 * 0.1).to_bits())
        .collect();
    let mut c = vec![0f32; s * s];
    let mut best = f64::INFINITY;
    for rep in 0..4 {
        let t = Instant::now();
        // C = A·Aᵀ: (s×s)·(s×s); alpha = 1, beta = 0.
        gemm.gemm(
            blas::Trans::No,
            blas::Trans::Yes,
            (s, s, s),
            1.0,
            &a,
            &a,
            0.0,
            &mut c,
        );
        if rep > 0 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    std::hint::black_box(&c);
    2.0 * (s as f64).powi(3) / best / 1e9
}

/// A point's memory: [`MemoryWatch::start`] before its data and buffers
/// exist, [`MemoryWatch::peak_and_growth`] once it is measured.
pub(super) struct MemoryWatch {
    resting: u64,
}

impl MemoryWatch {
    /// Hands the allocator's free memory back to the system (so that what
    /// earlier points freed is not counted as resting, nor reused unseen),
    /// then notes the resting RSS and restarts the kernel's record of the
    /// peak (Linux ≥ 4.0).
    pub(super) fn start() -> MemoryWatch {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: glibc's malloc_trim only releases free memory.
        unsafe {
            libc::malloc_trim(0);
        }
        let resting = crate::machine::resident_bytes().unwrap_or(0);
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        MemoryWatch { resting }
    }

    /// The peak RSS since [`MemoryWatch::start`], and how much it exceeds
    /// the resting RSS then (0 where the system does not say).
    pub(super) fn peak_and_growth(&self) -> (u64, u64) {
        let peak = crate::machine::peak_rss_bytes().unwrap_or(0);
        (peak, peak.saturating_sub(self.resting))
    }
}
