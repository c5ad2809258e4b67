//! `twolayer info`: the environment block, the GEMMs checked against plain
//! loops, the measured GEMM rate, and — when `OPENBLAS_CORETYPE` forces
//! kernels below the CPU — OpenBLAS's own choice measured in a child
//! process. `--json` prints the same as one JSON object.

use crate::cli::InfoArgs;
use serde::Serialize;
use twolayer::bench::env::Env;
use twolayer::bench::measure::{machine_gemm_gflops, MACHINE_GEMM_SIZE};
use twolayer::error::{Error, Result};
use twolayer::scalar::Dtype;
use twolayer::threads;

/// What `info` found.
#[derive(Serialize)]
struct Info {
    env: Env,
    /// Largest relative error of the step's five GEMMs against plain loops.
    gemm_check_max_rel_error: f64,
    /// GFLOP/s of a square GEMM of this size.
    gemm_size: usize,
    gemm_threads: usize,
    gemm_gflops_f64: f64,
    gemm_gflops_f32: f64,
    /// The forced kernel set, when it is below the CPU.
    kernels_forced_below_cpu: Option<String>,
    /// OpenBLAS's own choice, measured in a child process.
    own_choice: Option<OwnChoice>,
}

/// OpenBLAS's own kernel choice, from the child process.
#[derive(Serialize)]
struct OwnChoice {
    /// Its kernel set, or why it could not be measured.
    core: std::result::Result<String, String>,
    gemm_gflops_f64: Option<f64>,
    gemm_check_max_rel_error: Option<f64>,
}

/// Runs `twolayer info`.
pub fn run(args: &InfoArgs) -> Result<()> {
    let t = args.threads.unwrap_or_else(threads::available_cores);
    threads::set_budget(t)?;
    if args.probe_own_kernels {
        // The child: OpenBLAS's own choice, its rate and its results.
        out!(
            "{} {} {:e}\n",
            twolayer::blas::core_name(),
            machine_gemm_gflops(Dtype::F64, t),
            twolayer::kernel_set::gemm_check()
        );
        return Ok(());
    }
    let forced = twolayer::kernel_set::forced_below_cpu();
    let info = Info {
        env: Env::capture(),
        gemm_check_max_rel_error: twolayer::kernel_set::gemm_check(),
        gemm_size: MACHINE_GEMM_SIZE,
        gemm_threads: t,
        gemm_gflops_f64: machine_gemm_gflops(Dtype::F64, t),
        gemm_gflops_f32: machine_gemm_gflops(Dtype::F32, t),
        own_choice: forced.as_ref().map(|_| own_choice(t)),
        kernels_forced_below_cpu: forced,
    };
    if args.json {
        let text = serde_json::to_string_pretty(&info)
            .map_err(|e| Error::invalid(format!("cannot write JSON: {e}")))?;
        out!("{text}\n");
        return Ok(());
    }
    for (k, v) in info.env.lines() {
        out!("{k:<22} {v}\n");
    }
    out!(
        "{:<22} max relative error {:.1e} against plain loops (the step's five GEMMs, f64)\n",
        "GEMM check",
        info.gemm_check_max_rel_error
    );
    for (dtype, rate) in [
        (Dtype::F64, info.gemm_gflops_f64),
        (Dtype::F32, info.gemm_gflops_f32),
    ] {
        out!(
            "{:<22} {rate:.1} GFLOP/s ({MACHINE_GEMM_SIZE}×{MACHINE_GEMM_SIZE} GEMM, {t} threads)\n",
            format!("GEMM rate {dtype}")
        );
    }
    if let (Some(forced), Some(own)) = (&info.kernels_forced_below_cpu, &info.own_choice) {
        out!(
            "{:<22} {forced}, below this CPU (AVX-512)\n",
            "kernels forced"
        );
        let line = match (&own.core, own.gemm_gflops_f64, own.gemm_check_max_rel_error) {
            (Ok(core), Some(rate), Some(err)) => format!(
                "OpenBLAS's own choice here is {core}: {rate:.1} GFLOP/s f64 against {:.1} forced ({:.2}x), {} (max relative error {err:.1e}); to use it, run without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE",
                info.gemm_gflops_f64,
                rate / info.gemm_gflops_f64,
                if err < 1e-12 {
                    "its results match plain loops"
                } else {
                    "its results do NOT match plain loops: keep the variable"
                }
            ),
            (Err(why), _, _) => why.clone(),
            (Ok(core), _, _) => format!("OpenBLAS's own choice is {core}; it could not be measured"),
        };
        out!("{:<22} {line}\n", "own choice");
    }
    Ok(())
}

/// OpenBLAS's own kernel choice, measured in a child process with
/// `OPENBLAS_CORETYPE` and `OPENBLAS_L2_SIZE` removed (a crash or a wrong
/// result stays there).
fn own_choice(t: usize) -> OwnChoice {
    let failed = |why: String| OwnChoice {
        core: Err(why),
        gemm_gflops_f64: None,
        gemm_check_max_rel_error: None,
    };
    let child = std::env::current_exe().and_then(|exe| {
        std::process::Command::new(exe)
            .args(["info", "--probe-own-kernels", "--threads", &t.to_string()])
            .env_remove("OPENBLAS_CORETYPE")
            .env_remove("OPENBLAS_L2_SIZE")
            .output()
    });
    match child {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let v: Vec<&str> = text.split_whitespace().collect();
            match v.first() {
                Some(core) => OwnChoice {
                    core: Ok(core.to_string()),
                    gemm_gflops_f64: v.get(1).and_then(|r| r.parse().ok()),
                    gemm_check_max_rel_error: v.get(2).and_then(|e| e.parse().ok()),
                },
                None => failed(format!(
                    "the probe of OpenBLAS's own choice printed {text:?}"
                )),
            }
        }
        Ok(o) => failed(format!(
            "OpenBLAS's own choice failed in a child process ({}): keep the variable",
            o.status
        )),
        Err(e) => failed(format!(
            "could not start the probe of OpenBLAS's own choice: {e}"
        )),
    }
}
