//! `twolayer._native`: the library's training, prediction, weight files and
//! throughput measurement, called from Python. The estimator with
//! scikit-learn's conventions is Python (python/twolayer/); this module is
//! the part that runs without the GIL.
//!
//! Arrays come in as numpy arrays of the run's stored type (f64, or f32
//! for f32 and bf16 runs), C-contiguous; the Python side converts anything
//! else once. Every error is a `ValueError` with the library's one-line
//! message; a Ctrl-C during training or prediction raises
//! `KeyboardInterrupt` within ~0.1 s of the step it arrives in.

use ndarray::{Array2, ArrayView2};
use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use twolayer::checkpoint::EpochRecord;
use twolayer::dataset::batches::Schedule;
use twolayer::dataset::Dataset;
use twolayer::epochs::{Cancel, Epochs, StepEnd};
use twolayer::minibatch::ReaderChoice;
use twolayer::net::{Biases, WeightInit};
use twolayer::scalar::{Dtype, Real};
use twolayer::{LearningRates, Loss, Shape, StepMode, Trainer, Weights};

/// How often a run without the GIL takes it back to look for a signal.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// The library's error as Python's `ValueError`.
fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// A run's settings, as `Regressor.fit` resolved them.
#[derive(Clone, Copy, Debug)]
struct FitSettings {
    hidden: usize,
    lr: f64,
    batch: usize,
    epochs: usize,
    seed: u64,
    val_fraction: Option<f64>,
    biases: bool,
    bf16: bool,
    threads: usize,
    loss: Loss,
}

/// What a run left: its weights, one record per epoch, and whether the
/// epoch callback stopped it.
struct Fitted<F> {
    weights: Weights<F>,
    epochs: Vec<EpochRecord>,
    plan: String,
    reader: &'static str,
    /// The training loop's milliseconds per step.
    step_ms: f64,
}

