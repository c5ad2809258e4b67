//! Data-parallel training over MPI, through `mpirun -np 2` as a user runs
//! it (feature `mpi`; scripts/test.sh installs OpenMPI and enables it).
//! Every launch has a watchdog: a hung job fails the test instead of
//! hanging CI.
#![cfg(feature = "mpi")]

mod common;

use common::max_rel_diff;
use ndarray::Array2;
use ndarray_npy::NpzReader;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn mpirun(np: usize, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-np", &np.to_string(), "--mca", "btl", "self,vader"])
        // As root, mpirun refuses to start without these.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("TWOLAYER_PEAK", "")
        .arg(env!("CARGO_BIN_EXE_twolayer"))
        .args(args);
    c
}

/// Waits for `child` at most `limit`, killing it (and failing) past that.
/// How long a job may run before a test calls it hung: far past anything
/// a loaded machine takes, far short of for ever.
const HANG: Duration = Duration::from_secs(120);

fn wait_with_watchdog(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "MPI job still running after {limit:?}: it hung. stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_mpi(np: usize, args: &[&str]) -> Output {
    let child = mpirun(np, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun is installed (scripts/setup.sh --mpi)");
    wait_with_watchdog(child, Duration::from_secs(60))
}

fn weights(p: &Path) -> (Array2<f64>, Array2<f64>) {
    let mut z = NpzReader::new(std::fs::File::open(p).unwrap()).unwrap();
    (z.by_name("w1").unwrap(), z.by_name("w2").unwrap())
}

fn losses(p: &Path) -> Vec<f64> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
        .collect()
}

/// `train`, then `base` and `extra` flags, writing the losses to `losses`
/// and the final weights to `save`.
fn train_args<'a>(
    base: &[&'a str],
    extra: &[&'a str],
    losses: &'a Path,
    save: &'a Path,
) -> Vec<&'a str> {
    let mut a = vec!["train"];
    a.extend(base);
    a.extend(extra);
    a.extend([
        "--losses",
        losses.to_str().unwrap(),
        "--save",
        save.to_str().unwrap(),
    ]);
    a
}

/// Largest relative difference between two loss histories (the second
/// is the reference), which must be as long as each other.
fn max_rel_gap(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs() / b.abs())
        .fold(0.0, f64::max)
}

/// The run of `flags` in one process as each rank runs it (explicit
/// gradients, one thread): its losses file and saved weights, in `d`.
fn one_process(d: &Path, flags: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
    let (sl, sw) = (d.join("one.txt"), d.join("one.npz"));
    let out = common::run(&train_args(
        flags,
        &["--threads", "1", "--step-mode", "explicit"],
        &sl,
        &sw,
    ));
    assert!(out.status.success(), "{}", common::stderr(&out));
    (sl, sw)
}

#[test]
fn two_ranks_match_one_process_and_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 65 rows: the ranks get 33 and 32.
    let shape = [
        "--n", "65", "--d-in", "300", "--hidden", "40", "--d-out", "7", "--steps", "100", "--lr",
        "1e-5", "--quiet",
    ];
    let (ml, mw) = (d.join("mpi.txt"), d.join("mpi.npz"));
    let out = run_mpi(2, &train_args(&shape, &[], &ml, &mw));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Only rank 0 prints the summary; it says the weights were compared.
    assert_eq!(err.matches("twolayer: 100 steps").count(), 1, "{err}");
    assert!(
        err.contains("2 MPI ranks") && err.contains("weights identical on all ranks"),
        "{err}"
    );

    let (sl, sw) = one_process(d, &shape);

    let (lm, ls) = (losses(&ml), losses(&sl));
    assert_eq!(lm.len(), 100);
    let gap = max_rel_gap(&lm, &ls);
    assert!(gap < 1e-12, "losses differ from one process by {gap:e}");
    let ((m1, m2), (s1, s2)) = (weights(&mw), weights(&sw));
    let wg = max_rel_diff(&m1, &s1, 1.0).max(max_rel_diff(&m2, &s2, 1.0));
    assert!(wg < 1e-12, "weights differ from one process by {wg:e}");
    assert!(lm[99] < lm[0]);

    // The dual form needs the whole batch in one process: asked for under
    // mpirun, the ranks say so and train in the primal form, the same run.
    let (dl, dw) = (d.join("dual.txt"), d.join("dual.npz"));
    let out = run_mpi(2, &train_args(&shape, &["--form", "dual"], &dl, &dw));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("the dual form needs the whole batch in one process"),
        "{err}"
    );
    assert_eq!(std::fs::read(&dl).unwrap(), std::fs::read(&ml).unwrap());
}

