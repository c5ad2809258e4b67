//! `twolayer sweep`: build the grid from flags, a file or a preset, measure
//! it, and write the reports.

use crate::cli::SweepArgs;
use std::io::Write as _;
use std::path::Path;
use twolayer::bench::grid::Timing;
use twolayer::bench::report::Report;
use twolayer::bench::run::run_grid;
use twolayer::error::{Error, Result};
use twolayer::output;
use twolayer::threads;

/// Runs `twolayer sweep` with these flags.
pub fn run(args: &SweepArgs) -> Result<()> {
    let mut spec = args.points.spec()?;
    let mut timing: Timing = spec.timing.unwrap_or_default();
    if let Some(w) = args.warmup {
        timing.warmup = w;
    }
    if let Some(m) = args.min_steps {
        timing.min_steps = m;
    }
    if let Some(r) = args.rounds {
        timing.rounds = r;
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
    if let Some(f) = args.form {
        spec.form = Some(f);
    }
    // Under mpirun each rank holds part of the batch: the primal step, as
    // `twolayer train` runs there.
    #[cfg(feature = "mpi")]
    if twolayer::distributed::launched_by_mpi() {
        match spec.form {
            Some(twolayer::step::FormChoice::Dual) => {
                return Err(Error::invalid(
                    "the dual form needs the whole batch in one process; a sweep under mpirun times the primal step",
                ))
            }
            _ => spec.form = Some(twolayer::step::FormChoice::Primal),
        }
    }
    let mode = args.step_mode;
    let grid = spec.build(mode)?;
    #[cfg(feature = "mpi")]
    if twolayer::distributed::launched_by_mpi() {
        return run_mpi(args, &grid);
    }
    check_out_dir(args)?;
    if let Some(w) = twolayer::kernel_set::warning() {
        say!("twolayer: {w}");
    }
    let mut report = if args.processes > 1 {
        run_in_processes(args.processes)?
    } else {
        let wisdom = crate::cli::wisdom_path(&args.wisdom, args.no_wisdom);
        run_grid(
            &grid,
            mode,
            wisdom.as_deref(),
            &mut crate::progress::SweepBar::new(true),
        )?
    };
    record_kernel_cost(&mut report);
    publish(&report, args)
}

/// When `OPENBLAS_CORETYPE` forces kernels below the CPU, measures
/// OpenBLAS's own choice in a child process and adds its cost to the
/// report's environment warnings, against the f64 GEMM rate this sweep
/// measured at the same thread count (or, with no f64 point, a fresh one).
fn record_kernel_cost(report: &mut Report) {
    if twolayer::kernel_set::forced_below_cpu().is_none() {
        return;
    }
    let t = report
        .points
        .iter()
        .map(|p| p.run.threads)
        .max()
        .unwrap_or_else(threads::available_cores);
    let forced = report
        .points
        .iter()
        .find(|p| p.run.dtype == twolayer::scalar::Dtype::F64 && p.run.threads == t)
        .map(|p| p.machine_gemm_gflops)
        .unwrap_or_else(|| {
            twolayer::blas::with_threads(t, || {
                twolayer::bench::measure::machine_gemm_gflops(twolayer::scalar::Dtype::F64, t)
            })
        });
    let line =
        super::own_kernels::OwnChoice::measure(t, twolayer::bench::measure::MACHINE_GEMM_SIZE)
            .describe(forced);
    report.env.warnings.push(format!("measured: {line}"));
}

/// Makes sure `--out` can take the reports before anything is measured:
/// creates the folder if it is missing and tries a file in it.
fn check_out_dir(args: &SweepArgs) -> Result<()> {
    let Some(dir) = &args.out else {
        return Ok(());
    };
    if dir.exists() && !dir.is_dir() {
        return Err(Error::write(dir, "it exists and is not a directory"));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
    output::check_writable(&dir.join("report.json"))?;
    // The files the sweep reads must not be among those it writes
    // (`--grid out/report.md --out out` overwrote its own grid).
    let mut inputs: Vec<(&str, &std::path::Path)> = Vec::new();
    if let Some(g) = &args.points.grid {
        inputs.push(("--grid", g));
    }
    let wisdom = crate::cli::wisdom_path(&args.wisdom, args.no_wisdom);
    if let Some(w) = &wisdom {
        inputs.push(("the wisdom file", w));
    }
    let written: Vec<std::path::PathBuf> = REPORT_FILES.iter().map(|f| dir.join(f)).collect();
    let outputs: Vec<(&str, &std::path::Path)> =
        written.iter().map(|p| ("--out", p.as_path())).collect();
    output::check_distinct(&inputs, &outputs)
}

/// Prints the report's Markdown and writes its files to `--out`; says on
/// stderr what makes the measurement not clean.
fn publish(report: &Report, args: &SweepArgs) -> Result<()> {
    args.output.write_json(report)?;
    args.output.text(&report.to_markdown());
    for w in report.load.iter().flat_map(|l| l.warnings()) {
        say!("twolayer: warning: {w}");
    }
    for p in &report.points {
        for w in &p.warnings {
            say!(
                "twolayer: warning: {} {} ×{}: {w}",
                p.shape_label(),
                p.run.dtype,
                p.run.threads
            );
        }
    }
    if let Some(dir) = &args.out {
        write_report_files(report, dir)?;
        if !args.output.quiet {
            say!(
                "twolayer: wrote report.json, report.csv, report.md, gflops.svg, phases.svg and scaling.svg to {}",
                dir.display()
            );
        }
    }
    Ok(())
}

/// `mpirun -np K twolayer sweep …`: every point measured across the K
/// ranks (see [`twolayer::bench::data_parallel`]); rank 0 prints and writes
/// the report. An error on any rank ends the whole job.
#[cfg(feature = "mpi")]
fn run_mpi(args: &SweepArgs, grid: &twolayer::bench::grid::Grid) -> Result<()> {
    use twolayer::bench::data_parallel::{run_grid_mpi, AllreducePlan};
    use twolayer::distributed::Cluster;
    if args.processes > 1 {
        return Err(Error::invalid(
            "--processes cannot be used under mpirun (the ranks are the processes)",
        ));
    }
    if args.step_mode != twolayer::step::StepMode::Fused {
        return Err(Error::invalid(
            "--step-mode does not apply under mpirun: ranks always compute explicit gradients and sum them",
        ));
    }
    let cluster = Cluster::init()?;
    // Rank 0 alone writes the reports, so it alone checks where.
    if cluster.rank() == 0 {
        if let Err(e) = check_out_dir(args) {
            cluster.abort(&e.to_string());
        }
    }
    let (overlap, pieces) = args.mpi.overlap_and_pieces();
    let report = match run_grid_mpi(
        grid,
        &cluster,
        AllreducePlan { overlap, pieces },
        &mut crate::progress::SweepBar::new(cluster.rank() == 0),
    ) {
        Ok(r) => r,
        Err(e) => cluster.abort(&e.to_string()),
    };
    if cluster.rank() == 0 {
        if let Err(e) = publish(&report, args) {
            cluster.abort(&e.to_string());
        }
    }
    Ok(())
}

/// Runs this same sweep (the grid already validated) in `k` child
/// processes, one after another, and merges their reports: for each point,
/// the child whose median step/GEMM ratio is the median of the `k`. On a
/// shared machine a process sometimes runs a point in a slow mode for its
/// whole life (thread wake-ups late, a neighbour on the sibling core);
/// keeping the median process makes one such process harmless.
fn run_in_processes(k: usize) -> Result<Report> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::invalid(format!("cannot find own binary: {e}")))?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let signals = crate::signals::Signals::get()?;
    // `twolayer-sweep-PID-XXXXXX`: a parent killed with -9 cannot remove
    // its folder, so each sweep removes those of parents that are gone.
    remove_orphaned_folders();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{ORPHAN_PREFIX}{}-", std::process::id()))
        .tempdir()
        .map_err(|e| Error::write(Path::new("<temp>"), e))?;
    let mut reports = Vec::with_capacity(k);
    for i in 0..k {
        let out = dir.path().join(format!("p{i}"));
        let child_args = child_args(&args, &out);
        let mut command = std::process::Command::new(&exe);
        command
            .args(&child_args)
            .stdout(std::process::Stdio::null());
        // The child ends with its parent, however the parent ends (before,
        // `kill -9` of the parent left the child measuring on).
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            let parent = libc::getpid();
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent died before the line above: end now.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| Error::invalid(format!("cannot start sweep process {}: {e}", i + 1)))?;
        // Wait, but not past a Ctrl-C, SIGTERM or SIGHUP: the child is
        // stopped with the same signal and waited for, and the temporary
        // folder removed (it was orphaned, measuring on, 16 MB left behind).
        let status = loop {
            if let Some(st) = child
                .try_wait()
                .map_err(|e| Error::invalid(format!("sweep process {}: {e}", i + 1)))?
            {
                break st;
            }
            if let Some(signal) = signals.caught() {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(child.id() as i32, signal) };
                let _ = child.wait();
                drop(dir);
                return Err(Error::Interrupted {
                    signal,
                    msg: format!(
                        "stopped by {} in sweep process {} of {k}; nothing was written",
                        crate::signals::signal_name(signal),
                        i + 1
                    ),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        if !status.success() {
            return Err(Error::invalid(format!(
                "sweep process {} of {k} failed ({status})",
                i + 1
            )));
        }
        reports.push(Report::read(&out.join("report.json"))?);
    }
    let mut merged = twolayer::bench::run::median_processes(&reports)?;
    merged.env.command_line = std::env::args().collect();
    Ok(merged)
}

/// The start of the temporary folder of a `sweep --processes` parent.
const ORPHAN_PREFIX: &str = "twolayer-sweep-";

/// Removes the temporary folders of `sweep --processes` parents that no
/// longer run (killed with -9), this user's only.
fn remove_orphaned_folders() {
    use std::os::unix::fs::MetadataExt;
    let tmp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return;
    };
    // SAFETY: geteuid has no failure mode.
    let me = unsafe { libc::geteuid() };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(ORPHAN_PREFIX)
            .and_then(|r| r.split_once('-'))
            .and_then(|(p, _)| p.parse::<u32>().ok())
        else {
            continue;
        };
        let ours = std::fs::symlink_metadata(e.path()).is_ok_and(|m| m.is_dir() && m.uid() == me);
        if ours && !twolayer::output::process_runs(pid) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The parent's arguments for a child: `--processes` dropped and `--out`
/// pointed at the child's own folder.
fn child_args(args: &[String], out: &Path) -> Vec<String> {
    let mut v = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--processes" || a == "--out" {
            it.next();
        } else if a.starts_with("--processes=") || a.starts_with("--out=") {
        } else {
            v.push(a.clone());
        }
    }
    v.push("--out".into());
    v.push(out.display().to_string());
    v
}

