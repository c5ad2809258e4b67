//! Training data as users have it: x (M×D_in) and y (M×D_out) in a `.npz`
//! or in two `.npy` files, float32 or float64, read a batch of rows at a
//! time — so M is bounded by the disk, not by memory.
//!
//! Why positioned reads (`pread`) rather than a memory map: a batch is a
//! scattered set of rows, copied once into the step's buffers anyway; a
//! read per run of consecutive rows does that copy straight from the page
//! cache, needs no `unsafe` (a mapped file truncated by another process
//! is a SIGBUS, not an error), works the same for a file that is larger
//! than the address space allows on a 32-bit machine, and keeps the
//! process's resident memory independent of M: the kernel's page cache
//! holds the hot part of the file, and it is not ours. Entries of a
//! compressed `.npz` (`np.savez_compressed`) cannot be read at an offset;
//! they are decompressed into memory once, when that fits.
//!
//! Every value is checked as it is read: a NaN or infinity stops the run
//! with the file, array, row and column named.

pub mod batches;
pub mod shuffle;

use crate::error::{Error, Result};
use crate::machine::available_memory_bytes;
use crate::npz::{read_npy_header, NpyHeader};
use crate::scalar::{Dtype, Real};
use ndarray::{ArrayViewMut2, Axis};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where an array's bytes are.
#[derive(Debug)]
enum Storage {
    /// In a file, from this byte offset on.
    File(File, u64),
    /// Decompressed into memory.
    Memory(Vec<u8>),
}

/// One 2-D array of a dataset (a 1-D array is read as one column), its
/// values read on demand.
#[derive(Debug)]
pub struct ArrayFile {
    /// The file, for messages.
    path: PathBuf,
    /// The array's name, for messages (`x` or `y`).
    name: &'static str,
    storage: Storage,
    rows: u64,
    cols: usize,
    dtype: Dtype,
    big_endian: bool,
    fortran: bool,
}

impl ArrayFile {
    /// The array `name` of a lone `.npy` file.
    pub fn open_npy(path: &Path, name: &'static str) -> Result<ArrayFile> {
        let mut f = crate::input::open_regular(path)?;
        let meta = f.metadata().map_err(|e| Error::read(path, e))?;
        let header = read_npy_header(&mut f).map_err(|e| Error::read(path, e))?;
        let a = Self::from_header(path, name, &header, meta.len())?;
        let offset = header.header_bytes;
        Ok(ArrayFile {
            storage: Storage::File(f, offset),
            ..a
        })
    }

    /// The checks a header takes, and the array it describes (storage
    /// still to be filled in). `size` is the bytes its entry holds,
    /// header included.
    fn from_header(path: &Path, name: &'static str, h: &NpyHeader, size: u64) -> Result<ArrayFile> {
        let bad = |msg: String| Error::read(path, format!("array '{name}': {msg}"));
        let dtype = h.dtype().ok_or_else(|| {
            bad(format!(
                "unsupported dtype '{}'; only float64 and float32 are accepted",
                h.descr
            ))
        })?;
        let (rows, cols) = match h.shape[..] {
            [r] => (r, 1),
            [r, c] => (r, c),
            _ => {
                return Err(bad(format!(
                    "must be 1-D or 2-D, but its shape is {:?}",
                    h.shape
                )))
            }
        };
        let data = rows as u128 * cols as u128 * dtype.size() as u128;
        let have = size.saturating_sub(h.header_bytes) as u128;
        if data != have {
            return Err(bad(format!(
                "its header promises {rows}×{cols} {dtype} values ({data} bytes) but the file holds {have} bytes of data (truncated or garbled)"
            )));
        }
        if rows == 0 || cols == 0 {
            return Err(bad(format!("it is empty ({rows}×{cols})")));
        }
        let cols = usize::try_from(cols)
            .ok()
            .filter(|&c| c <= crate::shape::MAX_DIM)
            .ok_or_else(|| bad(format!("{cols} columns are too many")))?;
        Ok(ArrayFile {
            path: path.to_path_buf(),
            name,
            storage: Storage::Memory(Vec::new()),
            rows,
            cols,
            dtype,
            big_endian: h.big_endian(),
            fortran: h.fortran_order,
        })
    }

