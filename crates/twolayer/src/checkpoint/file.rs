//! Checkpoint files, format version 2: the run's state in two slots
//! written in turn, its history in a log that only grows.
//!
//! Version 1 rewrote the whole file at every checkpoint, the loss of every
//! step and the record of every epoch with it, and kept the epochs in a
//! JSON header limited to 1 MiB: a tiny-shape run spent 59 s writing
//! checkpoints for 0.66 s of steps, and a `--data` run past about 11,000
//! epochs wrote a checkpoint it could not resume. Here a checkpoint writes
//! what changed since the one before — the new losses and epochs, appended
//! to the log, and the state (header and weights), into the slot the
//! latest state is not in — so its cost does not grow with the run.
//!
//! ```text
//! offset          size    field
//! 0               8       magic  "TWLCKPT\0"
//! 8               4       format version (u32) = 2
//! 12              4       zero
//! 16              8       slot capacity S (u64), a multiple of 4096
//! 24              S       slot 0 ┐ each: body length B (u64), body,
//! 24+S            S       slot 1 ┘       SHA-256 of the body, zeros
//! 24+2S           L       the log: segments, each
//!                           losses n (u64), epochs m (u64),
//!                           n losses (f64), m epoch records (40 bytes:
//!                           epoch, step (u64); train loss, validation
//!                           loss, validation MSE (f64, NaN: none))
//! ```
//!
//! A body: sequence number (u64), the log length L it covers (u64), the
//! log's chained digest (32 bytes: c₀ = SHA-256("twolayer checkpoint
//! log"), cₖ = SHA-256(cₖ₋₁ ‖ segment k)), losses in the log (u64),
//! epochs in the log (u64), header length H (u64), the JSON header
//! ([`Header`], without the epochs), then the arrays as in version 1 (w1,
//! w2, [b1, b2], [w1_0, C], [best w1, w2, [b1, b2]]).
//!
//! A write appends the new segment after the latest body's L, syncs, then
//! writes the body with the next sequence number into the other slot and
//! syncs: a crash at any moment leaves the latest body whole and the log
//! it covers untouched. A reader takes the valid body with the highest
//! sequence number and checks the log up to its L against the chained
//! digest. A file's first write, and a state that outgrows its slot, write
//! the file whole (temporary file, rename), as every output is written.

use super::{
    array_dims, arrays_bytes, check_header, read_arrays, Checkpoint, EpochRecord, Header, MAGIC,
    MAX_HEADER,
};
use crate::error::{Error, Result};
use crate::net::Weights;
use crate::scalar::{Real, Storage};
use ndarray::Array2;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The format version of this layout.
pub const VERSION: u32 = 2;
/// Magic, version, zero, slot capacity.
const PREFIX: u64 = 24;
/// A slot's body length before the body and its digest after it.
const SLOT_FRAME: u64 = 8 + 32;
/// A body's fixed fields: sequence, log length, digest, losses, epochs,
/// header length.
const BODY_FIXED: usize = 8 + 8 + 32 + 8 + 8 + 8;
/// A segment's counts.
const SEGMENT_HEAD: usize = 16;
/// An epoch record in the log.
pub const EPOCH_BYTES: usize = 40;
/// Losses per segment when many are written at once (512 KiB).
const SEGMENT_LOSSES: usize = 1 << 16;

/// The log's digest before any segment.
fn chain_start() -> [u8; 32] {
    Sha256::digest(b"twolayer checkpoint log").into()
}

fn chain_next(prev: &[u8; 32], segment: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(segment);
    h.finalize().into()
}

/// Where the log stands after a write: what the latest body covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Committed {
    seq: u64,
    log_len: u64,
    chain: [u8; 32],
    losses: u64,
    epochs: u64,
}

/// The slot body `seq` goes in.
fn slot_of(seq: u64) -> u64 {
    (seq + 1) % 2
}

fn slot_offset(cap: u64, slot: u64) -> u64 {
    PREFIX + slot * cap
}

fn log_start(cap: u64) -> u64 {
    PREFIX + 2 * cap
}

/// One segment: `losses` and `epochs`, with their counts.
fn segment(losses: &[f64], epochs: &[EpochRecord]) -> Vec<u8> {
    let mut s = Vec::with_capacity(SEGMENT_HEAD + 8 * losses.len() + EPOCH_BYTES * epochs.len());
    s.extend_from_slice(&(losses.len() as u64).to_le_bytes());
    s.extend_from_slice(&(epochs.len() as u64).to_le_bytes());
    for l in losses {
        s.extend_from_slice(&l.to_le_bytes());
    }
    for r in epochs {
        s.extend_from_slice(&r.epoch.to_le_bytes());
        s.extend_from_slice(&r.step.to_le_bytes());
        for v in [
            r.train_loss,
            r.val_loss.unwrap_or(f64::NAN),
            r.val_mse.unwrap_or(f64::NAN),
        ] {
            s.extend_from_slice(&v.to_le_bytes());
        }
    }
    s
}