/// The files [`write_report_files`] writes into `--out`.
const REPORT_FILES: [&str; 6] = [
    "report.json",
    "report.csv",
    "report.md",
    "gflops.svg",
    "phases.svg",
    "scaling.svg",
];

/// Writes report.json, report.csv, report.md, gflops.svg, phases.svg
/// and scaling.svg into `dir` (created if missing), each atomically.
/// A failure names the files written before it (a full disk once
/// left three of five with no word of which).
fn write_report_files(report: &Report, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
    let csv = report.to_csv();
    let md = report.to_markdown();
    let steps: [(&str, &dyn Fn() -> Result<()>); 6] = [
        ("report.json", &|| {
            report.write_json(&dir.join("report.json"))
        }),
        ("report.csv", &|| {
            output::write_atomic(&dir.join("report.csv"), |w| w.write_all(csv.as_bytes()))
        }),
        ("report.md", &|| {
            output::write_atomic(&dir.join("report.md"), |w| w.write_all(md.as_bytes()))
        }),
        ("gflops.svg", &|| {
            crate::charts::write_gflops_chart(report, dir)
        }),
        ("phases.svg", &|| {
            crate::charts::write_phases_chart(report, dir)
        }),
        ("scaling.svg", &|| {
            crate::charts::write_scaling_chart(report, dir)
        }),
    ];
    let mut done: Vec<&str> = Vec::new();
    for (name, write) in steps {
        if let Err(e) = write() {
            return Err(Error::invalid(format!(
                "{e}; written before it: {}",
                if done.is_empty() {
                    "nothing".to_string()
                } else {
                    done.join(", ")
                }
            )));
        }
        done.push(name);
    }
    Ok(())
}