/// A numpy array's memory lent to the library for one fit, read in
/// place (no copy of X). The caller holds the array's read-only borrow
/// (`PyReadonlyArray2`) for the whole fit, which also keeps it alive.
#[derive(Debug)]
struct Lent {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the memory is only read, and outlives every use: `fit` holds the
// array's borrow until the dataset made of it is dropped.
unsafe impl Send for Lent {}
unsafe impl Sync for Lent {}

impl Lent {
    /// The bytes of `a`, which must be C-contiguous (the estimator asks
    /// scikit-learn's validate_data for order="C").
    fn of<F: Real>(a: ArrayView2<'_, F>) -> PyResult<Lent> {
        let v = a
            .as_slice()
            .ok_or_else(|| value_error("the array is not C-contiguous"))?;
        Ok(Lent {
            ptr: v.as_ptr().cast(),
            len: std::mem::size_of_val(v),
        })
    }
}

impl twolayer::dataset::RowBytes for Lent {
    fn bytes(&self) -> &[u8] {
        // SAFETY: see the type's comment; f32 and f64 have no padding.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A Python error raised inside a run (the epoch callback's, a
/// KeyboardInterrupt), kept to be raised once the run has stopped.
type Raised = Option<PyErr>;

/// The weights as a tuple of numpy arrays (w1, b1, w2, b2; b1 and b2 None
/// without biases).
fn weights_tuple<'py, F: Real + numpy::Element>(
    py: Python<'py>,
    w: &Weights<F>,
) -> PyResult<Bound<'py, PyTuple>> {
    let (b1, b2) = match &w.biases {
        Some(b) => (
            b.b1.clone().into_pyarray(py).into_any(),
            b.b2.clone().into_pyarray(py).into_any(),
        ),
        None => (py.None().into_bound(py), py.None().into_bound(py)),
    };
    PyTuple::new(
        py,
        [
            w.w1.clone().into_pyarray(py).into_any(),
            b1,
            w.w2.clone().into_pyarray(py).into_any(),
            b2,
        ],
    )
}

/// Minibatch SGD on (x, y) exactly as `twolayer train --data` runs it with
/// the same settings and seed (the weights drawn as `nn.Linear` draws
/// them, the same schedule of batches and held-out rows, the minibatch
/// plan rule; no wisdom file is read), in a pool of `threads` threads,
/// without the GIL; from `start` instead of seeded weights when given (as
/// `--weights` starts the command line). After each epoch
/// `on_epoch(record, weights)` is called (with the GIL) when given, and a
/// true result stops the run.
fn fit_typed<F: Real + numpy::Element>(
    py: Python<'_>,
    x: ArrayView2<'_, F>,
    y: ArrayView2<'_, F>,
    s: FitSettings,
    start: Option<Weights<F>>,
    on_epoch: Option<Py<PyAny>>,
) -> PyResult<Fitted<F>> {
    let data = Dataset::from_row_bytes(
        F::DTYPE,
        Arc::new(Lent::of(x)?),
        x.ncols(),
        Arc::new(Lent::of(y)?),
        y.ncols(),
    )
    .map_err(value_error)?;
    let schedule =
        Schedule::new(data.rows(), s.batch, s.seed, s.val_fraction).map_err(value_error)?;
    let shape = Shape::new(s.batch, data.d_in(), s.hidden, data.d_out()).map_err(value_error)?;
    let dtype = if s.bf16 { Dtype::Bf16 } else { F::DTYPE };
    let steps = s
        .epochs
        .checked_mul(schedule.batches_per_epoch() as usize)
        .ok_or_else(|| value_error("max_iter × batches per epoch is too many steps"))?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(s.threads)
        .thread_name(|i| format!("twolayer-py-{i}"))
        .build()
        .map_err(value_error)?;
    // The run goes on a scoped thread (in the pool); this thread, the
    // caller's (Python's main thread, where signals are seen), waits
    // without the GIL and looks for a signal every SIGNAL_POLL: a Ctrl-C
    // cancels the run after its current step and is raised once it stops.
    let cancel = Cancel::new();
    let raised: Mutex<Raised> = Mutex::new(None);
    let keep = |e: PyErr| {
        raised
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
    };
    let result = py.detach(|| {
        let caller = std::thread::current();
        std::thread::scope(|scope| {
            let run = scope.spawn(|| {
                let r = pool.install(|| {
                    train_on(
                        &data,
                        &schedule,
                        shape,
                        dtype,
                        s,
                        start,
                        steps,
                        &cancel,
                        |t, r| {
                            let Some(cb) = &on_epoch else {
                                return ControlFlow::Continue(());
                            };
                            Python::attach(|py| {
                                let stop = weights_tuple(py, t.weights()).and_then(|w| {
                                    cb.bind(py)
                                        .call1((r.epoch, r.train_loss, r.val_mse, w))?
                                        .is_truthy()
                                });
                                match stop {
                                    Ok(false) => ControlFlow::Continue(()),
                                    Ok(true) => ControlFlow::Break(()),
                                    Err(e) => {
                                        keep(e);
                                        ControlFlow::Break(())
                                    }
                                }
                            })
                        },
                    )
                });
                caller.unpark();
                r
            });
            while !run.is_finished() {
                std::thread::park_timeout(SIGNAL_POLL);
                if let Err(e) = Python::attach(|py| py.check_signals()) {
                    keep(e);
                    cancel.cancel();
                }
            }
            run.join()
        })
    });
    if let Some(e) = raised.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    match result {
        Ok(r) => r.map_err(value_error),
        Err(_) => Err(value_error("the training thread panicked")),
    }
}

/// The run itself, on the pool's thread: the trainer as `train --data`
/// builds it, whole epochs, `on_epoch` told each epoch's record.
#[allow(clippy::too_many_arguments)]
fn train_on<F: Real>(
    data: &Dataset,
    schedule: &Schedule,
    shape: Shape,
    dtype: Dtype,
    s: FitSettings,
    start: Option<Weights<F>>,
    steps: usize,
    cancel: &Cancel,
    mut on_epoch: impl FnMut(&Trainer<F>, &EpochRecord) -> ControlFlow<()> + Send,
) -> twolayer::Result<Fitted<F>> {
    let builder = Trainer::builder(
        twolayer::minibatch::empty_batch::<F>(data, s.batch),
        start.unwrap_or_else(|| Weights::<F>::seeded(shape, s.seed, WeightInit::Torch, s.biases)),
        LearningRates::uniform(s.lr),
    )
    .loss(s.loss)
    .threads(s.threads);
    let trainer = if s.bf16 {
        builder.bf16().build()?
    } else {
        let plan = twolayer::minibatch::plan(data, shape, dtype, s.threads, StepMode::Fused);
        builder.plan(plan).build()?
    };
    // Only the epoch's losses are read back: the memory of a long fit does
    // not grow with its steps.
    let mut trainer = trainer.keep_latest_losses(schedule.batches_per_epoch() as usize);
    let reader = ReaderChoice::Auto.resolve(data, trainer.plan(), s.threads);
    let epochs = Epochs {
        data,
        schedule,
        validation: None,
    };
    let mut records = Vec::new();
    let stats = twolayer::epochs::run(
        &mut trainer,
        &epochs,
        reader,
        steps,
        Some(cancel),
        |t, end: StepEnd| match end.epoch {
            Some(r) => {
                let flow = on_epoch(t, &r);
                records.push(r);
                flow
            }
            None => ControlFlow::Continue(()),
        },
    )?;
    let p = trainer.plan();
    let plan = if s.bf16 {
        "bf16: the whole batch through each GEMM".to_string()
    } else {
        format!(
            "{} shard(s) × {} OpenBLAS thread(s), blocks of {} rows",
            p.shards, p.blas_threads, p.block_rows
        )
    };
    Ok(Fitted {
        weights: trainer.into_weights(),
        epochs: records,
        plan,
        reader: reader.name(),
        step_ms: stats.ms_per_step(),
    })
}

/// Trains and returns a dict: `weights` (w1, b1, w2, b2), `train_loss`
/// and `val_mse` per epoch, `plan`, `reader` and `step_ms`.
/// (See `fit_typed` for what runs.)
#[pyfunction]
#[pyo3(signature = (x, y, *, hidden, lr, batch, epochs, seed, val_fraction, biases, dtype, threads, loss, start=None, on_epoch=None))]
#[allow(clippy::too_many_arguments)]
fn fit<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    y: &Bound<'py, PyAny>,
    hidden: usize,
    lr: f64,
    batch: usize,
    epochs: usize,
    seed: u64,
    val_fraction: Option<f64>,
    biases: bool,
    dtype: &str,
    threads: usize,
    loss: &str,
    start: Option<WeightArgs<'py>>,
    on_epoch: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let dtype: Dtype = dtype.parse().map_err(value_error)?;
    let loss: Loss = loss.parse().map_err(value_error)?;
    let s = FitSettings {
        hidden,
        lr,
        batch,
        epochs,
        seed,
        val_fraction,
        biases,
        bf16: dtype == Dtype::Bf16,
        threads,
        loss,
    };
    let out = PyDict::new(py);
    macro_rules! finish {
        ($f:expr) => {{
            let f = $f;
            let w = weights_tuple(py, &f.weights)?;
            out.set_item("weights", w)?;
            let train: Vec<f64> = f.epochs.iter().map(|r| r.train_loss).collect();
            let val: Vec<Option<f64>> = f.epochs.iter().map(|r| r.val_mse).collect();
            out.set_item("train_loss", PyList::new(py, train)?)?;
            out.set_item("val_mse", PyList::new(py, val)?)?;
            out.set_item("plan", f.plan)?;
            out.set_item("reader", f.reader)?;
            out.set_item("step_ms", f.step_ms)?;
        }};
    }
    twolayer::with_storage!(dtype, F => {
        let x: PyReadonlyArray2<'py, F> = x.extract()?;
        let y: PyReadonlyArray2<'py, F> = y.extract()?;
        let start = match &start {
            Some((w1, b1, w2, b2)) => {
                let w = weights_of::<F>(w1, b1.as_ref(), w2, b2.as_ref())?;
                let fits = (w.w1.nrows(), w.w1.ncols(), w.w2.ncols())
                    == (x.as_array().ncols(), hidden, y.as_array().ncols());
                if !fits || w.biases.is_some() != biases {
                    return Err(value_error(format!(
                        "the starting weights are {}→{}→{} ({}), the fit {}→{hidden}→{} ({})",
                        w.w1.nrows(),
                        w.w1.ncols(),
                        w.w2.ncols(),
                        if w.biases.is_some() { "with biases" } else { "without biases" },
                        x.as_array().ncols(),
                        y.as_array().ncols(),
                        if biases { "with biases" } else { "without biases" },
                    )));
                }
                Some(w)
            }
            None => None,
        };
        finish!(fit_typed::<F>(py, x.as_array(), y.as_array(), s, start, on_epoch)?)
    });
    Ok(out)
}

