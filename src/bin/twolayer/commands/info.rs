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
    let env = Env::capture();
    for (k, v) in env.lines() {
        out!("{k:<22} {v}\n");
    }
    for dtype in [Dtype::F64, Dtype::F32] {
        let rate = machine_gemm_gflops(dtype, t);
        out!("{:<22} {rate:.1} GFLOP/s ({MACHINE_GEMM_SIZE}×{MACHINE_GEMM_SIZE} GEMM, {t} threads)\n",
            format!("GEMM rate {dtype}")
        );
    }
    Ok(())
}
