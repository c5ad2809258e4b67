//! `twolayer predict` and `twolayer eval`: trained weights on new data,
//! through the same GEMM forward pass as training, a batch at a time, so
//! memory stays at one batch whatever the number of rows.

use crate::cli::{EvalArgs, PredictArgs};
use crate::signals::{caught_since, stop_waiting};
use ndarray::{s, Array2};
use std::io::Write;
use std::path::Path;
use twolayer::dataset::{ArrayFile, Dataset};
use twolayer::error::{Error, Result};
use twolayer::npz;
use twolayer::output;
use twolayer::predict::{evaluate, Forward, Rows};
use twolayer::scalar::{Dtype, Real, Storage};
use twolayer::{blas, threads};

/// x alone: a `.npy`, or the `x` of a `.npz`.
fn open_x(path: &Path) -> Result<ArrayFile> {
    let mut magic = [0u8; 4];
    // Opened as every input is (non-blocking, regular files only): a FIFO
    // with no writer blocked this open for good.
    let is_zip = twolayer::input::open_regular(path)?;
    let is_zip = std::io::Read::read_exact(&mut { is_zip }, &mut magic)
        .map(|()| &magic == b"PK\x03\x04")
        .unwrap_or(false);
    if is_zip {
        ArrayFile::open_npz(path, "x")
    } else {
        ArrayFile::open_npy(path, "x")
    }
}

/// Sets the thread budget for a forward pass (OpenBLAS's threads).
fn set_threads(t: Option<usize>) -> Result<()> {
    let t = t.unwrap_or_else(threads::available_cores);
    threads::set_budget(t)?;
    if let Some(w) = threads::oversubscribed(t) {
        say!("twolayer: warning: {w}");
    }
    blas::set_threads(t);
    Ok(())
}

/// Runs `twolayer predict`.
pub fn run_predict(args: &PredictArgs) -> Result<()> {
    // (Every output was checked writable in main: commands/paths.rs.)
    let mut outputs: Vec<(&str, &Path)> = vec![("--out", &args.out)];
    if let Some(j) = &args.output.json {
        outputs.push(("--json", j));
    }
    output::check_distinct(&[("--weights", &args.weights), ("--x", &args.x)], &outputs)?;
    set_threads(args.pass.threads)?;
    let (d_in, _, _, dtype) = npz::peek_weights(&args.weights)?;
    // `--x -`: standard input, copied to a temporary file (kept until the
    // end: the reader seeks).
    // Ctrl-C or SIGTERM while it waits there stops it within a second.
    let (x_path, _stdin) = twolayer::input::resolve_stdin(&args.x, &stop_waiting)?;
    let x = open_x(&x_path)?;
    if x.cols() != d_in {
        return Err(Error::invalid(format!(
            "x has {} columns but the weights take {d_in} inputs",
            x.cols()
        )));
    }
    let dtype = args.pass.dtype.unwrap_or(dtype);
    if dtype == Dtype::Bf16 {
        say!("twolayer: note: predicting in f32: a bf16 run's weights are f32, and the forward pass alone gains nothing from bf16 GEMMs worth its rounding");
    }
    twolayer::with_storage!(dtype, F => predict::<F>(args, &x))
}