/// The held-out rows of `rows` rows under `seed` and `val_fraction`, as a
/// fit with the same settings holds them out (what its validation scores
/// are measured on), in the order the schedule lists them.
#[pyfunction]
fn held_out_rows<'py>(
    py: Python<'py>,
    rows: u64,
    batch: usize,
    seed: u64,
    val_fraction: Option<f64>,
) -> PyResult<Bound<'py, PyArray1<u64>>> {
    let s = Schedule::new(rows, batch, seed, val_fraction).map_err(value_error)?;
    let v: Vec<u64> = (0..s.val_rows()).map(|i| s.val_row(i)).collect();
    Ok(v.into_pyarray(py))
}

/// Weights as Python passes them: (w1, b1, w2, b2), the biases None in a
/// model without them.
type WeightArgs<'py> = (
    Bound<'py, PyAny>,
    Option<Bound<'py, PyAny>>,
    Bound<'py, PyAny>,
    Option<Bound<'py, PyAny>>,
);

/// The stored type of a numpy array of f32 (f32) or anything else (f64).
fn stored_type(a: &Bound<'_, PyAny>) -> Dtype {
    if a.extract::<PyReadonlyArray2<'_, f32>>().is_ok() {
        Dtype::F32
    } else {
        Dtype::F64
    }
}

