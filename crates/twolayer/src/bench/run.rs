//! Runs a grid: one rayon pool per thread count, the machine's GEMM rate
//! sampled in every round per dtype and thread count, every point measured
//! inside its pool, telling a [`Progress`] (the command line's progress
//! bar) as it goes.

use super::env::Env;
use super::grid::{Grid, Point};
use super::measure::{machine_gemm_gflops, measure_point, Samples};
use super::report::{Report, SCHEMA_VERSION};
use crate::error::{Error, Result};
use crate::scalar::Dtype;
use crate::step::StepMode;
use std::collections::BTreeMap;

/// What a sweep tells its caller while it runs (a front end's progress
/// display); every method does nothing unless implemented, and `()` is
/// the sweep that shows nothing.
pub trait Progress {
    /// A sweep of `total` measurements starts; `label` names it ("sweep",
    /// "sweep ×4 ranks").
    fn start(&mut self, _label: &str, _total: usize) {}
    /// `p` is measured next, in round `round` (from 0) of `rounds`.
    fn next(&mut self, _p: &Point, _round: usize, _rounds: usize) {}
    /// One measurement is done.
    fn done(&mut self) {}
    /// The sweep has measured everything.
    fn finish(&mut self) {}
}

impl Progress for () {}

/// Measures every point of `grid` and returns the report: each point with
/// the plan `wisdom` (a wisdom file, when given and present) holds for it,
/// else the built-in rule's.
pub fn run_grid(
    grid: &Grid,
    mode: StepMode,
    wisdom: Option<&std::path::Path>,
    progress: &mut dyn Progress,
) -> Result<Report> {
    let mut env = Env::capture();
    // The cores' peak, before anything else runs (measured once per
    // machine, then cached): what each point's core_peak_fraction divides by.
    let peak = match crate::machine::peak::peak(&Default::default(), false) {
        Ok(p) => p,
        Err(e) => {
            env.warnings.push(format!(
                "no peak-relative figures: the peak probe failed ({e})"
            ));
            None
        }
    };
    let watch = crate::machine::LoadWatch::start();
    let pools = pools(grid)?;
    progress.start("sweep", grid.points.len() * grid.timing.rounds.max(1));

    let mut rates = GemmRates::default();
    let rounds = grid.timing.rounds.max(1);
    let mut samples: Vec<Option<Samples>> = vec![None; grid.points.len()];
    let wisdom = crate::tune::wisdom::Tuned::open(wisdom);
    let rate = |dtype, threads| pools[&threads].install(|| machine_gemm_gflops(dtype, threads));
    for round in 0..rounds {
        for (p, acc) in grid.points.iter().zip(samples.iter_mut()) {
            progress.next(p, round, rounds);
            let pool = &pools[&p.threads];
            rates.sample_if_due(round, p, || rate(p.dtype, p.threads));
            let tuned = wisdom.as_ref().and_then(|w| w.lookup(p.run(mode)));
            let s = pool.install(|| measure_point(*p, grid.timing, mode, tuned))?;
            match acc {
                Some(a) => a.merge(s),
                None => *acc = Some(s),
            }
            progress.done();
        }
    }
    rates.complete(rate);
    let points = samples
        .into_iter()
        .map(|s| {
            let s = s.expect("every point measured");
            let point = s.point;
            s.into_report(rates.of(&point), peak.as_ref())
        })
        .collect();
    progress.finish();
    // What the rest of the machine did meanwhile: its warnings join the
    // environment's ("slowed by").
    let load = watch.and_then(|w| w.finish());
    env.warnings.extend(load.iter().flat_map(|l| l.warnings()));
    Ok(Report {
        schema_version: SCHEMA_VERSION,
        env,
        timing: grid.timing,
        points,
        load,
        peak,
    })
}

/// Samples of the machine's GEMM rate (GFLOP/s) per dtype and thread
/// count: one per round, taken right before the round's first point of
/// that kind, so that they are spread through the sweep as its points
/// are; at least [`GemmRates::MIN_SAMPLES`], the rest taken at the end.
#[derive(Debug, Default)]
pub(super) struct GemmRates {
    samples: BTreeMap<(Dtype, usize), Vec<f64>>,
}

impl GemmRates {
    /// Fewest samples per kind: enough to see a spread.
    pub(super) const MIN_SAMPLES: usize = 3;

    /// Takes a sample for `p`'s kind with `measure` unless this round has
    /// one.
    pub(super) fn sample_if_due(&mut self, round: usize, p: &Point, measure: impl FnOnce() -> f64) {
        let v = self.samples.entry((p.dtype, p.threads)).or_default();
        if v.len() <= round {
            v.push(measure());
        }
    }

    /// Tops every kind up to [`GemmRates::MIN_SAMPLES`].
    pub(super) fn complete(&mut self, mut measure: impl FnMut(Dtype, usize) -> f64) {
        for (&(dtype, threads), v) in self.samples.iter_mut() {
            while v.len() < Self::MIN_SAMPLES {
                v.push(measure(dtype, threads));
            }
        }
    }

    /// The samples of `p`'s kind.
    pub(super) fn of(&self, p: &Point) -> &[f64] {
        &self.samples[&(p.dtype, p.threads)]
    }
}

/// One rayon pool per thread count in the grid.
pub fn pools(grid: &Grid) -> Result<BTreeMap<usize, rayon::ThreadPool>> {
    let mut pools = BTreeMap::new();
    for p in &grid.points {
        if let std::collections::btree_map::Entry::Vacant(e) = pools.entry(p.threads) {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(p.threads)
                .thread_name(|i| format!("twolayer-sweep-{i}"))
                .build()
                .map_err(|e| Error::invalid(format!("cannot start {} threads: {e}", p.threads)))?;
            e.insert(pool);
        }
    }
    Ok(pools)
}

/// One report from the reports of the same sweep run in several processes:
/// per point, the process whose median step/GEMM ratio is the median of
/// them all. On a shared machine a process sometimes runs a point in a slow
/// mode for its whole life (thread wake-ups late, a neighbour on the
/// sibling core); keeping the median process makes one such process
/// harmless. The environment block is the first report's.
pub fn median_processes(reports: &[Report]) -> Result<Report> {
    let first = reports
        .first()
        .ok_or_else(|| Error::invalid("no reports to merge"))?;
    let mut merged = first.clone();
    for (j, point) in merged.points.iter_mut().enumerate() {
        let mut candidates = Vec::with_capacity(reports.len());
        for r in reports {
            match r.points.get(j) {
                Some(p) if p.key() == point.key() => candidates.push(p),
                _ => {
                    return Err(Error::invalid(
                        "the processes' reports hold different points",
                    ))
                }
            }
        }
        candidates.sort_by(|a, b| {
            a.median_step_per_gemm()
                .total_cmp(&b.median_step_per_gemm())
        });
        *point = candidates[(candidates.len() - 1) / 2].clone();
    }
    Ok(merged)
}
