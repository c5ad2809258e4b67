//! The sweep's progress bar on stderr (indicatif), drawn only when stderr
//! is a terminal: what the command line shows of the library's
//! [`Progress`].

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use twolayer::bench::grid::Point;
use twolayer::bench::run::Progress;

/// A progress bar for a sweep, hidden unless asked to show and stderr is a
/// terminal.
pub struct SweepBar(ProgressBar);

impl SweepBar {
    /// A bar on stderr when `visible` (MPI ranks other than 0 pass false).
    pub fn new(visible: bool) -> SweepBar {
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} (ETA {eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        SweepBar(bar)
    }
}

impl Progress for SweepBar {
    fn start(&mut self, label: &str, total: usize) {
        self.0.set_prefix(label.to_string());
        self.0.set_length(total as u64);
    }

    fn next(&mut self, p: &Point, round: usize, rounds: usize) {
        self.0.set_message(format!(
            "{} {} ×{} (round {}/{rounds})",
            p.shape,
            p.dtype,
            p.threads,
            round + 1
        ));
    }

    fn done(&mut self) {
        self.0.inc(1);
    }

    fn finish(&mut self) {
        self.0.finish_and_clear();
    }
}
