//! Checkpoints: everything a run needs to continue exactly where it was —
//! weights, step count, loss history, configuration, and where the data
//! came from — in one versioned, checksummed file, written atomically.
//!
//! Format version 2 (see [`mod@file`] and docs/checkpoint-format.md): the
//! state — header and weights — in two slots written in turn, the loss of
//! every step and the record of every epoch in a log that only grows, so
//! that a checkpoint writes what changed since the last one and its cost
//! does not grow with the run. Files of version 1, which held everything
//! in one block rewritten whole each time, still read:
//!
//! ```text
//! offset  size        field
//! 0       8           magic  "TWLCKPT\0"
//! 8       4           format version (u32) = 1
//! 12      8           header length H (u64), at most 1 MiB
//! 20      H           header: JSON (see [`Header`]), the epochs in it
//! 20+H    8·steps     the loss of every step done (f64)
//! ..      e·…         the arrays, as in version 2
//! end−32  32          SHA-256 of every byte before it
//! ```
//!
//! A dual-form run stores its w1 formed, as every run does (so any reader
//! of weights can use the file), and with it w1_0 and C, from which it
//! continues bit for bit.
//!
//! A reader checks the magic, the version, the header, the lengths (before
//! allocating anything) and the checksums before it believes a single
//! weight.

pub mod file;

use crate::error::{Error, Result};
use crate::net::{Biases, Weights};
use crate::run::RunDescription;
use crate::scalar::{Real, Storage};
use crate::shape::Shape;
use crate::step::{Form, LearningRates, PlanChoice};
use crate::train::Loss;
pub use file::{CheckpointWriter, State, Written};
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The file's first eight bytes.
pub const MAGIC: &[u8; 8] = b"TWLCKPT\0";
/// The format version this build writes; it reads it and version 1.
pub const VERSION: u32 = file::VERSION;
/// The first format version, which this build still reads.
pub const VERSION_1: u32 = 1;
/// Largest header accepted.
const MAX_HEADER: u64 = 1 << 20;
const PREFIX: usize = 8 + 4 + 8;
const DIGEST: usize = 32;

/// Where the training data comes from, so a resumed run uses the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataSource {
    /// Generated from a seed (`Data::random`).
    Seeded {
        /// The seed.
        seed: u64,
    },
    /// Read from a `.npz` file (`--init`), checked against its checksum on
    /// resume.
    File {
        /// The path as given (made absolute when the checkpoint was written),
        /// for people: see [`stored_path`].
        path: String,
        /// The path's bytes in hex, when they are not UTF-8 (`path` is then
        /// a lossy rendering).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path_hex: Option<String>,
        /// SHA-256 of the file's bytes, hex.
        sha256: String,
    },
    /// A dataset trained on in minibatches (`--data`): one `.npz` or two
    /// `.npy` files, each checked against its checksum on resume.
    Dataset {
        /// The files.
        files: Vec<FileRef>,
    },
}

/// A file a run reads, by absolute path and content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// The path as given, made absolute, for people: see [`FileRef::path_buf`].
    pub path: String,
    /// The path's bytes in hex, when they are not UTF-8 (`path` is then a
    /// lossy rendering that would not find the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    /// SHA-256 of the file's bytes (hex); for files over
    /// [`SAMPLED_ABOVE`] bytes, of its length and [`SAMPLES`] evenly
    /// spaced 64 KiB blocks, the first and the last among them.
    pub sha256: String,
    /// Whether `sha256` is of samples.
    #[serde(default)]
    pub sampled: bool,
}

/// Files larger than this are fingerprinted by samples: hashing all of a
/// 100 GB dataset would take minutes at every start and resume.
pub const SAMPLED_ABOVE: u64 = 256 << 20;
/// Blocks a sampled fingerprint hashes.
pub const SAMPLES: u64 = 256;

