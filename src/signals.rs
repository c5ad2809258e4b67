//! Ctrl-C, SIGTERM and SIGHUP: recorded (the first to arrive) by a handler
//! installed once per process, and acted on by the command at its next
//! safe point — a step boundary for `train`, between child processes'
//! polls for `sweep`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use twolayer::error::{Error, Result};

/// The first of SIGINT, SIGTERM and SIGHUP to arrive, checked at every
/// step boundary. Installed once per process, as `twolayer train` starts,
/// so a signal during set-up is kept too.
pub struct Signals {
    first: Arc<AtomicUsize>,
}

static SIGNALS: std::sync::OnceLock<Signals> = std::sync::OnceLock::new();

/// The signals that stop a run at a step boundary.
const STOPPING: [i32; 3] = [
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGHUP,
];

impl Signals {
    /// The process's handlers, installed on the first call.
    pub fn get() -> Result<&'static Signals> {
        if let Some(s) = SIGNALS.get() {
            return Ok(s);
        }
        let first = Arc::new(AtomicUsize::new(0));
        for sig in STOPPING {
            let first = Arc::clone(&first);
            // SAFETY: the action only does an atomic compare-and-swap,
            // which is async-signal-safe; it allocates and locks nothing.
            unsafe {
                signal_hook::low_level::register(sig, move || {
                    let _ =
                        first.compare_exchange(0, sig as usize, Ordering::SeqCst, Ordering::SeqCst);
                })
            }
            .map_err(|e| Error::invalid(format!("cannot install a signal handler: {e}")))?;
        }
        Ok(SIGNALS.get_or_init(|| Signals { first }))
    }

    /// The first signal that arrived, if any.
    pub fn caught(&self) -> Option<i32> {
        match self.first.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s as i32),
        }
    }

    /// The error of a run stopped by `signal` before its first step.
    pub fn before_training(&self) -> Result<()> {
        match self.caught() {
            None => Ok(()),
            Some(signal) => Err(Error::Interrupted {
                signal,
                msg: format!(
                    "stopped by {} during set-up, before the first step; nothing was written",
                    signal_name(signal)
                ),
            }),
        }
    }
}

/// For a wait during set-up (standard input being read): the error of
/// the signal that arrived, if one did (handlers installed on first use).
pub fn stop_waiting() -> Option<Error> {
    Signals::get().ok()?.before_training().err()
}

/// For a command that installed the handlers only to wait on standard
/// input (`predict`, `eval`): the error of a signal that arrived since,
/// to act on before writing anything (without handlers, the signal's
/// default action would have ended the process).
pub fn caught_since() -> Option<Error> {
    let s = SIGNALS.get()?;
    let signal = s.caught()?;
    Some(Error::Interrupted {
        signal,
        msg: format!("stopped by {}; nothing was written", signal_name(signal)),
    })
}

/// SIGINT, SIGTERM or SIGHUP by name.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        signal_hook::consts::SIGINT => "SIGINT",
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}