/// The arrays a body holds, in file order, as little-endian bytes of the
/// checkpoint's dtype.
fn push_arrays<F: Real>(
    out: &mut Vec<u8>,
    weights: &Weights<F>,
    dual: Option<(&Array2<F>, &Array2<F>)>,
    best: Option<&Weights<F>>,
) {
    fn push<F: Real>(out: &mut Vec<u8>, a: &[F]) {
        for v in a {
            match F::DTYPE.storage() {
                Storage::F32 => out.extend_from_slice(&(Real::to_f64(*v) as f32).to_le_bytes()),
                Storage::F64 => out.extend_from_slice(&Real::to_f64(*v).to_le_bytes()),
            }
        }
    }
    let weights_of = |out: &mut Vec<u8>, w: &Weights<F>| {
        push(out, super::flat(&w.w1));
        push(out, super::flat(&w.w2));
        if let Some(b) = &w.biases {
            push(out, super::flat1(&b.b1));
            push(out, super::flat1(&b.b2));
        }
    };
    weights_of(out, weights);
    if let Some((a, c)) = dual {
        push(out, super::flat(a));
        push(out, super::flat(c));
    }
    if let Some(b) = best {
        weights_of(out, b);
    }
}

/// What a checkpoint holds now, handed to [`CheckpointWriter::write`].
pub struct State<'a, F> {
    /// The header (its minibatch `history` is ignored: the epochs go in
    /// the log).
    pub header: &'a Header,
    /// The losses of steps `from..`, in chunks, to the sink.
    pub losses_from: super::LossesFrom<'a>,
    /// Epoch records from `epochs_base` on: every one the file does not
    /// hold yet must be among them.
    pub epochs: &'a [EpochRecord],
    /// The number of the epoch before `epochs[0]`'s (epochs are numbered
    /// from 1).
    pub epochs_base: u64,
    /// The weights after `header.steps_done` steps.
    pub weights: &'a Weights<F>,
    /// The dual form's w1_0 and C.
    pub dual: Option<(&'a Array2<F>, &'a Array2<F>)>,
    /// The best validation epoch's weights.
    pub best: Option<&'a Weights<F>>,
}

impl<F: Real> State<'_, F> {
    /// The header as the body stores it: the epochs left out.
    fn body_header(&self) -> Header {
        // Cloned without the epochs: they can be thousands, and a
        // checkpoint's cost must not grow with them.
        let mut h = self.header.without_history();
        h.best_weights = self.best.is_some();
        h
    }

    /// A body: the fixed fields, the header and the arrays.
    fn body(&self, c: &Committed) -> std::io::Result<Vec<u8>> {
        let h = self.body_header();
        let arrays_len = arrays_len(&h);
        if self.weights.has_biases() != h.biases
            || self.best.is_some_and(|b| b.has_biases() != h.biases)
            || self.dual.is_some() != (h.form() == crate::step::Form::Dual)
        {
            return Err(std::io::Error::other(
                "a checkpoint's header disagrees with the arrays given to it",
            ));
        }
        let json = serde_json::to_vec(&h).expect("a header always serialises");
        if json.len() as u64 > MAX_HEADER {
            return Err(std::io::Error::other(format!(
                "a checkpoint header of {} bytes is over the limit of {MAX_HEADER}",
                json.len()
            )));
        }
        let mut b = Vec::with_capacity(BODY_FIXED + json.len() + arrays_len);
        b.extend_from_slice(&c.seq.to_le_bytes());
        b.extend_from_slice(&c.log_len.to_le_bytes());
        b.extend_from_slice(&c.chain);
        b.extend_from_slice(&c.losses.to_le_bytes());
        b.extend_from_slice(&c.epochs.to_le_bytes());
        b.extend_from_slice(&(json.len() as u64).to_le_bytes());
        b.extend_from_slice(&json);
        push_arrays(&mut b, self.weights, self.dual, self.best);
        Ok(b)
    }

    /// The slot capacity for a file written whole now: room for a header
    /// twice as long as this one and for the best epoch's weights when the
    /// run validates (they appear at its first validated epoch), so that
    /// later states fit; a multiple of 4096.
    fn capacity(&self) -> u64 {
        let h = self.body_header();
        let json = serde_json::to_vec(&h).map_or(0, |j| j.len()) as u64;
        let mut arrays = arrays_len(&h) as u64;
        let validates = h
            .minibatch
            .as_ref()
            .is_some_and(|m| m.val_fraction.is_some() || m.val.is_some());
        if validates && self.best.is_none() {
            let r = &h.run;
            let biases = if h.biases { r.hidden + r.d_out } else { 0 };
            let weights = (r.d_in * r.hidden + r.hidden * r.d_out + biases) as u64;
            arrays += weights * F::DTYPE.size() as u64;
        }
        let need = SLOT_FRAME + BODY_FIXED as u64 + 2 * json + 4096 + arrays;
        need.div_ceil(4096) * 4096
    }
}

