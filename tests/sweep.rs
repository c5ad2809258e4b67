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
        let flops =
            4.0 * (p.n * p.d_in * p.hidden) as f64 + 6.0 * (p.n * p.hidden * p.d_out) as f64;
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
        let row = format!("| {} | {} | {} |", p.shape_label(), p.dtype, p.threads);
        assert_eq!(md.matches(&row).count(), 1, "{row} in {md}");
    }

    // SVGs: well-formed XML naming every point's shape.
    for svg in ["gflops.svg", "phases.svg"] {
        let text = std::fs::read_to_string(dir.path().join(svg)).unwrap();
        let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{svg}: {e}"));
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let texts: String = doc
            .descendants()
            .filter_map(|n| n.text())
            .collect::<Vec<_>>()
            .join("\n");
        for p in &report.points {
            let label = format!("{} {} ×{}", p.shape_label(), p.dtype, p.threads);
            assert!(texts.contains(&label), "{svg} lacks {label}");
        }
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
    let child = common::bin()
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
    let start = std::time::Instant::now();
    let o = child.wait_with_output().unwrap();
    let e = common::stderr(&o);
    assert!(start.elapsed() < std::time::Duration::from_secs(10), "{e}");
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