fn predict<F: Real>(args: &PredictArgs, x: &ArrayFile) -> Result<()> {
    let w = npz::load_weights_file::<F>(&args.weights)?;
    let rows = x.rows();
    let batch = args.pass.batch.min(rows as usize);
    let mut fwd = Forward::new(batch, &w);
    let mut xb = Array2::<F>::zeros((batch, x.cols()));
    let (mut idx, mut scratch, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
    // A read error inside the writer is kept here, so it is reported as
    // what it is, not as a write failure.
    let mut read_err = None;
    let start = std::time::Instant::now();
    let written = output::write_atomic(&args.out, |out| {
        npz::write_npy_header(out, F::DTYPE, rows, w.w2.ncols())?;
        let mut from = 0;
        while from < rows {
            let r = (rows - from).min(batch as u64) as usize;
            idx.clear();
            idx.extend(from..from + r as u64);
            // A signal (handlers are installed when x came from standard
            // input) stops it here, with nothing written.
            if let Some(e) = caught_since() {
                read_err = Some(e);
                return Err(std::io::Error::other("stopped"));
            }
            if let Err(e) = x.gather(&idx, xb.slice_mut(s![..r, ..]), &mut scratch) {
                read_err = Some(e);
                return Err(std::io::Error::other("read failed"));
            }
            let pred = fwd.run(xb.slice(s![..r, ..]), &w);
            bytes.clear();
            for &v in pred.iter() {
                match F::DTYPE.storage() {
                    Storage::F32 => {
                        bytes.extend_from_slice(&(Real::to_f64(v) as f32).to_le_bytes())
                    }
                    Storage::F64 => bytes.extend_from_slice(&Real::to_f64(v).to_le_bytes()),
                }
            }
            out.write_all(&bytes)?;
            from += r as u64;
        }
        Ok(())
    });
    if let Some(e) = read_err {
        return Err(e);
    }
    written?;
    let seconds = start.elapsed().as_secs_f64();
    let out = if twolayer::input::is_stdio(&args.out) {
        "standard output".to_string()
    } else {
        args.out.display().to_string()
    };
    if !args.output.quiet {
        say!(
            "twolayer: predicted {rows} rows ({}→{}, {}{}) in {seconds:.3} s, batches of {batch}; wrote {out}",
            x.cols(),
            w.w2.ncols(),
            F::DTYPE,
            if w.has_biases() { ", with biases" } else { "" },
        );
    }
    #[derive(serde::Serialize)]
    struct Summary {
        rows: u64,
        d_in: usize,
        d_out: usize,
        dtype: &'static str,
        biases: bool,
        batch: usize,
        seconds: f64,
        out: String,
    }
    args.output.write_json(&Summary {
        rows,
        d_in: x.cols(),
        d_out: w.w2.ncols(),
        dtype: F::DTYPE.name(),
        biases: w.has_biases(),
        batch,
        seconds,
        out,
    })
}

/// Runs `twolayer eval`: prints `rows`, `loss_sum` (Σ (y_pred − y)²) and
/// `mse` (that over rows × D_out), one `name value` line each.
pub fn run_eval(args: &EvalArgs) -> Result<()> {
    set_threads(args.pass.threads)?;
    let (d_in, _, d_out, dtype) = npz::peek_weights(&args.weights)?;
    // `--data -`: standard input, copied to a temporary file.
    let mut stdin = None;
    let mut files = Vec::new();
    for f in &args.data {
        let (p, s) = twolayer::input::resolve_stdin(f, &stop_waiting)?;
        if s.is_some() && stdin.is_some() {
            return Err(Error::invalid(
                "standard input can be read once: give one - at most",
            ));
        }
        stdin = stdin.or(s);
        files.push(p);
    }
    let data = Dataset::open(&files)?;
    if (data.d_in(), data.d_out()) != (d_in, d_out) {
        return Err(Error::invalid(format!(
            "the data is {}→{} but the weights are {d_in}→{d_out}",
            data.d_in(),
            data.d_out()
        )));
    }
    let e = match args.pass.dtype.unwrap_or(dtype) {
        Dtype::F32 | Dtype::Bf16 => evaluate(
            &data,
            Rows::All,
            &npz::load_weights_file::<f32>(&args.weights)?,
            args.pass.batch,
        )?,
        Dtype::F64 => evaluate(
            &data,
            Rows::All,
            &npz::load_weights_file::<f64>(&args.weights)?,
            args.pass.batch,
        )?,
    };
    #[derive(serde::Serialize)]
    struct Evaluated {
        rows: u64,
        loss_sum: f64,
        mse: f64,
    }
    if let Some(e) = caught_since() {
        return Err(e);
    }
    args.output.write_json(&Evaluated {
        rows: e.rows,
        loss_sum: e.sum_sq,
        mse: e.mse(),
    })?;
    args.output.text(&format!(
        "rows {}\nloss_sum {:?}\nmse {:?}\n",
        e.rows,
        e.sum_sq,
        e.mse()
    ));
    Ok(())
}