/// Bytes of the arrays a body with header `h` holds.
fn arrays_len(h: &Header) -> usize {
    let shape = h.shape().expect("a run's own shape");
    arrays_bytes(&array_dims(h, shape), h) as usize
}

/// Writes a run's checkpoints to one file: whole the first time, then by
/// appending to its log and writing the other slot (see the module
/// documentation), so that each checkpoint costs the same however long
/// the run.
#[derive(Debug)]
pub struct CheckpointWriter {
    path: PathBuf,
    /// The file as written last, and what its latest body covers.
    open: Option<Open>,
    /// The run resumed from this file: its first write may append to it.
    continuing: bool,
}

#[derive(Debug)]
struct Open {
    file: File,
    cap: u64,
    at: Committed,
    /// The file's device and inode, to notice it was replaced.
    id: (u64, u64),
}

/// What one [`CheckpointWriter::write`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// Bytes written to the file.
    pub bytes: u64,
    /// Whether the file was written whole (first write, a state that
    /// outgrew its slot, a file replaced since).
    pub whole: bool,
}

impl CheckpointWriter {
    /// A writer of checkpoints to `path` for a new run: its first write
    /// replaces whatever is there.
    pub fn new(path: &Path) -> Self {
        CheckpointWriter {
            path: path.to_path_buf(),
            open: None,
            continuing: false,
        }
    }

    /// A writer for a run resumed from the checkpoint at `path` itself:
    /// its first write appends to that file when the file is still the
    /// one the run resumed from (a version 2 file whose latest body is at
    /// or behind the run), and writes it whole otherwise.
    pub fn continuing(path: &Path) -> Self {
        CheckpointWriter {
            continuing: true,
            ..Self::new(path)
        }
    }

    /// Writes the checkpoint of `state`.
    pub fn write<F: Real>(&mut self, mut state: State<'_, F>) -> Result<Written> {
        let path = crate::output::regular_target(&self.path)?;
        if self.open.is_none() && self.continuing {
            self.continuing = false;
            self.open = adopt(&path, &state).ok();
        }
        // A file replaced under the writer is written whole again.
        if let Some(o) = &self.open {
            let now = std::fs::metadata(&path).map(|m| (m.dev(), m.ino())).ok();
            if now != Some(o.id) {
                self.open = None;
            }
        }
        let result = match self.open.take() {
            Some(o) => append(&path, o, &mut state),
            None => write_whole(&path, None, &mut state),
        };
        match result {
            Ok((open, written)) => {
                self.open = Some(open);
                Ok(written)
            }
            Err(e) => Err(e),
        }
    }
}

/// The open state of the version 2 file at `path` that a run resumed
/// from, when its latest body is one the run's state continues (no more
/// losses or epochs than the run has, and its epochs after are in
/// `state.epochs`).
fn adopt<F: Real>(path: &Path, state: &State<'_, F>) -> std::io::Result<Open> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let meta = file.metadata()?;
    let mut prefix = [0u8; PREFIX as usize];
    file.read_exact_at(&mut prefix, 0)?;
    let cap = parse_prefix(&prefix, meta.len()).map_err(std::io::Error::other)?;
    let mut slots = vec![0u8; 2 * cap as usize];
    file.read_exact_at(&mut slots, PREFIX)?;
    let (at, _) = latest_body(&slots, cap).map_err(std::io::Error::other)?;
    let fits = at.losses as usize <= state.header.steps_done
        && at.epochs >= state.epochs_base
        && at.epochs <= state.epochs_base + state.epochs.len() as u64
        && log_start(cap) + at.log_len <= meta.len();
    if !fits {
        return Err(std::io::Error::other("not the file the run resumed from"));
    }
    Ok(Open {
        file,
        cap,
        at,
        id: (meta.dev(), meta.ino()),
    })
}

