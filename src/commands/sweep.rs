//! `twolayer sweep`: build the grid from flags, a file or a preset, measure
//! it, and write the reports.

use crate::bench::grid::{GridSpec, Timing};
use crate::bench::run::run_grid;
use crate::cli::SweepArgs;
use crate::error::{Error, Result};
use crate::output;
use crate::threads;

/// Runs `twolayer sweep` with these flags.
pub fn run(args: &SweepArgs) -> Result<()> {
    let mut spec = if let Some(path) = &args.grid {
        GridSpec::from_file(path)?
    } else if let Some(preset) = args.preset {
        preset.spec(threads::available_cores())
    } else {
        let list = |name: &str, v: &Option<String>, default: usize| -> Result<Vec<usize>> {
            v.as_deref()
                .map_or(Ok(vec![default]), |s| GridSpec::parse_list(name, s))
        };
        GridSpec {
            n: Some(list("n", &args.n, 64)?),
            d_in: Some(list("d-in", &args.d_in, 1000)?),
            hidden: Some(list("hidden", &args.hidden, 100)?),
            d_out: Some(list("d-out", &args.d_out, 10)?),
            dtype: args.dtype.as_ref().map(|s| {
                s.split(',')
                    .map(|d| d.trim().to_string())
                    .filter(|d| !d.is_empty())
                    .collect()
            }),
            ..GridSpec::default()
        }
    };
    if let Some(t) = &args.threads {
        spec.threads = Some(GridSpec::parse_list("threads", t)?);
    }
    let mut timing: Timing = spec.timing.unwrap_or_default();
    if let Some(w) = args.warmup {
        timing.warmup = w;
    }
    if let Some(m) = args.min_steps {
        timing.min_steps = m;
    }
    if let Some(b) = args.budget {
        if !(b.is_finite() && b >= 0.0) {
            return Err(Error::invalid(format!(
                "--budget must be a finite number of seconds ≥ 0, got {b}"
            )));
        }
        timing.budget_s = b;
    }
    spec.timing = Some(timing);
    let grid = spec.build()?;
    if let Some(dir) = &args.out {
        if dir.exists() && !dir.is_dir() {
            return Err(Error::write(dir, "it exists and is not a directory"));
        }
        if dir.is_dir() {
            output::check_writable(&dir.join("report.json"))?;
        }
    }
    let mode = super::train::step_mode(args.step_mode);
    let report = run_grid(&grid, mode)?;
    print!("{}", report.to_markdown());
    if let Some(dir) = &args.out {
        report.write_all(dir)?;
        eprintln!(
            "twolayer: wrote report.json, report.csv, report.md, gflops.svg and phases.svg to {}",
            dir.display()
        );
    }
    Ok(())
}