    /// The array stored as `name` (or `name.npy`) in a `.npz`.
    pub fn open_npz(path: &Path, name: &'static str) -> Result<ArrayFile> {
        let file = crate::input::open_regular(path)?;
        let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
            .map_err(|e| {
                crate::npz::not_npz(
                    path,
                    &e,
                    "--data takes one .npz holding x and y (np.savez('data.npz', x=x, y=y)), or two .npy files, x's then y's (--data x.npy y.npy)",
                )
            })?;
        let index = crate::npz::find_array(path, &zip, name, "a dataset needs x and y")?;
        let bad = |msg: String| Error::read(path, format!("array '{name}': {msg}"));
        let (stored, data_start) = {
            let raw = zip.by_index_raw(index).map_err(|e| bad(e.to_string()))?;
            (
                raw.compression() == zip::CompressionMethod::Stored && !raw.encrypted(),
                raw.data_start(),
            )
        };
        let mut entry = zip.by_index(index).map_err(|e| bad(e.to_string()))?;
        let size = entry.size();
        let header = read_npy_header(&mut entry).map_err(&bad)?;
        let a = Self::from_header(path, name, &header, size)?;
        let storage = if stored {
            // Read once to its end so its CRC-32 is checked (rows are then
            // read in any order, straight from the file).
            crate::npz::drain_checked(&mut entry, size - header.header_bytes).map_err(&bad)?;
            let f = crate::input::open_regular(path)?;
            Storage::File(f, data_start + header.header_bytes)
        } else {
            let bytes = size - header.header_bytes;
            if bytes > available_memory_bytes() / 2 {
                return Err(bad(format!(
                    "it is compressed (np.savez_compressed), so it must be decompressed into memory, and its {} do not fit; save the data with np.savez or np.save instead",
                    crate::error::human_bytes(bytes as f64)
                )));
            }
            let mut buf = Vec::with_capacity(bytes as usize);
            // At most the declared bytes: a stream that inflates past them
            // is refused at the first byte beyond, not inflated to its end.
            entry
                .by_ref()
                .take(bytes)
                .read_to_end(&mut buf)
                .map_err(|e| bad(format!("cannot decompress it ({e})")))?;
            if buf.len() as u64 != bytes {
                return Err(bad("it is shorter than its header says".into()));
            }
            crate::npz::check_end(&mut entry).map_err(&bad)?;
            Storage::Memory(buf)
        };
        Ok(ArrayFile { storage, ..a })
    }

    /// Rows.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The element type stored.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Reads `len` bytes at `at` (relative to the data's start) into `buf`.
    fn read_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()> {
        match &self.storage {
            Storage::File(f, offset) => f.read_exact_at(buf, offset + at),
            Storage::Memory(m) => {
                let at = at as usize;
                buf.copy_from_slice(&m[at..at + buf.len()]);
                Ok(())
            }
        }
    }

    /// Decodes one stored value.
    fn decode(&self, b: &[u8]) -> f64 {
        match (self.dtype, self.big_endian) {
            (Dtype::F32 | Dtype::Bf16, false) => f32::from_le_bytes(b.try_into().unwrap()) as f64,
            (Dtype::F32 | Dtype::Bf16, true) => f32::from_be_bytes(b.try_into().unwrap()) as f64,
            (Dtype::F64, false) => f64::from_le_bytes(b.try_into().unwrap()),
            (Dtype::F64, true) => f64::from_be_bytes(b.try_into().unwrap()),
        }
    }