/// The new segments of `state` after `from`: losses in segments of
/// [`SEGMENT_LOSSES`], the new epochs with the last; each handed to `put`
/// with the digest chained through it. Returns what the log then covers.
fn new_segments<F: Real>(
    from: &Committed,
    state: &mut State<'_, F>,
    put: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<Committed> {
    let skip = from.epochs.checked_sub(state.epochs_base).ok_or_else(|| {
        std::io::Error::other("the epochs the checkpoint lacks are no longer in memory")
    })? as usize;
    let epochs = state.epochs.get(skip..).ok_or_else(|| {
        std::io::Error::other("the checkpoint holds more epochs than the run has done")
    })?;
    let mut at = *from;
    let mut pending: Vec<f64> = Vec::new();
    let mut emit =
        |at: &mut Committed, losses: &[f64], epochs: &[EpochRecord]| -> std::io::Result<()> {
            let s = segment(losses, epochs);
            put(&s)?;
            at.chain = chain_next(&at.chain, &s);
            at.log_len += s.len() as u64;
            at.losses += losses.len() as u64;
            at.epochs += epochs.len() as u64;
            Ok(())
        };
    (state.losses_from)(from.losses as usize, &mut |chunk: &[f64]| {
        for part in chunk.chunks(SEGMENT_LOSSES) {
            pending.extend_from_slice(part);
            if pending.len() >= SEGMENT_LOSSES {
                let full: Vec<f64> = pending.drain(..SEGMENT_LOSSES).collect();
                emit(&mut at, &full, &[])?;
            }
        }
        Ok(())
    })?;
    if !pending.is_empty() || !epochs.is_empty() || at.log_len == 0 {
        emit(&mut at, &pending, epochs)?;
    }
    if at.losses as usize != state.header.steps_done {
        return Err(std::io::Error::other(format!(
            "{} losses for a checkpoint of {} steps",
            at.losses, state.header.steps_done
        )));
    }
    at.seq = from.seq + 1;
    Ok(at)
}

/// A slot's bytes: the body's length, the body, its digest.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(body.len() + SLOT_FRAME as usize);
    s.extend_from_slice(&(body.len() as u64).to_le_bytes());
    s.extend_from_slice(body);
    s.extend_from_slice(&Sha256::digest(body));
    s
}

/// Appends the new segments to an open file and writes the other slot;
/// writes the file whole instead when the state outgrew its slot.
fn append<F: Real>(path: &Path, o: Open, state: &mut State<'_, F>) -> Result<(Open, Written)> {
    let start = log_start(o.cap);
    let mut end = start + o.at.log_len;
    let mut bytes = 0u64;
    let file = &o.file;
    let at = new_segments(&o.at, state, &mut |s| {
        file.write_all_at(s, end)?;
        end += s.len() as u64;
        bytes += s.len() as u64;
        Ok(())
    })
    .map_err(|e| Error::write(path, e))?;
    let body = state.body(&at).map_err(|e| Error::write(path, e))?;
    if body.len() as u64 + SLOT_FRAME > o.cap {
        // Bigger than the slot: the file again, whole, with the log copied.
        return write_whole(path, Some((o, at)), state);
    }
    let slot = framed(&body);
    let sync = || -> std::io::Result<()> {
        // Whatever lay past the log (a write cut short) goes.
        file.set_len(end)?;
        file.sync_data()?;
        file.write_all_at(&slot, slot_offset(o.cap, slot_of(at.seq)))?;
        file.sync_data()
    };
    sync().map_err(|e| Error::write(path, e))?;
    bytes += slot.len() as u64;
    Ok((
        Open { at, ..o },
        Written {
            bytes,
            whole: false,
        },
    ))
}

