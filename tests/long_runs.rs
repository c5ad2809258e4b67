//! Long runs that survive: checkpoints written atomically, runs killed with
//! SIGKILL and resumed to bit-identical results, Ctrl-C and SIGTERM, bad
//! checkpoints refused, a diverging run's last checkpoint intact, and
//! determinism across runs and thread counts.

mod common;

use common::{bin, run, stderr};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use twolayer::checkpoint::AnyCheckpoint;

/// The run every test here resumes: long enough to be killed mid-way.
const ARGS: &[&str] = &[
    "--n",
    "256",
    "--d-in",
    "300",
    "--hidden",
    "50",
    "--d-out",
    "5",
    "--lr",
    "1e-7",
    "--seed",
    "3",
    "--threads",
    "2",
];

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn train(extra: &[&str]) -> std::process::Output {
    let mut a = vec!["train", "--quiet"];
    a.extend_from_slice(ARGS);
    a.extend_from_slice(extra);
    run(&a)
}

#[test]
fn killed_runs_resume_bit_identically() {
    // In both forms: the dual one's checkpoints carry w1_0 and C.
    for form in ["primal", "dual"] {
        killed_runs_resume_bit_identically_in(form);
    }
}

fn killed_runs_resume_bit_identically_in(form: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (full_l, full_w) = (d.join("full.txt"), d.join("full.npz"));
    let out = train(&[
        "--steps",
        "400",
        "--losses",
        s(&full_l),
        "--save",
        s(&full_w),
        "--form",
        form,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let want_l = std::fs::read(&full_l).unwrap();
    let want_w = std::fs::read(&full_w).unwrap();

    // Kill at several points, chosen from the clock so they differ run to
    // run and land at different steps.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize;
    for (i, frac) in [0.15, 0.45, 0.8].iter().enumerate() {
        let ck = d.join(format!("run{i}.ckpt"));
        let kill_at = ((400.0 * frac) as usize + seed % 37) % 390 + 5;
        let mut child = bin()
            .args(["train"])
            .args(ARGS)
            .args([
                "--steps",
                "400",
                "--checkpoint",
                s(&ck),
                "--checkpoint-every",
                "7",
                "--form",
                form,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Read the loss lines until step `kill_at` has been printed, then
        // SIGKILL: no chance to clean up.
        let stdout = child.stdout.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        for line in BufReader::new(stdout).lines() {
            let t: usize = line.unwrap().split(' ').next().unwrap().parse().unwrap();
            if t >= kill_at || Instant::now() > deadline {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // The checkpoint is whole (it is only ever renamed into place).
        if !ck.exists() {
            continue; // killed before the first checkpoint: nothing to resume
        }
        let c = AnyCheckpoint::read(&ck).expect("a killed run leaves a valid checkpoint");
        let done = c.header().steps_done;
        assert_eq!(c.header().form().name(), form);
        assert!(
            done.is_multiple_of(7) || done == 400,
            "checkpoint at step {done}"
        );
        // At most the temporary files that killed writes were filling,
        // named after the checkpoint (.NAME.XXXXXX.tmp, removed by its next
        // successful write).
        let temps: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(
            temps
                .iter()
                .all(|n| n.starts_with(".run") && n.contains(".ckpt.") && n.ends_with(".tmp")),
            "{temps:?}"
        );

        let (l, w) = (d.join(format!("res{i}.txt")), d.join(format!("res{i}.npz")));
        let out = run(&[
            "train",
            "--quiet",
            "--resume",
            s(&ck),
            "--losses",
            s(&l),
            "--save",
            s(&w),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        if done == 400 {
            // Killed after its last checkpoint (a fast step can finish all
            // 400 before the kill lands): the resume has nothing to do and
            // says so, writing no files.
            assert!(stderr(&out).contains("nothing to do"), "{}", stderr(&out));
            assert!(!l.exists() && !w.exists());
            continue;
        }
        assert_eq!(
            std::fs::read(&l).unwrap(),
            want_l,
            "{form}: loss history differs after resuming from step {done}"
        );
        assert_eq!(
            std::fs::read(&w).unwrap(),
            want_w,
            "{form}: weights differ after resuming from step {done}"
        );
    }
}

#[test]
fn sigint_sigterm_and_sighup_stop_at_a_step_boundary_and_save_everything() {
    for (sigs, code, name) in [
        (&[libc::SIGINT][..], 130, "SIGINT"),
        (&[libc::SIGTERM], 143, "SIGTERM"),
        // A closed terminal: once ended the run with nothing saved.
        (&[libc::SIGHUP], 129, "SIGHUP"),
        // The first signal is the one reported (SIGINT used to win).
        (&[libc::SIGTERM, libc::SIGINT], 143, "SIGTERM"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (ck, l, w) = (d.join("c.ckpt"), d.join("l.txt"), d.join("w.npz"));
        let child = bin()
            .args([
                "train", "--n", "2000", "--lr", "1e-9", "--steps", "1000000", "--quiet",
            ])
            .args([
                "--checkpoint",
                s(&ck),
                "--checkpoint-every",
                "100000",
                "--losses",
                s(&l),
                "--save",
                s(&w),
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        for &sig in sigs {
            unsafe { libc::kill(child.id() as i32, sig) };
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{err}");
        assert!(
            err.contains(&format!("stopped by {name} after step")),
            "{err}"
        );
        assert!(
            err.contains(&format!("twolayer train --resume {}", ck.display())),
            "{err}"
        );
        let c = AnyCheckpoint::read(&ck).unwrap();
        let done = c.header().steps_done;
        assert!(done > 0 && done < 1_000_000);
        let losses = std::fs::read_to_string(&l).unwrap();
        assert_eq!(
            losses.lines().count(),
            done,
            "losses file and checkpoint disagree"
        );
        assert!(w.exists());
    }
}

#[test]
fn sigterm_acts_at_once_while_stdout_is_blocked() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("c.ckpt");
    // Stdout is a pipe nobody reads: it fills within a few hundred steps.
    let mut child = bin()
        .args([
            "train",
            "--lr",
            "1e-9",
            "--steps",
            "100000000",
            "--checkpoint",
            s(&ck),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        // A watchdog for a hang, not a timing check.
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("SIGTERM waited for the pipe to drain");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(143), "{err}");
    assert!(err.contains("stopped by SIGTERM"), "{err}");
    assert!(AnyCheckpoint::read(&ck).unwrap().header().steps_done > 0);
}

#[test]
fn a_signal_during_set_up_ends_the_run_with_a_message() {
    // Hashing a 400 MB --init file takes a while: the signal lands in it.
    let dir = tempfile::tempdir().unwrap();
    let init = dir.path().join("big.npz");
    let shape = twolayer::Shape::new(50_000, 1000, 2, 1).unwrap();
    twolayer::npz::save_init(
        &init,
        &twolayer::Data::<f64>::random(shape, 0),
        &twolayer::Weights::<f64>::random(shape, 0),
    )
    .unwrap();
    let child = bin()
        .args(["train", "--init", s(&init), "--steps", "3", "--quiet"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("stopped by SIGINT"), "{err}");
}

#[test]
fn bad_checkpoints_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ck = d.join("c.ckpt");
    let out = train(&["--steps", "20", "--checkpoint", s(&ck)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let good = std::fs::read(&ck).unwrap();

    let check = |bytes: &[u8], needle: &str| {
        let p = d.join("bad.ckpt");
        std::fs::write(&p, bytes).unwrap();
        let out = run(&["train", "--resume", s(&p)]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle), "expected '{needle}' in {err}");
        assert!(out.stdout.is_empty());
    };
    // The state's slot (the first, after the 24-byte prefix), then the
    // log (the file's last bytes: its losses).
    let mut flipped = good.clone();
    flipped[24 + 8 + 40] ^= 1;
    check(&flipped, "no intact state");
    let mut flipped = good.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 1;
    check(&flipped, "log does not match its digest");
    check(&good[..good.len() - 100], "truncated");
    check(&good[..5000], "truncated or garbled");
    check(
        b"PK\x03\x04not a checkpoint at all, a zip perhaps",
        "not a twolayer checkpoint",
    );
    let mut v3 = good.clone();
    v3[8] = 3;
    check(
        &v3,
        "format version 3, but this twolayer reads versions 1 and 2",
    );

    // Flags that contradict the checkpoint.
    for (flags, needle) in [
        (&["--d-in", "301"][..], "--d-in 301 disagrees"),
        (&["--dtype", "f32"], "--dtype f32 disagrees"),
        (&["--lr", "1e-3"], "--lr-w1 0.001 disagrees"),
        (&["--steps", "5"], "fewer than the 20 steps"),
    ] {
        let mut a = vec!["train", "--resume", s(&ck)];
        a.extend_from_slice(flags);
        let out = run(&a);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
    }
}

#[test]
fn a_changed_data_file_is_refused_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let init = d.join("init.npz");
    let shape = twolayer::Shape::new(16, 8, 4, 2).unwrap();
    twolayer::npz::save_init(
        &init,
        &twolayer::Data::<f64>::random(shape, 1),
        &twolayer::Weights::random(shape, 1),
    )
    .unwrap();
    let ck = d.join("c.ckpt");
    let out = run(&[
        "train",
        "--quiet",
        "--init",
        s(&init),
        "--steps",
        "10",
        "--checkpoint",
        s(&ck),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&["train", "--quiet", "--resume", s(&ck), "--steps", "20"]);
    assert!(out.status.success(), "{}", stderr(&out));
    twolayer::npz::save_init(
        &init,
        &twolayer::Data::<f64>::random(shape, 2),
        &twolayer::Weights::random(shape, 1),
    )
    .unwrap();
    let out = run(&["train", "--quiet", "--resume", s(&ck), "--steps", "30"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("has changed since the checkpoint"),
        "{}",
        stderr(&out)
    );
}

/// A run that diverges (lr 1e-6 at N = 4096, within a few steps:
/// docs/design.md §1), checkpointing to `ck` every `every` steps; its
/// stderr, after checking it failed.
fn diverging_run(ck: &Path, every: &str) -> String {
    let out = run(&[
        "train",
        "--n",
        "4096",
        "--quiet",
        "--checkpoint",
        s(ck),
        "--checkpoint-every",
        every,
    ]);
    assert_eq!(out.status.code(), Some(1));
    stderr(&out)
}

#[test]
fn a_diverging_run_keeps_its_last_finite_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("c.ckpt");
    let err = diverging_run(&ck, "1");
    let step: usize = err
        .split("at step ")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let c = AnyCheckpoint::read(&ck).expect("the last checkpoint is intact");
    assert_eq!(
        c.header().steps_done,
        step,
        "checkpoint should hold every finite step"
    );
    match c {
        AnyCheckpoint::F64(c) => {
            assert!(c.losses.iter().all(|l| l.is_finite()));
            assert!(c
                .weights
                .w1
                .iter()
                .chain(c.weights.w2.iter())
                .all(|v| v.is_finite()));
        }
        AnyCheckpoint::F32(_) => panic!("dtype changed"),
    }
    // The message says where and how to go on.
    assert!(
        err.contains(&format!("--resume {} --lr RATE --change-lr", ck.display())),
        "{err}"
    );
    // It can be resumed with the same settings (and diverges again at the
    // same step, deterministically).
    let out = run(&["train", "--quiet", "--resume", s(&ck)]);
    assert!(
        stderr(&out).contains(&format!("at step {step}:")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_run_that_diverges_before_its_first_checkpoint_says_there_is_none() {
    // Before: "dv.ck holds the state after ? steps" for a file never
    // written.
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("dv.ck");
    let err = diverging_run(&ck, "1000");
    assert!(err.contains("training diverged"), "{err}");
    assert!(
        err.contains("diverged before its first checkpoint was written") && !err.contains('?'),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!ck.exists());
}

#[test]
fn a_resumed_run_changes_its_rate_only_when_told_to() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("c.ckpt");
    // Diverging at N = 4096 and lr 1e-6 (by step 6), checkpointed after
    // step 1: before the blow-up (after 2 steps no rate recovers).
    let first = run(&[
        "train",
        "--n",
        "4096",
        "--quiet",
        "--steps",
        "1",
        "--checkpoint",
        s(&ck),
    ]);
    assert!(first.status.success(), "{}", stderr(&first));
    let out = run(&[
        "train",
        "--quiet",
        "--resume",
        s(&ck),
        "--steps",
        "40",
        "--lr",
        "1e-9",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("add --change-lr"), "{}", stderr(&out));
    let out = run(&["train", "--quiet", "--resume", s(&ck), "--change-lr"]);
    assert!(
        stderr(&out).contains("needs the new rate"),
        "{}",
        stderr(&out)
    );
    // The reference rate diverges from here; a smaller one goes on to the
    // end, and the checkpoint records it.
    let out = run(&["train", "--quiet", "--resume", s(&ck), "--steps", "40"]);
    assert!(
        stderr(&out).contains("training diverged"),
        "{}",
        stderr(&out)
    );
    let first = run(&[
        "train",
        "--n",
        "4096",
        "--quiet",
        "--steps",
        "1",
        "--checkpoint",
        s(&ck),
        // A fresh run over the checkpoint the lines above diverged from.
        "--replace-checkpoint",
    ]);
    assert!(first.status.success(), "{}", stderr(&first));
    let out = run(&[
        "train",
        "--quiet",
        "--resume",
        s(&ck),
        "--steps",
        "40",
        "--lr",
        "1e-9",
        "--change-lr",
        "--checkpoint",
        s(&ck),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let c = AnyCheckpoint::read(&ck).unwrap();
    assert_eq!(c.header().steps_done, 40);
    assert_eq!((c.header().lr_w1, c.header().lr_w2), (1e-9, 1e-9));
}

#[test]
fn same_seed_and_threads_give_bit_identical_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.npz"), dir.path().join("b.npz"));
    for p in [&a, &b] {
        assert!(train(&["--steps", "50", "--save", s(p)]).status.success());
    }
    assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
}

#[test]
fn thread_counts_agree_to_1e12_over_100_steps() {
    use twolayer::{Data, LearningRates, Shape, StepMode, Trainer, Weights};
    let shape = Shape::REFERENCE;
    let train_on = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut t = Trainer::new(
                Data::<f64>::random(shape, 5),
                Weights::random(shape, 5),
                LearningRates::uniform(1e-6),
                StepMode::Fused,
            )
            .unwrap();
            t.run(100, |_, _, _| std::ops::ControlFlow::Continue(()))
                .unwrap();
            (t.losses().to_vec(), t.weights().clone())
        })
    };
    let (l1, w1) = train_on(1);
    let (l2, w2) = train_on(2);
    let (l3, w3) = train_on(3);
    for (l, w) in [(&l2, &w2), (&l3, &w3)] {
        let gap = l1
            .iter()
            .zip(l)
            .map(|(a, b)| (a - b).abs() / a.abs())
            .fold(0.0, f64::max);
        assert!(gap < 1e-12, "losses differ by {gap:e} across thread counts");
        let wg =
            common::max_rel_diff(&w.w1, &w1.w1, 1.0).max(common::max_rel_diff(&w.w2, &w1.w2, 1.0));
        assert!(wg < 1e-12, "weights differ by {wg:e} across thread counts");
    }
    assert!(l1[99] < l1[0]);
}

#[test]
fn a_resume_under_another_kernel_set_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("c.ck");
    let ck = ck.to_str().unwrap();
    let o = common::run(&[
        "train",
        "--n",
        "8",
        "--d-in",
        "6",
        "--hidden",
        "4",
        "--d-out",
        "2",
        "--steps",
        "3",
        "--checkpoint",
        ck,
        "-q",
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let path = std::path::Path::new(ck);
    let AnyCheckpoint::F64(written) = AnyCheckpoint::read(path).unwrap() else {
        panic!("an f64 run writes an f64 checkpoint")
    };
    let used = written
        .header
        .blas_core
        .clone()
        .expect("the checkpoint records the kernel set");
    let lib = written
        .header
        .blas_library
        .clone()
        .expect("the checkpoint records the library");
    assert_eq!(lib, twolayer::blas::Library::current().key());
    // Under the kernels and library the run used: no warning.
    let o = common::bin()
        .args(["train", "--resume", ck, "--steps", "5", "-q"])
        .output()
        .unwrap();
    let e = common::stderr(&o);
    assert!(o.status.success() && !e.contains("warning"), "{e}");
    // A checkpoint written under another kernel set, and one written with
    // another OpenBLAS library (a native build against Debian's generic
    // one): each warned about by name. (The header is edited, since a
    // native build has one kernel set and ignores OPENBLAS_CORETYPE.)
    let other = if used == "Haswell" {
        "Sandybridge"
    } else {
        "Haswell"
    };
    let mut edited = written.clone();
    edited.header.blas_core = Some(other.into());
    edited.header.blas_library = Some("0.3.21-DYNAMIC_ARCH-elsewhere".into());
    edited.write(path).unwrap();
    let o = common::bin()
        .args(["train", "--resume", ck, "--steps", "7", "-q"])
        .output()
        .unwrap();
    let e = common::stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains(&format!(
            "resuming under OpenBLAS's {used} kernels, the run used {other} kernels"
        )),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "resuming with OpenBLAS {lib}, the run used OpenBLAS 0.3.21-DYNAMIC_ARCH-elsewhere"
        )),
        "{e}"
    );
}

#[test]
fn a_resume_whose_data_would_not_fit_is_refused_before_allocating() {
    // A checkpoint of a seeded run of 10^9 rows of 1000 inputs: its data
    // (8 TB) would be regenerated on resume.
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("huge.ck");
    let shape = twolayer::Shape::new(1, 1000, 2, 1).unwrap();
    common::one_step_checkpoint(
        1_000_000_000,
        shape,
        1e-9,
        twolayer::checkpoint::DataSource::Seeded { seed: 0 },
    )
    .write(&ck)
    .unwrap();
    let out = run(&["train", "--resume", s(&ck), "-q"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("memory"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn a_new_run_does_not_replace_another_runs_checkpoint_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("long.ck");
    let ck = ck.to_str().unwrap();
    let small = [
        "--n", "8", "--d-in", "6", "--hidden", "4", "--d-out", "2", "-q",
    ];
    let o = run(&[&["train", "--steps", "30", "--checkpoint", ck][..], &small].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let before = std::fs::read(ck).unwrap();
    // Another run onto it: refused, one line naming both ways on, the
    // checkpoint untouched.
    let o = run(&[
        &["train", "--steps", "5", "--seed", "9", "--checkpoint", ck][..],
        &small,
    ]
    .concat());
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert!(
        e.contains("a checkpoint of another run (30 of 30 steps done)"),
        "{e}"
    );
    assert!(
        e.contains("--resume") && e.contains("--replace-checkpoint"),
        "{e}"
    );
    assert_eq!(std::fs::read(ck).unwrap(), before);
    // Resuming it writes over it, as it should; and said outright, a new
    // run replaces it.
    let o = run(&[
        "train",
        "--resume",
        ck,
        "--steps",
        "40",
        "--checkpoint",
        ck,
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&[
        &[
            "train",
            "--steps",
            "5",
            "--seed",
            "9",
            "--checkpoint",
            ck,
            "--replace-checkpoint",
        ][..],
        &small,
    ]
    .concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let c = AnyCheckpoint::read(Path::new(ck)).unwrap();
    assert_eq!(c.header().steps_done, 5);
}

#[test]
fn a_run_that_keeps_no_loss_file_holds_a_bounded_history() {
    // ~8 bytes a step were kept for ever (716 MiB after 93 million steps
    // of a tiny shape): with a window, the history stays within twice it,
    // however many steps run, and the step count and last loss stay right.
    use twolayer::{Data, LearningRates, Shape, StepMode, Trainer, Weights};
    let shape = Shape::new(2, 3, 2, 1).unwrap();
    let mut t = Trainer::new(
        Data::<f64>::random(shape, 1),
        Weights::random(shape, 1),
        LearningRates::uniform(1e-3),
        StepMode::Fused,
    )
    .unwrap()
    .keep_latest_losses(1000);
    let mut all = Vec::new();
    t.run(250_000, |_, _, loss| {
        all.push(loss);
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(t.steps_done(), 250_000);
    assert!(
        t.losses().len() >= 1000 && t.losses().len() <= 2000,
        "{}",
        t.losses().len()
    );
    assert_eq!(t.last_loss(), all.last().copied());
    let from = t.steps_done() - 1000;
    assert_eq!(t.losses_since(from).unwrap(), &all[from..]);
    assert!(t.losses_since(0).is_none());
    // Every loss kept, for a checkpoint or a loss file: the older ones
    // move to disk, memory holds at most twice the spill size, and reading
    // them all gives every loss in order, bit for bit.
    let mut t = Trainer::new(
        Data::<f64>::random(shape, 1),
        Weights::random(shape, 1),
        LearningRates::uniform(1e-3),
        StepMode::Fused,
    )
    .unwrap()
    .spill_losses_after(1000)
    .keep_in_memory(10);
    let mut every = Vec::new();
    let mut most = 0;
    t.run(25_000, |t, _, loss| {
        every.push(loss);
        most = most.max(t.losses().len());
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    assert!(most <= 1000, "{most} losses in memory at once");
    let mut read = Vec::new();
    t.for_each_loss(&mut |c| {
        read.extend_from_slice(c);
        Ok(())
    })
    .unwrap();
    assert_eq!(read.len(), 25_000);
    assert!(read
        .iter()
        .zip(&every)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    assert!(t.losses_since(t.steps_done() - 10).is_some());
    // The binary bounds it whenever no output needs every loss; with
    // --losses every loss is written.
    let dir = tempfile::tempdir().unwrap();
    let l = dir.path().join("l.txt");
    let small = [
        "--n", "2", "--d-in", "3", "--hidden", "2", "--d-out", "1", "-q", "--lr", "1e-3",
    ];
    let o = run(&[
        &["train", "--steps", "70000", "--losses", l.to_str().unwrap()][..],
        &small,
    ]
    .concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&l).unwrap().lines().count(), 70000);
}

#[test]
fn a_run_past_the_spill_size_writes_every_loss_and_resumes_bit_for_bit() {
    // More steps than the history keeps in memory (2^20): the older
    // losses go to disk, and the loss file and the checkpoint still hold
    // every one; a resume from that checkpoint gives the unbroken run's
    // file byte for byte.
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let small = [
        "--n", "2", "--d-in", "3", "--hidden", "2", "--d-out", "1", "-q", "--lr", "1e-3",
    ];
    let steps = twolayer::train::SPILL_AT + 50_000;
    let (ck, part, full) = (p("c.ck"), p("part.txt"), p("full.txt"));
    let o = run(&[
        &["train", "--steps", &steps.to_string(), "--checkpoint", &ck][..],
        &["--checkpoint-every", "100000000"],
        &small,
    ]
    .concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let c = AnyCheckpoint::read(Path::new(&ck)).unwrap();
    assert_eq!(c.header().steps_done, steps);
    let total = (steps + 1000).to_string();
    let o = run(&[
        "train", "--resume", &ck, "--steps", &total, "--losses", &part, "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&[&["train", "--steps", &total, "--losses", &full][..], &small].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (std::fs::read(&part).unwrap(), std::fs::read(&full).unwrap());
    assert_eq!(a.iter().filter(|&&c| c == b'\n').count(), steps + 1000);
    assert!(
        a == b,
        "the resumed run's losses differ from the unbroken run's"
    );
}

#[test]
fn a_checkpoint_that_cannot_be_resumed_from_is_refused_whatever_it_is() {
    // One rule: before, `--checkpoint -` was refused while /dev/null and
    // /dev/stdout were taken (and then named in "continue with --resume").
    for target in ["-", "/dev/null", "/dev/stdout"] {
        let out = run(&["train", "--steps", "3", "--checkpoint", target, "-q"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{target}: {err}");
        assert!(
            err.contains("a checkpoint is the file a run resumes from"),
            "{target}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{target}: {err}");
    }
}

#[test]
fn a_resumed_run_checkpoints_to_its_file_and_replaces_no_other_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.ck"), dir.path().join("b.ck"));
    for p in [&a, &b] {
        let o = run(&["train", "--steps", "20", "--checkpoint", s(p), "-q"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    // Before: the resumed run wrote no checkpoint at all, so the
    // "continue with --resume" a stop prints lost everything since.
    let o = run(&["train", "--resume", s(&a), "--steps", "40", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(AnyCheckpoint::read(&a).unwrap().header().steps_done, 40);
    // Before: another run's checkpoint was replaced silently.
    let before = std::fs::read(&b).unwrap();
    let o = run(&[
        "train",
        "--resume",
        s(&a),
        "--steps",
        "60",
        "--checkpoint",
        s(&b),
        "-q",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("already holds a checkpoint of another run"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(&b).unwrap(), before);
    let o = run(&[
        "train",
        "--resume",
        s(&a),
        "--steps",
        "60",
        "--checkpoint",
        s(&b),
        "--replace-checkpoint",
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(AnyCheckpoint::read(&b).unwrap().header().steps_done, 60);
}

#[test]
fn a_checkpoint_of_format_version_1_still_resumes() {
    // tests/fixtures/seeded-v1.ck: written by twolayer before format
    // version 2 (main 0f61978: `train --n 8 --d-in 6 --hidden 5 --d-out 3
    // --lr 1e-3 --steps 30 --checkpoint seeded-v1.ck`). Resumed to 60
    // steps, it continues as an unbroken run of 60 does (to rounding: the
    // file's 30 steps ran under the kernels of the machine that wrote it),
    // and its next checkpoint is of version 2.
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("c.ck");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seeded-v1.ck");
    std::fs::copy(&fixture, &ck).unwrap();
    assert_eq!(std::fs::read(&ck).unwrap()[8], 1);
    let out = run(&["train", "--resume", s(&ck), "--steps", "60", "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let resumed = AnyCheckpoint::read(&ck).unwrap();
    assert_eq!(std::fs::read(&ck).unwrap()[8], 2);
    let u = dir.path().join("u.ck");
    let out = run(&[
        "train",
        "--n",
        "8",
        "--d-in",
        "6",
        "--hidden",
        "5",
        "--d-out",
        "3",
        "--lr",
        "1e-3",
        "--steps",
        "60",
        "--quiet",
        "--checkpoint",
        s(&u),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (AnyCheckpoint::F64(a), AnyCheckpoint::F64(b)) = (
        resumed,
        AnyCheckpoint::read(&dir.path().join("u.ck")).unwrap(),
    ) else {
        panic!("f64 checkpoints")
    };
    assert_eq!(a.losses.len(), 60);
    for (t, (x, y)) in a.losses.iter().zip(&b.losses).enumerate() {
        assert!((x - y).abs() <= 1e-12 * y.abs(), "step {t}: {x} vs {y}");
    }
    // A minibatch run's version 1 file keeps its epochs and best weights.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data-v1.ck");
    let AnyCheckpoint::F64(c) = AnyCheckpoint::read(&fixture).unwrap() else {
        panic!("f64")
    };
    let m = c.header.minibatch.as_ref().unwrap();
    assert_eq!(m.history.len(), 3);
    assert_eq!(m.history[2].epoch, 3);
    assert!(c.best.is_some() && c.weights.biases.is_some());
    assert_eq!(c.losses.len(), 9);
}

#[test]
fn two_runs_onto_one_checkpoint_at_once_are_refused() {
    // Before, two fresh runs started together with one --checkpoint both
    // exited 0, each having written over the other's checkpoints. The
    // file is now the first run's for as long as it runs; a resume of it
    // meanwhile is refused too.
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("c.ck");
    let lock = dir.path().join(".c.ck.lock");
    let first = bin()
        .args([
            "train", "--quiet", "--n", "8", "--d-in", "6", "--hidden", "5", "--d-out", "3",
        ])
        .args([
            "--lr",
            "1e-6",
            "--steps",
            "100000000",
            "--checkpoint",
            s(&ck),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Until the first run holds its lock and has checkpointed: no clock,
    // only whether it is still running (it runs for minutes at most).
    let mut first = first;
    while !(lock.exists() && ck.exists()) {
        if let Some(status) = first.try_wait().unwrap() {
            panic!("the first run ended ({status}) without taking its lock");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for args in [
        &[
            "train",
            "--quiet",
            "--steps",
            "10",
            "--checkpoint",
            s(&ck),
            "--replace-checkpoint",
        ][..],
        &[
            "train",
            "--quiet",
            "--resume",
            s(&ck),
            "--steps",
            "200000000",
        ],
    ] {
        let out = run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("is in use by another twolayer run"), "{err}");
        assert!(err.contains(&format!("process {}", first.id())), "{err}");
    }
    unsafe { libc::kill(first.id() as i32, libc::SIGINT) };
    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(!lock.exists());
    // Once it has ended, the file is free to go on from.
    let out = run(&["train", "--quiet", "--resume", s(&ck), "--steps", "1"]);
    assert!(
        stderr(&out).contains("fewer than") || out.status.success(),
        "{}",
        stderr(&out)
    );
    let c = AnyCheckpoint::read(&ck).unwrap();
    let out = run(&[
        "train",
        "--quiet",
        "--resume",
        s(&ck),
        "--steps",
        &(c.header().steps_done + 5).to_string(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}
