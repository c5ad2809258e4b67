//! `twolayer info`: the environment block, the GEMMs checked against plain
//! loops, the measured GEMM rate, and — when `OPENBLAS_CORETYPE` forces
//! kernels below the CPU — OpenBLAS's own choice measured in a child
//! process. `--json` prints the same as one JSON object.

use crate::cli::InfoArgs;
use serde::Serialize;
use twolayer::bench::env::Env;
use twolayer::bench::measure::{machine_gemm_gflops, square_gemm_gflops, MACHINE_GEMM_SIZE};
use twolayer::error::Result;
use twolayer::machine::peak::{self as probe, Peak};
use twolayer::scalar::Dtype;
use twolayer::threads;

use super::own_kernels::OwnChoice;

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
    /// Other processes and the hypervisor on the cores while info measured.
    load: Option<twolayer::machine::MachineLoad>,
    /// The cores' arithmetic peak per dtype (`None` with `TWOLAYER_PEAK=""`).
    peak: Option<Peak>,
}

/// Runs `twolayer info`.
pub fn run(args: &InfoArgs) -> Result<()> {
    let t = args.threads.unwrap_or_else(threads::available_cores);
    threads::set_budget(t)?;
    if let Some(w) = threads::oversubscribed(t) {
        say!("twolayer: warning: {w}");
    }
    if args.probe_own_kernels {
        // The child: OpenBLAS's own choice, its rate and its results.
        out!(
            "{} {} {:e}\n",
            twolayer::blas::core_name(),
            square_gemm_gflops(Dtype::F64, t, args.probe_size.clamp(64, 4096)),
            twolayer::kernel_set::gemm_check()
        );
        return Ok(());
    }
    // The peak first, on quiet cores (cached after the first time).
    let peak = probe::peak(&probe::Probe::default(), args.peak_again)?;
    let forced = twolayer::kernel_set::forced_below_cpu();
    // The machine's load over info's own measurements: what else ran on
    // the cores, and what the hypervisor took, joins "slowed by".
    let watch = twolayer::machine::LoadWatch::start();
    let mut info = Info {
        env: Env::capture(),
        gemm_check_max_rel_error: twolayer::kernel_set::gemm_check(),
        gemm_size: MACHINE_GEMM_SIZE,
        gemm_threads: t,
        gemm_gflops_f64: machine_gemm_gflops(Dtype::F64, t),
        gemm_gflops_f32: machine_gemm_gflops(Dtype::F32, t),
        own_choice: forced
            .as_ref()
            .map(|_| OwnChoice::measure(t, MACHINE_GEMM_SIZE)),
        kernels_forced_below_cpu: forced,
        load: None,
        peak,
    };
    info.load = watch.and_then(|w| w.finish());
    info.env
        .warnings
        .extend(info.load.iter().flat_map(|l| l.warnings()));
    args.output.write_json(&info)?;
    if args.output.json_to_stdout() {
        // stdout is the JSON alone.
        return Ok(());
    }
    let mut text = String::new();
    for (k, v) in info.env.lines() {
        text.push_str(&format!("{k:<22} {v}\n"));
    }
    text.push_str(&format!(
        "{:<22} max relative error {:.1e} against plain loops (the step's five GEMMs, f64)\n",
        "GEMM check", info.gemm_check_max_rel_error
    ));
    for (dtype, rate) in [
        (Dtype::F64, info.gemm_gflops_f64),
        (Dtype::F32, info.gemm_gflops_f32),
    ] {
        text.push_str(&format!(
            "{:<22} {rate:.1} GFLOP/s ({MACHINE_GEMM_SIZE}×{MACHINE_GEMM_SIZE} GEMM, {t} threads)\n",
            format!("GEMM rate {dtype}")
        ));
    }
    if let Some(p) = &info.peak {
        for (what, r) in p.rates() {
            let gemm = match what {
                "f64" => Some(info.gemm_gflops_f64),
                "f32" => Some(info.gemm_gflops_f32),
                _ => None,
            };
            text.push_str(&format!(
                "{:<22} {:.1} GFLOP/s ({}, {} threads pinned){}\n",
                format!("peak {what}"),
                r.gflops,
                r.instruction.name(),
                r.threads,
                gemm.map_or(String::new(), |g| format!(
                    "; the square GEMM reaches {:.0}% of it",
                    100.0 * g / r.gflops
                ))
            ));
        }
    }
    if let (Some(forced), Some(own)) = (&info.kernels_forced_below_cpu, &info.own_choice) {
        text.push_str(&format!(
            "{:<22} {forced}, below this CPU (AVX-512)\n",
            "kernels forced"
        ));
        let line = own.describe(info.gemm_gflops_f64);
        text.push_str(&format!("{:<22} {line}\n", "own choice"));
    }
    args.output.text(&text);
    Ok(())
}