/// Writes the file whole under a temporary name and renames it over
/// `path`: the log from scratch, or (`grown`) copied from the file that
/// held it with the new segments already appended to it.
fn write_whole<F: Real>(
    path: &Path,
    grown: Option<(Open, Committed)>,
    state: &mut State<'_, F>,
) -> Result<(Open, Written)> {
    let mut bytes = 0u64;
    let mut at = Committed {
        seq: 0,
        log_len: 0,
        chain: chain_start(),
        losses: 0,
        epochs: state.epochs_base,
    };
    if state.epochs_base != 0 && grown.is_none() {
        return Err(Error::write(
            path,
            "the epochs before this process's are no longer in memory to write the checkpoint whole",
        ));
    }
    let cap_now = state.capacity();
    let file = crate::output::replace_regular(path, |f| {
        let cap = cap_now;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut *f);
        w.seek(SeekFrom::Start(log_start(cap)))?;
        match &grown {
            Some((old, now)) => {
                // The old log, as it is (its digest goes on).
                let mut buf = vec![0u8; 1 << 20];
                let mut pos = 0u64;
                while pos < now.log_len {
                    let n = (now.log_len - pos).min(buf.len() as u64) as usize;
                    old.file
                        .read_exact_at(&mut buf[..n], log_start(old.cap) + pos)?;
                    w.write_all(&buf[..n])?;
                    pos += n as u64;
                }
                at = Committed { ..*now };
            }
            None => {
                at = new_segments(&at, state, &mut |s| w.write_all(s))?;
            }
        }
        bytes += at.log_len;
        let body = state.body(&at)?;
        if body.len() as u64 + SLOT_FRAME > cap {
            return Err(std::io::Error::other(
                "a checkpoint body larger than its slot",
            ));
        }
        w.seek(SeekFrom::Start(0))?;
        w.write_all(MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        w.write_all(&0u32.to_le_bytes())?;
        w.write_all(&cap.to_le_bytes())?;
        let slot = framed(&body);
        w.write_all(&slot)?;
        // The other slot holds nothing yet: a body length of zero.
        w.seek(SeekFrom::Start(slot_offset(cap, 1 - slot_of(at.seq))))?;
        w.write_all(&0u64.to_le_bytes())?;
        w.flush()?;
        bytes += PREFIX + slot.len() as u64 + 8;
        Ok(())
    })?;
    let meta = file.metadata().map_err(|e| Error::write(path, e))?;
    Ok((
        Open {
            file,
            cap: cap_now,
            at,
            id: (meta.dev(), meta.ino()),
        },
        Written { bytes, whole: true },
    ))
}