/// SHA-256 (hex) of a file's length and [`SAMPLES`] 64 KiB blocks spread
/// evenly over it, from its start to its end: 16 MiB read whatever its
/// size. It catches a rewritten, truncated, extended or regenerated file;
/// an edit of a few bytes between samples it misses.
pub fn sampled_sha256(path: &Path) -> Result<String> {
    use std::os::unix::fs::FileExt;
    let f = crate::input::open_regular(path)?;
    let len = f.metadata().map_err(|e| Error::read(path, e))?.len();
    let mut h = Sha256::new();
    h.update(len.to_le_bytes());
    let block = 64 << 10;
    let mut buf = vec![0u8; block as usize];
    for k in 0..SAMPLES {
        let at = (len.saturating_sub(block)) * k / (SAMPLES - 1);
        let n = block.min(len - at) as usize;
        f.read_exact_at(&mut buf[..n], at)
            .map_err(|e| Error::read(path, e))?;
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// A path as a checkpoint stores it: its text, and its bytes in hex when
/// they are not UTF-8 (a file name in Latin-1, say), so that a resume finds
/// the very file.
pub fn store_path(p: &Path) -> (String, Option<String>) {
    use std::os::unix::ffi::OsStrExt;
    match p.to_str() {
        Some(s) => (s.to_string(), None),
        None => (p.display().to_string(), Some(hex(p.as_os_str().as_bytes()))),
    }
}

/// The path [`store_path`] stored.
pub fn stored_path(path: &str, path_hex: Option<&str>) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path_hex.and_then(|h| {
        (h.len() % 2 == 0)
            .then(|| {
                (0..h.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
                    .collect::<Option<Vec<u8>>>()
            })
            .flatten()
    });
    match bytes {
        Some(b) => PathBuf::from(std::ffi::OsStr::from_bytes(&b)),
        None => PathBuf::from(path),
    }
}

impl DataSource {
    /// An `--init` file's path, as recorded.
    pub fn file_path(&self) -> Option<PathBuf> {
        match self {
            DataSource::File { path, path_hex, .. } => Some(stored_path(path, path_hex.as_deref())),
            _ => None,
        }
    }
}

impl FileRef {
    /// The file's path, as recorded.
    pub fn path_buf(&self) -> PathBuf {
        stored_path(&self.path, self.path_hex.as_deref())
    }

    /// The reference to `path` as it is now.
    pub fn of(path: &Path) -> Result<FileRef> {
        let len = std::fs::metadata(path)
            .map_err(|e| Error::read(path, e))?
            .len();
        let sampled = len > SAMPLED_ABOVE;
        let (text, path_hex) =
            store_path(&std::fs::canonicalize(path).map_err(|e| Error::read(path, e))?);
        Ok(FileRef {
            path: text,
            path_hex,
            sha256: if sampled {
                sampled_sha256(path)?
            } else {
                file_sha256(path)?
            },
            sampled,
        })
    }

    /// The reference to `path` without its fingerprint, for a run that
    /// writes no checkpoint (nothing will ever compare it): hashing a
    /// 160 MB dataset takes a tenth of a second, as long as an epoch of
    /// a small model on it.
    pub fn unhashed(path: &Path) -> Result<FileRef> {
        // A copy of standard input has no name to make absolute
        // (`/proc/self/fd/N`): it is recorded as it is.
        let (text, path_hex) =
            store_path(&std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()));
        Ok(FileRef {
            path: text,
            path_hex,
            sha256: String::new(),
            sampled: false,
        })
    }

    /// Fails when the file is no longer the one referred to.
    pub fn check_unchanged(&self) -> Result<()> {
        let p = &self.path_buf();
        let now = if self.sampled {
            sampled_sha256(p)?
        } else {
            file_sha256(p)?
        };
        if now != self.sha256 {
            return Err(Error::read(
                p,
                "the file has changed since the checkpoint was written (SHA-256 differs); resuming would train on other data",
            ));
        }
        Ok(())
    }
}

/// What a minibatch run's checkpoint records besides the common header:
/// with the step count, everything that decides the next batch (the
/// epoch is steps_done / batches per epoch, the position in it the rest,
/// and the shuffle a function of the seed and the epoch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinibatchHeader {
    /// Rows of the dataset (M).
    pub rows: u64,
    /// Rows per batch (also the header's n).
    pub batch: usize,
    /// Seed of the shuffles and of the validation split.
    pub seed: u64,
    /// Fraction of the rows held out for validation, when split.
    pub val_fraction: Option<f64>,
    /// A separate validation set's files, when given.
    pub val: Option<Vec<FileRef>>,
    /// One record per epoch finished (in memory; a version 2 file keeps
    /// them in its log, not in the header).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<EpochRecord>,
    /// Early stopping: stop once this many epochs in a row have not
    /// improved on the best validation loss (`--patience`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<u64>,
}

impl Header {
    /// A copy without the epoch history (thousands of records in a long
    /// run; a version 2 file keeps them in its log), cloned field by field
    /// so that the history is never copied.
    pub fn without_history(&self) -> Header {
        Header {
            data: self.data.clone(),
            loss: self.loss,
            minibatch: self.minibatch.as_ref().map(|m| MinibatchHeader {
                val: m.val.clone(),
                history: Vec::new(),
                ..*m
            }),
            blas_core: self.blas_core.clone(),
            blas_library: self.blas_library.clone(),
            written_by: self.written_by.clone(),
            ..*self
        }
    }
}