    /// Copies the rows `rows` (ascending) into the rows of `out`
    /// (rows.len() × cols), converting to `F` and checking every value is
    /// finite. `scratch` is reused between calls.
    pub fn gather<F: Real>(
        &self,
        rows: &[u64],
        mut out: ArrayViewMut2<'_, F>,
        scratch: &mut Vec<u8>,
    ) -> Result<()> {
        debug_assert_eq!(out.dim(), (rows.len(), self.cols));
        let size = self.dtype.size();
        let row_bytes = self.cols * size;
        let io = |e: std::io::Error| {
            Error::read(
                &self.path,
                format!("array '{}': cannot read ({e})", self.name),
            )
        };
        let mut i = 0;
        while i < rows.len() {
            if self.fortran {
                // Column-major: each value of the row is elsewhere.
                scratch.resize(size, 0);
                for c in 0..self.cols {
                    let at = (c as u64 * self.rows + rows[i]) * size as u64;
                    self.read_at(&mut scratch[..size], at).map_err(io)?;
                    out[[i, c]] = self.checked(&scratch[..size], rows[i], c)?;
                }
                i += 1;
                continue;
            }
            // A run of consecutive rows is one read (up to 4 MiB).
            let mut j = i + 1;
            let most = (4 << 20) / row_bytes.max(1);
            while j < rows.len() && rows[j] == rows[j - 1] + 1 && j - i < most.max(1) {
                j += 1;
            }
            if self.native::<F>() {
                // Stored exactly as F is in memory: read straight into the
                // batch, then check, instead of decoding value by value
                // (at B = 4096, D_in = 1000 that halves the reader's time,
                // which it shares the cores with the step for).
                let mut dst = out.slice_mut(ndarray::s![i..j, ..]);
                let dst = dst.as_slice_mut().expect("rows of a row-major batch");
                // SAFETY: F is f32 or f64 (`native` checked its size and
                // byte order), for which every bit pattern is a value; the
                // byte view covers exactly `dst` and ends with this block.
                let bytes = unsafe {
                    std::slice::from_raw_parts_mut(
                        dst.as_mut_ptr().cast::<u8>(),
                        std::mem::size_of_val(dst),
                    )
                };
                self.read_at(bytes, rows[i] * row_bytes as u64)
                    .map_err(io)?;
                if let Some(k) = dst.iter().position(|v| !v.is_finite()) {
                    let (r, c) = (k / self.cols, k % self.cols);
                    return Err(self.not_finite(dst[k].to_f64(), rows[i + r], c));
                }
                i = j;
                continue;
            }
            scratch.resize((j - i) * row_bytes, 0);
            self.read_at(scratch, rows[i] * row_bytes as u64)
                .map_err(io)?;
            for (k, bytes) in scratch.chunks_exact(row_bytes).enumerate() {
                let mut dst = out.index_axis_mut(Axis(0), i + k);
                for (c, (d, b)) in dst.iter_mut().zip(bytes.chunks_exact(size)).enumerate() {
                    *d = self.checked(b, rows[i + k], c)?;
                }
            }
            i = j;
        }
        Ok(())
    }

    /// Whether the stored values are `F`'s in-memory bytes (same type,
    /// the machine's byte order, row-major).
    fn native<F: Real>(&self) -> bool {
        F::DTYPE == self.dtype
            && std::mem::size_of::<F>() == self.dtype.size()
            && !self.fortran
            && self.big_endian == cfg!(target_endian = "big")
    }

    /// The error for a value that is not finite.
    fn not_finite(&self, v: f64, row: u64, col: usize) -> Error {
        Error::read(
            &self.path,
            format!(
                "array '{}' holds {v} at row {row}, column {col}; the data must be finite",
                self.name
            ),
        )
    }

    /// One decoded value, which must be finite.
    #[inline]
    fn checked<F: Real>(&self, b: &[u8], row: u64, col: usize) -> Result<F> {
        let v = self.decode(b);
        if !v.is_finite() {
            return Err(self.not_finite(v, row, col));
        }
        Ok(F::from_f64(v))
    }
}

