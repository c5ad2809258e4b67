//! OpenBLAS's own kernel choice, measured in a child process when
//! `OPENBLAS_CORETYPE` forces a set below the CPU: `info` prints it and
//! `sweep` records it in the report's environment. The variable is never
//! changed in this process; the child runs without it, so a crash or a
//! wrong result stays there.

use serde::Serialize;

/// OpenBLAS's own kernel choice, from the child process.
#[derive(Serialize)]
pub struct OwnChoice {
    /// Its kernel set, or why it could not be measured.
    core: std::result::Result<String, String>,
    gemm_gflops_f64: Option<f64>,
    gemm_check_max_rel_error: Option<f64>,
}

impl OwnChoice {
    /// Measures OpenBLAS's own choice on `t` threads in a child process
    /// (`twolayer info --probe-own-kernels`) with `OPENBLAS_CORETYPE` and
    /// `OPENBLAS_L2_SIZE` removed: its rate on `size`² GEMMs.
    pub fn measure(t: usize, size: usize) -> OwnChoice {
        let failed = |why: String| OwnChoice {
            core: Err(why),
            gemm_gflops_f64: None,
            gemm_check_max_rel_error: None,
        };
        let child = std::env::current_exe().and_then(|exe| {
            std::process::Command::new(exe)
                .args(["info", "--probe-own-kernels", "--threads", &t.to_string()])
                .args(["--probe-size", &size.to_string()])
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

    /// One line: the own choice's f64 GEMM rate against `forced_gflops`
    /// (the forced set's, same threads and size), and whether its results
    /// match plain loops.
    pub fn describe(&self, forced_gflops: f64) -> String {
        match (&self.core, self.gemm_gflops_f64, self.gemm_check_max_rel_error) {
            (Ok(core), Some(rate), Some(err)) => format!(
                "OpenBLAS's own choice here is {core}: {rate:.1} GFLOP/s f64 against {forced_gflops:.1} forced ({:.2}x), {} (max relative error {err:.1e}); to use it, run without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE",
                rate / forced_gflops,
                if err < 1e-12 {
                    "its results match plain loops"
                } else {
                    "its results do NOT match plain loops: keep the variable"
                }
            ),
            (Err(why), _, _) => why.clone(),
            (Ok(core), _, _) => format!("OpenBLAS's own choice is {core}; it could not be measured"),
        }
    }
}