#[test]
fn minibatches_over_two_ranks_match_one_process_and_resume_under_mpirun() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 411 rows, 20% held out: 329 training rows, batches of 33 (the
    // ranks read 17 and 16 rows of each), 9 steps an epoch.
    let shape = twolayer::Shape::new(411, 12, 5, 3).unwrap();
    let data = twolayer::Data::<f64>::random(shape, 3);
    let file = d.join("d.npz");
    {
        let mut z = ndarray_npy::NpzWriter::new(std::fs::File::create(&file).unwrap());
        z.add_array("x", &data.x).unwrap();
        z.add_array("y", &data.y).unwrap();
        z.finish().unwrap();
    }
    let f = file.to_str().unwrap();
    let flags = [
        "--data",
        f,
        "--batch",
        "33",
        "--epochs",
        "4",
        "--val-fraction",
        "0.2",
        "--loss",
        "mean",
        "--lr",
        "0.02",
        "--hidden",
        "16",
        "--weight-init",
        "scaled",
        "--threads",
        "1",
        "--quiet",
    ];
    let (ml, mw) = (d.join("mpi.txt"), d.join("mpi.npz"));
    let mm = d.join("mpi.csv");
    let mut a = train_args(&flags, &["--metrics", mm.to_str().unwrap()], &ml, &mw);
    let out = run_mpi(2, &a);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("2 MPI ranks of 16-17 rows of every minibatch"),
        "{err}"
    );
    // Rank 0 alone reports (its summary once); under --quiet no epoch
    // lines at all.
    assert_eq!(err.matches("2 MPI ranks of").count(), 1, "{err}");
    assert_eq!(err.matches("epoch 4/4").count(), 0, "{err}");

    let (sl, sw) = (d.join("one.txt"), d.join("one.npz"));
    let sm = d.join("one.csv");
    let out = common::run(&train_args(
        &flags,
        &["--step-mode", "explicit", "--metrics", sm.to_str().unwrap()],
        &sl,
        &sw,
    ));
    assert!(out.status.success(), "{}", common::stderr(&out));
    let (lm, ls) = (losses(&ml), losses(&sl));
    assert_eq!(lm.len(), 36);
    let gap = max_rel_gap(&lm, &ls);
    assert!(gap < 1e-12, "losses differ from one process by {gap:e}");
    let ((m1, m2), (s1, s2)) = (weights(&mw), weights(&sw));
    let wg = max_rel_diff(&m1, &s1, 1.0).max(max_rel_diff(&m2, &s2, 1.0));
    assert!(wg < 1e-12, "weights differ from one process by {wg:e}");
    let csv = |p: &Path| std::fs::read_to_string(p).unwrap();
    assert_eq!(csv(&mm).lines().count(), 5, "{}", csv(&mm));

    // Stopped after 13 steps under mpirun, resumed under mpirun: the
    // same losses as the unbroken MPI run, bit for bit.
    let ck = d.join("c.ck");
    let (pl, pw) = (d.join("part.txt"), d.join("part.npz"));
    a = train_args(
        &flags,
        &["--steps", "13", "--checkpoint", ck.to_str().unwrap()],
        &pl,
        &pw,
    );
    // --epochs and --steps exclude each other: drop the epochs.
    let at = a.iter().position(|v| *v == "--epochs").unwrap();
    a.drain(at..at + 2);
    let out = run_mpi(2, &a);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (rl, rw) = (d.join("resumed.txt"), d.join("resumed.npz"));
    let rm = d.join("resumed.csv");
    let a = train_args(
        &["--resume", ck.to_str().unwrap(), "--epochs", "4", "--quiet"],
        &["--metrics", rm.to_str().unwrap()],
        &rl,
        &rw,
    );
    let out = run_mpi(2, &a);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&rl).unwrap(), std::fs::read(&ml).unwrap());
    assert_eq!(std::fs::read(&rw).unwrap(), std::fs::read(&mw).unwrap());
    // The epochs before the stop are kept too (a resume under mpirun
    // once started its metrics, and its checkpoints' history, empty).
    assert_eq!(csv(&rm), csv(&mm));
}