/// Weights of `F` from four numpy arrays (b1 and b2 both or neither),
/// checked for matching shapes.
fn weights_of<'py, F: Real + numpy::Element>(
    w1: &Bound<'py, PyAny>,
    b1: Option<&Bound<'py, PyAny>>,
    w2: &Bound<'py, PyAny>,
    b2: Option<&Bound<'py, PyAny>>,
) -> PyResult<Weights<F>> {
    let w1: PyReadonlyArray2<'py, F> = w1.extract()?;
    let w2: PyReadonlyArray2<'py, F> = w2.extract()?;
    let b1: Option<PyReadonlyArray1<'py, F>> = b1.map(|b| b.extract()).transpose()?;
    let b2: Option<PyReadonlyArray1<'py, F>> = b2.map(|b| b.extract()).transpose()?;
    let (w1, w2) = (w1.as_array(), w2.as_array());
    let biases = match (&b1, &b2) {
        (Some(b1), Some(b2)) => Some(Biases {
            b1: b1.as_array().to_owned(),
            b2: b2.as_array().to_owned(),
        }),
        (None, None) => None,
        _ => return Err(value_error("give both biases (b1 and b2) or neither")),
    };
    if w1.ncols() != w2.nrows() {
        return Err(value_error(format!(
            "w1 is {}×{} and w2 {}×{}: w1's columns must be w2's rows (H)",
            w1.nrows(),
            w1.ncols(),
            w2.nrows(),
            w2.ncols()
        )));
    }
    if let Some(b) = &biases {
        twolayer::net::check_biases(b, w1.ncols(), w2.ncols()).map_err(value_error)?;
    }
    Ok(Weights {
        w1: w1.to_owned(),
        w2: w2.to_owned(),
        biases,
    })
}