/// The whole file of a checkpoint held in memory, for
/// [`Checkpoint::to_bytes`] and [`Checkpoint::write`].
pub(super) fn image<F: Real>(c: &Checkpoint<F>) -> std::io::Result<Vec<u8>> {
    let history: &[EpochRecord] = c
        .header
        .minibatch
        .as_ref()
        .map_or(&[], |m| m.history.as_slice());
    let mut feed = |from: usize, sink: &mut dyn FnMut(&[f64]) -> std::io::Result<()>| {
        sink(c.losses.get(from..).unwrap_or(&[]))
    };
    let mut state = State {
        header: &c.header,
        losses_from: &mut feed,
        epochs: history,
        epochs_base: 0,
        weights: &c.weights,
        dual: c.dual.as_ref().map(|(a, b)| (a, b)),
        best: c.best.as_ref(),
    };
    if c.header.best_weights != c.best.is_some() {
        return Err(std::io::Error::other(
            "a checkpoint's header disagrees with the arrays given to it",
        ));
    }
    let cap = state.capacity();
    let mut log = Vec::new();
    let start = Committed {
        seq: 0,
        log_len: 0,
        chain: chain_start(),
        losses: 0,
        epochs: 0,
    };
    let at = new_segments(&start, &mut state, &mut |s| {
        log.extend_from_slice(s);
        Ok(())
    })?;
    let body = state.body(&at)?;
    let mut out = vec![0u8; log_start(cap) as usize];
    out[..8].copy_from_slice(MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[16..24].copy_from_slice(&cap.to_le_bytes());
    let slot = framed(&body);
    let s0 = slot_offset(cap, slot_of(at.seq)) as usize;
    out[s0..s0 + slot.len()].copy_from_slice(&slot);
    out.extend_from_slice(&log);
    Ok(out)
}

/// The slot capacity a prefix names, checked against the file's length.
fn parse_prefix(prefix: &[u8], file_len: u64) -> std::result::Result<u64, String> {
    if prefix.len() < PREFIX as usize || &prefix[..8] != MAGIC {
        return Err("not a twolayer checkpoint (bad magic bytes)".into());
    }
    let cap = u64::from_le_bytes(prefix[16..24].try_into().expect("8 bytes"));
    if prefix[12..16] != [0; 4]
        || cap < SLOT_FRAME + BODY_FIXED as u64
        || cap % 4096 != 0
        || cap
            .checked_mul(2)
            .and_then(|c| c.checked_add(PREFIX))
            .is_none_or(|e| e > file_len)
    {
        return Err(format!(
            "checkpoint of {file_len} bytes with a slot size of {cap}: truncated or garbled"
        ));
    }
    Ok(cap)
}

/// The valid body with the highest sequence number among the two slots
/// (`slots`: both, 2·`cap` bytes), and its bytes; an error when neither
/// is valid.
fn latest_body(slots: &[u8], cap: u64) -> std::result::Result<(Committed, &[u8]), String> {
    let mut best: Option<(Committed, &[u8])> = None;
    for s in 0..2u64 {
        let slot = &slots[(s * cap) as usize..((s + 1) * cap) as usize];
        let len = u64::from_le_bytes(slot[..8].try_into().expect("8 bytes"));
        if len < BODY_FIXED as u64 || len > cap - SLOT_FRAME {
            continue;
        }
        let body = &slot[8..8 + len as usize];
        if Sha256::digest(body).as_slice() != &slot[8 + len as usize..8 + len as usize + 32] {
            continue;
        }
        let u = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        let c = Committed {
            seq: u(0),
            log_len: u(8),
            chain: body[16..48].try_into().expect("32 bytes"),
            losses: u(48),
            epochs: u(56),
        };
        // A body sits in the slot its number says.
        if c.seq == 0 || slot_of(c.seq) != s {
            continue;
        }
        if best.as_ref().is_none_or(|(b, _)| c.seq > b.seq) {
            best = Some((c, body));
        }
    }
    best.ok_or_else(|| {
        "checkpoint holds no intact state (both slots fail their checksum): the file is corrupted"
            .to_string()
    })
}

/// Parses a version 2 checkpoint's bytes (the whole file).
pub(super) fn parse<F: Real>(bytes: &[u8]) -> std::result::Result<Checkpoint<F>, String> {
    let cap = parse_prefix(bytes, bytes.len() as u64)?;
    let slots = &bytes[PREFIX as usize..log_start(cap) as usize];
    let (at, body) = latest_body(slots, cap)?;
    let u = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    let hlen = u(64);
    if hlen > MAX_HEADER || BODY_FIXED as u64 + hlen > body.len() as u64 {
        return Err("checkpoint header is truncated or implausibly long".into());
    }
    let hend = BODY_FIXED + hlen as usize;
    let mut header: Header = serde_json::from_slice(&body[BODY_FIXED..hend])
        .map_err(|e| format!("checkpoint header is not valid ({e})"))?;
    check_header(&header)?;
    if header.run.dtype.size() != F::DTYPE.size() {
        return Err("checkpoint header's dtype differs from the one asked for".into());
    }
    let shape = header.shape().map_err(|e| e.to_string())?;
    let dims = array_dims(&header, shape);
    let arrays = arrays_bytes(&dims, &header);
    if (body.len() - hend) as u128 != arrays {
        return Err(format!(
            "checkpoint's state is {} bytes but its header describes {}: truncated or garbled",
            body.len() - hend,
            arrays
        ));
    }
    if at.losses != header.steps_done as u64 {
        return Err(format!(
            "checkpoint's state says {} steps done but its log {} losses",
            header.steps_done, at.losses
        ));
    }
    // The log the body covers, segment by segment.
    let log = bytes
        .get(log_start(cap) as usize..)
        .and_then(|l| l.get(..at.log_len as usize))
        .ok_or("checkpoint's log is shorter than its state says: truncated")?;
    let mut chain = chain_start();
    let mut losses = Vec::with_capacity(header.steps_done);
    let mut epochs: Vec<EpochRecord> = Vec::new();
    let mut pos = 0usize;
    while pos < log.len() {
        let head = log
            .get(pos..pos + SEGMENT_HEAD)
            .ok_or("checkpoint's log ends inside a segment")?;
        let n = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        let m = u64::from_le_bytes(head[8..].try_into().expect("8 bytes"));
        let len = (n as u128) * 8 + (m as u128) * EPOCH_BYTES as u128 + SEGMENT_HEAD as u128;
        if len > (log.len() - pos) as u128 {
            return Err("checkpoint's log ends inside a segment".into());
        }
        let seg = &log[pos..pos + len as usize];
        chain = chain_next(&chain, seg);
        let f = |at: usize| f64::from_le_bytes(seg[at..at + 8].try_into().expect("8 bytes"));
        for i in 0..n as usize {
            let loss = f(SEGMENT_HEAD + 8 * i);
            let t = losses.len();
            // A run stops before recording a loss that is not finite: one
            // in the file was not written by twolayer.
            if !loss.is_finite() {
                return Err(format!(
                    "checkpoint holds a loss of {loss} at step {t}; a run never records one"
                ));
            }
            losses.push(loss);
        }
        for j in 0..m as usize {
            let at = SEGMENT_HEAD + 8 * n as usize + EPOCH_BYTES * j;
            let opt = |v: f64| (!v.is_nan()).then_some(v);
            epochs.push(EpochRecord {
                epoch: u64::from_le_bytes(seg[at..at + 8].try_into().expect("8 bytes")),
                step: u64::from_le_bytes(seg[at + 8..at + 16].try_into().expect("8 bytes")),
                train_loss: f(at + 16),
                val_loss: opt(f(at + 24)),
                val_mse: opt(f(at + 32)),
            });
        }
        pos += len as usize;
    }
    if chain != at.chain {
        return Err(
            "checkpoint's log does not match its digest: the file is corrupted".to_string(),
        );
    }
    if losses.len() as u64 != at.losses || epochs.len() as u64 != at.epochs {
        return Err("checkpoint's log holds other counts than its state says".into());
    }
    for (i, r) in epochs.iter().enumerate() {
        let ok = r.epoch == i as u64 + 1
            && r.step as usize <= header.steps_done
            && r.train_loss.is_finite()
            && r.val_loss.is_none_or(f64::is_finite)
            && r.val_mse.is_none_or(f64::is_finite);
        if !ok {
            return Err(format!(
                "checkpoint's record of epoch {} is not one a run writes",
                i + 1
            ));
        }
    }
    match (&mut header.minibatch, epochs.is_empty()) {
        (Some(m), _) => m.history = epochs,
        (None, true) => {}
        (None, false) => return Err("checkpoint holds epochs but is not a minibatch run's".into()),
    }
    let arrays = read_arrays::<F>(&body[hend..], &dims);
    Ok(super::assemble(header, losses, arrays, shape))
}

#[cfg(test)]
mod tests {
    use super::super::{AnyCheckpoint, DataSource, MinibatchHeader};
    use super::*;
    use crate::run::RunDescription;
    use crate::shape::Shape;
    use crate::step::{Form, StepMode};
    use crate::train::Loss;

    fn header(steps_done: usize) -> Header {
        let shape = Shape::new(6, 4, 3, 2).unwrap();
        Header {
            run: RunDescription::new(shape, crate::Dtype::F64, 1, StepMode::Fused, Form::Primal),
            steps_done,
            total_steps: 1 << 40,
            lr_w1: 1e-3,
            lr_w2: 1e-3,
            ranks: 1,
            data: DataSource::Seeded { seed: 3 },
            loss: Loss::Mean,
            minibatch: Some(MinibatchHeader {
                rows: 60,
                batch: 6,
                seed: 3,
                val_fraction: Some(0.1),
                val: None,
                history: Vec::new(),
                patience: None,
            }),
            blas_core: None,
            blas_library: None,
            plan: None,
            biases: false,
            best_weights: false,
            written_by: "test".into(),
        }
    }

    fn epoch(e: u64) -> EpochRecord {
        EpochRecord {
            epoch: e,
            step: 10 * e,
            train_loss: 1.0 / e as f64,
            val_loss: e.is_multiple_of(2).then_some(0.5 / e as f64),
            val_mse: None,
        }
    }

    /// Writes checkpoint after checkpoint of a run that does 10 steps and
    /// an epoch between them; returns the bytes each wrote.
    fn run(
        path: &Path,
        writer: &mut CheckpointWriter,
        losses: &mut Vec<f64>,
        epochs: &mut Vec<EpochRecord>,
        checkpoints: usize,
    ) -> Vec<Written> {
        let w = Weights::<f64>::random(Shape::new(6, 4, 3, 2).unwrap(), 5);
        let mut out = Vec::new();
        for _ in 0..checkpoints {
            for _ in 0..10 {
                losses.push(1.0 + losses.len() as f64 * 1e-3);
            }
            epochs.push(epoch(epochs.len() as u64 + 1));
            let h = header(losses.len());
            let mut feed = |from: usize, sink: &mut dyn FnMut(&[f64]) -> std::io::Result<()>| {
                sink(&losses[from..])
            };
            out.push(
                writer
                    .write(State {
                        header: &h,
                        losses_from: &mut feed,
                        epochs,
                        epochs_base: 0,
                        weights: &w,
                        dual: None,
                        best: None,
                    })
                    .unwrap(),
            );
            let AnyCheckpoint::F64(c) = AnyCheckpoint::read(path).unwrap() else {
                panic!("f64")
            };
            assert_eq!(&c.losses, losses);
            assert_eq!(&c.header.minibatch.unwrap().history, epochs);
        }
        out
    }

    #[test]
    fn a_checkpoint_writes_what_changed_however_long_the_run() {
        // Before, each checkpoint rewrote every loss and epoch: the k-th
        // wrote k times the first's history. Now, after the first (whole)
        // write, every checkpoint of the same progress writes the same
        // bytes: its segment and a slot.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.ck");
        let (mut losses, mut epochs) = (Vec::new(), Vec::new());
        let mut w = CheckpointWriter::new(&p);
        let written = run(&p, &mut w, &mut losses, &mut epochs, 300);
        assert!(written[0].whole);
        let later: Vec<u64> = written[1..].iter().map(|w| w.bytes).collect();
        assert!(written[1..].iter().all(|w| !w.whole));
        // (Only the header's step count gains a digit now and then.)
        let (lo, hi) = (later.iter().min().unwrap(), later.iter().max().unwrap());
        assert!(hi - lo <= 4, "{later:?}");
        // A segment of 10 losses and an epoch, and a slot of a few KiB.
        assert!(later[0] < 4096, "{}", later[0]);
        // The file grows by the log only.
        let len = std::fs::metadata(&p).unwrap().len();
        assert!(len < 2 * 4096 * 2 + 300 * (16 + 80 + 40) + 4096, "{len}");
    }

    #[test]
    fn a_resumed_run_appends_to_its_file_and_a_torn_write_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.ck");
        let (mut losses, mut epochs) = (Vec::new(), Vec::new());
        run(
            &p,
            &mut CheckpointWriter::new(&p),
            &mut losses,
            &mut epochs,
            5,
        );
        // A run resumed from the file goes on appending to it.
        let mut w = CheckpointWriter::continuing(&p);
        let written = run(&p, &mut w, &mut losses, &mut epochs, 3);
        assert!(written.iter().all(|w| !w.whole), "{written:?}");
        // A write cut short after its segment went out, before its slot
        // did: the slot is garbage, the log longer than the state says.
        let bytes = std::fs::read(&p).unwrap();
        let cap = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
        let AnyCheckpoint::F64(before) = AnyCheckpoint::from_bytes(&bytes).unwrap() else {
            panic!()
        };
        let seq = 8u64; // 5 + 3 writes
        let newest = slot_offset(cap, slot_of(seq)) as usize;
        let mut torn = bytes.clone();
        torn[newest + 100] ^= 0xff;
        torn.extend_from_slice(&[7u8; 100]);
        let AnyCheckpoint::F64(back) = AnyCheckpoint::from_bytes(&torn).unwrap() else {
            panic!()
        };
        // The state before the torn write, whole.
        assert_eq!(back.header.steps_done, before.header.steps_done - 10);
        assert_eq!(back.losses[..], before.losses[..back.losses.len()]);
        // And a writer continuing from that file appends after the state
        // it holds, over the torn write's segment.
        std::fs::write(&p, &torn).unwrap();
        losses.truncate(back.losses.len());
        epochs.truncate(back.header.minibatch.as_ref().unwrap().history.len());
        let mut w = CheckpointWriter::continuing(&p);
        let written = run(&p, &mut w, &mut losses, &mut epochs, 2);
        assert!(written.iter().all(|w| !w.whole), "{written:?}");
    }

    #[test]
    fn a_state_that_outgrows_its_slot_rewrites_the_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.ck");
        let w = Weights::<f64>::random(Shape::new(6, 4, 3, 2).unwrap(), 5);
        let losses: Vec<f64> = (0..40).map(|t| t as f64 + 0.5).collect();
        let mut writer = CheckpointWriter::new(&p);
        let mut write = |steps: usize, name: String| {
            let mut h = header(steps);
            h.written_by = name;
            let mut feed = |from: usize, sink: &mut dyn FnMut(&[f64]) -> std::io::Result<()>| {
                sink(&losses[from..steps])
            };
            writer
                .write(State {
                    header: &h,
                    losses_from: &mut feed,
                    epochs: &[],
                    epochs_base: 0,
                    weights: &w,
                    dual: None,
                    best: None,
                })
                .unwrap()
        };
        assert!(write(10, "a".into()).whole);
        assert!(!write(20, "b".into()).whole);
        // A header far longer than the room its slot was given.
        assert!(write(30, "c".repeat(20_000)).whole);
        assert!(!write(40, "d".repeat(20_000)).whole);
        let c = AnyCheckpoint::read(&p).unwrap();
        assert_eq!(c.header().written_by, "d".repeat(20_000));
        let AnyCheckpoint::F64(c) = c else { panic!() };
        assert_eq!(c.losses, losses);
    }

    #[test]
    fn a_file_replaced_under_the_writer_is_written_whole_again() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.ck");
        let (mut losses, mut epochs) = (Vec::new(), Vec::new());
        let mut w = CheckpointWriter::new(&p);
        run(&p, &mut w, &mut losses, &mut epochs, 2);
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, b"someone else's").unwrap();
        let written = run(&p, &mut w, &mut losses, &mut epochs, 1);
        assert!(written[0].whole);
    }
}
