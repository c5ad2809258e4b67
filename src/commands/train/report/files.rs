//! The files a run writes at its end (`--checkpoint`, `--metrics`,
//! `--save-best`, `--losses`, `--save`): each written whatever happened to
//! the others — one full disk or bad device must not cost the rest — and
//! written before anything is printed, so that a failed stdout does not
//! cost the weights. Weights a failed write would lose go to a rescue
//! file; every failure is reported in one message, naming what was
//! written all the same.

use super::{write_all_losses, write_checkpoint, write_metrics, Reporter};
use std::path::Path;
use twolayer::error::{Error, Result};
use twolayer::npz;
use twolayer::output;
use twolayer::scalar::Real;
use twolayer::train::Trainer;

impl<F: Real> Reporter<'_, F> {
    /// Writes every file the run asked for; `failed` holds the failures
    /// of the run so far (a checkpoint or metrics write that stopped it).
    /// Fails with all of them in one message, the rescue files named.
    pub(super) fn write_files(
        &mut self,
        trainer: &Trainer<F>,
        mut failed: Vec<Error>,
    ) -> Result<()> {
        let (args, run) = (self.args, self.run);
        let mut written: Vec<String> = Vec::new();
        let mut keep = |flag: &str, p: &Path, r: Result<()>| match r {
            Ok(()) => written.push(format!("{flag} {}", p.display())),
            Err(e) => failed.push(e),
        };
        if let (Some(p), Some(w)) = (&args.checkpoint, &mut self.ckpt) {
            keep(
                "--checkpoint",
                p,
                write_checkpoint(
                    w,
                    trainer,
                    run,
                    self.n_total,
                    &self.history,
                    self.best.as_ref(),
                ),
            );
        }
        if let Some(p) = &args.metrics {
            // Appended epoch by epoch; made durable now. A file that
            // failed on the way is written whole.
            let r = match self.metrics.take() {
                Some(m) => m.finish(),
                None => write_metrics(p, &self.history),
            };
            keep("--metrics", p, r);
        }
        if let Some(p) = &args.save_best {
            let r = match &self.best {
                Some(b) => npz::save_weights(p, b),
                None => Err(Error::invalid(format!(
                    "--save-best {}: no epoch was validated, so there is no best one to write",
                    p.display()
                ))),
            };
            keep("--save-best", p, r);
        }
        if let Some(p) = &args.losses {
            keep("--losses", p, write_all_losses(p, trainer));
        }
        if let Some(p) = &args.save {
            keep("--save", p, npz::save_weights(p, trainer.weights()));
        }
        // Weights a failed write would lose go to a rescue file, named
        // below: the trained weights when --save failed (or the checkpoint
        // did and there is no --save), the best epoch's when --save-best
        // failed. (Before, a disk that filled during the run lost them.)
        let lost = |flag: &str| written.iter().all(|w| !w.starts_with(flag));
        let mut rescued: Vec<String> = Vec::new();
        if !failed.is_empty() {
            let weights_lost = (args.save.is_some() && lost("--save "))
                || (args.save.is_none() && args.checkpoint.is_some() && lost("--checkpoint "));
            if weights_lost {
                rescued.push(
                    match output::rescue("weights", "npz", |p| {
                        npz::save_weights(p, trainer.weights())
                    }) {
                        Some(p) => format!("the trained weights are safe in {}", p.display()),
                        None => {
                            "no rescue file could be written for the trained weights either".into()
                        }
                    },
                );
            }
            if let (Some(_), Some(b), true) = (&args.save_best, &self.best, lost("--save-best ")) {
                rescued.push(
                    match output::rescue("best", "npz", |p| npz::save_weights(p, b)) {
                        Some(p) => format!("the best epoch's weights are safe in {}", p.display()),
                        None => {
                            "no rescue file could be written for the best epoch's weights either"
                                .into()
                        }
                    },
                );
            }
        }
        if let Some(first) = failed.first() {
            // The same failure twice (a metrics file that failed at an
            // epoch and again at the end) is said once.
            let mut others: Vec<String> = Vec::new();
            for e in failed[1..].iter().map(|e| e.to_string()) {
                if e != first.to_string() && !others.contains(&e) {
                    others.push(e);
                }
            }
            let others = others.join("; ");
            let mut msg = first.to_string();
            if !others.is_empty() {
                msg.push_str(&format!("; also {others}"));
            }
            msg.push_str(&if written.is_empty() {
                "; no other output was asked for or written".to_string()
            } else {
                format!("; written all the same: {}", written.join(", "))
            });
            for r in rescued {
                msg.push_str(&format!("; {r}"));
            }
            return Err(Error::invalid(msg));
        }
        Ok(())
    }
}