impl MinibatchHeader {
    /// The epoch with the lowest validation loss so far (the first of
    /// equals), and that loss.
    pub fn best_epoch(history: &[EpochRecord]) -> Option<(u64, f64)> {
        history
            .iter()
            .filter_map(|r| r.val_loss.map(|l| (r.epoch, l)))
            .fold(None, |best, (e, l)| match best {
                Some((_, b)) if b <= l => best,
                _ => Some((e, l)),
            })
    }

    /// Whether early stopping ends the run after `history`: `patience`
    /// epochs have passed since the best one.
    pub fn patience_spent(&self, history: &[EpochRecord]) -> bool {
        match (self.patience, Self::best_epoch(history), history.last()) {
            (Some(p), Some((best, _)), Some(last)) => last.epoch - best >= p,
            _ => false,
        }
    }
}

/// What the end of an epoch measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochRecord {
    /// The epoch, from 1.
    pub epoch: u64,
    /// Steps done at its end.
    pub step: u64,
    /// Mean of its steps' losses.
    pub train_loss: f64,
    /// The validation set's loss on the training loss's scale: the mean
    /// squared error for `mean`; for `sum`, the sum over the validation
    /// rows scaled to a batch (× batch / rows), so the two compare.
    pub val_loss: Option<f64>,
    /// The validation set's mean squared error over every element.
    pub val_mse: Option<f64>,
}

impl DataSource {
    /// The source for an `--init` file: its absolute path and SHA-256.
    pub fn file(path: &Path) -> Result<DataSource> {
        let (text, path_hex) =
            store_path(&std::fs::canonicalize(path).map_err(|e| Error::read(path, e))?);
        Ok(DataSource::File {
            path: text,
            path_hex,
            sha256: file_sha256(path)?,
        })
    }
}

/// The checkpoint's JSON header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// The run: dtype, the whole batch's shape, threads, step mode, form
    /// (its fields sit at the top level of the JSON, as they always did).
    #[serde(flatten)]
    pub run: RunDescription,
    /// Steps done (and losses stored).
    pub steps_done: usize,
    /// Steps the run was asked for in all.
    pub total_steps: usize,
    /// Learning rate of w1.
    pub lr_w1: f64,
    /// Learning rate of w2.
    pub lr_w2: f64,
    /// MPI ranks the batch was split over (1 for a single process).
    #[serde(default = "one")]
    pub ranks: usize,
    /// Where x and y come from.
    pub data: DataSource,
    /// The loss minimised: `sum` or `mean` (absent: `sum`).
    #[serde(default)]
    pub loss: Loss,
    /// The batches of a minibatch run (`--data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minibatch: Option<MinibatchHeader>,
    /// The OpenBLAS kernel set the run used (`Haswell`, `SkylakeX`, …):
    /// another kernel set rounds differently, so a resume under it matches
    /// an unbroken run to rounding only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blas_core: Option<String>,
    /// The OpenBLAS library the run used, as [`Library::key`](crate::blas::Library::key)
    /// names it (`0.3.34-COOPERLAKE`, `0.3.21-DYNAMIC_ARCH`): another
    /// library rounds differently, as another kernel set does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blas_library: Option<String>,
    /// How the primal step divided its work (shards, OpenBLAS threads,
    /// block rows, layout): a resume lays it out the same, for the same
    /// bits (absent: the built-in rule's; no layout: rows, as every plan
    /// had before layouts existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanChoice>,
    /// Whether the model has biases (b1, b2 stored after w2).
    #[serde(default, skip_serializing_if = "is_false")]
    pub biases: bool,
    /// Whether the weights of the best validation epoch so far follow
    /// (`--save-best`, early stopping): the epoch is the history's best.
    #[serde(default, skip_serializing_if = "is_false")]
    pub best_weights: bool,
    /// twolayer's version that wrote it.
    pub written_by: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn one() -> usize {
    1
}

impl Header {
    /// The shape it describes, validated.
    pub fn shape(&self) -> Result<Shape> {
        let s = self.run.shape();
        Shape::new(s.n, s.d_in, s.hidden, s.d_out)
    }

    /// The learning rates.
    pub fn lr(&self) -> LearningRates {
        LearningRates {
            w1: self.lr_w1,
            w2: self.lr_w2,
        }
    }

    /// The step's form (`dual` when the run trains C with
    /// w1 = w1_0 + xᵀ·C).
    pub fn form(&self) -> Form {
        self.run.form
    }
}

/// A checkpoint in memory, in the dtype it was written in.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint<F> {
    /// Configuration and provenance.
    pub header: Header,
    /// Loss of every step done.
    pub losses: Vec<f64>,
    /// The weights after `header.steps_done` steps.
    pub weights: Weights<F>,
    /// In the dual form, w1_0 (D_in×H) and C (N×H): the state the run
    /// continues from (`weights.w1` = w1_0 + xᵀ·C).
    pub dual: Option<(Array2<F>, Array2<F>)>,
    /// The weights of the best validation epoch so far, when the run
    /// keeps them (header `best_weights`).
    pub best: Option<Weights<F>>,
}

