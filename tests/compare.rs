//! `twolayer compare` end to end: its exit status (0 no regression, 1 a
//! regression, 2 reports that cannot be compared) on folders of runs whose
//! samples are set by the test, so nothing here depends on the machine's
//! speed. The template report comes from a real tiny sweep.

mod common;

use common::{run, stderr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use twolayer::bench::report::Report;

/// A real report of four tiny points, made once.
fn template() -> &'static Report {
    static T: OnceLock<Report> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        common::tiny_sweep(dir.path(), "9", "1")
    })
}

/// Process `k`'s report: every point's 30 step samples near `ms` (±2%,
/// deterministic), its GEMM samples at `gemm` of them.
fn process(k: usize, ms: f64, gemm: f64) -> Report {
    let mut r = template().clone();
    for (j, p) in r.points.iter_mut().enumerate() {
        let s: Vec<f64> = (0..30)
            .map(|i| ms * (1.0 + 0.02 * (((i * 7 + k * 3 + j) % 11) as f64 / 11.0)))
            .collect();
        p.gemm_ms_samples = s.iter().map(|v| v * gemm).collect();
        p.ms_per_step = twolayer::bench::report::Stats::from_samples(s);
    }
    r
}

/// Writes `reports` as a folder of runs, `dir/01/report.json`, ...
fn runs(dir: &Path, name: &str, reports: &[Report]) -> PathBuf {
    let side = dir.join(name);
    for (k, r) in reports.iter().enumerate() {
        let d = side.join(format!("{:02}", k + 1));
        std::fs::create_dir_all(&d).unwrap();
        r.write_json(&d.join("report.json")).unwrap();
    }
    side
}

fn five(ms: f64, gemm: f64) -> Vec<Report> {
    (0..5).map(|k| process(k, ms, gemm)).collect()
}

/// `twolayer compare --paired BASE CUR [extra]`: (exit code, stdout, stderr).
fn compare(base: &Path, cur: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "compare",
        "--paired",
        base.to_str().unwrap(),
        cur.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr(&out),
    )
}

