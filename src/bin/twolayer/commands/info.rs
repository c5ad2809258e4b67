//! `twolayer info`: the environment block and the measured GEMM rate.

use crate::cli::InfoArgs;
use twolayer::bench::env::Env;
use twolayer::bench::measure::{machine_gemm_gflops, MACHINE_GEMM_SIZE};
use twolayer::error::Result;
use twolayer::scalar::Dtype;
use twolayer::threads;

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
    let env = Env::capture();
    for (k, v) in env.lines() {
        out!("{k:<22} {v}\n");
    }
    let check = twolayer::kernel_set::gemm_check();
    out!(
        "{:<22} max relative error {check:.1e} against plain loops (the step's five GEMMs, f64)\n",
        "GEMM check"
    );
    for dtype in [Dtype::F64, Dtype::F32] {
        let rate = machine_gemm_gflops(dtype, t);
        out!("{:<22} {rate:.1} GFLOP/s ({MACHINE_GEMM_SIZE}×{MACHINE_GEMM_SIZE} GEMM, {t} threads)\n",
            format!("GEMM rate {dtype}")
        );
    }
    if let Some(forced) = twolayer::kernel_set::forced_below_cpu() {
        own_choice(&forced, t);
    }
    Ok(())
}

/// What OpenBLAS's own kernel choice would give, measured in a child
/// process with `OPENBLAS_CORETYPE` and `OPENBLAS_L2_SIZE` removed (a crash
/// or a wrong result stays there), beside the forced set's rate.
fn own_choice(forced: &str, t: usize) {
    let here = machine_gemm_gflops(Dtype::F64, t);
    let child = std::env::current_exe().and_then(|exe| {
        std::process::Command::new(exe)
            .args(["info", "--probe-own-kernels", "--threads", &t.to_string()])
            .env_remove("OPENBLAS_CORETYPE")
            .env_remove("OPENBLAS_L2_SIZE")
            .output()
    });
    let probe = match child {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let v: Vec<&str> = text.split_whitespace().collect();
            match (
                v.first(),
                v.get(1).and_then(|r| r.parse::<f64>().ok()),
                v.get(2).and_then(|e| e.parse::<f64>().ok()),
            ) {
                (Some(core), Some(rate), Some(err)) => {
                    let verdict = if err < 1e-12 {
                        "its results match plain loops"
                    } else {
                        "its results do NOT match plain loops: keep the variable"
                    };
                    format!(
                        "OpenBLAS's own choice here is {core}: {rate:.1} GFLOP/s f64 against {here:.1} forced ({:.2}x), {verdict} (max relative error {err:.1e}); to use it, run without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE",
                        rate / here
                    )
                }
                _ => format!("the probe of OpenBLAS's own choice printed {text:?}"),
            }
        }
        Ok(o) => format!(
            "OpenBLAS's own choice failed in a child process ({}): keep the variable",
            o.status
        ),
        Err(e) => format!("could not start the probe of OpenBLAS's own choice: {e}"),
    };
    out!(
        "{:<22} {forced}, below this CPU (AVX-512)\n",
        "kernels forced"
    );
    out!("{:<22} {probe}\n", "own choice");
}
