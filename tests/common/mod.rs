//! Helpers shared by the integration tests: a plain-loop reference step,
//! the binary under test, a numpy environment, and scratch files.
#![allow(dead_code)]

use ndarray::Array2;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use twolayer::{Data, Real, Weights};

/// One step of docs/design.md §1 written as plain loops, in f64 whatever the
/// dtype of the inputs: the oracle the BLAS step is checked against.
/// Returns the loss; updates `w1`, `w2` in place.
pub fn loop_step(
    x: &Array2<f64>,
    y: &Array2<f64>,
    w1: &mut Array2<f64>,
    w2: &mut Array2<f64>,
    lr1: f64,
    lr2: f64,
) -> f64 {
    loop_step_biased(x, y, w1, w2, None, lr1, lr2)
}

/// [`loop_step`] of the model with biases, when `biases` is given:
/// h = x·w1 + b1, y_pred = relu(h)·w2 + b2, g_b1 = Σ_rows g_h,
/// g_b2 = Σ_rows g_y; b1 takes w1's rate, b2 w2's.
pub fn loop_step_biased(
    x: &Array2<f64>,
    y: &Array2<f64>,
    w1: &mut Array2<f64>,
    w2: &mut Array2<f64>,
    mut biases: Option<(&mut ndarray::Array1<f64>, &mut ndarray::Array1<f64>)>,
    lr1: f64,
    lr2: f64,
) -> f64 {
    let b1_of = |j: usize, b: &Option<(&mut ndarray::Array1<f64>, &mut ndarray::Array1<f64>)>| {
        b.as_ref().map_or(0.0, |(b1, _)| b1[j])
    };
    let b2_of = |j: usize, b: &Option<(&mut ndarray::Array1<f64>, &mut ndarray::Array1<f64>)>| {
        b.as_ref().map_or(0.0, |(_, b2)| b2[j])
    };
    let (n, d_in) = x.dim();
    let hidden = w1.ncols();
    let d_out = w2.ncols();
    let mut h = Array2::<f64>::zeros((n, hidden));
    for i in 0..n {
        for j in 0..hidden {
            let mut s = 0.0;
            for k in 0..d_in {
                s += x[[i, k]] * w1[[k, j]];
            }
            h[[i, j]] = s + b1_of(j, &biases);
        }
    }
    let h_relu = h.mapv(|v| v.max(0.0));
    let mut g_y = Array2::<f64>::zeros((n, d_out));
    let mut loss = 0.0;
    for i in 0..n {
        for j in 0..d_out {
            let mut s = 0.0;
            for k in 0..hidden {
                s += h_relu[[i, k]] * w2[[k, j]];
            }
            let d = s + b2_of(j, &biases) - y[[i, j]];
            loss += d * d;
            g_y[[i, j]] = 2.0 * d;
        }
    }
    let mut g_w2 = Array2::<f64>::zeros((hidden, d_out));
    for a in 0..hidden {
        for b in 0..d_out {
            for i in 0..n {
                g_w2[[a, b]] += h_relu[[i, a]] * g_y[[i, b]];
            }
        }
    }
    let mut g_h = Array2::<f64>::zeros((n, hidden));
    for i in 0..n {
        for a in 0..hidden {
            if h[[i, a]] < 0.0 {
                continue;
            }
            for b in 0..d_out {
                g_h[[i, a]] += g_y[[i, b]] * w2[[a, b]];
            }
        }
    }
    let mut g_w1 = Array2::<f64>::zeros((d_in, hidden));
    for k in 0..d_in {
        for a in 0..hidden {
            for i in 0..n {
                g_w1[[k, a]] += x[[i, k]] * g_h[[i, a]];
            }
        }
    }
    w1.zip_mut_with(&g_w1, |w, g| *w -= lr1 * g);
    w2.zip_mut_with(&g_w2, |w, g| *w -= lr2 * g);
    if let Some((b1, b2)) = &mut biases {
        for a in 0..hidden {
            let g: f64 = (0..n).map(|i| g_h[[i, a]]).sum();
            b1[a] -= lr1 * g;
        }
        for b in 0..d_out {
            let g: f64 = (0..n).map(|i| g_y[[i, b]]).sum();
            b2[b] -= lr2 * g;
        }
    }
    loss
}

/// An f64 copy of any array.
pub fn to_f64<F: Real>(a: &Array2<F>) -> Array2<f64> {
    a.mapv(|v| v.to_f64())
}

/// Largest |a − b| / max(|b|, floor) over the elements.
pub fn max_rel_diff(a: &Array2<f64>, b: &Array2<f64>, floor: f64) -> f64 {
    assert_eq!(a.dim(), b.dim());
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs() / b.abs().max(floor))
        .fold(0.0, f64::max)
}

/// Data and weights as f64 copies.
pub fn as_f64<F: Real>(d: &Data<F>, w: &Weights<F>) -> (Data<f64>, Weights<f64>) {
    (
        Data {
            x: to_f64(&d.x),
            y: to_f64(&d.y),
        },
        Weights {
            w1: to_f64(&w.w1),
            w2: to_f64(&w.w2),
            biases: w.biases.as_ref().map(|b| b.cast()),
        },
    )
}

/// The `twolayer` binary built for this test run.
pub fn bin() -> Command {
    // No wisdom file unless a test names one: a developer's tuned plans
    // must not change what the tests run.
    let mut c = Command::new(env!("CARGO_BIN_EXE_twolayer"));
    c.env("TWOLAYER_WISDOM", "");
    // No peak probe either unless a test names one: a probe takes seconds,
    // and measured beside the other tests it would be low.
    c.env("TWOLAYER_PEAK", "");
    c
}

/// Runs the binary with `args` and returns its output.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("the twolayer binary runs")
}

/// Stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Parses "t loss" lines.
pub fn parse_losses(text: &str) -> Vec<(usize, f64)> {
    text.lines()
        .map(|l| {
            let mut it = l.split_whitespace();
            let t = it.next().unwrap().parse().unwrap();
            let v = it.next().unwrap().parse().unwrap();
            (t, v)
        })
        .collect()
}

/// The project's root folder.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A Python interpreter with numpy: `$TWOLAYER_PYTHON` if set, else a venv
/// at target/pyenv, created (and numpy installed into it from PyPI) the
/// first time, from scripts/requirements.txt. A file lock keeps parallel tests from building it twice.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TWOLAYER_PYTHON") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    std::fs::create_dir_all(&target).unwrap();
    let venv = target.join("pyenv");
    let py = venv.join("bin/python");
    let lock = std::fs::File::create(target.join("pyenv.lock")).unwrap();
    lock.lock().unwrap();
    let has_numpy = |py: &Path| {
        py.exists()
            && Command::new(py)
                .args(["-c", "import numpy"])
                .status()
                .is_ok_and(|s| s.success())
    };
    if !has_numpy(&py) {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 is installed (scripts/setup.sh installs it)");
        assert!(ok.success(), "python3 -m venv failed");
        let ok = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(root().join("scripts/requirements.txt"))
            .status()
            .expect("pip runs");
        assert!(ok.success(), "pip install numpy failed");
        assert!(has_numpy(&py), "numpy still missing in {}", venv.display());
    }
    py
}

/// Runs scripts/reference.py with `args` under [`python`]; panics with its
/// stderr when it fails.
pub fn reference(args: &[&str]) -> Output {
    let out = Command::new(python())
        .arg(root().join("scripts/reference.py"))
        .args(args)
        .output()
        .expect("reference.py runs");
    assert!(
        out.status.success(),
        "reference.py {args:?} failed: {}",
        stderr(&out)
    );
    out
}

/// A real sweep of tiny points (N 8 and 16, D_in 12, H `hidden`, D_out 3,
/// f32 and f64, threads `threads`), of the primal step (the form `train`
/// would take at N 8 is the dual; tests/sweep.rs covers that), written to
/// `dir`; its report.
pub fn tiny_sweep(dir: &Path, hidden: &str, threads: &str) -> twolayer::bench::report::Report {
    let args = tiny_sweep_args(dir, hidden, threads);
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    // The Markdown table also goes to stdout.
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(md.contains("| (8, 12, "), "{md}");
    assert_matches_schema(&dir.join("report.json"));
    twolayer::bench::report::Report::read(&dir.join("report.json")).unwrap()
}

/// The arguments of [`tiny_sweep`].
pub fn tiny_sweep_args(dir: &Path, hidden: &str, threads: &str) -> Vec<String> {
    [
        "sweep",
        "--n",
        "8,16",
        "--d-in",
        "12",
        "--hidden",
        hidden,
        "--d-out",
        "3",
        "--dtype",
        "f32,f64",
        "--threads",
        threads,
        "--budget",
        "0",
        "--min-steps",
        "3",
        "--warmup",
        "1",
        "--form",
        "primal",
        "--out",
        dir.to_str().unwrap(),
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// Fails unless the JSON file at `path` is valid against
/// docs/report-schema.json, naming every violation.
pub fn assert_matches_schema(path: &Path) {
    let schema_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/report-schema.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(schema_path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema itself is valid");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&report)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{} does not match docs/report-schema.json:\n{}",
        path.display(),
        errors.join("\n")
    );
}

/// A one-step f64 checkpoint of a run whose header says `n` rows of
/// `weights_of`'s other dimensions, at `lr`, on `data`, with seeded
/// weights of `weights_of`: for tests that need a checkpoint pointing at
/// some data, not a trained one.
pub fn one_step_checkpoint(
    n: usize,
    weights_of: twolayer::Shape,
    lr: f64,
    data: twolayer::checkpoint::DataSource,
) -> twolayer::checkpoint::Checkpoint<f64> {
    twolayer::checkpoint::Checkpoint {
        header: twolayer::checkpoint::Header {
            run: twolayer::run::RunDescription::new(
                twolayer::Shape { n, ..weights_of },
                twolayer::scalar::Dtype::F64,
                1,
                twolayer::StepMode::Fused,
                twolayer::step::Form::Primal,
            ),
            steps_done: 1,
            total_steps: 5,
            lr_w1: lr,
            lr_w2: lr,
            ranks: 1,
            data,
            loss: twolayer::Loss::Sum,
            minibatch: None,
            blas_core: None,
            blas_library: None,
            plan: None,
            biases: false,
            best_weights: false,
            written_by: "test".into(),
        },
        losses: vec![1.0],
        weights: twolayer::Weights::random(weights_of, 0),
        dual: None,
        best: None,
    }
}

/// The gradients at `w` through `step`, handed back (`Update::Gradients`,
/// with bias gradients when `w` has biases), and the loss; `w` is not
/// changed.
pub fn grads_of<F: Real>(
    step: &mut twolayer::step::Step<F>,
    data: &Data<F>,
    w: &Weights<F>,
) -> (f64, twolayer::Gradients<F>) {
    use twolayer::step::{NoProbe, Update};
    let mut g = twolayer::Gradients::zeros_for(w);
    let mut w = w.clone();
    let lr = twolayer::LearningRates::uniform(0.0);
    let loss = step
        .run(data, &mut w, lr, Update::Gradients(&mut g), &mut NoProbe)
        .unwrap();
    (loss, g)
}

/// Waits for `child`, failing the test (and killing it) past `limit`: a
/// guard against a hang, never a timing check.
pub fn wait_unless_hung(
    child: &mut std::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{what} did not end within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