#[test]
fn unchanged_code_passes_and_a_slowdown_fails() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = runs(d, "base", &five(1.0, 0.9));

    let same = runs(d, "same", &five(1.0, 0.9));
    let (code, out, err) = compare(&base, &same, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("4 points: 0 slower, 0 faster, 4 within noise"),
        "{out}"
    );

    // 30% slower outside the GEMMs.
    let slow = runs(d, "slow", &five(1.3, 0.9 / 1.3));
    let (code, out, err) = compare(&base, &slow, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("4 points: 4 slower"), "{out}");
    assert!(err.contains("regression: 4 point(s) slower"), "{err}");

    // 30% slower inside the GEMMs: step/GEMM does not move at all. The
    // gate that took that ratio passed this; wall time does not.
    let slow_gemms = runs(d, "slow-gemms", &five(1.3, 0.9));
    let (code, out, err) = compare(&base, &slow_gemms, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("4 points: 4 slower"), "{out}");
    assert!(
        out.contains("0.900 → 0.900") || out.contains("1.111 → 1.111"),
        "{out}"
    );

    // Faster is not a failure.
    let fast = runs(d, "fast", &five(0.7, 0.9));
    let (code, out, _) = compare(&base, &fast, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("4 faster"), "{out}");

    // Below the threshold is not a failure either: 5% slower.
    let a_little = runs(d, "a-little", &five(1.05, 0.9));
    let (code, out, _) = compare(&base, &a_little, &[]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn one_process_in_a_slow_mode_does_not_decide() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = runs(d, "base", &five(1.0, 0.9));
    let mut cur = five(1.0, 0.9);
    cur[3] = process(3, 1.6, 0.9);
    let cur = runs(d, "cur", &cur);
    let (code, out, err) = compare(&base, &cur, &[]);
    assert_eq!(code, 0, "{out}{err}");
    // Unpaired too.
    let out = run(&["compare", base.to_str().unwrap(), cur.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn verdicts_are_written_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = runs(d, "base", &five(1.0, 0.9));
    let slow = runs(d, "slow", &five(1.25, 0.9));
    let json = d.join("verdict.json");
    let (code, _, err) = compare(&base, &slow, &["--json", json.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["exit_status"], 1);
    assert_eq!(v["passed"], false);
    assert_eq!(v["metric"], "wall_time_per_step");
    assert_eq!(v["paired"], true);
    assert_eq!(v["processes"], serde_json::json!([5, 5]));
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 4);
    for p in points {
        assert_eq!(p["verdict"], "slower", "{p}");
        let change = p["change"].as_f64().unwrap();
        assert!((change - 1.25).abs() < 0.02, "{p}");
        let ci = p["ci"].as_array().unwrap();
        assert!(ci[0].as_f64().unwrap() <= change && change <= ci[1].as_f64().unwrap());
    }
    assert_eq!(v["overall"]["verdict"], "slower");
}

/// A point whose form changed between the sides (the anchor's sweeps timed
/// the primal step where the current build times the dual form) is judged,
/// but named as a change of form: before, the table said "faster" at -90%
/// with nothing to tell the reader the two sides ran different steps.
#[test]
fn a_change_of_form_between_the_sides_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = runs(d, "base", &five(1.0, 0.9));
    let mut dual = five(0.1, 0.09);
    for r in &mut dual {
        r.points[0].run.form = twolayer::step::Form::Dual;
    }
    let cur = runs(d, "dual", &dual);
    let json = d.join("verdict.json");
    let (code, out, err) = compare(&base, &cur, &["--json", json.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let points = v["points"].as_array().unwrap();
    assert_eq!(
        points[0]["form_change"],
        serde_json::json!(["primal", "dual"])
    );
    assert!(points[0]["label"]
        .as_str()
        .unwrap()
        .ends_with("(primal → dual)"));
    for p in &points[1..] {
        assert!(p.get("form_change").is_none(), "{p}");
    }
    let text = format!("{out}{err}");
    assert!(
        text.contains("Form changed at 1 point(s)") && text.contains("(primal → dual)"),
        "{text}"
    );
    // Unchanged forms: no such line.
    let same = runs(d, "same", &five(1.0, 0.9));
    let (code, out, err) = compare(&base, &same, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!format!("{out}{err}").contains("Form changed"), "{out}");
}

#[test]
fn different_environments_are_named_and_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = runs(d, "base", &five(1.0, 0.9));
    // Another kernel set than the one this machine ran (whatever it was:
    // the suite runs under any OPENBLAS_CORETYPE).
    let base_core = template().env.openblas_core.clone();
    let other_core = if base_core == "Prescott" {
        "Nehalem"
    } else {
        "Prescott"
    };
    let mut other = five(1.0, 0.9);
    for r in &mut other {
        r.env.openblas_core = other_core.into();
        r.env.openblas_env = vec![format!("OPENBLAS_CORETYPE={other_core}")];
    }
    let other = runs(d, "other", &other);
    let (code, out, err) = compare(&base, &other, &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains(&format!(
            "openblas_core: baseline {base_core}; current {other_core}"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("OPENBLAS_CORETYPE={other_core}")),
        "{err}"
    );
    assert!(err.contains("--allow-env-change"), "{err}");
    assert!(out.is_empty(), "{out}");

    let (code, out, err) = compare(&base, &other, &["--allow-env-change"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Environments differ:\n- openblas_core"),
        "{out}"
    );
}

#[test]
fn reports_that_cannot_be_compared_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = runs(d, "base", &five(1.0, 0.9));
    type Edit = Box<dyn Fn(&mut Report)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "zero",
            Box::new(|r| r.points[1].ms_per_step.samples[4] = 0.0),
            "times must lie between",
        ),
        (
            "negative",
            Box::new(|r| r.points[0].ms_per_step.samples[0] = -1.0),
            "times must lie between",
        ),
        (
            "gemm",
            Box::new(|r| r.points[0].gemm_ms_samples[2] = -3.0),
            "times must lie between",
        ),
        (
            "subnormal",
            Box::new(|r| r.points[0].ms_per_step.samples[1] = 5e-324),
            "times must lie between",
        ),
        (
            "twice",
            Box::new(|r| {
                let mut p = r.points[0].clone();
                p.ms_per_step.samples.iter_mut().for_each(|v| *v *= 1.5);
                r.points.push(p);
            }),
            "listed twice",
        ),
        (
            "lengths",
            Box::new(|r| {
                r.points[2].gemm_ms_samples.pop();
            }),
            "GEMM samples",
        ),
        (
            "few",
            Box::new(|r| r.points[2].ms_per_step.samples.truncate(2)),
            "at least 3",
        ),
        (
            "missing",
            Box::new(|r| {
                r.points.pop();
            }),
            "missing from a current report",
        ),
    ];
    for (name, edit, msg) in cases {
        let mut cur = five(1.0, 0.9);
        edit(&mut cur[2]);
        let cur = runs(d, name, &cur);
        let (code, out, err) = compare(&base, &cur, &[]);
        assert_eq!(code, 2, "{name}: {out}{err}");
        assert!(err.contains(msg), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
    }
    // Two sides with no points at all (it panicked, exit 101).
    let mut empty = five(1.0, 0.9);
    empty.iter_mut().for_each(|r| r.points.clear());
    let (e1, e2) = (runs(d, "empty1", &empty), runs(d, "empty2", &empty));
    let (code, out, err) = compare(&e1, &e2, &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("no points"), "{err}");
    // Paired sides need as many runs each.
    let four = runs(d, "four", &five(1.0, 0.9)[..4]);
    let (code, _, err) = compare(&base, &four, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("--paired needs as many runs"), "{err}");
    // A folder without runs.
    let empty = d.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (code, _, err) = compare(&base, &empty, &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("subfolders that each hold a report.json"),
        "{err}"
    );
}

#[test]
fn reports_from_two_openblas_libraries_are_refused() {
    // A native build and Debian's generic one of the same kernel set time
    // differently: the comparison names the library and refuses.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = runs(d, "base", &five(1.0, 0.9));
    let here = template().env.openblas_library.clone().expect("recorded");
    let mut other = five(1.0, 0.9);
    for r in &mut other {
        let lib = r.env.openblas_library.as_mut().unwrap();
        lib.native = !here.native;
        lib.target = if here.native {
            "DYNAMIC_ARCH".into()
        } else {
            "COOPERLAKE".into()
        };
        lib.path = "/elsewhere/libopenblas.so.0".into();
    }
    let other = runs(d, "other", &other);
    let (code, out, err) = compare(&base, &other, &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("openblas_library: baseline"), "{err}");
    assert!(err.contains("/elsewhere/libopenblas.so.0"), "{err}");
}

#[test]
fn a_grid_that_gains_or_loses_points_is_compared_on_what_both_ran() {
    // A new benchmark is not an error (it is "new", as in asv and
    // criterion), nor is a dropped one; --strict-points makes them one.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = five(1.0, 0.9);
    let n = base[0].points.len();
    // Current: the baseline's points less the last, plus a new one.
    let mut cur = five(1.0, 0.9);
    for r in &mut cur {
        let gone = r.points.pop().unwrap();
        let mut extra = gone.clone();
        extra.run.n = 4096;
        r.points.push(extra);
    }
    let (base, cur) = (runs(d, "base", &base), runs(d, "cur", &cur));
    let json = d.join("v.json");
    let (code, out, err) = compare(&base, &cur, &["--json", json.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("New (the current side only; not judged): (4096,"),
        "{out}"
    );
    assert!(
        out.contains("Removed (the baseline only; not judged):"),
        "{out}"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["points"].as_array().unwrap().len(), n - 1);
    assert_eq!(v["new_points"][0]["n"], 4096);
    assert_eq!(v["removed_points"].as_array().unwrap().len(), 1);
    // Each point's parameters as fields, for machines.
    let p = &v["points"][0];
    for field in [
        "n",
        "d_in",
        "hidden",
        "d_out",
        "dtype",
        "threads",
        "step_mode",
        "ranks",
        "form",
    ] {
        assert!(!p["point"][field].is_null(), "{field}: {p}");
    }
    let (code, _, err) = compare(&base, &cur, &["--strict-points"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is missing from a current report"), "{err}");
    // `--json -`: the verdicts on stdout (the table on stderr), no file
    // named "-".
    let out = common::bin()
        .current_dir(d)
        .args(["compare", "--paired"])
        .arg(&base)
        .arg(&base)
        .args(["--json", "-"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["passed"], true);
    assert!(stderr(&out).contains("| point |"));
    assert!(!d.join("-").exists());
}

#[test]
fn a_grid_file_sets_thresholds_point_by_point() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = runs(d, "base", &five(1.0, 0.9));
    // Every point 20% slower: past the default 10%.
    let slow = runs(d, "slow", &five(1.2, 0.9));
    let (code, out, _) = compare(&base, &slow, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("4 points: 4 slower"), "{out}");
    // The grid gives the N = 8 points (two of four) 30% and the whole
    // comparison 25%: those two pass, the N = 16 ones still fail.
    let grid = d.join("grid.toml");
    std::fs::write(
        &grid,
        "n = [8, 16]\n[gate]\nmax_slowdown = 0.25\n[[gate.point]]\nhidden = 9\nmax_slowdown = 0.15\n[[gate.point]]\nn = 8\nmax_slowdown = 0.30\n",
    )
    .unwrap();
    let j = d.join("v.json");
    let (code, out, err) = compare(
        &base,
        &slow,
        &[
            "--grid",
            grid.to_str().unwrap(),
            "--json",
            j.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("4 points: 2 slower"), "{out}");
    assert!(
        out.contains("(at 30%)") && out.contains("(at 15%)"),
        "{out}"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&j).unwrap()).unwrap();
    assert_eq!(v["max_slowdown"], 0.25);
    for p in v["points"].as_array().unwrap() {
        let want = if p["point"]["n"] == 8 { 0.30 } else { 0.15 };
        assert_eq!(p["max_slowdown"], want, "{p}");
    }
    // --max-slowdown on the command line wins over the grid's [gate] one.
    let (_, out, _) = compare(
        &base,
        &slow,
        &["--grid", grid.to_str().unwrap(), "--max-slowdown", "0.05"],
    );
    assert!(out.contains("5%"), "{out}");
    // A threshold that is not a fraction is refused, naming where it is.
    std::fs::write(&grid, "[gate]\n[[gate.point]]\nn = 8\nmax_slowdown = 3\n").unwrap();
    let (code, _, err) = compare(&base, &slow, &["--grid", grid.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("[[gate.point]]"), "{err}");
}

#[test]
fn five_merges_three_percent_slower_each_pass_their_gates_and_fail_the_anchor() {
    // A creep: every merge 3% slower than its base. The per-merge gate
    // (10%) passes each one; the comparison against the anchor (the main
    // before the first) fails by the fifth; the history adds them up.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let history = d.join("h.jsonl");
    let h = history.to_str().unwrap();
    let side = |k: i32| runs(d, &format!("v{k}"), &five(1.03f64.powi(k), 0.9));
    let anchor = side(0);
    let mut prev = anchor.clone();
    let mut caught = None;
    for k in 1..=5 {
        let cur = side(k);
        let (code, out, err) = compare(&prev, &cur, &["--history", h]);
        assert_eq!(code, 0, "merge {k} against its base: {out}{err}");
        let (code, out, err) = compare(&anchor, &cur, &["--history", h, "--history-as", "anchor"]);
        assert_ne!(code, 2, "{err}");
        if code == 1 && caught.is_none() {
            caught = Some(k);
        }
        if k < 4 {
            assert_eq!(code, 0, "merge {k} against the anchor: {out}");
        }
        prev = cur;
    }
    assert!(matches!(caught, Some(4) | Some(5)), "caught at {caught:?}");
    // The history: ten entries, the base ones compounding to +15.9%.
    let chart = d.join("trend.svg");
    let out = run(&["history", h, "--chart", chart.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        table.lines().filter(|l| l.starts_with("| ")).count(),
        11,
        "{table}"
    );
    assert!(table.contains("+15.9%"), "{table}");
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.contains("against anchor") && svg.contains("compounded"));
    // --json: the entries.
    let out = run(&["history", h, "--json", "-q"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 10);
    assert_eq!(v[9]["against"], "anchor");
}

#[test]
fn no_output_lands_on_a_report_inside_a_compared_folder_or_on_a_file_that_is_not_a_history() {
    // Before: `compare a b --json a/01/report.json` replaced a baseline
    // report, and `--history notes.txt` glued an entry onto any file.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = runs(d, "a", &five(1.0, 0.8));
    let cur = runs(d, "b", &five(1.0, 0.8));
    let inside = base.join("01/report.json");
    let before = std::fs::read(&inside).unwrap();
    for flag in ["--json", "--chart", "--history"] {
        let (code, _, e) = compare(&base, &cur, &[flag, inside.to_str().unwrap()]);
        assert_eq!(code, 2, "{flag}: {e}");
        assert!(
            e.contains(flag) && e.contains("a report of BASELINE"),
            "{flag}: {e}"
        );
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
        assert_eq!(std::fs::read(&inside).unwrap(), before, "{flag}");
    }
    let notes = d.join("notes.txt");
    std::fs::write(&notes, "my notes, no newline").unwrap();
    let (code, _, e) = compare(&base, &cur, &["--history", notes.to_str().unwrap()]);
    assert_eq!(code, 2, "{e}");
    assert!(e.contains("not a gate history entry"), "{e}");
    assert_eq!(std::fs::read(&notes).unwrap(), b"my notes, no newline");
    // A history (new, then with an entry) takes entries.
    let h = d.join("h.jsonl");
    for n in 1..=2 {
        let (code, _, e) = compare(&base, &cur, &["--history", h.to_str().unwrap()]);
        assert_eq!(code, 0, "{e}");
        assert_eq!(twolayer::bench::history::read(&h).unwrap().len(), n);
    }
    // One whose last line was cut is refused, not glued onto.
    let mut cut = std::fs::read(&h).unwrap();
    cut.pop();
    std::fs::write(&h, &cut).unwrap();
    let (code, _, e) = compare(&base, &cur, &["--history", h.to_str().unwrap()]);
    assert_eq!(code, 2, "{e}");
    assert!(e.contains("last line is not complete"), "{e}");
}

#[test]
fn a_history_entry_no_gate_writes_is_refused_not_hung_on() {
    // Before, `history h.jsonl --chart t.svg` never returned on an entry
    // whose change was about 1e307, and --history-as took any word.
    let dir = tempfile::tempdir().unwrap();
    let h = dir.path().join("h.jsonl");
    std::fs::write(
        &h,
        r#"{"date":"2026-12-07T00:00:00Z","against":"base","baseline":["a"],"current":["b"],"max_slowdown":0.1,"change":1e307,"ci":[1e306,1e308],"verdict":"slower","slower":1,"faster":0,"points":8}
"#,
    )
    .unwrap();
    let chart = dir.path().join("t.svg");
    let mut child = common::bin()
        .args([
            "history",
            h.to_str().unwrap(),
            "--chart",
            chart.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A guard against the hang, not a timing: it answers at once.
    let status =
        common::wait_unless_hung(&mut child, std::time::Duration::from_secs(60), "history");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("line 1") && err.contains("not a measured one"),
        "{err}"
    );
    assert!(!chart.exists());
    let out = run(&[
        "compare",
        "a",
        "b",
        "--history",
        h.to_str().unwrap(),
        "--history-as",
        "main",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("possible values: base, anchor"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_regression_of_many_points_names_ten_and_counts_the_rest() {
    // 16 points, all 30% slower: the one-line message stays one line's
    // worth (before, it named every point: 288 of them in one measured
    // case), and the table still lists them all.
    let widen = |r: Report| {
        let mut r = r;
        let first = r.points[0].clone();
        r.points = (0..16)
            .map(|i| {
                let mut p = first.clone();
                p.run.n = 100 + i;
                p
            })
            .collect();
        r
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = runs(
        d,
        "base",
        &five(1.0, 0.9).into_iter().map(widen).collect::<Vec<_>>(),
    );
    let slow = runs(
        d,
        "slow",
        &five(1.3, 0.9).into_iter().map(widen).collect::<Vec<_>>(),
    );
    let (code, out, err) = compare(&base, &slow, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("16 points: 16 slower"), "{out}");
    let line = err
        .lines()
        .find(|l| l.contains("point(s) slower"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("16 point(s) slower"), "{line}");
    assert_eq!(line.matches(" ×1").count(), 10, "{line}");
    assert!(line.ends_with("and 6 more (see the table)"), "{line}");
}
