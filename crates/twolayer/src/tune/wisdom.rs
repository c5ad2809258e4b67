//! The wisdom file: the plans `twolayer tune` measured, keyed by what
//! decides them — the CPU, the cores, OpenBLAS's version and kernel set,
//! the dtype, the threads, the step mode and the shape's class (each
//! dimension rounded up to a power of two) — so that train and sweep run
//! the measured plan instead of the built-in rule wherever one applies.
//! JSON, written atomically; readers accept fields they do not know.

use crate::error::{Error, Result};
use crate::output::write_atomic;
use crate::run::RunDescription;
use crate::step::PlanChoice;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The format version this build reads and writes. Version 1 keyed an
/// entry by loose fields (`dtype`, `threads`, `step_mode`, `shape_class`);
/// version 2 by the run's [`RunDescription`], whose class includes the
/// form. A version-1 file is read as empty, with a warning (its entries
/// could match no run of this build), and rewritten by the next tuning.
pub const VERSION: u32 = 2;

/// Largest wisdom file read.
const LIMIT: u64 = 16 << 20;

/// The variable that names the wisdom file (empty: none).
pub const WISDOM_VAR: &str = "TWOLAYER_WISDOM";

/// Everything that decides which plan is fastest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    /// CPU model name.
    pub cpu_model: String,
    /// Cores this process may run on.
    pub cores: usize,
    /// OpenBLAS's version.
    pub openblas_version: String,
    /// OpenBLAS's kernel set.
    pub openblas_core: String,
    /// The library's build, [`Library::key`](crate::blas::Library::key):
    /// a native and a generic build of one release with the same kernel
    /// set still time differently, so each is tuned on its own (absent
    /// from older files, whose entries then match no run).
    #[serde(default)]
    pub openblas_library: String,
    /// The run's class: its dtype, threads, step mode and form, and its
    /// shape with each dimension rounded up to a power of two
    /// ([`RunDescription::class`]).
    pub run: RunDescription,
}

impl Key {
    /// The key of `run` here and now.
    pub fn of(run: RunDescription) -> Key {
        Key {
            cpu_model: crate::machine::cpu_model(),
            cores: crate::threads::available_cores(),
            openblas_version: crate::blas::version(),
            openblas_core: crate::blas::core_name(),
            openblas_library: crate::blas::Library::current().key(),
            run: run.class(),
        }
    }
}

/// One tuned point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// What it applies to.
    pub key: Key,
    /// The fastest plan found.
    pub plan: PlanChoice,
    /// The shape tuned, (N, D_in, H, D_out).
    pub shape: [usize; 4],
    /// Its milliseconds per step on `rows` rows.
    pub ms_per_step: f64,
    /// Rows it was timed on.
    pub rows: usize,
    /// When, UTC.
    pub date: String,
    /// twolayer's version and commit.
    pub written_by: String,
}

/// A wisdom file's contents.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Wisdom {
    /// [`VERSION`].
    pub version: u32,
    /// One per key.
    pub entries: Vec<Entry>,
}

impl Wisdom {
    /// Where wisdom lives unless a flag says: `$TWOLAYER_WISDOM` (empty:
    /// nowhere), else `$XDG_CACHE_HOME/twolayer/wisdom.json`, else
    /// `~/.cache/twolayer/wisdom.json`.
    pub fn default_path() -> Option<PathBuf> {
        crate::machine::cache_file(WISDOM_VAR, "wisdom.json")
    }

    /// Reads a wisdom file, refusing other versions.
    pub fn read(path: &Path) -> Result<Wisdom> {
        let text = crate::input::read_text(path, LIMIT)?;
        /// The version alone, read first: an older file's entries do not
        /// parse as this build's.
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let v: Versioned = serde_json::from_str(&text)
            .map_err(|e| Error::read(path, format!("not a twolayer wisdom file ({e})")))?;
        if v.version < VERSION {
            eprintln!(
                "twolayer: warning: {}: wisdom version {} from an older twolayer, whose entries match no run of this one (version {VERSION}); read as empty, `twolayer tune` rewrites it",
                path.display(),
                v.version
            );
            return Ok(Wisdom {
                version: VERSION,
                entries: Vec::new(),
            });
        }
        let w: Wisdom = serde_json::from_str(&text)
            .map_err(|e| Error::read(path, format!("not a twolayer wisdom file ({e})")))?;
        if w.version != VERSION {
            return Err(Error::read(
                path,
                format!(
                    "wisdom version {}, but this twolayer reads version {VERSION}",
                    w.version
                ),
            ));
        }
        Ok(w)
    }

    /// [`Wisdom::read`], or an empty wisdom when the file does not exist.
    pub fn read_or_empty(path: &Path) -> Result<Wisdom> {
        if path.exists() {
            Self::read(path)
        } else {
            Ok(Wisdom {
                version: VERSION,
                entries: Vec::new(),
            })
        }
    }

