//! The environment block of every report: what ran, where, built how.

use crate::blas;
use serde::{Deserialize, Serialize};

/// Everything about the machine and the build that a reader needs to
/// trust and compare a report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Env {
    /// CPU model name from /proc/cpuinfo.
    pub cpu_model: String,
    /// Cores this process may run on.
    pub cores: usize,
    /// OpenBLAS version, e.g. `0.3.21`.
    pub openblas_version: String,
    /// OpenBLAS's build description (`openblas_get_config`).
    pub openblas_config: String,
    /// The kernel set OpenBLAS runs (`openblas_get_corename`).
    pub openblas_core: String,
    /// The OpenBLAS library: version, target, native or generic, bf16
    /// GEMM, the file loaded (absent from older reports).
    #[serde(default)]
    pub openblas_library: Option<blas::Library>,
    /// OpenBLAS threads when the report was started (each point sets its own).
    pub openblas_threads: usize,
    /// Rayon threads of the global pool (each point runs in a pool of its own size).
    pub rayon_threads: usize,
    /// Every OPENBLAS_* variable in the environment, as NAME=value.
    pub openblas_env: Vec<String>,
    /// The compiler that built the binary.
    pub rustc: String,
    /// twolayer's version.
    pub crate_version: String,
    /// The git commit built (with `-dirty` for uncommitted changes).
    pub git_commit: String,
    /// `release` or `debug`.
    pub profile: String,
    /// When the report was made, UTC, ISO 8601.
    pub date: String,
    /// The command line that made it.
    pub command_line: Vec<String>,
    /// What in the environment slowed the run, one line each, with the
    /// measured cost where it was measured: a kernel set forced below the
    /// CPU, OpenBLAS threads left spinning. Empty when nothing did
    /// (absent from older reports).
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl Env {
    /// Reads the environment now.
    pub fn capture() -> Env {
        Env {
            cpu_model: crate::machine::cpu_model(),
            cores: crate::threads::available_cores(),
            openblas_version: blas::version(),
            openblas_config: blas::config(),
            openblas_core: blas::core_name(),
            openblas_library: Some(blas::Library::current()),
            openblas_threads: blas::threads(),
            rayon_threads: rayon::current_num_threads(),
            openblas_env: blas::env_vars(),
            rustc: env!("TWOLAYER_RUSTC_VERSION").to_string(),
            crate_version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit: env!("TWOLAYER_GIT_COMMIT").to_string(),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .to_string(),
            date: utc_now(),
            command_line: std::env::args().collect(),
            warnings: crate::kernel_set::environment_warnings(),
        }
    }

    /// The block as `key: value` lines, for `twolayer info` and Markdown.
    pub fn lines(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CPU", self.cpu_model.clone()),
            ("cores", self.cores.to_string()),
            (
                "OpenBLAS",
                format!(
                    "{} ({}), {} threads",
                    self.openblas_version, self.openblas_core, self.openblas_threads
                ),
            ),
            ("OpenBLAS config", self.openblas_config.clone()),
            (
                "OpenBLAS library",
                self.openblas_library
                    .as_ref()
                    .map(|l| l.describe())
                    .unwrap_or_else(|| "not recorded".into()),
            ),
            (
                "OPENBLAS_* variables",
                if self.openblas_env.is_empty() {
                    "none".into()
                } else if self.openblas_library.as_ref().is_some_and(|l| l.native)
                    && self
                        .openblas_env
                        .iter()
                        .any(|v| v.starts_with("OPENBLAS_CORETYPE="))
                {
                    format!(
                        "{} (OPENBLAS_CORETYPE is not read by a native build: it has one kernel set)",
                        self.openblas_env.join(" ")
                    )
                } else {
                    self.openblas_env.join(" ")
                },
            ),
            ("rayon threads", self.rayon_threads.to_string()),
            ("rustc", self.rustc.clone()),
            (
                "twolayer",
                format!(
                    "{} (commit {}, {} build)",
                    self.crate_version, self.git_commit, self.profile
                ),
            ),
            ("date", self.date.clone()),
            ("command", self.command_line.join(" ")),
            (
                "slowed by",
                if self.warnings.is_empty() {
                    "nothing seen".into()
                } else {
                    self.warnings.join("; ")
                },
            ),
        ]
    }
}

/// The current time, UTC, as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
