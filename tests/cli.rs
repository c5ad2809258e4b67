//! The real binary, as a user runs it: the default experiment, its flags,
//! and every kind of bad input, each ending in one clear line on stderr and
//! a non-zero exit, with no output file left behind.

mod common;

use common::{bin, parse_losses, run, stderr};
use ndarray::{Array1, Array2};
use ndarray_npy::{NpzWriter, WriteNpyExt};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use twolayer::npz::save_init;
use twolayer::{Data, Shape, Weights};

/// Asserts a failed run: the exit code, one line on stderr, and that the
/// line contains every one of `needles`.
fn assert_fails(args: &[&str], code: i32, needles: &[&str]) {
    let out = run(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert_eq!(
        err.lines().count(),
        1,
        "{args:?} printed more than one line: {err}"
    );
    assert!(err.starts_with("twolayer: error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: expected '{n}' in: {err}");
    }
    assert!(out.stdout.is_empty(), "{args:?} trained anyway");
}

fn small_init(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let shape = Shape::new(8, 6, 4, 2).unwrap();
    save_init(
        &p,
        &Data::<f64>::random(shape, 0),
        &Weights::random(shape, 0),
    )
    .unwrap();
    p
}

/// Writes an .npz holding the given named f64 arrays.
fn npz_with(p: &Path, arrays: &[(&str, Array2<f64>)]) {
    let mut w = NpzWriter::new(std::fs::File::create(p).unwrap());
    for (n, a) in arrays {
        w.add_array(*n, a).unwrap();
    }
    w.finish().unwrap();
}

fn arrays(n: usize, d: usize, h: usize, o: usize) -> Vec<(&'static str, Array2<f64>)> {
    vec![
        ("x", Array2::ones((n, d))),
        ("y", Array2::ones((n, o))),
        ("w1", Array2::ones((d, h))),
        ("w2", Array2::ones((h, o))),
    ]
}

#[test]
fn default_run_is_the_reference_experiment() {
    let out = run(&["train"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let losses = parse_losses(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(losses.len(), 500);
    assert_eq!(
        losses.iter().map(|l| l.0).collect::<Vec<_>>(),
        (0..500).collect::<Vec<_>>()
    );
    assert!(
        losses[499].1 < 1e-3 * losses[0].1,
        "did not learn: {:?}",
        losses[499]
    );
    let err = stderr(&out);
    // One summary line (and, with OPENBLAS_CORETYPE below the CPU, the
    // note that says so and its measured cost; see the kernel-set test).
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| {
            !l.starts_with("twolayer: note: OpenBLAS runs")
                && !l.starts_with("twolayer: measured: OpenBLAS's own choice")
        })
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    for s in [
        "500 steps of (64, 1000, 100, 10) f64",
        "ms/step",
        "GFLOP/s",
        "threads",
        "OpenBLAS",
    ] {
        assert!(err.contains(s), "summary lacks '{s}': {err}");
    }
}

#[test]
fn same_seed_and_threads_give_bit_identical_losses() {
    let a = run(&["train", "--steps", "50", "--threads", "2", "--seed", "9"]);
    let b = run(&["train", "--steps", "50", "--threads", "2", "--seed", "9"]);
    let c = run(&["train", "--steps", "50", "--threads", "2", "--seed", "10"]);
    assert!(a.status.success() && b.status.success());
    assert_eq!(a.stdout, b.stdout);
    assert_ne!(a.stdout, c.stdout);
}

#[test]
fn logging_flags() {
    let out = run(&[
        "train",
        "--steps",
        "250",
        "--log-every",
        "100",
        "--dtype",
        "f32",
    ]);
    assert!(out.status.success());
    let ts: Vec<usize> = parse_losses(&String::from_utf8_lossy(&out.stdout))
        .iter()
        .map(|l| l.0)
        .collect();
    assert_eq!(ts, [0, 100, 200, 249]);
    let out = run(&["train", "--steps", "5", "--quiet"]);
    assert!(out.status.success() && out.stdout.is_empty());
    assert!(stderr(&out).contains("5 steps"));
}

#[test]
fn outputs_are_written_and_readable() {
    let dir = tempfile::tempdir().unwrap();
    let (w, l) = (dir.path().join("w.npz"), dir.path().join("l.txt"));
    let out = run(&[
        "train",
        "--steps",
        "7",
        "--n",
        "9",
        "--d-in",
        "5",
        "--hidden",
        "4",
        "--d-out",
        "3",
        "--save",
        w.to_str().unwrap(),
        "--losses",
        l.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let file = parse_losses(&std::fs::read_to_string(&l).unwrap());
    let printed = parse_losses(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(file, printed);
    let mut npz = ndarray_npy::NpzReader::new(std::fs::File::open(&w).unwrap()).unwrap();
    let w1: Array2<f64> = npz.by_name("w1").unwrap();
    let w2: Array2<f64> = npz.by_name("w2").unwrap();
    assert_eq!((w1.dim(), w2.dim()), ((5, 4), (4, 3)));
    // No temporary files left beside them.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn bad_init_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = |p: &Path| p.to_str().unwrap().to_string();

    let missing = d.join("nope.npz");
    assert_fails(
        &["train", "--init", &s(&missing)],
        1,
        &["cannot read", "nope.npz", "No such file"],
    );

    let garbled = d.join("garbled.npz");
    std::fs::write(&garbled, b"this is not a zip archive at all").unwrap();
    assert_fails(&["train", "--init", &s(&garbled)], 1, &["not a valid .npz"]);

    let three = d.join("three.npz");
    npz_with(&three, &arrays(4, 3, 2, 1)[..3]);
    assert_fails(
        &["train", "--init", &s(&three)],
        1,
        &["missing array 'w2'", "x, y, w1"],
    );

    let mism = d.join("mismatch.npz");
    let mut a = arrays(4, 3, 2, 1);
    a[2].1 = Array2::ones((5, 2));
    npz_with(&mism, &a);
    assert_fails(
        &["train", "--init", &s(&mism)],
        1,
        &["shape mismatch", "x is 4×3", "w1 is 5×2"],
    );

    let ints = d.join("ints.npz");
    let mut w = NpzWriter::new(std::fs::File::create(&ints).unwrap());
    for (n, shape) in [("x", (4, 3)), ("y", (4, 1)), ("w1", (3, 2)), ("w2", (2, 1))] {
        w.add_array(n, &Array2::<i32>::zeros(shape)).unwrap();
    }
    w.finish().unwrap();
    assert_fails(
        &["train", "--init", &s(&ints)],
        1,
        &["array 'x'", "unsupported dtype '<i4'"],
    );

    let mixed = d.join("mixed.npz");
    let mut w = NpzWriter::new(std::fs::File::create(&mixed).unwrap());
    w.add_array("x", &Array2::<f64>::ones((4, 3))).unwrap();
    w.add_array("y", &Array2::<f32>::ones((4, 1))).unwrap();
    w.add_array("w1", &Array2::<f64>::ones((3, 2))).unwrap();
    w.add_array("w2", &Array2::<f64>::ones((2, 1))).unwrap();
    w.finish().unwrap();
    assert_fails(
        &["train", "--init", &s(&mixed)],
        1,
        &["differ in dtype", "y is f32"],
    );

    let flat = d.join("flat.npz");
    let mut w = NpzWriter::new(std::fs::File::create(&flat).unwrap());
    w.add_array("x", &Array1::<f64>::ones(12)).unwrap();
    w.finish().unwrap();
    assert_fails(
        &["train", "--init", &s(&flat)],
        1,
        &["array 'x'", "must be 2-D"],
    );

    let empty = d.join("empty.npz");
    npz_with(&empty, &arrays(0, 3, 2, 1));
    assert_fails(
        &["train", "--init", &s(&empty)],
        1,
        &["n must be at least 1"],
    );

    let nan = d.join("nan.npz");
    let mut a = arrays(4, 3, 2, 1);
    a[1].1[[2, 0]] = f64::NAN;
    npz_with(&nan, &a);
    assert_fails(
        &["train", "--init", &s(&nan)],
        1,
        &["array 'y'", "non-finite", "[2, 0]"],
    );
    let inf = d.join("inf.npz");
    let mut a = arrays(4, 3, 2, 1);
    a[3].1[[1, 0]] = f64::NEG_INFINITY;
    npz_with(&inf, &a);
    assert_fails(
        &["train", "--init", &s(&inf)],
        1,
        &["array 'w2'", "non-finite"],
    );

    let ok = small_init(d, "ok.npz");
    assert_fails(
        &["train", "--init", &s(&ok), "--n", "9"],
        1,
        &["--n 9 disagrees", "n = 8"],
    );
    // An explicit --dtype casts the file, and says so: the same losses as
    // the file's arrays rounded to f32 beforehand.
    let cast = run(&[
        "train",
        "--init",
        &s(&ok),
        "--dtype",
        "f32",
        "--steps",
        "20",
    ]);
    let e = stderr(&cast);
    assert!(cast.status.success(), "{e}");
    assert!(
        e.contains("holds f64 arrays; training in f32 as --dtype asks"),
        "{e}"
    );
    assert!(e.contains(") f32 in"), "{e}");
    let shape = Shape::new(8, 6, 4, 2).unwrap();
    let f32_file = d.join("ok32.npz");
    save_init(
        &f32_file,
        &Data::<f64>::random(shape, 0).cast::<f32>(),
        &Weights::<f64>::random(shape, 0).cast::<f32>(),
    )
    .unwrap();
    let direct = run(&["train", "--init", &s(&f32_file), "--steps", "20"]);
    assert!(direct.status.success(), "{}", stderr(&direct));
    assert_eq!(
        cast.stdout, direct.stdout,
        "a cast run differs from the pre-rounded file"
    );
}

#[test]
fn a_header_claiming_a_terabyte_is_refused_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("huge.npz");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, shape) in [
        ("x", "(400000, 400000)"),
        ("y", "(400000, 1)"),
        ("w1", "(400000, 2)"),
        ("w2", "(2, 1)"),
    ] {
        let text = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}\n");
        zip.start_file(format!("{name}.npy"), opts).unwrap();
        zip.write_all(b"\x93NUMPY\x01\x00").unwrap();
        zip.write_all(&(text.len() as u16).to_le_bytes()).unwrap();
        zip.write_all(text.as_bytes()).unwrap();
        zip.write_all(&[0u8; 64]).unwrap();
    }
    zip.finish().unwrap();
    assert_fails(
        &["train", "--init", p.to_str().unwrap()],
        1,
        &["array 'x'", "1280000000000 bytes", "truncated"],
    );
}

#[test]
fn sizes_that_do_not_fit_are_refused_before_allocating() {
    assert_fails(
        &["train", "--n", "100000000", "--d-in", "100000"],
        1,
        &["needs", "bytes", "available"],
    );
}

#[test]
fn nonsense_flags_are_usage_errors() {
    for (args, needle) in [
        (&["train", "--n", "0"][..], "--n"),
        (&["train", "--hidden", "-3"], "--hidden"),
        (&["train", "--lr", "abc"], "--lr"),
        (&["train", "--lr", "-1e-6"], "--lr"),
        (&["train", "--lr", "inf"], "--lr"),
        (&["train", "--steps", "0"], "--steps"),
        (&["train", "--dtype", "f16"], "unsupported dtype 'f16'"),
        (&["train", "--threads", "0"], "--threads"),
        (&["train", "--log-every", "x"], "--log-every"),
        (&["train", "--bogus"], "--bogus"),
        (
            &["train", "--step", "10"],
            "unexpected argument '--step' found; tip: a similar argument exists: '--steps'",
        ),
        (&["frobnicate"], "frobnicate"),
    ] {
        assert_fails(args, 2, &[needle]);
    }
    assert_fails(
        &["train", "--threads", "5000"],
        1,
        &["--threads must be between 1 and 1024"],
    );
}

#[test]
fn unwritable_outputs_fail_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("no/such/dir/w.npz");
    assert_fails(
        &["train", "--save", nowhere.to_str().unwrap()],
        1,
        &["cannot write", "does not exist"],
    );
    assert_fails(
        &["train", "--losses", dir.path().to_str().unwrap()],
        1,
        &["is a directory"],
    );
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let mut perm = std::fs::metadata(&ro).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o500);
    std::fs::set_permissions(&ro, perm).unwrap();
    // Root ignores directory permissions; only check when they bite.
    if tempfile::tempfile_in(&ro).is_err() {
        assert_fails(
            &["train", "--save", ro.join("w.npz").to_str().unwrap()],
            1,
            &["cannot write"],
        );
    } else {
        // As root: a path below a regular file cannot be written by anyone.
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        assert_fails(
            &["train", "--save", file.join("w.npz").to_str().unwrap()],
            1,
            &["cannot write"],
        );
    }
}

#[test]
fn divergence_names_the_step_and_suggests_a_smaller_lr() {
    // The reference's lr 1e-6 diverges once N·D_in·H is large (docs/design.md §1).
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.npz");
    let out = run(&[
        "train",
        "--n",
        "4096",
        "--quiet",
        "--save",
        w.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("training diverged") && err.contains("at step "),
        "{err}"
    );
    assert!(err.contains("try a smaller --lr (it was 1e-6)"), "{err}");
    assert!(!w.exists(), "weights of a diverged run were saved");
    // The same shape with a smaller rate trains.
    let out = run(&[
        "train", "--n", "4096", "--quiet", "--steps", "20", "--lr", "1e-8",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_huge_step_count_trains_instead_of_reserving_its_loss_history() {
    // --steps 10^10 and u64::MAX used to reserve 80 GB / overflow before
    // the first step (exit 134 / 101). Now they train until stopped.
    for steps in ["10000000000", "18446744073709551615"] {
        let child = common::bin()
            .args([
                "train", "--steps", steps, "--n", "1", "--d-in", "1", "--hidden", "1", "--d-out",
                "1", "--lr", "0", "--quiet",
            ])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        // SAFETY: signals a child this test started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(143), "{steps}: {err}");
        assert!(
            err.contains("stopped by SIGTERM after step") && err.contains(steps),
            "{steps}: {err}"
        );
    }
}

#[test]
fn outputs_that_name_an_input_or_each_other_are_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let init = d.join("d.npz");
    let shape = Shape::new(8, 5, 4, 2).unwrap();
    save_init(
        &init,
        &Data::<f64>::random(shape, 1),
        &Weights::random(shape, 2),
    )
    .unwrap();
    let before = std::fs::read(&init).unwrap();
    let i = init.to_str().unwrap();
    let p = d.join("p").to_str().unwrap().to_string();
    // Another spelling of the same file is the same file.
    let same_init = format!("{}/./d.npz", d.display());
    for (args, needle) in [
        (
            vec!["--init", i, "--checkpoint", i],
            "--checkpoint names the same file as --init",
        ),
        (
            vec!["--init", i, "--save", &same_init],
            "--save names the same file as --init",
        ),
        (
            vec!["--save", &p, "--checkpoint", &p],
            "--checkpoint names the same file as --save",
        ),
        (
            vec!["--save", &p, "--losses", &p],
            "--losses names the same file as --save",
        ),
    ] {
        let mut a = vec!["train", "--steps", "3"];
        a.extend(args);
        assert_fails(&a, 1, &[needle]);
        assert_eq!(std::fs::read(&init).unwrap(), before, "{a:?}");
        assert!(!Path::new(&p).exists(), "{a:?}");
    }
    // Resuming: the checkpoint may be rewritten (atomically), but not by
    // another output.
    let ck = d.join("c.ck");
    let c = ck.to_str().unwrap();
    let out = run(&["train", "--steps", "3", "-q", "--checkpoint", c]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_fails(
        &["train", "--resume", c, "--steps", "5", "--losses", c],
        1,
        &["--losses names the same file as --resume"],
    );
    let out = run(&[
        "train",
        "--resume",
        c,
        "--steps",
        "5",
        "-q",
        "--checkpoint",
        c,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn special_files_are_written_in_place_never_replaced() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("losses.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: creates a FIFO at a path this test owns.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    let out = run(&[
        "train",
        "--steps",
        "4",
        "-q",
        "--losses",
        fifo.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = reader.join().unwrap();
    assert_eq!(parse_losses(&text).len(), 4, "{text}");
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    // A full device reports the failure instead of losing it.
    let out = run(&["train", "--steps", "2", "-q", "--save", "/dev/full"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot write /dev/full"),
        "{}",
        stderr(&out)
    );
    // One line, with the reason (not a second "ZipWriter drop failed").
    let e = stderr(&out);
    assert!(e.contains("No space left on device"), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert!(std::fs::metadata("/dev/full")
        .unwrap()
        .file_type()
        .is_char_device());
}

#[test]
fn a_planted_temporary_name_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let victim = d.join("victim");
    std::fs::write(&victim, "victim").unwrap();
    // The temporary names of earlier versions, planted as links.
    for name in [".w.npz.tmp", ".w.npz.tmp.tmp"] {
        std::os::unix::fs::symlink(&victim, d.join(name)).unwrap();
    }
    let w = d.join("w.npz");
    let out = run(&["train", "--steps", "2", "-q", "--save", w.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim");
    let m = std::fs::symlink_metadata(&w).unwrap();
    assert!(m.file_type().is_file(), "w.npz is not a regular file");
}

#[test]
fn a_full_stderr_or_stdout_loses_messages_not_the_run() {
    // `2>/dev/full` used to make every command panic (exit 101), even
    // after a successful run.
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let out = common::bin()
        .args(["train", "--steps", "3"])
        .stderr(full())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(parse_losses(&String::from_utf8_lossy(&out.stdout)).len(), 3);
    let dir = tempfile::tempdir().unwrap();
    let r = common::tiny_sweep(dir.path(), "9", "1");
    let report = dir.path().join("report.json");
    assert!(!r.points.is_empty());
    for (stdout, stderr) in [(true, false), (false, true), (true, true)] {
        let mut cmd = common::bin();
        cmd.args([
            "compare",
            report.to_str().unwrap(),
            report.to_str().unwrap(),
        ]);
        if stdout {
            cmd.stdout(full());
        }
        if stderr {
            cmd.stderr(full());
        }
        let out = cmd.output().unwrap();
        // A full stderr loses messages only; a full stdout loses the
        // comparison itself, which a gate must not read as a pass (exit 2,
        // compare's "could not compare").
        assert_eq!(
            out.status.code(),
            Some(if stdout { 2 } else { 0 }),
            "stdout full {stdout}, stderr full {stderr}"
        );
    }
}

#[test]
fn a_failed_stdout_stops_at_a_step_boundary_and_still_writes_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (w, l, c) = (d.join("w.npz"), d.join("l.txt"), d.join("c.ck"));
    let args = [
        "train",
        "--steps",
        "1000000",
        "--n",
        "8",
        "--d-in",
        "5",
        "--hidden",
        "4",
        "--d-out",
        "2",
        "--lr",
        "1e-4",
        "--save",
        w.to_str().unwrap(),
        "--losses",
        l.to_str().unwrap(),
        "--checkpoint",
        c.to_str().unwrap(),
    ];
    // A full disk under `> train.log`: exit 1, every file written (they
    // were all lost before).
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = common::bin().args(args).stdout(full).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("No space left") && err.contains("every other output was written"),
        "{err}"
    );
    let steps = std::fs::read_to_string(&l).unwrap().lines().count();
    assert!(steps > 0 && steps < 1_000_000, "{steps}");
    assert!(w.exists() && c.exists());
    // A reader that has seen enough (`| head -3`): a quiet end, files written.
    for f in [&w, &l, &c] {
        std::fs::remove_file(f).unwrap();
    }
    let mut child = common::bin()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let lines = std::io::BufReader::new(child.stdout.take().unwrap())
            .lines()
            .take(3);
        assert_eq!(lines.count(), 3);
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let steps = std::fs::read_to_string(&l).unwrap().lines().count();
    assert!(steps < 1_000_000, "{steps}");
    assert!(w.exists() && c.exists());
}

/// Runs the binary under coreutils' `timeout`: a hang is exit 124, not a
/// hung test.
fn run_bounded(args: &[&str]) -> std::process::Output {
    std::process::Command::new("timeout")
        .arg("20")
        .arg(env!("CARGO_BIN_EXE_twolayer"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn fifos_devices_and_folders_as_inputs_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let f = fifo.to_str().unwrap();
    let d = dir.path().to_str().unwrap();
    // A checkpoint whose data file is /dev/zero (hashing it never ended).
    let shape = Shape::new(4, 3, 2, 1).unwrap();
    let ck = dir.path().join("zero.ck");
    common::one_step_checkpoint(
        4,
        shape,
        1e-6,
        twolayer::checkpoint::DataSource::File {
            path: "/dev/zero".into(),
            path_hex: None,
            sha256: "0".repeat(64),
        },
    )
    .write(&ck)
    .unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["train", "--init", f], "it is a FIFO"),
        (vec!["train", "--init", d], "it is a directory"),
        (vec!["train", "--data", f], "it is a FIFO"),
        (vec!["train", "--resume", f], "it is a FIFO"),
        (
            vec!["train", "--resume", ck.to_str().unwrap()],
            "/dev/zero: it is a character device",
        ),
        (
            vec!["sweep", "--grid", "/dev/zero"],
            "it is a character device",
        ),
        (vec!["sweep", "--grid", f], "it is a FIFO"),
        (vec!["compare", "/dev/zero", f], "it is a character device"),
        (vec!["eval", "--weights", f, "--data", f], "it is a FIFO"),
    ];
    for (args, want) in cases {
        let o = run_bounded(&args);
        let e = stderr(&o);
        assert_ne!(o.status.code(), Some(124), "{args:?} hung");
        assert_ne!(o.status.code(), Some(0), "{args:?}: {e}");
        assert!(e.contains(want), "{args:?}: {e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{args:?}: {e}");
    }
}

#[test]
fn the_summary_tells_what_ran_not_what_was_asked() {
    // OpenBLAS caps threads at its build's maximum: the summary says so.
    let o = run(&[
        "train",
        "--threads",
        "200",
        "--steps",
        "2",
        "--n",
        "512",
        "--hidden",
        "600",
        "-q",
    ]);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    let n: usize = e
        .split("OpenBLAS ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no OpenBLAS thread count in {e}"));
    let config = twolayer::blas::config();
    let max: usize = config
        .split("MAX_THREADS=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);
    assert!(
        n <= max && n < 200,
        "{n} threads on a build capped at {max}: {e}"
    );
    // A resume of a finished run ran nothing and says so.
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("c.ck");
    let ck = ck.to_str().unwrap();
    let o = run(&[
        "train",
        "--steps",
        "3",
        "--n",
        "8",
        "--checkpoint",
        ck,
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["train", "--resume", ck, "-q"]);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains("nothing to do: 3 of 3 steps were already done"),
        "{e}"
    );
    assert!(!e.contains("GFLOP/s"), "{e}");
}

/// A build without MPI started by mpirun as several copies refuses, instead
/// of running the whole job in every copy, all writing the same files.
/// (The `mpi` build trains data-parallel there: tests/distributed.rs.)
#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_refuses_to_run_as_several_copies() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("c.ck");
    let o = common::bin()
        .args([
            "train",
            "--steps",
            "3",
            "-q",
            "--checkpoint",
            ck.to_str().unwrap(),
        ])
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("started 2 copies of a twolayer built without MPI"),
        "{e}"
    );
    assert!(!ck.exists());
    // One copy under a launcher is just one process.
    let o = common::bin()
        .args(["train", "--steps", "3", "-q"])
        .env("OMPI_COMM_WORLD_SIZE", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_forced_kernel_set_below_the_cpu_is_named_and_its_alternative_checked() {
    // Only a generic (DYNAMIC_ARCH) build reads OPENBLAS_CORETYPE; a build
    // for this CPU has one kernel set, and nothing is forced below it.
    let avx512 = std::arch::is_x86_feature_detected!("avx512f")
        && !twolayer::blas::Library::current().native;
    let o = common::bin()
        .args(["train", "--steps", "2", "-q"])
        .env("OPENBLAS_CORETYPE", "Haswell")
        .output()
        .unwrap();
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    // Named when the CPU has more than the forced set, never otherwise.
    assert_eq!(
        e.contains("runs its Haswell (OPENBLAS_CORETYPE=Haswell) kernels, without the AVX-512"),
        avx512,
        "{e}"
    );
    // With the cost measured: OpenBLAS's own choice in a child process.
    assert_eq!(
        e.contains("measured: OpenBLAS's own choice here is"),
        avx512,
        "{e}"
    );
    let o = common::bin()
        .args(["train", "--steps", "2", "-q"])
        .env_remove("OPENBLAS_CORETYPE")
        .output()
        .unwrap();
    assert!(
        !stderr(&o).contains("note: OpenBLAS runs"),
        "{}",
        stderr(&o)
    );
    // `info` checks both its own GEMMs and, when forced below the CPU,
    // OpenBLAS's own choice in a child process.
    let o = common::bin()
        .args(["info"])
        .env("OPENBLAS_CORETYPE", "Haswell")
        .output()
        .unwrap();
    let text = String::from_utf8(o.stdout.clone()).unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(text.contains("GEMM check"), "{text}");
    assert_eq!(text.contains("own choice"), avx512, "{text}");
    if avx512 {
        assert!(text.contains("its results match plain loops"), "{text}");
    }
    // A sweep's report records it, with the measured cost; and OpenBLAS
    // threads left spinning (a long OPENBLAS_THREAD_TIMEOUT) are recorded
    // and named by train, in its summary and its --json.
    let dir = tempfile::tempdir().unwrap();
    let o = common::bin()
        .args([
            "sweep", "--n", "8", "--d-in", "12", "--hidden", "4", "--d-out", "3",
        ])
        .args(["--budget", "0", "--min-steps", "3", "--out"])
        .arg(dir.path())
        .env("OPENBLAS_CORETYPE", "Haswell")
        .env("OPENBLAS_THREAD_TIMEOUT", "28")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    common::assert_matches_schema(&dir.path().join("report.json"));
    let r = twolayer::bench::report::Report::read(&dir.path().join("report.json")).unwrap();
    let w = r.env.warnings.join("\n");
    assert!(
        w.contains("idle threads spin after each call (OPENBLAS_THREAD_TIMEOUT=28)"),
        "{w}"
    );
    assert_eq!(
        w.contains("measured: OpenBLAS's own choice here is"),
        avx512,
        "{w}"
    );
    assert_eq!(w.contains("without the AVX-512"), avx512, "{w}");
    let f = dir.path().join("s.json");
    let o = common::bin()
        .args(["train", "--steps", "2", "-q", "--json"])
        .arg(&f)
        .env("OPENBLAS_THREAD_TIMEOUT", "28")
        .output()
        .unwrap();
    assert!(stderr(&o).contains("idle threads spin"), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
    let w = s["environment_warnings"].to_string();
    assert!(w.contains("idle threads spin"), "{s}");
    let o = common::bin()
        .args(["train", "--steps", "2", "-q"])
        .output()
        .unwrap();
    assert!(!stderr(&o).contains("spin"), "{}", stderr(&o));
}

#[test]
fn version_completions_and_json_for_scripts() {
    let o = run(&["--version"]);
    assert!(o.status.success());
    let v = String::from_utf8(o.stdout).unwrap();
    assert!(v.starts_with("twolayer ") && v.contains("(commit "), "{v}");
    let o = run(&["completions", "bash"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = String::from_utf8(o.stdout).unwrap();
    assert!(
        c.contains("_twolayer") && c.contains("--val-fraction"),
        "{}",
        &c[..c.len().min(300)]
    );
    let o = run(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // info --json: one object with the environment and the rates.
    let o = run(&["info", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(j["gemm_gflops_f64"].as_f64().unwrap() > 0.0, "{j}");
    assert!(
        j["gemm_check_max_rel_error"].as_f64().unwrap() < 1e-12,
        "{j}"
    );
    assert!(j["env"]["openblas_core"].is_string(), "{j}");
    // train --json FILE: the summary, agreeing with the loss lines.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s.json");
    let o = run(&[
        "train",
        "--steps",
        "4",
        "--n",
        "16",
        "--json",
        f.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let losses = parse_losses(&String::from_utf8(o.stdout).unwrap());
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
    assert_eq!(s["steps"], 4, "{s}");
    assert_eq!(s["n"], 16, "{s}");
    assert_eq!(
        s["final_loss"].as_f64().unwrap(),
        losses.last().unwrap().1,
        "{s}"
    );
    assert!(s["ms_per_step"].as_f64().unwrap() > 0.0, "{s}");
}

#[test]
fn the_form_is_chosen_by_flops_refused_where_it_cannot_run_and_kept_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let form_of = |args: &[&str]| -> String {
        let f = d.join("s.json");
        let mut a = vec!["train", "-q", "--json", f.to_str().unwrap()];
        a.extend_from_slice(args);
        let o = run(&a);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        s["form"].as_str().unwrap().to_string()
    };
    // The seed shape runs dual by default; more rows than inputs, primal.
    assert_eq!(form_of(&["--steps", "20"]), "dual");
    assert_eq!(
        form_of(&["--steps", "3", "--n", "2048", "--d-in", "300"]),
        "primal"
    );
    assert_eq!(form_of(&["--steps", "20", "--form", "primal"]), "primal");
    assert_eq!(
        form_of(&["--steps", "3", "--n", "2048", "--d-in", "300", "--form", "dual"]),
        "dual"
    );
    // The summary says which form ran, and what its own products cost.
    let o = run(&["train", "--steps", "5"]);
    assert!(
        stderr(&o).contains("dual form: w1 = w1_0 + xᵀ·C"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("primal-equivalent"), "{}", stderr(&o));

    // Where it cannot run: one line; exit 2 for a value clap refuses, 1
    // for a combination the run refuses (as every such refusal).
    let data = d.join("data.npz");
    let o = run(&[
        "train",
        "--steps",
        "1",
        "--n",
        "8",
        "--d-in",
        "4",
        "--hidden",
        "3",
        "--d-out",
        "2",
        "--save",
        data.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (args, needle, code) in [
        (
            vec!["train", "--form", "dual", "--step-mode", "explicit"],
            "--step-mode explicit",
            1,
        ),
        (
            vec!["train", "--form", "dual", "--data", "/nonexistent.npz"],
            "one fixed batch",
            1,
        ),
        (
            vec!["train", "--form", "diagonal"],
            "possible values: auto, primal, dual",
            2,
        ),
    ] {
        let o = run(&args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
        assert!(e.contains(needle), "{args:?}: {e}");
    }

    // A resume keeps the checkpoint's form; asking for the other is an
    // error, as for every setting a resumed run keeps.
    let ck = d.join("run.ck");
    let o = run(&[
        "train",
        "-q",
        "--steps",
        "10",
        "--checkpoint",
        ck.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = twolayer::checkpoint::AnyCheckpoint::read(&ck).unwrap();
    assert_eq!(c.header().run.form, twolayer::step::Form::Dual);
    let o = run(&[
        "train",
        "-q",
        "--resume",
        ck.to_str().unwrap(),
        "--steps",
        "12",
        "--form",
        "primal",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--form primal disagrees"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        form_of(&["--resume", ck.to_str().unwrap(), "--steps", "12"]),
        "dual"
    );
}

#[test]
fn an_output_onto_the_wisdom_file_the_run_reads_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.json");
    std::fs::write(&w, "{\"version\": 1, \"entries\": []}").unwrap();
    let before = std::fs::read(&w).unwrap();
    for flag in ["--save", "--losses", "--json"] {
        let out = run(&[
            "train",
            "--steps",
            "2",
            "-q",
            "--wisdom",
            w.to_str().unwrap(),
            flag,
            w.to_str().unwrap(),
        ]);
        let e = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{flag}: {e}");
        // Named by its flag (main's rule for every subcommand's files).
        assert!(e.contains("names the same file as --wisdom"), "{flag}: {e}");
        assert_eq!(std::fs::read(&w).unwrap(), before, "{flag} wrote over it");
    }
}

#[test]
fn every_subcommand_fails_when_its_stdout_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let r = common::tiny_sweep(dir.path(), "9", "1");
    drop(r);
    let report = dir.path().join("report.json");
    let report = report.to_str().unwrap();
    let cases: Vec<(Vec<&str>, i32)> = vec![
        (vec!["info"], 1),
        (vec!["completions", "bash"], 1),
        (
            vec![
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
            ],
            1,
        ),
        (vec!["compare", report, report], 2),
    ];
    for (args, code) in cases {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = common::bin().args(&args).stdout(full).output().unwrap();
        let e = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {e}");
        assert!(
            e.contains("cannot write <stdout>") && e.contains("No space left"),
            "{args:?}: {e}"
        );
    }
}

#[test]
fn a_fifo_nobody_reads_or_writes_is_refused_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("f");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a path in our own temporary folder.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let f = fifo.to_str().unwrap();
    // As an output with no reader (it blocked in open(2) for ever), and
    // as predict's input with no writer.
    let w = dir.path().join("w.npz");
    let o = run(&["train", "--steps", "2", "-q", "--save", w.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cases: Vec<Vec<&str>> = vec![
        vec!["train", "--steps", "2", "-q", "--losses", f],
        vec![
            "predict",
            "--weights",
            w.to_str().unwrap(),
            "--x",
            f,
            "--out",
            "/dev/null",
        ],
    ];
    for args in cases {
        let mut child = common::bin()
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A watchdog for a hang, not a timing check: a refusal takes
        // milliseconds, a hang for ever.
        let status = common::wait_unless_hung(
            &mut child,
            std::time::Duration::from_secs(120),
            &format!("{args:?} on a FIFO"),
        );
        let mut e = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut e).unwrap();
        assert_eq!(status.code(), Some(1), "{args:?}: {e}");
        assert!(e.contains("FIFO"), "{args:?}: {e}");
    }
}

#[test]
fn an_output_that_is_a_link_to_a_file_is_refused_unless_followed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let target = d.join("real.txt");
    std::fs::write(&target, "before").unwrap();
    let link = d.join("link.txt");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let l = link.to_str().unwrap();
    let o = run(&["train", "--steps", "3", "-q", "--losses", l]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("symbolic link") && e.contains("--follow-links"),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "before");
    // Followed: the file it points to is written, the link stays a link.
    let o = run(&[
        "train",
        "--steps",
        "3",
        "-q",
        "--losses",
        l,
        "--follow-links",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        parse_losses(&std::fs::read_to_string(&target).unwrap()).len(),
        3
    );
    // /dev/stdout while stdout is a file: refused, /dev/stdout untouched.
    let log = std::fs::File::create(d.join("out.log")).unwrap();
    let o = common::bin()
        .args(["train", "--steps", "3", "-q", "--losses", "/dev/stdout"])
        .stdout(log)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(std::fs::symlink_metadata("/dev/stdout")
        .unwrap()
        .file_type()
        .is_symlink());
    // /dev/stdout on a pipe is written through, in place.
    let o = run(&["train", "--steps", "3", "-q", "--losses", "/dev/stdout"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(parse_losses(&String::from_utf8_lossy(&o.stdout)).len(), 3);
}

#[test]
fn info_and_sweep_say_when_other_processes_hold_the_cores() {
    // Two spinning processes, as many as these machines have cores, for
    // the length of an `info` and a small sweep: both name the load.
    let mut spin: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .unwrap()
        })
        .collect();
    let o = run(&["info", "--json"]);
    let dir = tempfile::tempdir().unwrap();
    let s = run(&[
        "sweep",
        "--n",
        "256",
        "--d-in",
        "200",
        "--hidden",
        "50",
        "--d-out",
        "3",
        "--budget",
        "0.5",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    for k in &mut spin {
        let _ = k.kill();
        let _ = k.wait();
    }
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let share = j["load"]["others_share"].as_f64().unwrap();
    let slowed = j["env"]["warnings"].to_string();
    assert!(
        share > 0.10 && slowed.contains("other processes used"),
        "{j}"
    );
    assert!(s.status.success(), "{}", stderr(&s));
    assert!(
        stderr(&s).contains("twolayer: warning: other processes used"),
        "{}",
        stderr(&s)
    );
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(
        md.contains("Slowed by the environment: other processes used"),
        "{md}"
    );
}

#[test]
fn more_threads_than_cores_is_said_once() {
    let cores = twolayer::threads::available_cores();
    let over = (cores + 1).to_string();
    let o = common::run(&["train", "--threads", &over, "--steps", "3", "-q"]);
    let e = common::stderr(&o);
    assert!(o.status.success(), "{e}");
    assert_eq!(e.matches("take turns").count(), 1, "{e}");
    let o = common::run(&["train", "--threads", "1", "--steps", "3", "-q"]);
    assert!(!common::stderr(&o).contains("take turns"));
}

#[test]
fn every_subcommand_takes_quiet_and_json_alike() {
    for sub in [
        "train", "sweep", "tune", "compare", "info", "predict", "eval",
    ] {
        let o = common::run(&[sub, "--help"]);
        let help = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            help.contains("-q, --quiet") && help.contains("--json [<FILE>]"),
            "`twolayer {sub}` lacks -q or --json [FILE]:\n{help}"
        );
    }
    // eval: --json alone is stdout, one JSON document; -q then leaves only it.
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let shape = Shape::new(20, 4, 3, 2).unwrap();
    let d = dir.path().join("d.npz");
    save_init(
        &d,
        &Data::<f64>::random(shape, 1),
        &Weights::random(shape, 2),
    )
    .unwrap();
    let w = dir.path().join("w.npz");
    let o = run(&[
        "train",
        "--init",
        &s(&d),
        "--steps",
        "2",
        "--save",
        &s(&w),
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&[
        "eval",
        "--weights",
        &s(&w),
        "--data",
        &s(&d),
        "--json",
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is JSON");
    assert_eq!(v["rows"], 20);
    let j = dir.path().join("e.json");
    let o = run(&[
        "eval",
        "--weights",
        &s(&w),
        "--data",
        &s(&d),
        "--json",
        &s(&j),
    ]);
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("rows 20"));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&j).unwrap()).unwrap();
    assert!(v["mse"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_run_shows_progress_on_a_terminal_only() {
    // `script` gives the run a terminal (util-linux, on every Debian).
    let bin = env!("CARGO_BIN_EXE_twolayer");
    let o = std::process::Command::new("script")
        .args([
            "-qec",
            &format!("{bin} train -q --steps 300 --form primal"),
            "/dev/null",
        ])
        .env("TWOLAYER_WISDOM", "")
        .output()
        .expect("script runs");
    let tty = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{tty}");
    assert!(
        tty.contains("/300 ("),
        "no progress bar on a terminal:\n{tty}"
    );
    // Not on a pipe, and not when the loss lines go to the terminal.
    let o = common::run(&["train", "-q", "--steps", "300", "--form", "primal"]);
    assert!(!stderr(&o).contains("/300 ("), "{}", stderr(&o));
}

#[test]
fn no_subcommand_writes_an_output_onto_an_input() {
    // The instances found by a hostile run, each through the one rule
    // main applies to every subcommand (commands/paths.rs, whose own test
    // walks every output × input pair of the definition): each exits 1
    // with one line naming both flags, and the input is untouched.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (w, data, h, g, wz) = (
        file("w.npz", "weights"),
        file("d.npz", "data"),
        file("h.jsonl", ""),
        file("g.toml", "n = [8]\n"),
        file("wz.json", "{}"),
    );
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (
            vec!["eval", "--weights", &w, "--data", &data, "--json", &w],
            &w,
            "--weights",
        ),
        (
            vec!["eval", "--weights", &w, "--data", &data, "--json", &data],
            &data,
            "--data",
        ),
        (vec!["history", &h, "--json", &h], &h, "FILE"),
        (vec!["sweep", "--grid", &g, "--json", &g], &g, "--grid"),
        (vec!["tune", "--grid", &g, "--json", &g], &g, "--grid"),
        (vec!["tune", "--grid", &g, "--wisdom", &g], &g, "--grid"),
        (
            vec!["sweep", "--wisdom", &wz, "--json", &wz],
            &wz,
            "--wisdom",
        ),
        (
            vec!["predict", "--weights", &w, "--x", &data, "--out", &data],
            &data,
            "--x",
        ),
    ];
    for (args, input, flag) in cases {
        let before = std::fs::read(input).unwrap();
        let o = run(&args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
        assert!(
            e.contains("names the same file as") && e.contains(flag),
            "{args:?}: {e}"
        );
        assert_eq!(e.trim_end().lines().count(), 1, "{args:?}: {e}");
        assert_eq!(std::fs::read(input).unwrap(), before, "{args:?}");
    }
}

#[test]
fn help_states_the_defaults_a_data_run_uses_and_a_resume_refuses_new_run_flags() {
    // Before: --help said batches of 64 and 1 epoch (a --data run uses 32
    // and 20), and a resume took --val-fraction, --val and --weights with
    // exit 0, ignoring them.
    let o = run(&["train", "--help"]);
    let h = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(h.contains("rows per step [default: 32"), "{h}");
    assert!(h.contains("[default: 20, unless --steps"), "{h}");
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("c.ck");
    let o = run(&[
        "train",
        "--steps",
        "3",
        "--checkpoint",
        ck.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for extra in [
        ["--val-fraction", "0.2"],
        ["--val", "v.npz"],
        ["--weights", "w.npz"],
    ] {
        let mut a = vec![
            "train",
            "--resume",
            ck.to_str().unwrap(),
            "--steps",
            "6",
            "-q",
        ];
        a.extend_from_slice(&extra);
        let o = run(&a);
        let e = stderr(&o);
        assert_ne!(o.status.code(), Some(0), "{a:?}: {e}");
        assert!(
            e.contains(extra[0]) && e.contains("sets up a new run"),
            "{a:?}: {e}"
        );
    }
}

#[test]
fn output_that_cannot_arrive_on_stdout_is_an_error() {
    // Before: --help and --version exited 0 into /dev/full, and with
    // stdout closed (`>&-`) `--save -` and `predict --out -` exited 0 with
    // the output gone.
    for flag in ["--help", "--version"] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let o = bin().arg(flag).stdout(full).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{flag}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("cannot write the help"),
            "{flag}: {}",
            stderr(&o)
        );
    }
    let exe = env!("CARGO_BIN_EXE_twolayer");
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.npz");
    let o = run(&["train", "--steps", "2", "-q", "--save", w.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let d = dir.path().join("x.npy");
    Array2::<f64>::zeros((3, 1000))
        .write_npy(std::fs::File::create(&d).unwrap())
        .unwrap();
    for cmd in [
        format!("{exe} train --steps 2 -q --save - >&-"),
        format!(
            "{exe} predict --weights {} --x {} --out - >&-",
            w.display(),
            d.display()
        ),
        format!("{exe} --help >&-"),
    ] {
        let o = std::process::Command::new("sh")
            .args(["-c", &cmd])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{cmd}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("standard output is closed"),
            "{cmd}: {}",
            stderr(&o)
        );
    }
}

/// A run that trains to its end and then cannot keep its result is the
/// worst failure there is: every such output is refused before the first
/// step (issue 35 class 3), and a final write that fails anyway (a disk
/// that filled during the run) leaves the weights in a rescue file named on
/// stderr, with a non-zero exit.
#[test]
fn outputs_that_cannot_be_written_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tiny = [
        "train", "-q", "--n", "8", "--d-in", "6", "--hidden", "5", "--d-out", "3",
    ];
    let train = |extra: &[&str]| {
        let mut a = tiny.to_vec();
        a.extend_from_slice(extra);
        run(&a)
    };
    // An immutable file: before, trained, then "Operation not permitted".
    let imm = d.join("imm.npz");
    std::fs::write(&imm, b"keep me").unwrap();
    let chattr = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&imm)
        .status();
    assert!(
        chattr.is_ok_and(|s| s.success()),
        "this test needs chattr +i (root, a filesystem with attributes): CI runs as root"
    );
    let o = train(&["--steps", "100000000", "--save", imm.to_str().unwrap()]);
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(&imm)
        .status();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("--save") && err.contains("immutable"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(std::fs::read(&imm).unwrap(), b"keep me");
    // A name whose temporary sibling was too long ("File name too long"
    // after the run): written now, the temporary name cut to fit.
    let long = d.join(format!("{}.npz", "w".repeat(240)));
    let o = train(&["--steps", "3", "--save", long.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    twolayer::npz::load_weights_file::<f64>(&long).unwrap();
    assert_eq!(
        std::fs::read_dir(d).unwrap().count(),
        2,
        "a temporary file was left"
    );
    // A pipe, which cannot seek (a .npz writer seeks: before, "Illegal
    // seek" after the run): written through a temporary copy.
    let o = bin()
        .args(tiny)
        .args(["--steps", "3", "--save", "/dev/stdout"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let piped = d.join("piped.npz");
    std::fs::write(&piped, &o.stdout).unwrap();
    twolayer::npz::load_weights_file::<f64>(&piped).unwrap();
    // A final write that fails anyway (/dev/full: no space left): the
    // weights go to a rescue file in $TMPDIR, named, and the exit is 1.
    let o = bin()
        .args(tiny)
        .args(["--steps", "3", "--save", "/dev/full"])
        .env("TMPDIR", d)
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let rescued = err
        .split("the trained weights are safe in ")
        .nth(1)
        .unwrap_or_else(|| panic!("no rescue file named: {err}"))
        .trim();
    assert!(rescued.starts_with(d.to_str().unwrap()), "{rescued}");
    let w = twolayer::npz::load_weights_file::<f64>(Path::new(rescued)).unwrap();
    let o = train(&[
        "--steps",
        "3",
        "--save",
        d.join("same.npz").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        w,
        twolayer::npz::load_weights_file::<f64>(&d.join("same.npz")).unwrap()
    );
}

#[test]
fn another_users_file_in_a_sticky_folder_is_refused_before_any_work() {
    // rename(2) over another user's file in a folder with the sticky bit
    // (/tmp) fails for anyone but root: before, the run trained and then
    // lost its weights. CI runs as root: this test makes a user to be the
    // other one, and runs twolayer as it.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test creates a user: run it as root (CI does)"
    );
    let user = "twolayer-test";
    let exists = || {
        std::process::Command::new("id")
            .arg(user)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !exists() {
        let made = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                user,
            ])
            .status()
            .unwrap();
        // Another test process may have made it meanwhile.
        assert!(
            made.success()
                || std::process::Command::new("id")
                    .arg(user)
                    .status()
                    .unwrap()
                    .success()
        );
    }
    let id = |flag: &str| -> u32 {
        let o = std::process::Command::new("id")
            .args([flag, user])
            .output()
            .unwrap();
        String::from_utf8(o.stdout).unwrap().trim().parse().unwrap()
    };
    let (uid, gid) = (id("-u"), id("-g"));
    // The binary and its OpenBLAS where that user can read them (a build
    // under /root is not), found through this process's own mappings.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let exe = d.join("twolayer");
    std::fs::copy(env!("CARGO_BIN_EXE_twolayer"), &exe).unwrap();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let lib = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("libopenblas"))
        .expect("OpenBLAS is mapped");
    let libdir = d.join("lib");
    std::fs::create_dir(&libdir).unwrap();
    std::fs::copy(lib, libdir.join("libopenblas.so.0")).unwrap();
    for p in [&libdir, &libdir.join("libopenblas.so.0")] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    // Root's file, in the sticky folder.
    let theirs = d.join("theirs.npz");
    std::fs::write(&theirs, b"root's").unwrap();
    // twolayer train, as that user.
    let as_user = |extra: &[&str]| {
        std::process::Command::new(&exe)
            .args(["train", "-q", "--n", "8", "--d-in", "6", "--hidden", "5"])
            .args(["--d-out", "3"])
            .args(extra)
            .env("LD_LIBRARY_PATH", &libdir)
            .env("HOME", d)
            .current_dir(d)
            .uid(uid)
            .gid(gid)
            .output()
            .unwrap()
    };
    let o = as_user(&["--steps", "100000000", "--save", theirs.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("belongs to another user") && err.contains("--save"),
        "{err}"
    );
    assert_eq!(std::fs::read(&theirs).unwrap(), b"root's");
    // Its own file there it may replace.
    let mine = d.join("mine.npz");
    let o = as_user(&["--steps", "3", "--save", mine.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_signal_while_standard_input_is_read_stops_at_once_and_leaves_no_copy() {
    // Before, SIGTERM and SIGINT were ignored until standard input ended,
    // and kill -9 during the copy left `.tmpXXXXXX` in $TMPDIR.
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let w = dir.path().join("w.npz");
    let o = run(&[
        "train",
        "-q",
        "--n",
        "8",
        "--d-in",
        "6",
        "--hidden",
        "5",
        "--d-out",
        "3",
        "--steps",
        "2",
        "--save",
        w.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let p = dir.path().join("p.npy");
    let commands: [&[&str]; 3] = [
        &["train", "-q", "--data", "-", "--batch", "8"],
        &[
            "predict",
            "--weights",
            w.to_str().unwrap(),
            "--x",
            "-",
            "--out",
            p.to_str().unwrap(),
        ],
        &["eval", "--weights", w.to_str().unwrap(), "--data", "-"],
    ];
    for args in commands {
        for (signal, code) in [
            (libc::SIGTERM, Some(143)),
            (libc::SIGINT, Some(130)),
            (libc::SIGKILL, None),
        ] {
            let mut child = bin()
                .args(args)
                .env("TMPDIR", &tmp)
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            // Part of a file, then nothing: the command waits for more.
            let mut input = child.stdin.take().unwrap();
            input.write_all(&[0x93u8; 5000]).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
            unsafe { libc::kill(child.id() as i32, signal) };
            // A guard against waiting for ever, not a timing.
            let status = common::wait_unless_hung(
                &mut child,
                std::time::Duration::from_secs(30),
                &format!("{args:?} after signal {signal} while reading standard input"),
            );
            drop(input);
            assert_eq!(status.code(), code, "{args:?} signal {signal}");
            let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
            assert!(left.is_empty(), "{args:?} signal {signal} left {left:?}");
            assert!(!p.exists());
        }
    }
}