/// Hex form of a SHA-256 digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file's bytes, hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = crate::input::open_regular(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::read(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// The losses of steps `from..` of a run, handed over in order and in
/// chunks when a checkpoint is written: called with `from` and a sink, it
/// calls the sink with each chunk. (A long run's history need not be in
/// memory at once: [`crate::Trainer`] keeps the older part on disk.)
pub type LossesFrom<'a> =
    &'a mut dyn FnMut(usize, &mut dyn FnMut(&[f64]) -> std::io::Result<()>) -> std::io::Result<()>;

impl<F: Real> Checkpoint<F> {
    /// The checkpoint as the bytes of a file (format version 2). Panics
    /// when the header disagrees with the arrays (biases, best weights,
    /// form).
    pub fn to_bytes(&self) -> Vec<u8> {
        file::image(self).expect("a checkpoint whose header describes its arrays")
    }

    /// Writes the checkpoint to `path` atomically (temporary file, fsync,
    /// rename, fsync of the folder): a crash at any moment leaves either
    /// the previous file or this one, never a mix.
    pub fn write(&self, path: &Path) -> Result<()> {
        let history: &[EpochRecord] = self
            .header
            .minibatch
            .as_ref()
            .map_or(&[], |m| m.history.as_slice());
        let mut feed = |from: usize, sink: &mut dyn FnMut(&[f64]) -> std::io::Result<()>| {
            sink(self.losses.get(from..).unwrap_or(&[]))
        };
        CheckpointWriter::new(path)
            .write(State {
                header: &self.header,
                losses_from: &mut feed,
                epochs: history,
                epochs_base: 0,
                weights: &self.weights,
                dual: self.dual.as_ref().map(|(a, c)| (a, c)),
                best: self.best.as_ref(),
            })
            .map(drop)
    }
}

/// A row-major array's values (a checkpoint's arrays are standard layout:
/// the trainer makes them so).
fn flat<F>(a: &Array2<F>) -> &[F] {
    a.as_slice().expect("a checkpoint's arrays are row-major")
}

/// A bias vector's values.
fn flat1<F>(a: &ndarray::Array1<F>) -> &[F] {
    a.as_slice().expect("bias vectors are contiguous")
}

/// A checkpoint of either dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum AnyCheckpoint {
    /// Written by an f32 run.
    F32(Checkpoint<f32>),
    /// Written by an f64 run.
    F64(Checkpoint<f64>),
}