/// y_pred = relu(x·w1 + b1)·w2 + b2 for every row of `x`, `batch` rows at
/// a time, in a pool of `threads` threads without the GIL; a numpy array
/// of x's rows × D_out (moved to Python, not copied).
#[pyfunction]
#[pyo3(signature = (x, w1, b1, w2, b2, *, batch, threads))]
#[allow(clippy::too_many_arguments)]
fn predict<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    w1: &Bound<'py, PyAny>,
    b1: Option<&Bound<'py, PyAny>>,
    w2: &Bound<'py, PyAny>,
    b2: Option<&Bound<'py, PyAny>>,
    batch: usize,
    threads: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(value_error)?;
    twolayer::with_storage!(stored_type(x), F => {
        let x: PyReadonlyArray2<'py, F> = x.extract()?;
        let w = weights_of::<F>(w1, b1, w2, b2)?;
        let x = x.as_array();
        let out = py.detach(|| {
            pool.install(|| {
                let mut out = Array2::<F>::zeros((x.nrows(), w.w2.ncols()));
                twolayer::predict::predict_into(x, &w, out.view_mut(), batch).map(|()| out)
            })
        });
        Ok(out.map_err(value_error)?.into_pyarray(py).into_any())
    })
}

/// Writes the weights to `path` as the command line's .npz (w1, w2, and b1,
/// b2 when given), atomically.
#[pyfunction]
#[pyo3(signature = (path, w1, b1, w2, b2))]
fn save_weights<'py>(
    path: PathBuf,
    w1: &Bound<'py, PyAny>,
    b1: Option<&Bound<'py, PyAny>>,
    w2: &Bound<'py, PyAny>,
    b2: Option<&Bound<'py, PyAny>>,
) -> PyResult<()> {
    twolayer::with_storage!(stored_type(w1), F => {
        let w = weights_of::<F>(w1, b1, w2, b2)?;
        twolayer::npz::save_weights(&path, &w).map_err(value_error)
    })
}

/// Reads weights the command line wrote (or `save_weights`): a tuple
/// (w1, b1, w2, b2) of numpy arrays in the file's dtype, b1 and b2 None
/// when it has none.
#[pyfunction]
fn load_weights<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyTuple>> {
    let (_, _, _, dtype) = twolayer::npz::peek_weights(&path).map_err(value_error)?;
    twolayer::with_storage!(dtype, F => {
        let w = twolayer::npz::load_weights_file::<F>(&path).map_err(value_error)?;
        weights_tuple(py, &w)
    })
}

/// One sweep point measured as `twolayer sweep` measures it (the default
/// timing: warm-up, then rounds of timed steps, the machine's square GEMM
/// rate sampled beside it), without the GIL: the report as JSON text, in
/// the schema of docs/report-schema.json.
#[pyfunction(name = "bench")]
#[pyo3(signature = (*, n, d_in, hidden, d_out, dtype, threads))]
fn bench_point(
    py: Python<'_>,
    n: usize,
    d_in: usize,
    hidden: usize,
    d_out: usize,
    dtype: &str,
    threads: usize,
) -> PyResult<String> {
    let dtype: Dtype = dtype.parse().map_err(value_error)?;
    let spec = twolayer::bench::grid::GridSpec {
        shapes: Some(vec![[n, d_in, hidden, d_out]]),
        dtype: Some(vec![dtype.to_string()]),
        threads: Some(vec![threads]),
        ..Default::default()
    };
    let grid = spec.build(StepMode::Fused).map_err(value_error)?;
    let report = py
        .detach(|| twolayer::bench::run::run_grid(&grid, StepMode::Fused, None, &mut ()))
        .map_err(value_error)?;
    serde_json::to_string(&report).map_err(value_error)
}

/// The module: fit, predict, held-out rows, weight files, bench.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(fit, m)?)?;
    m.add_function(wrap_pyfunction!(held_out_rows, m)?)?;
    m.add_function(wrap_pyfunction!(predict, m)?)?;
    m.add_function(wrap_pyfunction!(save_weights, m)?)?;
    m.add_function(wrap_pyfunction!(load_weights, m)?)?;
    m.add_function(wrap_pyfunction!(bench_point, m)?)?;
    m.add("DEFAULT_LR", twolayer::epochs::DEFAULT_LR)?;
    m.add("DEFAULT_BATCH", twolayer::epochs::DEFAULT_BATCH)?;
    m.add("DEFAULT_EPOCHS", twolayer::epochs::DEFAULT_EPOCHS)?;
    m.add("MAX_THREADS", twolayer::threads::MAX_THREADS)?;
    m.add("SHORT_SPIN", twolayer::blas::SHORT_SPIN)?;
    Ok(())
}
