//! Which rows each step trains on: the validation split, the shuffle of
//! every epoch, and the batches cut from it.
//!
//! With `rows` rows and a validation fraction f, `n_val = round(f·rows)`
//! rows are held out: row `split.apply(p)` for p < n_val is a validation
//! row, and training row j (0 ≤ j < n_train) is row `split.apply(n_val +
//! j)`; without a split, training row j is row j. Epoch e visits the
//! training rows in the order `epoch(e).apply(0), epoch(e).apply(1), …`
//! and cuts it into `n_train / batch` batches of `batch` rows (the
//! permutations are [`Permutation`]s). The last `n_train mod batch` rows
//! of each epoch's order are left out of that epoch — a different few
//! every epoch, since the order changes — so every step has the same
//! shape and runs the same preallocated step; no row is left out for
//! good. Within a batch the rows are read in ascending order (the sum
//! over a batch does not depend on it but for rounding, and ascending
//! reads are sequential on disk); step t is batch `t mod batches` of
//! epoch `t / batches`, so a run's position is its step count alone.

use super::shuffle::Permutation;
use crate::error::{Error, Result};

/// Rows a validation fraction holds out of `rows`: round(f·rows).
pub fn held_out(rows: u64, val_fraction: Option<f64>) -> u64 {
    val_fraction.map_or(0, |f| (f * rows as f64).round() as u64)
}

/// The plan of a minibatch run over a dataset's rows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    rows: u64,
    n_val: u64,
    batch: u64,
    seed: u64,
    split: Permutation,
}

impl Schedule {
    /// Batches of `batch` rows of a dataset of `rows` rows, shuffled from
    /// `seed`, with `val_fraction` of the rows held out (chosen by the
    /// same seed). Fails when the split or the batch leaves nothing to
    /// train on.
    pub fn new(rows: u64, batch: usize, seed: u64, val_fraction: Option<f64>) -> Result<Self> {
        let n_val = match val_fraction {
            None => 0,
            Some(f) if !(f > 0.0 && f < 1.0) => {
                return Err(Error::invalid(format!(
                    "--val-fraction must be between 0 and 1 (exclusive), got {f}"
                )))
            }
            Some(f) => {
                let v = held_out(rows, Some(f));
                if v == 0 {
                    return Err(Error::invalid(format!(
                        "--val-fraction {f} of {rows} rows holds out no row; raise it or drop it"
                    )));
                }
                v
            }
        };
        let n_train = rows - n_val.min(rows);
        if n_train == 0 {
            return Err(Error::invalid(format!(
                "--val-fraction holds out all {rows} rows, leaving nothing to train on"
            )));
        }
        if batch as u64 > n_train {
            return Err(Error::invalid(format!(
                "--batch {batch} is larger than the {n_train} training rows{}; use --batch {n_train} or less",
                if n_val > 0 {
                    format!(" ({rows} rows, {n_val} held out for validation)")
                } else {
                    String::new()
                }
            )));
        }
        Ok(Schedule {
            rows,
            n_val,
            batch: batch as u64,
            seed,
            split: Permutation::split(rows, seed),
        })
    }

    /// Rows per batch.
    pub fn batch(&self) -> usize {
        self.batch as usize
    }

    /// Rows held out for validation.
    pub fn val_rows(&self) -> u64 {
        self.n_val
    }

    /// Rows trained on.
    pub fn train_rows(&self) -> u64 {
        self.rows - self.n_val
    }

    /// Steps per epoch: whole batches of the training rows.
    pub fn batches_per_epoch(&self) -> u64 {
        self.train_rows() / self.batch
    }

    /// Training row `j`'s row in the dataset.
    fn train_row(&self, j: u64) -> u64 {
        if self.n_val == 0 {
            j
        } else {
            self.split.apply(self.n_val + j)
        }
    }

    /// Validation row `v`'s (v < [`Schedule::val_rows`]) row in the
    /// dataset.
    pub fn val_row(&self, v: u64) -> u64 {
        self.split.apply(v)
    }

    /// The rows of step `step`'s batch, ascending, into `out` (cleared
    /// first).
    pub fn batch_rows(&self, step: u64, out: &mut Vec<u64>) {
        let per_epoch = self.batches_per_epoch();
        let (epoch, b) = (step / per_epoch, step % per_epoch);
        let order = Permutation::epoch(self.train_rows(), self.seed, epoch);
        out.clear();
        out.extend((b * self.batch..(b + 1) * self.batch).map(|p| self.train_row(order.apply(p))));
        out.sort_unstable();
    }

    /// The validation rows from position `from` on, up to `count` of them,
    /// ascending, into `out` (cleared first).
    pub fn val_chunk(&self, from: u64, count: u64, out: &mut Vec<u64>) {
        out.clear();
        out.extend((from..(from + count).min(self.n_val)).map(|v| self.val_row(v)));
        out.sort_unstable();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_visits_distinct_training_rows_and_never_a_validation_row() {
        let s = Schedule::new(103, 10, 5, Some(0.2)).unwrap();
        assert_eq!(
            (s.val_rows(), s.train_rows(), s.batches_per_epoch()),
            (21, 82, 8)
        );
        let val: std::collections::HashSet<u64> = (0..21).map(|v| s.val_row(v)).collect();
        assert_eq!(val.len(), 21);
        let mut seen = std::collections::HashSet::new();
        let mut rows = Vec::new();
        for t in 0..8 {
            s.batch_rows(t, &mut rows);
            assert!(rows.windows(2).all(|w| w[0] < w[1]));
            for &r in &rows {
                assert!(r < 103 && !val.contains(&r) && seen.insert(r));
            }
        }
        assert_eq!(seen.len(), 80);
        // The next epoch is another order.
        let mut first = Vec::new();
        s.batch_rows(0, &mut first);
        s.batch_rows(8, &mut rows);
        assert_ne!(first, rows);
    }

    #[test]
    fn splits_that_leave_nothing_are_refused() {
        let e = |r, b, f| Schedule::new(r, b, 0, f).unwrap_err().to_string();
        assert!(e(10, 11, None).contains("--batch 11 is larger than the 10"));
        assert!(e(10, 5, Some(0.6)).contains("larger than the 4 training rows"));
        assert!(e(10, 1, Some(0.01)).contains("holds out no row"));
        assert!(e(10, 1, Some(1.0)).contains("between 0 and 1"));
        assert!(e(10, 1, Some(0.96)).contains("leaving nothing"));
    }
}