impl AnyCheckpoint {
    /// The weights as `F` (moved when they are `F` already, else rounded)
    /// and the loss history.
    pub fn into_typed<F: Real + 'static>(self) -> (Weights<F>, Vec<f64>) {
        match self {
            AnyCheckpoint::F32(c) => (c.weights.into_dtype(), c.losses),
            AnyCheckpoint::F64(c) => (c.weights.into_dtype(), c.losses),
        }
    }

    /// The best validation epoch's weights, when the checkpoint keeps them,
    /// as `F` (taken out of the checkpoint).
    pub fn take_best<F: Real + 'static>(&mut self) -> Option<Weights<F>> {
        match self {
            AnyCheckpoint::F32(c) => c.best.take().map(Weights::into_dtype),
            AnyCheckpoint::F64(c) => c.best.take().map(Weights::into_dtype),
        }
    }

    /// In the dual form, w1_0 and C as `F` (copies; rounded when the
    /// checkpoint is of the other dtype).
    pub fn dual_typed<F: Real + 'static>(&self) -> Option<(Array2<F>, Array2<F>)> {
        fn cast<A: Real, F: Real>(a: &Array2<A>) -> Array2<F> {
            a.mapv(|v| F::from_f64(v.to_f64()))
        }
        match self {
            AnyCheckpoint::F32(c) => c.dual.as_ref().map(|(a, b)| (cast(a), cast(b))),
            AnyCheckpoint::F64(c) => c.dual.as_ref().map(|(a, b)| (cast(a), cast(b))),
        }
    }

    /// The header, whatever the dtype.
    pub fn header(&self) -> &Header {
        match self {
            AnyCheckpoint::F32(c) => &c.header,
            AnyCheckpoint::F64(c) => &c.header,
        }
    }

    /// Reads and verifies a checkpoint file.
    pub fn read(path: &Path) -> Result<AnyCheckpoint> {
        // Check the prefix (and a version 1 header) before reading a
        // possibly huge file.
        let mut f = crate::input::open_regular(path)?;
        let len = f.metadata().map_err(|e| Error::read(path, e))?.len();
        let mut head = vec![0u8; (PREFIX as u64 + MAX_HEADER).min(len) as usize];
        std::io::Read::read_exact(&mut f, &mut head).map_err(|e| Error::read(path, e))?;
        if version_of(&head).map_err(|m| Error::read(path, m))? == VERSION_1 {
            let expected = expected_len(&head).map_err(|m| Error::read(path, m))?;
            if expected != len {
                return Err(Error::read(
                    path,
                    format!(
                        "checkpoint is {len} bytes but its header describes {expected}: truncated or garbled"
                    ),
                ));
            }
        }
        crate::machine::available_memory_bytes()
            .checked_sub(len)
            .ok_or_else(|| {
                Error::read(
                    path,
                    format!("checkpoint of {len} bytes does not fit in memory"),
                )
            })?;
        let bytes = crate::input::read_bounded(path, len)?;
        Self::from_bytes(&bytes).map_err(|m| Error::read(path, m))
    }

    /// Parses and verifies checkpoint bytes of either format version; the
    /// error says what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<AnyCheckpoint, String> {
        if version_of(bytes)? == VERSION {
            // The dtype is in the header, inside a slot: parse as f64 and
            // as f32; the header's dtype picks one.
            return match file::parse::<f64>(bytes) {
                Ok(c) => Ok(AnyCheckpoint::F64(c)),
                Err(e) if e.contains("dtype differs") => {
                    file::parse::<f32>(bytes).map(AnyCheckpoint::F32)
                }
                Err(e) => Err(e),
            };
        }
        let expected = expected_len(bytes)?;
        if expected != bytes.len() as u64 {
            return Err(format!(
                "checkpoint is {} bytes but its header describes {expected}: truncated or garbled",
                bytes.len()
            ));
        }
        let (body, digest) = bytes.split_at(bytes.len() - DIGEST);
        if Sha256::digest(body).as_slice() != digest {
            return Err(
                "checkpoint checksum does not match its contents: the file is corrupted".into(),
            );
        }
        let header = parse_header(bytes)?;
        let hlen = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")) as usize;
        let mut at = PREFIX + hlen;
        let mut losses = Vec::with_capacity(header.steps_done);
        for t in 0..header.steps_done {
            let loss = f64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
            // A run stops before recording a loss that is not finite: one
            // in the file was not written by twolayer.
            if !loss.is_finite() {
                return Err(format!(
                    "checkpoint holds a loss of {loss} at step {t}; a run never records one"
                ));
            }
            losses.push(loss);
            at += 8;
        }
        let shape = header.shape().map_err(|e| e.to_string())?;
        let dims = array_dims(&header, shape);
        Ok(match header.run.dtype.storage() {
            Storage::F32 => {
                let arrays = read_arrays::<f32>(&bytes[at..], &dims);
                AnyCheckpoint::F32(assemble(header, losses, arrays, shape))
            }
            Storage::F64 => {
                let arrays = read_arrays::<f64>(&bytes[at..], &dims);
                AnyCheckpoint::F64(assemble(header, losses, arrays, shape))
            }
        })
    }
}

/// A checkpoint from its header, losses and arrays (of [`array_dims`],
/// in file order).
fn assemble<F: Real>(
    header: Header,
    losses: Vec<f64>,
    arrays: Vec<Array2<F>>,
    shape: Shape,
) -> Checkpoint<F> {
    let mut arrays = arrays.into_iter();
    let mut next = || arrays.next().expect("array_dims lists every array");
    let mut weights = |biases: bool| {
        let (w1, w2) = (next(), next());
        let biases = biases.then(|| Biases {
            b1: next()
                .into_shape_with_order(shape.hidden)
                .expect("H values"),
            b2: next()
                .into_shape_with_order(shape.d_out)
                .expect("D_out values"),
        });
        Weights { w1, w2, biases }
    };
    let w = weights(header.biases);
    let dual = (header.form() == Form::Dual).then(|| {
        let d = weights(false);
        (d.w1, d.w2)
    });
    let best = header.best_weights.then(|| weights(header.biases));
    Checkpoint {
        header,
        losses,
        weights: w,
        dual,
        best,
    }
}