    /// The entry for `key`, if tuned.
    pub fn lookup(&self, key: &Key) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == *key)
    }

    /// Adds `entry`, replacing the one of the same key.
    pub fn insert(&mut self, entry: Entry) {
        self.entries.retain(|e| e.key != entry.key);
        self.entries.push(entry);
    }

    /// Adds `entries` to the wisdom file at `path` as it is now, under its
    /// lock: the file is read again, the entries inserted (replacing those
    /// of the same keys) and the file written, so that two `tune` runs on
    /// one file keep both's entries (before, each wrote the file it had
    /// read at its start, and the last writer's won). Waits up to 60 s for
    /// another tuning's merge.
    pub fn merge_into(path: &Path, entries: &[Entry]) -> Result<Wisdom> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
        }
        let _lock = crate::lock::FileLock::wait_exclusive(
            path,
            "the wisdom file",
            std::time::Duration::from_secs(60),
        )?;
        let mut now = Self::read_or_empty(path)?;
        for e in entries {
            now.insert(e.clone());
        }
        now.write(path)?;
        Ok(now)
    }

    /// Writes the file atomically, creating its folder.
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
        }
        write_atomic(path, |w| {
            serde_json::to_writer_pretty(&mut *w, self).map_err(std::io::Error::other)?;
            writeln!(w)
        })
    }
}

/// Where a run's plan came from, for its summary and report.
#[derive(Clone, Debug, PartialEq)]
pub enum PlanSource {
    /// The built-in rule ([`crate::Plan::new`]).
    Rule,
    /// A wisdom file's entry.
    Wisdom {
        /// The file.
        path: PathBuf,
        /// When it was tuned.
        date: String,
    },
}

impl std::fmt::Display for PlanSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanSource::Rule => write!(f, "the built-in rule"),
            PlanSource::Wisdom { path, date } => {
                write!(f, "wisdom {} (tuned {date})", path.display())
            }
        }
    }
}

/// A wisdom file read once for a run or a sweep, to look plans up in.
#[derive(Clone, Debug)]
pub struct Tuned {
    path: PathBuf,
    wisdom: Wisdom,
}

impl Tuned {
    /// The wisdom at `path`, when it names a readable file. An unreadable
    /// or garbled file is a one-line warning, never a failed run: wisdom
    /// only ever makes a run faster.
    pub fn open(path: Option<&Path>) -> Option<Tuned> {
        let path = path?;
        if !path.exists() {
            return None;
        }
        match Wisdom::read(path) {
            Ok(wisdom) => Some(Tuned {
                path: path.to_path_buf(),
                wisdom,
            }),
            Err(e) => {
                eprintln!("twolayer: warning: {e}; using the built-in plans");
                None
            }
        }
    }

    /// The stored plan for `run` here, with where it came from; `None`
    /// where the file has none (the caller uses the rule).
    pub fn lookup(&self, run: RunDescription) -> Option<(PlanChoice, PlanSource)> {
        let threads = run.threads;
        let e = self.wisdom.lookup(&Key::of(run))?;
        // The file says what the plan is; the run's budget says how many
        // threads it may have. A plan over budget (a hand-edited or foreign
        // file: a million OpenBLAS threads) is not run.
        let asked = e.plan.shards.saturating_mul(e.plan.blas_threads);
        if e.plan.shards == 0 || e.plan.blas_threads == 0 || asked > threads {
            eprintln!(
                "twolayer: warning: {}: the plan tuned for this run asks for {} shard(s) × {} OpenBLAS thread(s), over the budget of {threads} thread(s); using the built-in plan",
                self.path.display(),
                e.plan.shards,
                e.plan.blas_threads
            );
            return None;
        }
        Some((
            e.plan,
            PlanSource::Wisdom {
                path: self.path.clone(),
                date: e.date.clone(),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalar::Dtype;
    use crate::shape::Shape;
    use crate::step::{Form, StepMode};

    #[test]
    fn a_version_1_file_reads_as_empty_and_a_newer_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.json");
        std::fs::write(
            &p,
            r#"{"version":1,"entries":[{"key":{"cpu_model":"x","cores":2,"openblas_version":"0.3.21","openblas_core":"Haswell","dtype":"f64","threads":2,"step_mode":"fused","shape_class":[1024,64,32,4]},"plan":{"shards":1,"blas_threads":2,"block_rows":700},"shape":[700,40,24,3],"ms_per_step":1.0,"rows":700,"date":"d","written_by":"t"}]}"#,
        )
        .unwrap();
        let w = Wisdom::read(&p).unwrap();
        assert_eq!(w.version, VERSION);
        assert!(w.entries.is_empty());
        std::fs::write(&p, r#"{"version":3,"entries":[]}"#).unwrap();
        let e = Wisdom::read(&p).unwrap_err().to_string();
        assert!(e.contains("wisdom version 3"), "{e}");
    }

    #[test]
    fn a_key_holds_the_runs_class_and_tells_forms_apart() {
        let run = RunDescription::new(
            Shape::new(700, 40, 24, 3).unwrap(),
            Dtype::F64,
            2,
            StepMode::Fused,
            Form::Primal,
        );
        let k = Key::of(run);
        assert_eq!(k.run.shape(), Shape::new(1024, 64, 32, 4).unwrap());
        // A neighbour of the same class shares the key; the dual form not.
        let near = run.with_shape(Shape::new(1000, 64, 17, 4).unwrap());
        assert_eq!(Key::of(near), k);
        assert_ne!(
            Key::of(RunDescription {
                form: Form::Dual,
                ..run
            }),
            k
        );
        let text = serde_json::to_string(&k).unwrap();
        let back: Key = serde_json::from_str(&text).unwrap();
        assert_eq!(back, k);
    }
}