#[test]
fn a_panicking_rank_ends_the_job_promptly() {
    let child = mpirun(
        2,
        &["train", "--steps", "100000", "--quiet", "--lr", "1e-9"],
    )
    .env("TWOLAYER_FAULT_PANIC", "1:20")
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // The watchdog tells an ended job from a hung one (without the panic
    // hook the other rank waits in allreduce for ever); how fast it ends
    // is for benchmarks, not for a test on a shared machine.
    let out = wait_with_watchdog(child, HANG);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("rank 1 panicked"), "{err}");
}

/// `mpirun -np 2 twolayer train` for practically ever (10^8 steps),
/// checkpointing to `ck` when stopped; stderr piped.
fn endless_job(ck: &Path) -> Child {
    mpirun(
        2,
        &[
            "train",
            "--steps",
            "100000000",
            "--quiet",
            "--lr",
            "1e-9",
            "--checkpoint",
            ck.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

/// The pid of rank `rank` among `child`'s (mpirun's) children, waiting up
/// to 20 s for it to appear.
fn find_rank(child: &mut Child, rank: usize) -> i32 {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| {
                let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
                let mut env = String::new();
                std::fs::File::open(format!("/proc/{pid}/environ"))
                    .ok()?
                    .read_to_string(&mut env)
                    .ok()?;
                let ours = env.split('\0').any(|v| v == want);
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
                (ours && exe.ends_with("twolayer")).then_some(pid)
            })
            .find(|&pid| {
                // A child of this mpirun.
                std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                    s.rsplit(')').next().unwrap_or("").split_whitespace().nth(1)
                        == Some(&child.id().to_string())
                })
            });
        if let Some(pid) = found {
            return pid;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rank {rank} never appeared");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_to_one_rank_stops_every_rank_and_is_reported_as_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("c.ckpt");
    let mut child = endless_job(&ck);
    let rank1 = find_rank(&mut child, 1);
    std::thread::sleep(Duration::from_millis(1500));
    unsafe { libc::kill(rank1, libc::SIGTERM) };
    let out = wait_with_watchdog(child, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    // Rank 0 reports what rank 1 received (it said SIGINT before).
    assert!(err.contains("stopped by SIGTERM after step"), "{err}");
    assert!(!err.contains("SIGINT"), "{err}");
    assert!(
        err.contains("continue with: twolayer train --resume"),
        "{err}"
    );
    let c = twolayer::checkpoint::AnyCheckpoint::read(&ck).unwrap();
    assert!(c.header().steps_done > 0);
}

#[test]
fn a_killed_rank_ends_the_job_promptly() {
    let mut child = mpirun(
        2,
        &["train", "--steps", "1000000", "--quiet", "--lr", "1e-9"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let rank1 = find_rank(&mut child, 1);
    std::thread::sleep(Duration::from_millis(1500));
    unsafe { libc::kill(rank1, libc::SIGKILL) };
    // Ended, not hung (see above).
    let out = wait_with_watchdog(child, HANG);
    assert!(!out.status.success());
}

#[test]
fn checkpoints_resume_with_the_same_ranks_only() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("c.ckpt");
    let ck_s = ck.to_str().unwrap();
    let out = run_mpi(
        2,
        &["train", "--steps", "30", "--quiet", "--checkpoint", ck_s],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_mpi(2, &["train", "--resume", ck_s, "--steps", "40", "--quiet"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = common::run(&["train", "--resume", ck_s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::stderr(&out).contains("resume it with mpirun -np 2"),
        "{}",
        common::stderr(&out)
    );
    // Flags that contradict the checkpoint are refused under mpirun as in
    // one process (they used to be taken silently from the checkpoint).
    for (flag, value) in [("--lr", "1e-3"), ("--lr-w2", "0"), ("--n", "7")] {
        let out = run_mpi(
            2,
            &["train", "--resume", ck_s, "--steps", "50", flag, value],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag}: {err}");
        assert!(err.contains("disagrees with checkpoint"), "{flag}: {err}");
    }
    // And a single process's checkpoint is not resumed by an MPI job.
    let single = dir.path().join("one.ckpt");
    let out = common::run(&[
        "train",
        "--steps",
        "5",
        "--quiet",
        "--checkpoint",
        single.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let out = run_mpi(2, &["train", "--resume", single.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("resume it without mpirun"), "{err}");
}

#[test]
fn overlapped_and_blocking_allreduces_agree() {
    // 601 rows: 301 and 300 per rank; two threads per rank make two shards
    // of 150-151 rows, each in two blocks of 128 and a short one: the
    // deferred g_w1 GEMMs, their pieces and the per-shard folding are all
    // exercised.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let shape = [
        "--n",
        "601",
        "--d-in",
        "300",
        "--hidden",
        "40",
        "--d-out",
        "7",
        "--steps",
        "30",
        "--lr",
        "1e-6",
        "--quiet",
        "--threads",
        "2",
    ];
    let variants: [&[&str]; 4] = [
        &["--allreduce", "blocking"],
        &["--allreduce", "overlap", "--allreduce-pieces", "1"],
        &["--allreduce", "overlap", "--allreduce-pieces", "7"],
        &["--allreduce", "overlap", "--allreduce-pieces", "300"],
    ];
    let mut results = Vec::new();
    for (i, v) in variants.iter().enumerate() {
        let (l, w) = (d.join(format!("{i}.txt")), d.join(format!("{i}.npz")));
        let out = run_mpi(2, &train_args(&shape, v, &l, &w));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{v:?}: {err}");
        let how = if v[1] == "blocking" {
            "blocking".to_string()
        } else {
            format!("overlapped, g_w1 in {} pieces", v[3])
        };
        assert!(err.contains(&how), "{v:?}: {err}");
        results.push((losses(&l), weights(&w)));
    }
    let (l0, w0) = &results[0];
    assert!(l0[29] < l0[0]);
    // One piece runs the very same BLAS calls as the blocking sum: the same
    // bits. More pieces split g_w1's last GEMM by rows of its output, which
    // OpenBLAS does not promise to round alike (its Haswell kernels do not:
    // the losses then part in the last digit from step 8 on; measured there:
    // losses 4.2e-16 relative, weights 4.6e-16; 0 with Cooperlake's):
    // within 1e-12, as for one process.
    let (l1, w1) = &results[1];
    assert_eq!(l1, l0, "one piece: losses differ from the blocking sum");
    assert!(w1 == w0, "one piece: weights differ from the blocking sum");
    for (v, (l, w)) in variants.iter().zip(&results).skip(2) {
        let gap = max_rel_gap(l0, l);
        assert!(
            gap < 1e-12,
            "{v:?}: losses differ from the blocking sum by {gap:e}"
        );
        let wg = max_rel_diff(&w0.0, &w.0, 1.0).max(max_rel_diff(&w0.1, &w.1, 1.0));
        assert!(
            wg < 1e-12,
            "{v:?}: weights differ from the blocking sum by {wg:e}"
        );
    }

    // And the same as one process on all 601 rows.
    let (sl, sw) = (d.join("one.txt"), d.join("one.npz"));
    let out = common::run(&train_args(&shape, &[], &sl, &sw));
    assert!(out.status.success(), "{}", common::stderr(&out));
    let gap = max_rel_gap(l0, &losses(&sl));
    assert!(gap < 1e-12, "losses differ from one process by {gap:e}");
    let (s1, s2) = weights(&sw);
    let wg = max_rel_diff(&w0.0, &s1, 1.0).max(max_rel_diff(&w0.1, &s2, 1.0));
    assert!(wg < 1e-12, "weights differ from one process by {wg:e}");
}

#[test]
fn sweep_under_mpirun_reports_ranks_allreduce_and_scaling() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("rep");
    let out = run_mpi(
        2,
        &[
            "sweep",
            "--n",
            "64,65",
            "--d-in",
            "50",
            "--hidden",
            "20",
            "--d-out",
            "3",
            "--dtype",
            "f32,f64",
            "--warmup",
            "2",
            "--min-steps",
            "12",
            "--budget",
            "0",
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Rank 0 alone prints the report.
    assert_eq!(stdout.matches("Data-parallel (MPI)").count(), 1, "{stdout}");
    common::assert_matches_schema(&out_dir.join("report.json"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap())
            .unwrap();
    let points = report["points"].as_array().unwrap();
    assert_eq!(points.len(), 4);
    for p in points {
        let m = &p["mpi"];
        assert_eq!(m["ranks"], 2, "{p}");
        assert_eq!(m["allreduce"], "overlap");
        let steps = p["steps_timed"].as_u64().unwrap() as usize;
        assert!(steps >= 12, "{p}");
        let ar = m["allreduce_ms"]["samples"].as_array().unwrap();
        assert_eq!(ar.len(), steps);
        assert!(ar.iter().all(|v| v.as_f64().unwrap() > 0.0), "{p}");
        let single = m["single_rank_ms"]["median"].as_f64().unwrap();
        let step = p["ms_per_step"]["median"].as_f64().unwrap();
        let eff = m["scaling_efficiency"].as_f64().unwrap();
        assert!(single > 0.0 && step > 0.0, "{p}");
        assert!((eff - single / (2.0 * step)).abs() < 1e-9 * eff, "{p}");
        assert!(!m["library"].as_str().unwrap().is_empty());
    }
    let csv = std::fs::read_to_string(out_dir.join("report.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "ranks").unwrap();
    for row in csv.lines().skip(1) {
        assert_eq!(row.split(',').nth(col), Some("2"), "{row}");
        assert_eq!(row.split(',').count(), header.len(), "{row}");
    }

    // A flag that makes no sense under mpirun fails clearly.
    let out = run_mpi(2, &["sweep", "--processes", "2", "--budget", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--processes cannot be used under mpirun"),
        "{err}"
    );
}

#[test]
fn ranks_train_on_their_rows_of_an_init_file() {
    // Each rank reads only its rows of x and y from the file (and all of
    // w1, w2); together they train exactly what one process trains on the
    // whole file.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let shape = twolayer::Shape::new(67, 40, 12, 5).unwrap();
    let init = d.join("init.npz");
    twolayer::npz::save_init(
        &init,
        &twolayer::Data::<f64>::random(shape, 9),
        &twolayer::Weights::<f64>::random(shape, 9),
    )
    .unwrap();
    let common_args = [
        "train",
        "--init",
        init.to_str().unwrap(),
        "--steps",
        "50",
        "--lr",
        "1e-4",
        "--quiet",
    ];
    let (ml, sl) = (d.join("mpi.txt"), d.join("one.txt"));
    let mut a = common_args.to_vec();
    a.extend(["--losses", ml.to_str().unwrap()]);
    let out = run_mpi(2, &a);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut a = common_args.to_vec();
    a.extend(["--losses", sl.to_str().unwrap()]);
    let out = common::run(&a);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let (lm, ls) = (losses(&ml), losses(&sl));
    assert_eq!(lm.len(), 50);
    let gap = max_rel_gap(&lm, &ls);
    assert!(gap < 1e-12, "losses differ from one process by {gap:e}");
    assert!(lm[49] < lm[0]);
}

/// `mpirun -np 1 twolayer A : -np 1 twolayer B`: two ranks given
/// different commands.
fn run_mpmd(a: &[&str], b: &[&str]) -> Output {
    let exe = env!("CARGO_BIN_EXE_twolayer");
    let mut c = Command::new("mpirun");
    c.args(["--mca", "btl", "self,vader", "-np", "1", exe])
        .args(a)
        .args([":", "-np", "1", exe])
        .args(b)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    wait_with_watchdog(c.spawn().unwrap(), Duration::from_secs(60))
}

#[test]
fn ranks_that_disagree_on_the_run_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    // Node-local --init files that differ in one value.
    let shape = twolayer::Shape::new(6, 5, 4, 3).unwrap();
    let (d, w) = (
        twolayer::Data::<f64>::random(shape, 1),
        twolayer::Weights::<f64>::random(shape, 1),
    );
    let (i1, i2) = (dir.path().join("a.npz"), dir.path().join("b.npz"));
    twolayer::npz::save_init(&i1, &d, &w).unwrap();
    let mut d2 = d.clone();
    d2.x[[0, 0]] += 1.0;
    twolayer::npz::save_init(&i2, &d2, &w).unwrap();
    let base = [
        "train", "--n", "8", "--d-in", "6", "--hidden", "4", "--d-out", "2", "-q",
    ];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    let cases: Vec<(Vec<&str>, Vec<&str>, &str)> = vec![
        (
            with(&["--steps", "5"]),
            with(&["--steps", "6"]),
            "number of steps",
        ),
        (
            with(&["--dtype", "f32"]),
            with(&["--dtype", "f64"]),
            "shape and dtype",
        ),
        (
            with(&["--lr", "1e-6"]),
            with(&["--lr", "2e-6"]),
            "learning rates",
        ),
        (
            with(&["--allreduce", "blocking"]),
            with(&["--allreduce", "overlap"]),
            "--allreduce",
        ),
        (
            vec!["train", "-q", "--init", i1.to_str().unwrap()],
            vec!["train", "-q", "--init", i2.to_str().unwrap()],
            "data (by SHA-256)",
        ),
    ];
    for (a, b, want) in cases {
        let out = run_mpmd(&a, &b);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{a:?} / {b:?} ran: {err}");
        assert!(
            err.contains(&format!("the ranks disagree on the {want}")),
            "{a:?} / {b:?}: {err}"
        );
    }
    // The same command on copies of the same data at other paths runs.
    let i3 = dir.path().join("copy.npz");
    std::fs::copy(&i1, &i3).unwrap();
    let out = run_mpmd(
        &[
            "train",
            "-q",
            "--steps",
            "3",
            "--init",
            i1.to_str().unwrap(),
        ],
        &[
            "train",
            "-q",
            "--steps",
            "3",
            "--init",
            i3.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ctrl_c_to_mpirun_keeps_the_continue_with_line() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("c.ckpt");
    let child = endless_job(&ck);
    std::thread::sleep(Duration::from_millis(2500));
    // SAFETY: kill(2) on our own child, mpirun.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = wait_with_watchdog(child, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    // mpirun passes the Ctrl-C on to the ranks as SIGTERM.
    assert!(err.contains("stopped by SIG"), "{err}");
    assert!(
        err.contains(&format!(
            "continue with: twolayer train --resume {}",
            ck.display()
        )),
        "{err}"
    );
    assert!(twolayer::checkpoint::AnyCheckpoint::read(&ck).is_ok());
}

/// `--dtype bf16` under mpirun: each rank's f32 gradients of its rows,
/// summed across ranks, then the update with the bf16 copies — the
/// one-process bf16 run's losses to f32 rounding (the sums over rows are
/// split between the ranks, and bf16 roundings of the intermediates
/// follow from them), and every rank's weights the same. Without
/// `cblas_sbgemm`: the one-line error, from rank 0 and the job ending.
#[test]
fn bf16_over_two_ranks_follows_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let shape = [
        "--n", "130", "--d-in", "60", "--hidden", "24", "--d-out", "3", "--steps", "40", "--lr",
        "1e-5", "--dtype", "bf16", "--bias", "--quiet",
    ];
    let (ml, mw) = (d.join("mpi.txt"), d.join("mpi.npz"));
    let out = run_mpi(2, &train_args(&shape, &[], &ml, &mw));
    let err = String::from_utf8_lossy(&out.stderr);
    if !twolayer::blas::Library::current().bf16_gemm {
        assert!(!out.status.success());
        assert!(err.contains("cblas_sbgemm"), "{err}");
        return;
    }
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("bf16")
            && err.contains("2 MPI ranks")
            && err.contains("weights identical on all ranks"),
        "{err}"
    );
    let (sl, _) = one_process(d, &shape);
    let (lm, ls) = (losses(&ml), losses(&sl));
    assert_eq!(lm.len(), 40);
    let gap = max_rel_gap(&lm, &ls);
    assert!(gap < 1e-5, "bf16 losses differ from one process by {gap:e}");
    assert!(lm[39] < 0.9 * lm[0], "{} → {}", lm[0], lm[39]);

    // The data-parallel sweep times the same bf16 step.
    let out_dir = d.join("sweep");
    let out = run_mpi(
        2,
        &[
            "sweep",
            "--n",
            "64",
            "--d-in",
            "50",
            "--hidden",
            "20",
            "--d-out",
            "3",
            "--dtype",
            "bf16",
            "--warmup",
            "1",
            "--min-steps",
            "4",
            "--budget",
            "0",
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = twolayer::bench::report::Report::read(&out_dir.join("report.json")).unwrap();
    assert_eq!(r.points.len(), 1);
    assert_eq!(r.points[0].run.dtype, twolayer::Dtype::Bf16);
    assert_eq!(r.points[0].ranks(), 2);
}

#[test]
fn ranks_take_the_plan_from_the_wisdom_file_and_the_checkpoint() {
    // Before: every rank ran the built-in rule's plan, whatever the
    // wisdom file or the resumed checkpoint held, where one process with
    // the same flags took theirs.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (w, ck) = (d.join("w.json"), d.join("run.ck"));
    let (w, ck) = (w.to_str().unwrap(), ck.to_str().unwrap());
    let shape = ["--n", "64", "--d-in", "9", "--hidden", "8", "--d-out", "2"];
    let mut tune = vec![
        "tune",
        "--form",
        "primal",
        "--step-mode",
        "explicit",
        "--threads",
        "1",
        "--wisdom",
        w,
        "-q",
    ];
    tune.extend(shape);
    let o = common::run(&tune);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let mut train = vec!["train", "--threads", "1", "--wisdom", w, "-q"];
    train.extend(shape);
    let mut fresh = train.clone();
    fresh.extend(["--steps", "3", "--checkpoint", ck]);
    // Unbound ranks: the wisdom file's key names the cores a process may
    // run on, and mpirun's default binding gives each rank one (a file
    // tuned in one process then applies to none of them, as it should).
    let unbound = |args: &[&str]| {
        let child = Command::new("mpirun")
            .args([
                "-np",
                "2",
                "--bind-to",
                "none",
                "--mca",
                "btl",
                "self,vader",
            ])
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("TWOLAYER_PEAK", "")
            .arg(env!("CARGO_BIN_EXE_twolayer"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_with_watchdog(child, HANG)
    };
    let o = unbound(&fresh);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(
        common::stderr(&o).contains("plan from wisdom"),
        "{}",
        common::stderr(&o)
    );
    let o = unbound(&["train", "--resume", ck, "--steps", "5", "-q"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(
        common::stderr(&o).contains("plan from the checkpoint"),
        "{}",
        common::stderr(&o)
    );
}