/// The format version of a file that starts with `bytes`, when it is one
/// this build reads; the error names any other.
fn version_of(bytes: &[u8]) -> std::result::Result<u32, String> {
    if bytes.len() < PREFIX || &bytes[..8] != MAGIC {
        return Err("not a twolayer checkpoint (bad magic bytes)".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION && version != VERSION_1 {
        return Err(format!(
            "checkpoint format version {version}, but this twolayer reads versions {VERSION_1} and {VERSION} (a newer twolayer wrote it?)"
        ));
    }
    Ok(version)
}

/// A version 1 file's header, parsed and checked.
fn parse_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    if version_of(bytes)? != VERSION_1 {
        return Err("not a version 1 checkpoint".into());
    }
    let hlen = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    if hlen > MAX_HEADER || (PREFIX as u64 + hlen) > bytes.len() as u64 {
        return Err("checkpoint header is truncated or implausibly long".into());
    }
    let header: Header = serde_json::from_slice(&bytes[PREFIX..PREFIX + hlen as usize])
        .map_err(|e| format!("checkpoint header is not valid ({e})"))?;
    check_header(&header)?;
    Ok(header)
}

/// Refuses a header no run writes: an invalid shape, more steps done than
/// asked for, a negative or non-finite rate, no ranks or threads.
fn check_header(header: &Header) -> std::result::Result<(), String> {
    header.shape().map_err(|e| e.to_string())?;
    if header.steps_done > header.total_steps {
        return Err("checkpoint header has more steps done than asked for".into());
    }
    for lr in [header.lr_w1, header.lr_w2] {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err("checkpoint header has an invalid learning rate".into());
        }
    }
    if header.ranks == 0 || header.ranks > header.run.n || header.run.threads == 0 {
        return Err(format!(
            "checkpoint header has {} rank(s) and {} thread(s) for batches of {} rows; a run has at least one of each, and no more ranks than rows",
            header.ranks, header.run.threads, header.run.n
        ));
    }
    Ok(())
}

/// The total length a version 1 file with this prefix and header must
/// have.
fn expected_len(bytes: &[u8]) -> std::result::Result<u64, String> {
    let h = parse_header(bytes)?;
    let hlen = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")) as u128;
    let arrays = arrays_bytes(&array_dims(&h, h.shape().map_err(|e| e.to_string())?), &h);
    let total = PREFIX as u128 + hlen + 8 * h.steps_done as u128 + arrays + DIGEST as u128;
    u64::try_from(total).map_err(|_| "checkpoint header describes an impossible size".to_string())
}

/// The (rows, columns) of the arrays after the losses, in file order: w1
/// (D_in×H), w2 (H×D_out), with biases b1 (H×1) and b2 (D_out×1), in the
/// dual form w1_0 (D_in×H) and C (N×H), and with `best_weights` the best
/// epoch's w1, w2 (and b1, b2).
fn array_dims(h: &Header, shape: Shape) -> Vec<(usize, usize)> {
    let (n, d, hid, o) = (shape.n, shape.d_in, shape.hidden, shape.d_out);
    let weights = |out: &mut Vec<(usize, usize)>| {
        out.extend([(d, hid), (hid, o)]);
        if h.biases {
            out.extend([(hid, 1), (o, 1)]);
        }
    };
    let mut dims = Vec::new();
    weights(&mut dims);
    if h.form() == Form::Dual {
        dims.extend([(d, hid), (n, hid)]);
    }
    if h.best_weights {
        weights(&mut dims);
    }
    dims
}

/// Bytes of arrays of `dims` in the header's dtype (in u128: a forged
/// header's dimensions cannot overflow it).
fn arrays_bytes(dims: &[(usize, usize)], h: &Header) -> u128 {
    let elems: u128 = dims.iter().map(|&(r, c)| r as u128 * c as u128).sum();
    elems * h.run.dtype.size() as u128
}

