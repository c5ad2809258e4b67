//! `twolayer sweep` end to end on tiny shapes: every output holds every
//! point, the JSON round-trips through its schema, the SVGs are well-formed
//! and name every shape, and bad grids fail before anything runs. No test
//! here asserts a time.

mod common;

use common::{run, stderr};
use std::path::Path;
use twolayer::bench::report::{Report, SCHEMA_VERSION};

fn tiny_sweep(dir: &Path) -> Report {
    let r = common::tiny_sweep(dir, "9,10", "1,2");
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("| (8, 12, 9, 3) | f32 | 1 |"), "{md}");
    r
}

#[test]
fn reports_hold_every_point_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let report = tiny_sweep(dir.path());
    assert_eq!(report.schema_version, SCHEMA_VERSION);
    assert_eq!(report.points.len(), 2 * 2 * 2 * 2);
    let e = &report.env;
    assert!(e.cores >= 1 && !e.cpu_model.is_empty() && !e.openblas_core.is_empty());
    assert!(e.openblas_config.contains("OpenBLAS") && e.rustc.starts_with("rustc"));
    assert!(e.command_line.iter().any(|a| a == "sweep"));
    assert!(e
        .openblas_env
        .iter()
        .any(|v| v.starts_with("OPENBLAS_THREAD_TIMEOUT=")));
    for p in &report.points {
        assert!(p.steps_timed >= 3);
        assert_eq!(p.ms_per_step.samples.len(), p.steps_timed);
        assert_eq!(p.gemm_ms_samples.len(), p.steps_timed);
        assert!(
            p.ms_per_step.p10 <= p.ms_per_step.median && p.ms_per_step.median <= p.ms_per_step.p90
        );
        assert!((p.efficiency - p.gemm_ms / p.ms_per_step.median).abs() < 1e-12);
        assert!(p.gflops > 0.0 && p.machine_gemm_gflops > 0.0 && p.peak_fraction > 0.0);
        let flops = 4.0 * (p.run.n * p.run.d_in * p.run.hidden) as f64
            + 6.0 * (p.run.n * p.run.hidden * p.run.d_out) as f64;
        assert!((p.gflops - flops / p.ms_per_step.median / 1e6).abs() < 1e-9 * p.gflops);
        assert!(p.phases.forward_gemms > 0.0 && p.phases.backward_gemms > 0.0);
        assert!(p.phases.named().iter().all(|(_, ms)| *ms >= 0.0));
        assert!(p.workspace_bytes > 0 && p.peak_rss_bytes > 0);
    }
    // Round trip through the schema.
    let text = serde_json::to_string(&report).unwrap();
    let back: Report = serde_json::from_str(&text).unwrap();
    assert_eq!(back, report);

    // CSV: a header and a row per point, each with every column.
    let csv = std::fs::read_to_string(dir.path().join("report.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + report.points.len());
    let cols = lines[0].split(',').count();
    assert!(lines.iter().all(|l| l.split(',').count() == cols));

    // Markdown: a row per point.
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    for p in &report.points {
        let row = format!(
            "| {} | {} | {} |",
            p.shape_label(),
            p.run.dtype,
            p.run.threads
        );
        assert_eq!(md.matches(&row).count(), 1, "{row} in {md}");
    }

    // SVGs: well-formed XML naming every point (the chart tests in
    // tests/charts.rs render them).
    let texts = |svg: &str| -> String {
        let text = std::fs::read_to_string(dir.path().join(svg)).unwrap();
        let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{svg}: {e}"));
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        doc.descendants()
            .filter_map(|n| n.text())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (gflops, phases, scaling) = (
        texts("gflops.svg"),
        texts("phases.svg"),
        texts("scaling.svg"),
    );
    for p in &report.points {
        let threads = format!("{} thread", p.run.threads);
        assert!(gflops.contains(&p.shape_label()) && gflops.contains(&threads));
        let label = format!("{} {} · {threads}", p.shape_label(), p.run.dtype);
        assert!(phases.contains(&label), "phases.svg lacks {label}");
        let series = format!(
            "N: D_in {}, H {}, D_out {} · {}",
            p.run.d_in, p.run.hidden, p.run.d_out, p.run.dtype
        );
        assert!(scaling.contains(&series), "scaling.svg lacks {series}");
    }
}

#[test]
fn statistics_beside_the_median_match_the_samples() {
    let dir = tempfile::tempdir().unwrap();
    let report = common::tiny_sweep(dir.path(), "9", "1");
    for p in &report.points {
        let st = &p.ms_per_step;
        let n = st.samples.len() as f64;
        let mean = st.samples.iter().sum::<f64>() / n;
        let var = st.samples.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        assert!((st.mean - mean).abs() <= 1e-12 * mean);
        assert!((st.sd - var.sqrt()).abs() <= 1e-9 * mean);
        let min = st.samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = st.samples.iter().copied().fold(0.0, f64::max);
        assert_eq!((st.min, st.max), (min, max));
        assert!(st.min <= st.p10 && st.p10 <= st.median && st.median <= st.p90 && st.p90 <= st.max);
        assert!(st.outliers_low + st.outliers_high <= st.samples.len());
        // The GEMM rate: at least 3 samples, reported as their median.
        let rate = p.machine_gemm.as_ref().expect("the rate's samples");
        assert!(rate.samples.len() >= 3, "{:?}", rate.samples);
        assert_eq!(p.machine_gemm_gflops, rate.median);
        assert!(rate.min > 0.0 && rate.min <= rate.median && rate.median <= rate.max);
    }
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(
        md.contains("mean ± sd") && md.contains("over 3 samples"),
        "{md}"
    );
}

/// A short sweep of `points` (N values) at one shape, f64, on `threads`.
fn measured(dir: &Path, n: &str, d_in: &str, threads: &str, budget: &str) -> Report {
    let out = run(&[
        "sweep",
        "--n",
        n,
        "--d-in",
        d_in,
        "--hidden",
        "100",
        "--d-out",
        "10",
        "--dtype",
        "f64",
        "--threads",
        threads,
        "--budget",
        budget,
        "--min-steps",
        "30",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    common::assert_matches_schema(&dir.join("report.json"));
    Report::read(&dir.join("report.json")).unwrap()
}

#[test]
fn the_report_says_when_its_phases_miss_the_step() {
    // Whether the phases add up to the step is a property of the
    // measurement, which load on a shared machine can break (it failed
    // here with the phases at 0.917 ms against a 0.471 ms step): the
    // report checks it and says so, and the test holds the report to its
    // own numbers, whatever the load. (On a quiet machine the phases sum
    // to 0.94–1.03 of the step: docs/throughput-reports.md.)
    let dir = tempfile::tempdir().unwrap();
    let report = measured(dir.path(), "512", "1000", "1,2", "0.6");
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    for p in &report.points {
        let ratio = p.phases.sum() / p.ms_per_step.median;
        let flagged = p
            .warnings
            .iter()
            .any(|w| w.contains("the phases add up to"));
        assert_eq!(
            flagged,
            (ratio - 1.0).abs() > twolayer::bench::quality::PHASES_OFF,
            "{} threads: ratio {ratio:.3}, warnings {:?}",
            p.run.threads,
            p.warnings
        );
        assert_eq!(p.warnings, twolayer::bench::quality::point_warnings(p));
        for w in &p.warnings {
            assert!(md.contains(w.as_str()), "{w} not in report.md");
        }
        if p.run.threads == 1 {
            // One shard: nothing to wait for at the join, whatever the load.
            assert_eq!(p.phases.join, 0.0, "{:?}", p.phases);
        }
    }
    let clean =
        report.points.iter().all(|p| p.warnings.is_empty()) && report.env.warnings.is_empty();
    assert_eq!(md.contains("Measurement: clean"), clean, "{md}");
    assert!(report.load.is_some(), "the machine's load is recorded");
}

#[test]
fn noisy_figures_are_flagged_and_clean_ones_are_not() {
    use twolayer::bench::quality::point_warnings;
    let dir = tempfile::tempdir().unwrap();
    let r = common::tiny_sweep(dir.path(), "9", "1");
    // A clean point, made so: samples within 1%, phases that add up, a
    // plausible efficiency and rate.
    let mut p = r.points[0].clone();
    let samples: Vec<f64> = (0..30).map(|i| 1.0 + 0.01 * (i % 3) as f64).collect();
    p.ms_per_step = twolayer::bench::report::Stats::from_samples(samples);
    let m = p.ms_per_step.median;
    p.phases.forward_gemms = 0.5 * m;
    p.phases.backward_gemms = 0.45 * m;
    p.phases.relu = 0.05 * m;
    (
        p.phases.loss_grad,
        p.phases.mask,
        p.phases.join,
        p.phases.update,
    ) = (0.0, 0.0, 0.0, 0.0);
    p.efficiency = 0.9;
    p.peak_fraction = 0.7;
    assert!(point_warnings(&p).is_empty(), "{:?}", point_warnings(&p));
    // A point as these machines give one at rest: a tight median and a
    // tenth of the steps 30% slower. Tukey's fences call 10% of them
    // outliers; they are how a quiet VM runs, and no warning is due.
    let mut quiet = p.clone();
    let mut s: Vec<f64> = (0..270).map(|i| 1.0 + 0.001 * (i % 7) as f64).collect();
    s.extend([1.3; 30]);
    quiet.ms_per_step = twolayer::bench::report::Stats::from_samples(s);
    assert!(quiet.ms_per_step.outliers_high >= 30);
    assert!(
        point_warnings(&quiet).is_empty(),
        "{:?}",
        point_warnings(&quiet)
    );
    // The loaded sweep of the issue: 38 of 153 samples outliers, p90 at
    // 5.7x the median, 167% of the GEMM rate, efficiency 2.65.
    let mut noisy = p.clone();
    let mut s: Vec<f64> = vec![1.0; 115];
    s.extend((0..38).map(|i| 6.0 + i as f64 * 0.1));
    noisy.ms_per_step = twolayer::bench::report::Stats::from_samples(s);
    noisy.peak_fraction = 1.67;
    noisy.efficiency = 2.65;
    noisy.phases.update = 0.9; // the phases then sum to about twice the step
    let w = point_warnings(&noisy).join("\n");
    for part in [
        "38 of 153 samples are 1.5x or more off the median",
        "the p90 is",
        "167% of the square GEMM's rate",
        "GEMMs alone took 2.65x",
        "the phases add up to",
    ] {
        assert!(w.contains(part), "{part}: {w}");
    }
    // The dual form's rate is primal-equivalent: past 100% is no flag.
    let mut dual = p.clone();
    dual.run.form = twolayer::step::Form::Dual;
    dual.peak_fraction = 12.0;
    assert!(point_warnings(&dual).is_empty());
}

#[test]
fn a_points_memory_is_its_own_not_the_process_peak() {
    // A large point between two small ones: the small ones after it must
    // not inherit its memory, the large one must show its buffers.
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "sweep",
        "--grid",
        &write_grid(dir.path()),
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = Report::read(&dir.path().join("report.json")).unwrap();
    let [small_before, large, small_after] = &report.points[..] else {
        panic!("{} points", report.points.len())
    };
    assert_eq!(
        (small_before.run.n, large.run.n, small_after.run.n),
        (64, 16384, 64)
    );
    let ws = large.workspace_bytes;
    assert!(
        large.rss_growth_bytes >= ws * 8 / 10 && large.rss_growth_bytes <= ws * 2,
        "growth {} against a {ws}-byte workspace",
        large.rss_growth_bytes
    );
    for small in [small_before, small_after] {
        assert!(
            small.rss_growth_bytes < ws / 4,
            "a small point grew by {} bytes",
            small.rss_growth_bytes
        );
    }
}

/// A grid file running (64, 1000, 100, 10), (16384, …), (64, …) in that
/// order, f64, one thread, a few steps each.
fn write_grid(dir: &Path) -> String {
    let path = dir.join("grid.toml");
    std::fs::write(
        &path,
        "shapes = [[64, 1000, 100, 10], [16384, 1000, 100, 10], [64, 1000, 100, 10]]\n\
         dtype = [\"f64\"]\nthreads = [1]\n\
         [timing]\nwarmup = 1\nmin_steps = 3\nbudget_s = 0.0\n",
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn readers_accept_fields_they_do_not_know_and_reports_without_the_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let report = common::tiny_sweep(dir.path(), "9", "1");
    let path = dir.path().join("report.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    // A newer writer: a field nobody knows yet at every level.
    let newer = {
        let mut v = v.clone();
        v["future"] = 1.into();
        v["env"]["future"] = "x".into();
        v["timing"]["future"] = 2.into();
        for p in v["points"].as_array_mut().unwrap() {
            p["future"] = 3.into();
            p["ms_per_step"]["p99"] = 4.0.into();
            p["phases"]["future"] = 5.0.into();
        }
        v
    };
    // An older writer: version 1 before the fields added to it.
    for p in v["points"].as_array_mut().unwrap() {
        let o = p.as_object_mut().unwrap();
        for k in ["machine_gemm", "rss_growth_bytes"] {
            o.remove(k);
        }
        let ms = p["ms_per_step"].as_object_mut().unwrap();
        for k in ["mean", "sd", "min", "max", "outliers_low", "outliers_high"] {
            ms.remove(k);
        }
        let ph = p["phases"].as_object_mut().unwrap();
        ph.remove("join");
        ph.remove("instrumented_step_ms");
    }
    v["env"].as_object_mut().unwrap().remove("warnings");
    v["timing"].as_object_mut().unwrap().remove("rounds");
    for (name, value) in [("newer.json", &newer), ("older.json", &v)] {
        let p = dir.path().join(name);
        std::fs::write(&p, serde_json::to_string(value).unwrap()).unwrap();
        common::assert_matches_schema(&p);
        let read = Report::read(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(read.points.len(), report.points.len());
        // The figures an older report lacks are computed from its samples.
        assert_eq!(read.points[0].ms_per_step, report.points[0].ms_per_step);
        let o = run(&[
            "compare",
            path.to_str().unwrap(),
            p.to_str().unwrap(),
            "--max-slowdown",
            "0.5",
        ]);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
    }
}

#[test]
fn reports_of_another_schema_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.json");
    std::fs::write(&p, r#"{"schema_version": 99, "env": {}, "points": []}"#).unwrap();
    let e = Report::read(&p).unwrap_err().to_string();
    assert!(e.contains("schema version 99"), "{e}");
    std::fs::write(&p, r#"{"points": []}"#).unwrap();
    assert!(Report::read(&p)
        .unwrap_err()
        .to_string()
        .contains("no schema_version"));
    std::fs::write(&p, r#"{"schema_version": 1, "env": {}}"#).unwrap();
    assert!(Report::read(&p)
        .unwrap_err()
        .to_string()
        .contains("does not match"));
}

#[test]
fn bad_grids_fail_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let grid = dir.path().join("g.toml");
    std::fs::write(&grid, "n = [64]\nd_in = [10]\nhidden = []\nd_out = [1]\n").unwrap();
    let bogus = dir.path().join("bogus.toml");
    std::fs::write(&bogus, "n = [64]\nwidth = [3]\n").unwrap();
    let g = grid.to_str().unwrap();
    let b = bogus.to_str().unwrap();
    // --out under a plain file: refused before measuring anything.
    let under_file = dir.path().join("g.toml").join("reports");
    let u = under_file.to_str().unwrap();
    for (args, code, needle) in [
        (&["sweep", "--n", ","][..], 2, "--n"),
        (&["sweep", "--n", "64,0"], 2, "must be at least 1"),
        (
            &["sweep", "--n", "64,abc"],
            2,
            "'abc' is not a whole number",
        ),
        (&["sweep", "--hidden", "x"], 2, "'x' is not a whole number"),
        (
            &["sweep", "--n", "100000000", "--d-in", "100000"],
            1,
            "bytes",
        ),
        (&["sweep", "--dtype", "f16"], 2, "unsupported dtype 'f16'"),
        (&["sweep", "--threads", "0"], 2, "--threads"),
        (
            &["sweep", "--threads", "5000"],
            1,
            "--threads must be between",
        ),
        (
            &["sweep", "--preset", "quik"],
            2,
            "[possible values: quick, reference]; tip: a similar value exists: 'quick'",
        ),
        (&["sweep", "--grid", g], 1, "--hidden is empty"),
        (&["sweep", "--grid", b], 1, "width"),
        (&["sweep", "--grid", "/no/such.toml"], 1, "cannot read"),
        (&["sweep", "--preset", "quick", "--n", "5"], 2, "--n"),
        (&["sweep", "--budget", "nan"], 1, "--budget"),
        (
            &["sweep", "--out", u, "--min-steps", "100000"],
            1,
            "cannot write",
        ),
        // Before: silently capped at 100,000.
        (
            &["sweep", "--min-steps", "18446744073709551615"],
            1,
            "min_steps 18446744073709551615 is more than the 100000 samples a point keeps",
        ),
    ] {
        let out = run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: expected '{needle}' in {err}"
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn info_prints_the_environment_and_gemm_rates() {
    let out = run(&["info", "--threads", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for key in [
        "CPU",
        "OpenBLAS",
        "rayon threads",
        "rustc",
        "GEMM rate f64",
        "GEMM rate f32",
    ] {
        assert!(text.contains(key), "info lacks {key}: {text}");
    }
}

#[test]
fn processes_merge_to_each_points_median_process() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_sweep(dir.path());
    // Three processes; at point 0 one runs 1.5x slower around its GEMMs
    // and one 0.8x: the merged report keeps the middle one there.
    let scaled = |f: f64| {
        let mut r = base.clone();
        let p = &mut r.points[0];
        let s: Vec<f64> = p.gemm_ms_samples.iter().map(|g| g * f).collect();
        p.ms_per_step = twolayer::bench::report::Stats::from_samples(s);
        r
    };
    let reports = [scaled(1.5), scaled(1.0), scaled(0.8)];
    let merged = twolayer::bench::run::median_processes(&reports).unwrap();
    assert_eq!(merged.points[0], reports[1].points[0]);
    assert_eq!(merged.points[1..], base.points[1..]);
    let mut other = base.clone();
    other.points.pop();
    assert!(twolayer::bench::run::median_processes(&[base, other]).is_err());
}

#[test]
fn sigterm_to_a_multi_process_sweep_ends_its_child_and_removes_its_temporary_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let mut child = common::bin()
        .args([
            "sweep",
            "--processes",
            "2",
            "--n",
            "64",
            "--budget",
            "30",
            "--out",
            out.to_str().unwrap(),
        ])
        .env("TMPDIR", &scratch)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    std::thread::sleep(std::time::Duration::from_millis(2000));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    // A watchdog for a hang (a sweep deaf to SIGTERM), not a timing check.
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > std::time::Duration::from_secs(120) {
            let _ = child.kill();
            panic!("the sweep did not stop on SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    let e = common::stderr(&o);
    assert_eq!(o.status.code(), Some(143), "{e}");
    assert!(
        e.contains("stopped by SIGTERM in sweep process 1 of 2"),
        "{e}"
    );
    // No sweep process still runs with its output under our scratch folder,
    // and the folder is empty.
    let scratch_s = scratch.to_str().unwrap().to_string();
    let orphans: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|d| {
            let cmd = std::fs::read(d.ok()?.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(&scratch_s).then_some(cmd)
        })
        .collect();
    assert!(orphans.is_empty(), "still running: {orphans:?}");
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "temporary files left"
    );
    // The output folder (made up front, to refuse an unwritable one before
    // measuring) holds no report.
    let written: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(written.is_empty(), "{written:?}");
}

#[test]
fn a_report_file_that_cannot_be_written_names_the_ones_that_were() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // report.md cannot be written: a folder holds its name.
    std::fs::create_dir_all(out.join("report.md")).unwrap();
    let o = run(&[
        "sweep",
        "--n",
        "8",
        "--d-in",
        "12",
        "--hidden",
        "4",
        "--d-out",
        "3",
        "--budget",
        "0",
        "--min-steps",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("report.md"), "{e}");
    assert!(
        e.contains("written before it: report.json, report.csv"),
        "{e}"
    );
}

#[test]
fn a_sweep_does_not_write_over_its_own_grid() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let grid = out.join("report.md");
    std::fs::write(&grid, "n = [8]\nd_in = [12]\nhidden = [4]\nd_out = [3]\n").unwrap();
    let before = std::fs::read(&grid).unwrap();
    let o = run(&[
        "sweep",
        "--grid",
        grid.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("--grid") && e.contains("report.md"), "{e}");
    assert_eq!(std::fs::read(&grid).unwrap(), before);
}

#[test]
fn a_sweep_times_the_form_train_runs_unless_told() {
    // `twolayer train` at the seed shape runs the dual form; the sweep (and
    // so the tuner's reports and the regression gate) times that form by
    // default, and says so.
    let dir = tempfile::tempdir().unwrap();
    let sweep = |form: Option<&str>, out: &Path| {
        let mut args = vec![
            "sweep",
            "--n",
            "64,2000",
            "--d-in",
            "1000",
            "--hidden",
            "20",
            "--d-out",
            "3",
            "--threads",
            "1",
            "--budget",
            "0",
            "--min-steps",
            "3",
            "--out",
            out.to_str().unwrap(),
        ];
        if let Some(f) = form {
            args.extend(["--form", f]);
        }
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        common::assert_matches_schema(&out.join("report.json"));
        let r = Report::read(&out.join("report.json")).unwrap();
        r.points
            .iter()
            .map(|p| (p.run.n, p.run.form.name().to_string(), p.plan.is_some()))
            .collect::<Vec<_>>()
    };
    let auto = sweep(None, &dir.path().join("auto"));
    assert_eq!(
        auto,
        vec![
            (64, "dual".to_string(), false),
            (2000, "primal".to_string(), true)
        ]
    );
    let shape = twolayer::Shape::new(64, 1000, 20, 3).unwrap();
    assert_eq!(twolayer::step::Form::as_train_runs(shape).name(), "dual");
    let primal = sweep(Some("primal"), &dir.path().join("primal"));
    assert!(
        primal.iter().all(|(_, f, plan)| f == "primal" && *plan),
        "{primal:?}"
    );
    // The Markdown says which rows ran the dual form.
    let md = std::fs::read_to_string(dir.path().join("auto/report.md")).unwrap();
    assert!(md.contains("| f64 dual |"), "{md}");
}

#[test]
fn the_gate_grids_cover_the_default_train_path_and_bf16() {
    // benchmarks/gate.toml, read as the gate reads it: its seed-shape
    // points run the form `twolayer train` runs by default (dual), so a
    // slowdown of that path is timed by the gate.
    let text = std::fs::read_to_string(common::root().join("benchmarks/gate.toml")).unwrap();
    let spec: twolayer::bench::grid::GridSpec = toml::from_str(&text).unwrap();
    let grid = spec.build(twolayer::StepMode::Fused).unwrap();
    let dual: Vec<_> = grid
        .points
        .iter()
        .filter(|p| p.form == twolayer::step::Form::Dual)
        .collect();
    assert!(
        dual.iter().any(|p| p.shape == twolayer::Shape::REFERENCE),
        "{:?}",
        grid.points
    );
    assert!(grid
        .points
        .iter()
        .any(|p| p.form == twolayer::step::Form::Primal));
    // benchmarks/gate-bf16.toml: bf16 points alone, on the primal step,
    // with the gate's threshold.
    let text = std::fs::read_to_string(common::root().join("benchmarks/gate-bf16.toml")).unwrap();
    let spec: twolayer::bench::grid::GridSpec = toml::from_str(&text).unwrap();
    let grid = spec.build(twolayer::StepMode::Fused).unwrap();
    assert!(!grid.points.is_empty());
    assert!(
        grid.points
            .iter()
            .all(|p| p.dtype == twolayer::Dtype::Bf16 && p.form == twolayer::step::Form::Primal),
        "{:?}",
        grid.points
    );
    assert!(text.contains("[gate]\nmax_slowdown = 0.10"), "{text}");
}

#[test]
fn kill_9_of_a_multi_process_sweep_ends_its_child_and_the_next_sweep_removes_its_folder() {
    // Before, `kill -9` of the parent left its child measuring on and the
    // temporary folder behind for ever.
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let sweep = |budget: &str, out: &str| {
        common::bin()
            .args(["sweep", "--processes", "2", "--n", "64", "--budget", budget])
            .args(["--out", tmp.path().join(out).to_str().unwrap()])
            .env("TMPDIR", &scratch)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut parent = sweep("30", "out1");
    // Wait for its child (a process whose output is under the scratch
    // folder), then kill the parent outright.
    let scratch_s = scratch.to_str().unwrap().to_string();
    let children = || -> Vec<i32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|d| {
                let d = d.ok()?;
                let pid: i32 = d.file_name().to_str()?.parse().ok()?;
                let cmd = std::fs::read(d.path().join("cmdline")).ok()?;
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                (cmd.contains(&scratch_s) && cmd.contains("sweep")).then_some(pid)
            })
            .collect()
    };
    let start = std::time::Instant::now();
    while children().is_empty() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "no child started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    parent.kill().unwrap();
    parent.wait().unwrap();
    // A guard against a child that lives on, not a timing.
    let start = std::time::Instant::now();
    while !children().is_empty() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the child outlived its parent: {:?}",
            children()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        1,
        "the parent's folder"
    );
    // The next sweep removes the folder of the parent that is gone.
    let o = sweep("0.2", "out2").wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "left behind"
    );
}

#[test]
fn peak_relative_figures_come_from_the_cached_probe() {
    // A probe for this CPU (its model, flags and cores, as `info` would
    // cache one), with rates set by the test: every peak figure is then
    // checkable exactly.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut peak = twolayer::machine::peak::Probe {
        min_seconds: 0.001,
        trials: 1,
    }
    .measure();
    let set = |r: &mut Option<twolayer::machine::peak::Rate>, g: f64| {
        if let Some(r) = r {
            r.gflops = g;
        }
    };
    set(&mut peak.f64, 1000.0);
    set(&mut peak.f32, 2000.0);
    let file = d.join("peak.json");
    std::fs::write(&file, serde_json::to_string(&peak).unwrap()).unwrap();
    let with_probe = |args: &[&str]| {
        common::bin()
            .env("TWOLAYER_PEAK", &file)
            .args(args)
            .output()
            .unwrap()
    };
    let out = d.join("sweep");
    let args = common::tiny_sweep_args(&out, "9", "1,2");
    let o = with_probe(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    common::assert_matches_schema(&out.join("report.json"));
    let r = Report::read(&out.join("report.json")).unwrap();
    assert_eq!(r.peak.as_ref(), Some(&peak), "the report carries the probe");
    if peak.f64.is_some() {
        for p in &r.points {
            let per_core = match p.run.dtype {
                twolayer::Dtype::F64 => 1000.0,
                _ => 2000.0,
            } / peak.cores as f64;
            let want = per_core * p.run.threads.min(peak.cores) as f64;
            assert_eq!(p.core_peak_gflops, Some(want), "{p:?}");
            let f = p.core_peak_fraction.unwrap();
            assert!((f - p.gflops / want).abs() < 1e-12 * f, "{f} {}", p.gflops);
        }
        let md = std::fs::read_to_string(out.join("report.md")).unwrap();
        assert!(
            md.contains("The cores' peak") && md.contains("% of peak"),
            "{md}"
        );
        assert!(
            md.contains(" of 1000 |") || md.contains(" of 500 |"),
            "{md}"
        );
        // info shows the cached probe (no measuring) beside the GEMM rate.
        let o = with_probe(&["info"]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            text.contains("peak f64               1000.0 GFLOP/s"),
            "{text}"
        );
        // train states its rate as a share of the peak, and in --json.
        let json = d.join("train.json");
        let o = with_probe(&[
            "train",
            "--n",
            "64",
            "--d-in",
            "40",
            "--hidden",
            "30",
            "--d-out",
            "5",
            "--steps",
            "5",
            "--form",
            "primal",
            "-q",
            "--json",
            json.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("of the cores' f64 peak"),
            "{}",
            stderr(&o)
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert!(v["core_peak_fraction"].as_f64().unwrap() > 0.0, "{v}");
    }
    // Without a probe: no peak figures, and nothing is measured.
    let o = common::run(&[
        "train", "--n", "64", "--d-in", "40", "--hidden", "30", "--d-out", "5", "--steps", "5",
        "-q",
    ]);
    assert!(!stderr(&o).contains("of the cores'"), "{}", stderr(&o));
}
