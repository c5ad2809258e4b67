//! Runs a grid: one rayon pool per thread count, the machine's GEMM rate
//! once per dtype and thread count, every point measured inside its pool,
//! with a progress bar on stderr when it is a terminal.

use super::env::Env;
use super::grid::Grid;
use super::measure::{machine_gemm_gflops, measure_point};
use super::report::{Report, SCHEMA_VERSION};
use crate::error::{Error, Result};
use crate::scalar::Dtype;
use crate::step::StepMode;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;

/// Measures every point of `grid` and returns the report.
pub fn run_grid(grid: &Grid, mode: StepMode) -> Result<Report> {
    let env = Env::capture();
    let mut pools: BTreeMap<usize, rayon::ThreadPool> = BTreeMap::new();
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

    let bar =
        ProgressBar::with_draw_target(Some(grid.points.len() as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} (ETA {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix("sweep");

    let mut rates: BTreeMap<(Dtype, usize), f64> = BTreeMap::new();
    let mut points = Vec::with_capacity(grid.points.len());
    for p in &grid.points {
        bar.set_message(format!("{} {} ×{}", p.shape, p.dtype, p.threads));
        let pool = &pools[&p.threads];
        let rate = *rates
            .entry((p.dtype, p.threads))
            .or_insert_with(|| pool.install(|| machine_gemm_gflops(p.dtype, p.threads)));
        let r = pool.install(|| measure_point(*p, grid.timing, mode, rate))?;
        points.push(r);
        bar.inc(1);
    }
    bar.finish_and_clear();
    crate::blas::set_threads(env.openblas_threads);
    Ok(Report {
        schema_version: SCHEMA_VERSION,
        env,
        timing: grid.timing,
        points,
    })
}