/// The arrays after the losses, of `dims` (see [`array_dims`]).
fn read_arrays<F: Real>(bytes: &[u8], dims: &[(usize, usize)]) -> Vec<Array2<F>> {
    let e = F::DTYPE.size();
    let read = |at: usize| -> F {
        match F::DTYPE.storage() {
            Storage::F32 => F::from_f64(f32::from_le_bytes(
                bytes[at..at + 4].try_into().expect("4 bytes"),
            ) as f64),
            Storage::F64 => F::from_f64(f64::from_le_bytes(
                bytes[at..at + 8].try_into().expect("8 bytes"),
            )),
        }
    };
    let mut at = 0;
    dims.iter()
        .copied()
        .map(|(r, c)| {
            let a = Array2::from_shape_fn((r, c), |(i, j)| read((at + i * c + j) * e));
            at += r * c;
            a
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::StepMode;

    #[test]
    fn a_sampled_fingerprint_sees_rewrites_truncations_and_edits_at_samples() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.bin");
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&p, &bytes).unwrap();
        let base = sampled_sha256(&p).unwrap();
        assert_eq!(base, sampled_sha256(&p).unwrap());
        for (what, change) in [
            ("first byte", 0usize),
            ("last byte", bytes.len() - 1),
            (
                "a byte of the middle sample",
                (bytes.len() - (64 << 10)) / 255 * 127,
            ),
        ] {
            let mut b = bytes.clone();
            b[change] ^= 1;
            std::fs::write(&p, &b).unwrap();
            assert_ne!(
                sampled_sha256(&p).unwrap(),
                base,
                "{what} changed unnoticed"
            );
        }
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        assert_ne!(sampled_sha256(&p).unwrap(), base, "truncation unnoticed");
    }

    #[test]
    fn learning_rates_and_metrics_read_back_bit_for_bit() {
        // The rate from the issue (read back 1 ULP off before serde_json's
        // float_roundtrip), and a spread of awkward values.
        let mut values = vec![1.0317729290759645, 0.1 + 0.2, 1e-6, 5e-324, f64::MAX];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = f64::from_bits(x >> 2);
            if v.is_finite() {
                values.push(v);
            }
        }
        for v in values {
            let mut c = sample();
            c.header.lr_w2 = v;
            let back = AnyCheckpoint::from_bytes(&c.to_bytes()).unwrap();
            assert_eq!(back.header().lr_w2.to_bits(), v.to_bits(), "{v:e}");
        }
    }

    fn sample() -> Checkpoint<f32> {
        let shape = Shape::new(4, 3, 2, 5).unwrap();
        Checkpoint {
            header: Header {
                run: RunDescription::new(
                    shape,
                    crate::Dtype::F32,
                    2,
                    StepMode::Fused,
                    Form::Primal,
                ),
                steps_done: 3,
                total_steps: 10,
                lr_w1: 1e-6,
                lr_w2: 0.0,
                ranks: 1,
                data: DataSource::Seeded { seed: 7 },
                loss: Loss::Sum,
                minibatch: None,
                blas_core: Some("Haswell".into()),
                blas_library: Some("0.3.34-COOPERLAKE".into()),
                plan: None,
                biases: false,
                best_weights: false,
                written_by: "test".into(),
            },
            losses: vec![3.0, 2.0, 1.5],
            weights: Weights::random(shape, 1),
            dual: None,
            best: None,
        }
    }

    #[test]
    fn biases_and_the_best_weights_round_trip_in_a_dual_checkpoint() {
        let shape = Shape::new(4, 3, 2, 5).unwrap();
        let mut c = sample();
        let with = |seed| {
            let mut w = Weights::<f32>::random(shape, seed);
            w.biases = Some(crate::net::Biases {
                b1: ndarray::Array1::from_vec(vec![0.5, -1.5]),
                b2: ndarray::Array1::from_shape_fn(5, |i| i as f32 + seed as f32),
            });
            w
        };
        c.weights = with(1);
        c.best = Some(with(9));
        c.header.biases = true;
        c.header.best_weights = true;
        c.header.run.form = Form::Dual;
        c.dual = Some((
            with(3).w1,
            Array2::from_shape_fn((4, 2), |(i, j)| (i + j) as f32),
        ));
        let back = AnyCheckpoint::from_bytes(&c.to_bytes()).unwrap();
        assert_eq!(back, AnyCheckpoint::F32(c.clone()));
        // A header that disagrees with the arrays is not written.
        let mut bad = c.clone();
        bad.header.best_weights = false;
        assert!(std::panic::catch_unwind(|| bad.to_bytes()).is_err());
        // Every added byte is in the length the header implies: one short
        // is refused.
        let bytes = c.to_bytes();
        let mut cut = bytes[..bytes.len() - 33].to_vec();
        cut.extend_from_slice(&bytes[bytes.len() - 32..]);
        assert!(AnyCheckpoint::from_bytes(&cut).is_err());
    }

    #[test]
    fn forged_ranks_threads_and_losses_are_refused() {
        // Checksummed as twolayer writes them, but saying what no run
        // writes: before, "ranks": 0 asked for "mpirun -np 0", and a NaN
        // in the loss history was taken.
        for (ranks, threads) in [(0, 2), (5, 2), (1, 0)] {
            let mut c = sample();
            c.header.ranks = ranks;
            c.header.run.threads = threads;
            let e = AnyCheckpoint::from_bytes(&c.to_bytes()).unwrap_err();
            assert!(e.contains("rank(s)"), "{ranks} {threads}: {e}");
        }
        let mut c = sample();
        assert!(c.losses.len() >= 2);
        c.losses[1] = f64::NAN;
        let e = AnyCheckpoint::from_bytes(&c.to_bytes()).unwrap_err();
        assert!(e.contains("loss of NaN at step 1"), "{e}");
    }

    #[test]
    fn the_header_reads_its_older_flat_form_and_refuses_unknown_fields() {
        // A header as twolayer wrote it before the run description was one
        // type: the run's fields among the others, no `form` (primal).
        let old = r#"{"dtype":"f32","n":4,"d_in":3,"hidden":2,"d_out":5,"steps_done":3,"total_steps":10,"lr_w1":1e-6,"lr_w2":0.0,"step_mode":"fused","threads":2,"ranks":1,"data":{"seeded":{"seed":7}},"loss":"sum","blas_core":"Haswell","blas_library":"0.3.34-COOPERLAKE","written_by":"test"}"#;
        let h: Header = serde_json::from_str(old).unwrap();
        assert_eq!(h, sample().header);
        let dual = old.replace(r#""threads":2,"#, r#""threads":2,"form":"dual","#);
        let h: Header = serde_json::from_str(&dual).unwrap();
        assert_eq!(h.form(), Form::Dual);
        // Flattening the run into the header keeps unknown fields refused,
        // at the top level as before.
        let extra = old.replace(r#""ranks":1,"#, r#""ranks":1,"shards":4,"#);
        let e = serde_json::from_str::<Header>(&extra)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `shards`"), "{e}");
        // And the JSON stays flat: no `run` object.
        let text = serde_json::to_string(&sample().header).unwrap();
        assert!(text.starts_with(r#"{"dtype":"f32","n":4,"#), "{text}");
        assert!(!text.contains("\"run\""), "{text}");
    }

    #[test]
    fn round_trip() {
        let c = sample();
        assert_eq!(
            AnyCheckpoint::from_bytes(&c.to_bytes()).unwrap(),
            AnyCheckpoint::F32(c)
        );
    }

    #[test]
    fn a_dual_checkpoint_keeps_w1_0_and_c() {
        let mut c = sample();
        c.header.run.form = Form::Dual;
        let w = Weights::<f32>::random(Shape::new(4, 3, 2, 5).unwrap(), 2);
        c.dual = Some((
            w.w1,
            Array2::from_shape_fn((4, 2), |(i, j)| (i * 2 + j) as f32),
        ));
        let bytes = c.to_bytes();
        assert_eq!(
            AnyCheckpoint::from_bytes(&bytes).unwrap(),
            AnyCheckpoint::F32(c)
        );
        // A header that says dual over no dual arrays is not written.
        let mut short = sample();
        short.header.run.form = Form::Dual;
        assert!(std::panic::catch_unwind(|| short.to_bytes()).is_err());
    }

    #[test]
    fn every_corruption_is_caught() {
        let mut c = sample();
        c.header.minibatch = Some(MinibatchHeader {
            rows: 40,
            batch: 4,
            seed: 1,
            val_fraction: Some(0.25),
            val: None,
            history: vec![EpochRecord {
                epoch: 1,
                step: 3,
                train_loss: 2.0,
                val_loss: Some(1.5),
                val_mse: None,
            }],
            patience: None,
        });
        let bytes = c.to_bytes();
        let original = AnyCheckpoint::from_bytes(&bytes).unwrap();
        assert_eq!(original, AnyCheckpoint::F32(c));
        // The bytes in use: the prefix, the written slot (its length, body
        // and digest) and the log. The rest — the slot not yet written,
        // the written one's room to grow — reads as nothing.
        let cap = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
        let body = u64::from_le_bytes(bytes[24..32].try_into().unwrap()) as usize;
        let used = |i: usize| i < 24 + 8 + body + 32 || i >= 24 + 2 * cap;
        // Any single flipped bit in them is refused; elsewhere it changes
        // nothing read.
        for i in (0..bytes.len()).step_by(3) {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            let back = AnyCheckpoint::from_bytes(&b);
            if used(i) {
                assert!(back.is_err(), "flip at {i} accepted");
            } else {
                assert_eq!(back.as_ref(), Ok(&original), "flip at {i}");
            }
        }
        // Any truncation is refused.
        for len in [0, 5, 19, 40, 24 + 2 * cap - 1, bytes.len() - 1] {
            assert!(AnyCheckpoint::from_bytes(&bytes[..len]).is_err(), "{len}");
        }
        // A format version this build does not know is named.
        let mut v = bytes.clone();
        v[8] = 3;
        let e = AnyCheckpoint::from_bytes(&v).unwrap_err();
        assert!(e.contains("format version 3"), "{e}");
        let e = AnyCheckpoint::from_bytes(b"PK\x03\x04 something else entirely").unwrap_err();
        assert!(e.contains("not a twolayer checkpoint"), "{e}");
    }
}

#[cfg(test)]
mod header_tests {
    use super::*;

    #[test]
    fn a_header_without_its_history_is_the_header_with_the_history_emptied() {
        // A version 1 checkpoint of a --data run keeps its epochs in the
        // header: the copy a checkpoint writes leaves them out and keeps
        // every other field.
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/data-v1.ck");
        let ck = AnyCheckpoint::read(&fixture).unwrap();
        let h = ck.header();
        assert!(!h.minibatch.as_ref().unwrap().history.is_empty());
        let mut want = h.clone();
        want.minibatch.as_mut().unwrap().history.clear();
        assert_eq!(h.without_history(), want);
    }
}
