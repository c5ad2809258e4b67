//! The crate's error type: every failure the user can cause ends as one of
//! these, printed as a single line by the binary.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in `twolayer`, each with a message fit to be
/// shown to a user on one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration, flag or data value that makes no sense.
    #[error("{0}")]
    Invalid(String),

    /// An input file could not be read or parsed.
    #[error("cannot read {}: {msg}", path.display())]
    Read {
        /// The file that was being read.
        path: PathBuf,
        /// What went wrong, in words.
        msg: String,
    },

    /// An output file could not be written.
    #[error("cannot write {}: {msg}", path.display())]
    Write {
        /// The file that was being written.
        path: PathBuf,
        /// What went wrong, in words.
        msg: String,
    },

    /// The buffers a run needs would not fit in memory.
    #[error(
        "{what} needs {needed} bytes ({}) but only {available} bytes ({}) of memory are available",
        human_bytes(*needed as f64),
        human_bytes(*available as f64)
    )]
    OutOfMemory {
        /// What was about to be allocated.
        what: String,
        /// Bytes that would be needed.
        needed: u128,
        /// Bytes the machine reports as available.
        available: u128,
    },

    /// A signal stopped the run at a step boundary; its outputs were written.
    #[error("{msg}")]
    Interrupted {
        /// The signal (SIGINT = 2, SIGTERM = 15); the exit status is 128 + it.
        signal: i32,
        /// Where it stopped and how to go on.
        msg: String,
    },

    /// The loss stopped being a finite number.
    #[error(
        "loss became {value} at step {step}: training diverged; try a smaller --lr (it was {lr:e})"
    )]
    Diverged {
        /// The step whose forward pass produced the non-finite loss.
        step: usize,
        /// The non-finite loss (NaN or ±inf).
        value: f64,
        /// The learning rate in use (the larger of the two layers').
        lr: f64,
    },
}

/// Shorthand for results whose error is [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Invalid`] from anything printable.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }

    /// An [`Error::Read`] for `path`.
    pub fn read(path: &Path, msg: impl std::fmt::Display) -> Self {
        Error::Read {
            path: shown(path),
            msg: one_line(&msg.to_string()),
        }
    }

    /// An [`Error::Write`] for `path`.
    pub fn write(path: &Path, msg: impl std::fmt::Display) -> Self {
        Error::Write {
            path: path.to_path_buf(),
            msg: one_line(&msg.to_string()),
        }
    }
}

/// Folds a possibly multi-line message from a dependency onto one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Formats a byte count with a binary unit: `1.5 GiB`.
pub fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The paths of the copies of standard input alive now
/// ([`crate::input::resolve_stdin`]): errors about them name standard
/// input, not a descriptor the user never saw.
static STDIN_COPIES: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// How messages name standard input.
pub const STDIN_NAME: &str = "<standard input>";

/// Errors about `path`, a copy of standard input, name standard input
/// from now on.
pub fn name_standard_input_copy(path: &Path) {
    STDIN_COPIES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(path.to_path_buf());
}

/// `path`, a copy of standard input, is gone.
pub fn forget_standard_input_copy(path: &Path) {
    let mut live = STDIN_COPIES.lock().unwrap_or_else(|e| e.into_inner());
    live.retain(|p| p != path);
}

/// What to call `path` in a message: `<standard input>` for a copy of it,
/// else the path.
pub fn shown(path: &Path) -> std::path::PathBuf {
    let live = STDIN_COPIES.lock().unwrap_or_else(|e| e.into_inner());
    if live.iter().any(|p| p == path) {
        std::path::PathBuf::from(STDIN_NAME)
    } else {
        path.to_path_buf()
    }
}