/// Inputs and targets: x (M×D_in) and y (M×D_out), read by rows.
#[derive(Debug)]
pub struct Dataset {
    /// Inputs.
    pub x: ArrayFile,
    /// Targets.
    pub y: ArrayFile,
    /// The files, as given.
    files: Vec<PathBuf>,
}

impl Dataset {
    /// Opens a dataset from `files`: one `.npz` holding `x` and `y`, or
    /// two `.npy` files, x's then y's. Checks that the rows agree.
    pub fn open(files: &[PathBuf]) -> Result<Dataset> {
        let (x, y) = match files {
            [npz] => (
                ArrayFile::open_npz(npz, "x")?,
                ArrayFile::open_npz(npz, "y")?,
            ),
            [x, y] => (ArrayFile::open_npy(x, "x")?, ArrayFile::open_npy(y, "y")?),
            _ => {
                return Err(Error::invalid(
                    "a dataset is one .npz (holding x and y) or two .npy files (x, then y)",
                ))
            }
        };
        if x.rows != y.rows {
            return Err(Error::invalid(format!(
                "x has {} rows but y has {}; every row of x needs its row of y",
                x.rows, y.rows
            )));
        }
        Ok(Dataset {
            x,
            y,
            files: files.to_vec(),
        })
    }

    /// Rows (M).
    pub fn rows(&self) -> u64 {
        self.x.rows
    }

    /// Input width D_in.
    pub fn d_in(&self) -> usize {
        self.x.cols
    }

    /// Output width D_out.
    pub fn d_out(&self) -> usize {
        self.y.cols
    }

    /// The files it was opened from.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The wider of the two arrays' dtypes: what a run defaults to.
    pub fn dtype(&self) -> Dtype {
        if self.x.dtype == Dtype::F64 || self.y.dtype == Dtype::F64 {
            Dtype::F64
        } else {
            Dtype::F32
        }
    }

    /// Reads rows `rows` (ascending) of x and y into the first
    /// `rows.len()` rows of `x` and `y`.
    pub fn gather<F: Real>(
        &self,
        rows: &[u64],
        x: ArrayViewMut2<'_, F>,
        y: ArrayViewMut2<'_, F>,
        scratch: &mut Vec<u8>,
    ) -> Result<()> {
        self.x.gather(rows, x, scratch)?;
        self.y.gather(rows, y, scratch)
    }

    /// [`Dataset::gather`] split over `parts` rayon tasks, each reading
    /// its share of the rows into its share of the batch, with its own
    /// entry of `scratch` (grown to `parts` entries).
    pub fn gather_parallel<F: Real>(
        &self,
        rows: &[u64],
        x: ArrayViewMut2<'_, F>,
        y: ArrayViewMut2<'_, F>,
        scratch: &mut Vec<Vec<u8>>,
        parts: usize,
    ) -> Result<()> {
        let parts = parts.clamp(1, rows.len().max(1));
        scratch.resize_with(parts, Vec::new);
        self.gather_split(rows, x, y, scratch)
    }

    fn gather_split<F: Real>(
        &self,
        rows: &[u64],
        x: ArrayViewMut2<'_, F>,
        y: ArrayViewMut2<'_, F>,
        scratch: &mut [Vec<u8>],
    ) -> Result<()> {
        if scratch.len() <= 1 {
            return self.gather(rows, x, y, &mut scratch[0]);
        }
        let half = scratch.len() / 2;
        let at = rows.len() * half / scratch.len();
        let (x0, x1) = x.split_at(Axis(0), at);
        let (y0, y1) = y.split_at(Axis(0), at);
        let (s0, s1) = scratch.split_at_mut(half);
        let (r0, r1) = rows.split_at(at);
        let (a, b) = rayon::join(
            || self.gather_split(r0, x0, y0, s0),
            || self.gather_split(r1, x1, y1, s1),
        );
        a.and(b)
    }
}
