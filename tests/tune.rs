//! `twolayer tune` and its wisdom: plans measured and stored, then used
//! (and named) by train and sweep, kept by checkpoints; a garbled file is
//! never overwritten nor fatal to a run. No test here asserts a time.

mod common;

use common::{bin, stderr};
use std::path::Path;
use twolayer::step::{Layout, Plan, PlanChoice, StepMode};
use twolayer::tune::wisdom::Wisdom;
use twolayer::Shape;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const POINTS: &[&str] = &[
    "--n", "64,700", "--d-in", "40", "--hidden", "24", "--d-out", "3",
];

#[test]
fn tuned_plans_are_stored_then_used_and_named_by_train_and_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("sub").join("wisdom.json");
    let o = bin()
        .args(["tune", "--wisdom", s(&w), "--threads", "2"])
        .args(POINTS)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.contains("ms/step on")).count(),
        2,
        "{text}"
    );
    let wisdom = Wisdom::read(&w).unwrap();
    assert_eq!(wisdom.entries.len(), 2);
    let e = wisdom
        .entries
        .iter()
        .find(|e| e.shape == [700, 40, 24, 3])
        .unwrap();
    assert_eq!(
        e.key.run.shape(),
        twolayer::Shape::new(1024, 64, 32, 4).unwrap()
    );
    assert_eq!(e.key.run.threads, 2);
    assert!(
        PlanChoice::candidates(2, 700, e.key.run.step_mode).contains(&e.plan),
        "{:?}",
        e.plan
    );
    assert!(e.ms_per_step > 0.0 && e.rows == 700);

    // train uses the entry of its point's class and says so.
    let json = dir.path().join("s.json");
    let train = |extra: &[&str]| {
        bin()
            .args(["train", "-q", "--steps", "3", "--n", "700", "--d-in", "40"])
            .args([
                "--hidden",
                "24",
                "--d-out",
                "3",
                "--threads",
                "2",
                "--form",
                "primal",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = train(&["--wisdom", s(&w), "--json", s(&json)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("plan from wisdom"), "{}", stderr(&o));
    let sum: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let plan = e
        .plan
        .plan(Shape::new(700, 40, 24, 3).unwrap(), StepMode::Fused);
    assert_eq!(sum["shards"], plan.shards);
    assert_eq!(sum["block_rows"], plan.block_rows);
    // --no-wisdom: the built-in rule.
    let o = train(&["--no-wisdom"]);
    assert!(
        stderr(&o).contains("plan from the built-in rule"),
        "{}",
        stderr(&o)
    );

    // sweep records every point's plan and where it came from.
    let out = dir.path().join("report");
    // N = 100 is of class 128, which has no entry: the rule.
    let o = bin()
        .args([
            "sweep",
            "--threads",
            "2",
            "--budget",
            "0",
            "--min-steps",
            "3",
        ])
        .args([
            "--n", "700,100", "--d-in", "40", "--hidden", "24", "--d-out", "3",
        ])
        .args(["--wisdom", s(&w), "--out", s(&out)])
        .output();
    let o = o.unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    common::assert_matches_schema(&out.join("report.json"));
    let r = twolayer::bench::report::Report::read(&out.join("report.json")).unwrap();
    let by_n = |n| {
        r.points
            .iter()
            .find(|p| p.run.n == n)
            .unwrap()
            .plan
            .clone()
            .unwrap()
    };
    assert!(by_n(700).source.starts_with("wisdom "), "{:?}", by_n(700));
    assert_eq!(by_n(700).block_rows, plan.block_rows);
    assert_eq!(by_n(100).source, "the built-in rule");
}

#[test]
fn a_garbled_wisdom_file_is_neither_overwritten_nor_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("wisdom.json");
    std::fs::write(&w, "{ not json").unwrap();
    let o = bin()
        .args([
            "tune",
            "--wisdom",
            s(&w),
            "--n",
            "64",
            "--d-in",
            "20",
            "--hidden",
            "8",
        ])
        .args(["--d-out", "2"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not a twolayer wisdom file"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_to_string(&w).unwrap(), "{ not json");
    let o = bin()
        .args([
            "train",
            "-q",
            "--steps",
            "2",
            "--form",
            "primal",
            "--wisdom",
            s(&w),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("using the built-in plans"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_resume_keeps_the_plan_its_run_used() {
    // The run's plan comes from wisdom; the resume has none, yet runs the
    // same plan (from the checkpoint) and so the same bits.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let w = d.join("w.json");
    let shape = [
        "--n", "700", "--d-in", "40", "--hidden", "24", "--d-out", "3",
    ];
    let o = bin()
        .args(["tune", "--wisdom", s(&w), "--threads", "2"])
        .args(shape)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let common = |extra: &[&str]| {
        let mut c = bin();
        c.args([
            "train",
            "-q",
            "--threads",
            "2",
            "--form",
            "primal",
            "--lr",
            "1e-6",
        ])
        .args(shape)
        .args(extra);
        c
    };
    let full = d.join("full.txt");
    let o = common(&["--steps", "20", "--wisdom", s(&w), "--losses", s(&full)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let ck = d.join("run.ck");
    let o = common(&["--steps", "8", "--wisdom", s(&w), "--checkpoint", s(&ck)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let part = d.join("part.txt");
    let o = bin()
        .args([
            "train",
            "-q",
            "--resume",
            s(&ck),
            "--steps",
            "20",
            "--losses",
            s(&part),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("plan from the checkpoint"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(&part).unwrap(), std::fs::read(&full).unwrap());
}

#[test]
fn candidates_cover_every_split_and_block() {
    let all = PlanChoice::candidates(2, 4096, StepMode::Explicit);
    // The whole step on one thread, last: what a small step runs.
    let one = PlanChoice {
        shards: 1,
        blas_threads: 1,
        block_rows: 0,
        layout: Layout::Rows,
    };
    assert_eq!(all.last(), Some(&one));
    let c = &all[..all.len() - 1];
    // 2 shards of 2048 rows: 64…1024 and whole; 1 shard: 64…2048 and whole.
    assert_eq!(c.len(), 6 + 7);
    assert!(c.iter().all(|p| p.shards * p.blas_threads == 2));
    assert!(c.iter().all(|p| p.layout == Layout::Rows));
    // Fused mode: each also a row per hidden unit, but the one block of
    // the whole batch (its update is in the GEMMs, which write w1 as it is).
    let f = PlanChoice::candidates(2, 4096, StepMode::Fused);
    assert_eq!(f.len(), 2 * 6 + 2 * 6 + 1 + 1);
    for p in c {
        assert!(f.contains(p));
        let units = PlanChoice {
            layout: Layout::Units,
            ..*p
        };
        assert_eq!(f.contains(&units), !(p.shards == 1 && p.block_rows == 0));
    }
    let s = Shape::new(4096, 100, 10, 1).unwrap();
    let whole = PlanChoice {
        shards: 1,
        blas_threads: 2,
        block_rows: 0,
        layout: Layout::Units,
    };
    let p = whole.plan(s, StepMode::Fused);
    assert!(p.fused_gemm_update && p.block_rows == 4096);
    assert_eq!(p.layout, Layout::Rows, "a fused plan keeps w1's layout");
    assert!(!whole.plan(s, StepMode::Explicit).fused_gemm_update);
    // A choice applies to any N: blocks clamp to a shard's rows.
    let b = PlanChoice {
        shards: 2,
        blas_threads: 1,
        block_rows: 1024,
        layout: Layout::Units,
    };
    assert_eq!(b.plan(s, StepMode::Fused).layout, Layout::Units);
    assert_eq!(b.plan(s, StepMode::Explicit).layout, Layout::Rows);
    assert_eq!(
        b.plan(Shape::new(100, 5, 5, 1).unwrap(), StepMode::Fused)
            .block_rows,
        50
    );
    assert_eq!(PlanChoice::candidates(2, 64, StepMode::Explicit).len(), 3);
    assert_eq!(PlanChoice::candidates(1, 64, StepMode::Explicit).len(), 1);
}

#[test]
fn the_rule_runs_a_step_too_small_to_split_on_one_thread() {
    use twolayer::step::too_small_to_split;
    use twolayer::Dtype;
    let shape = |n, d, h| Shape::new(n, d, h, 1).unwrap();
    // Measured (docs/performance.md, "Plans for small batches"): one
    // thread won at these, two shards at the others.
    for (n, d, h) in [
        (16, 100, 100),
        (32, 100, 100),
        (64, 100, 100),
        (64, 256, 256),
        (32, 100, 1024),
    ] {
        assert!(
            too_small_to_split(shape(n, d, h), Dtype::F64, 2),
            "({n}, {d}, {h})"
        );
        let p = Plan::new(shape(n, d, h), Dtype::F64, 2, StepMode::Fused);
        assert_eq!((p.shards, p.blas_threads), (1, 1), "({n}, {d}, {h})");
        assert!(
            p.fused_gemm_update,
            "one shard in one block: the update in the GEMMs"
        );
    }
    for (n, d, h) in [
        (256, 32, 32),
        (512, 100, 100),
        (128, 256, 256),
        (64, 100, 1024),
        (256, 1024, 100),
    ] {
        assert!(
            !too_small_to_split(shape(n, d, h), Dtype::F64, 2),
            "({n}, {d}, {h})"
        );
        assert_eq!(
            Plan::new(shape(n, d, h), Dtype::F64, 2, StepMode::Fused).shards,
            2
        );
    }
    // One thread is never split; the reference shapes still are.
    assert!(too_small_to_split(shape(4096, 1000, 100), Dtype::F64, 1));
    let r = Plan::new(
        Shape::new(4096, 1000, 100, 10).unwrap(),
        Dtype::F32,
        2,
        StepMode::Fused,
    );
    assert_eq!(r.shards, 2);
    // Wide inputs in a short batch: one shard on every OpenBLAS thread.
    let p = Plan::new(shape(64, 1024, 100), Dtype::F64, 2, StepMode::Fused);
    assert_eq!((p.shards, p.blas_threads), (1, 2));
    assert_eq!(
        Plan::new(shape(256, 1024, 100), Dtype::F64, 2, StepMode::Fused).shards,
        2
    );
    // Thin hidden layers keep whole shards.
    assert_eq!(
        Plan::new(shape(256, 32, 32), Dtype::F64, 2, StepMode::Fused).block_rows,
        128
    );
    // Wide layers keep their one multi-threaded GEMM whatever the batch.
    let w = Plan::new(shape(16, 1024, 1024), Dtype::F64, 2, StepMode::Fused);
    assert_eq!((w.shards, w.blas_threads), (1, 2));
    // Narrow inputs: blocks of 64 rows; shards of a small batch keep a
    // row per example (the units layout needs 128 rows a shard there).
    let small = Plan::new(shape(200, 100, 100), Dtype::F64, 2, StepMode::Fused);
    assert_eq!(
        (small.shards, small.block_rows, small.layout),
        (2, 64, Layout::Rows)
    );
    let p = Plan::new(shape(512, 100, 100), Dtype::F64, 2, StepMode::Fused);
    assert_eq!(p.block_rows, 64);
}

#[test]
fn a_wisdom_plan_over_the_thread_budget_is_not_run() {
    // A hand-edited entry asking for a million OpenBLAS threads got 64
    // (66 OS threads on 2 cores): the budget now holds over what a file says.
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.json");
    let shape = [
        "--n", "700", "--d-in", "40", "--hidden", "24", "--d-out", "3",
    ];
    let o = bin()
        .args(["tune", "--wisdom", s(&w), "--threads", "2"])
        .args(shape)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let mut wisdom = Wisdom::read(&w).unwrap();
    wisdom.entries[0].plan.blas_threads = 1_000_000;
    wisdom.write(&w).unwrap();
    let json = dir.path().join("s.json");
    let o = bin()
        .args([
            "train",
            "-q",
            "--steps",
            "3",
            "--threads",
            "2",
            "--form",
            "primal",
        ])
        .args(shape)
        .args(["--wisdom", s(&w), "--json", s(&json)])
        .output()
        .unwrap();
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains("over the budget of 2 thread(s); using the built-in plan"),
        "{e}"
    );
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let (shards, blas) = (
        j["shards"].as_u64().unwrap(),
        j["blas_threads"].as_u64().unwrap(),
    );
    assert!(shards * blas <= 2, "{j}");
    assert_eq!(j["plan_source"], "the built-in rule", "{j}");
}

#[test]
fn tune_plans_the_form_train_runs() {
    // At (64, 1000, 20, 3) `twolayer train` runs the dual form, which has
    // no shards or blocks: tune says so and writes no primal plan that
    // train would never read; asked for the primal form, it plans it.
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.json");
    let shape = [
        "--n", "64", "--d-in", "1000", "--hidden", "20", "--d-out", "3",
    ];
    let o = bin()
        .args(["tune", "--wisdom", s(&w), "--threads", "2"])
        .args(shape)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        text.contains("not tuned") && text.contains("dual form"),
        "{text}"
    );
    assert!(Wisdom::read_or_empty(&w).unwrap().entries.is_empty());
    let o = bin()
        .args([
            "tune",
            "--wisdom",
            s(&w),
            "--threads",
            "2",
            "--form",
            "primal",
        ])
        .args(shape)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(Wisdom::read(&w).unwrap().entries.len(), 1);
}

#[test]
fn a_tune_that_tunes_nothing_says_so_and_writes_no_file() {
    // Before: "wrote 1 tuned point(s) to wz.json (0 in all)", no file.
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("wz.json");
    let o = bin()
        .args([
            "tune", "--n", "8", "--d-in", "20", "--hidden", "10", "--d-out", "3",
        ])
        .args(["--wisdom", s(&w)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("runs the dual form at this shape"), "{out}");
    assert!(
        e.contains("tuned nothing, so") && e.contains("was not written"),
        "{e}"
    );
    assert!(e.contains("1 point(s) not tuned"), "{e}");
    assert!(!w.exists());
}

#[test]
fn two_tunings_of_one_wisdom_file_at_once_keep_both_entries() {
    // Before, each tuning wrote the wisdom it had read at its start plus
    // its own points: whichever wrote last won, and the other's entries
    // were lost (3 of 3 tries). Now each point is merged into the file as
    // it is, under the file's lock.
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("wisdom.json");
    let tune = |n: &str| {
        bin()
            .args(["tune", "--wisdom", s(&w), "--threads", "2", "-q"])
            .args(["--n", n, "--d-in", "40", "--hidden", "24", "--d-out", "3"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // (Points in distinct classes: a point's shape is rounded up to powers
    // of two in its key.)
    let (a, b) = (tune("64,256,1024"), tune("128,512,2048"));
    for c in [a, b] {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let wisdom = Wisdom::read(&w).unwrap();
    let mut ns: Vec<usize> = wisdom.entries.iter().map(|e| e.shape[0]).collect();
    ns.sort();
    assert_eq!(ns, [64, 128, 256, 512, 1024, 2048]);
    assert!(!dir.path().join(".wisdom.json.lock").exists());
}
