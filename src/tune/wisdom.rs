//! The wisdom file: the plans `twolayer tune` measured, keyed by what
//! decides them — the CPU, the cores, OpenBLAS's version and kernel set,
//! the dtype, the threads, the step mode and the shape's class (each
//! dimension rounded up to a power of two) — so that train and sweep run
//! the measured plan instead of the built-in rule wherever one applies.
//! JSON, written atomically; readers accept fields they do not know.

use crate::error::{Error, Result};
use crate::output::write_atomic;
use crate::scalar::Dtype;
use crate::shape::Shape;
use crate::step::{PlanChoice, StepMode};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The format version this build reads and writes.
pub const VERSION: u32 = 1;

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
    /// `f32` or `f64`.
    pub dtype: Dtype,
    /// The run's thread budget.
    pub threads: usize,
    /// `fused` or `explicit`.
    pub step_mode: StepMode,
    /// (N, D_in, H, D_out), each rounded up to a power of two.
    pub shape_class: [usize; 4],
}

impl Key {
    /// The key of a run of `shape` here and now.
    pub fn of(shape: Shape, dtype: Dtype, threads: usize, mode: StepMode) -> Key {
        Key {
            cpu_model: crate::machine::cpu_model(),
            cores: crate::threads::available_cores(),
            openblas_version: crate::blas::version(),
            openblas_core: crate::blas::core_name(),
            openblas_library: crate::blas::Library::current().key(),
            dtype,
            threads,
            step_mode: mode,
            shape_class: [shape.n, shape.d_in, shape.hidden, shape.d_out]
                .map(|d| d.next_power_of_two()),
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
        if let Some(v) = std::env::var_os(WISDOM_VAR) {
            return (!v.is_empty()).then(|| PathBuf::from(v));
        }
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(cache.join("twolayer").join("wisdom.json"))
    }

    /// Reads a wisdom file, refusing other versions.
    pub fn read(path: &Path) -> Result<Wisdom> {
        let text = crate::input::read_text(path, LIMIT)?;
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

    /// The stored plan for a run of `shape` here, with where it came
    /// from; `None` where the file has none (the caller uses the rule).
    pub fn lookup(
        &self,
        shape: Shape,
        dtype: Dtype,
        threads: usize,
        mode: StepMode,
    ) -> Option<(PlanChoice, PlanSource)> {
        let e = self.wisdom.lookup(&Key::of(shape, dtype, threads, mode))?;
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
