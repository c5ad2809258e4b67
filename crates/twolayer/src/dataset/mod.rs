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
//! A dataset that fits is read into memory once before training
//! ([`Dataset::prepare`]): a batch is then gathered at memory speed (a copy
//! per row, no system call), where a positioned read costs about 1 µs per
//! row — more than the whole step at a batch of 32 rows of 100 values. One
//! that does not fit (or `--stream`) stays in its files, read a batch at a
//! time, with rows close together in the file read in one call.
//!
//! Every value is checked finite before the first step — in the pass that
//! loads it, or one sequential pass over the files when it streams — so
//! whether a file is accepted never depends on which rows a seed visits;
//! a NaN or infinity stops the run with the file, array, row and column
//! named. Batches are checked again as they are read (a streamed file can
//! change under the run).

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
use std::sync::Arc;

/// Rows of a streamed file at most this many bytes apart are read in one
/// call with the bytes between them ([`ArrayFile::gather`]).
const COALESCE_GAP: usize = 8 << 10;

/// Where an array's bytes are.
#[derive(Debug)]
enum Storage {
    /// In a file, from this byte offset on.
    File(File, u64),
    /// Decompressed into memory.
    Memory(Vec<u8>),
    /// Memory a caller holds (a numpy array, a memory map): read where it
    /// is, never copied ([`Dataset::from_row_bytes`]).
    Shared(Arc<dyn RowBytes>),
}

/// Bytes a dataset reads its rows from where they are, without copying
/// them: memory a caller owns (a numpy array, a memory-mapped file), kept
/// alive and unchanged by the value for as long as the dataset lives.
/// The values are row-major, little-endian, in the dtype the dataset is
/// given.
pub trait RowBytes: Send + Sync + std::fmt::Debug {
    /// The array's bytes.
    fn bytes(&self) -> &[u8];
}

/// An owned array (standard layout) lends its own memory.
impl<F: Real> RowBytes for ndarray::Array2<F> {
    fn bytes(&self) -> &[u8] {
        let v = self.as_slice().expect("an array of standard layout");
        // SAFETY: f32 and f64 have no padding; the byte view covers
        // exactly the values and lives as long as the borrow of self.
        unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
    }
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
    /// The array `a` held in memory (`name` for messages), its values
    /// copied once in `F`'s layout, little-endian and row-major, as a
    /// loaded `.npy` of `F` is: what [`Dataset::from_arrays`] builds.
    fn in_memory_from<F: Real>(a: ndarray::ArrayView2<'_, F>, name: &'static str) -> ArrayFile {
        let mut bytes = Vec::with_capacity(a.len() * F::DTYPE.size());
        for v in a.iter() {
            match F::DTYPE.storage() {
                crate::scalar::Storage::F32 => {
                    bytes.extend_from_slice(&(Real::to_f64(*v) as f32).to_le_bytes())
                }
                crate::scalar::Storage::F64 => {
                    bytes.extend_from_slice(&Real::to_f64(*v).to_le_bytes())
                }
            }
        }
        ArrayFile {
            path: PathBuf::from("<memory>"),
            name,
            storage: Storage::Memory(bytes),
            rows: a.nrows() as u64,
            cols: a.ncols(),
            dtype: F::DTYPE,
            big_endian: false,
            fortran: false,
        }
    }

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

    /// Bytes its values take (in the stored dtype).
    pub fn data_bytes(&self) -> u64 {
        self.rows * self.cols as u64 * self.dtype.size() as u64
    }

    /// Whether its values are in memory (loaded, or decompressed).
    pub fn in_memory(&self) -> bool {
        self.memory().is_some()
    }

    /// The values' bytes, when they are in memory (loaded, or a caller's).
    fn memory(&self) -> Option<&[u8]> {
        match &self.storage {
            Storage::Memory(m) => Some(m),
            Storage::Shared(s) => Some(s.bytes()),
            Storage::File(..) => None,
        }
    }

    /// Visits every stored value's bytes in storage order, a piece of at
    /// most 4 MiB at a time: `visit(bytes, index of its first value)`.
    fn scan(&self, mut visit: impl FnMut(&[u8], u64) -> Result<()>) -> Result<()> {
        let size = self.dtype.size() as u64;
        let total = self.data_bytes();
        let piece = ((4u64 << 20) / size).max(1) * size;
        let mut buf = Vec::new();
        let mut at = 0;
        while at < total {
            let len = piece.min(total - at);
            match self.memory() {
                Some(m) => visit(&m[at as usize..(at + len) as usize], at / size)?,
                None => {
                    buf.resize(len as usize, 0);
                    self.read_at(&mut buf, at).map_err(|e| {
                        Error::read(
                            &self.path,
                            format!("array '{}': cannot read ({e})", self.name),
                        )
                    })?;
                    visit(&buf, at / size)?;
                }
            }
            at += len;
        }
        Ok(())
    }

    /// Fails, naming the row and column, when `bytes` (values from index
    /// `first` on, in storage order) hold a value that is not finite.
    fn check_piece(&self, bytes: &[u8], first: u64) -> Result<()> {
        let size = self.dtype.size();
        match bytes
            .chunks_exact(size)
            .position(|b| !self.decode(b).is_finite())
        {
            None => Ok(()),
            Some(k) => {
                let i = first + k as u64;
                let (row, col) = if self.fortran {
                    (i % self.rows, (i / self.rows) as usize)
                } else {
                    (i / self.cols as u64, (i % self.cols as u64) as usize)
                };
                Err(self.not_finite(self.decode(&bytes[k * size..(k + 1) * size]), row, col))
            }
        }
    }

    /// Checks every value is finite: one sequential pass over the file (or
    /// the memory).
    pub fn check_finite(&self) -> Result<()> {
        self.scan(|b, first| self.check_piece(b, first))
    }

    /// Reads every value into memory, checking each is finite on the way
    /// (values already in memory are checked where they are).
    pub fn load(&mut self) -> Result<()> {
        if self.in_memory() {
            return self.check_finite();
        }
        let mut all = Vec::new();
        all.try_reserve_exact(self.data_bytes() as usize)
            .map_err(|_| {
                Error::invalid(format!(
                    "cannot hold {} of array '{}' of {} in memory; train with --stream",
                    crate::error::human_bytes(self.data_bytes() as f64),
                    self.name,
                    self.path.display()
                ))
            })?;
        advise_huge_pages(&all);
        self.scan(|b, first| {
            self.check_piece(b, first)?;
            all.extend_from_slice(b);
            Ok(())
        })?;
        self.storage = Storage::Memory(all);
        Ok(())
    }

    /// Reads `len` bytes at `at` (relative to the data's start) into `buf`.
    fn read_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()> {
        match &self.storage {
            Storage::File(f, offset) => {
                #[cfg(test)]
                tests::FILE_READS.with(|n| n.set(n.get() + 1));
                f.read_exact_at(buf, offset + at)
            }
            Storage::Memory(_) | Storage::Shared(_) => {
                let m = self.memory().expect("in memory");
                let at = at as usize;
                buf.copy_from_slice(&m[at..at + buf.len()]);
                Ok(())
            }
        }
    }

    /// Decodes one stored value.
    fn decode(&self, b: &[u8]) -> f64 {
        match (self.dtype.storage(), self.big_endian) {
            (crate::scalar::Storage::F32, false) => {
                f32::from_le_bytes(b.try_into().unwrap()) as f64
            }
            (crate::scalar::Storage::F32, true) => f32::from_be_bytes(b.try_into().unwrap()) as f64,
            (crate::scalar::Storage::F64, false) => f64::from_le_bytes(b.try_into().unwrap()),
            (crate::scalar::Storage::F64, true) => f64::from_be_bytes(b.try_into().unwrap()),
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
        if let (Some(m), true) = (self.memory(), self.native::<F>()) {
            return self.gather_in_memory(m, rows, out);
        }
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
            // Rows close together in a file are one read (a span of up to
            // 4 MiB): a positioned read costs about 1 µs, what copying
            // ~8 KiB from the page cache does, so rows at most COALESCE_GAP
            // bytes apart are read with the rows between them. In memory a
            // read is a copy: only consecutive rows are merged.
            let gap_rows = match self.storage {
                Storage::File(..) => (COALESCE_GAP / row_bytes.max(1)) as u64,
                Storage::Memory(_) | Storage::Shared(_) => 0,
            };
            let most = ((4 << 20) / row_bytes.max(1)).max(1) as u64;
            let mut j = i + 1;
            while j < rows.len()
                && rows[j] - rows[j - 1] <= 1 + gap_rows
                && rows[j] - rows[i] < most
            {
                j += 1;
            }
            let span = (rows[j - 1] - rows[i] + 1) as usize;
            if span == j - i && self.native::<F>() {
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
            scratch.resize(span * row_bytes, 0);
            self.read_at(scratch, rows[i] * row_bytes as u64)
                .map_err(io)?;
            for k in i..j {
                let at = (rows[k] - rows[i]) as usize * row_bytes;
                let bytes = &scratch[at..at + row_bytes];
                let mut dst = out.index_axis_mut(Axis(0), k);
                for (c, (d, b)) in dst.iter_mut().zip(bytes.chunks_exact(size)).enumerate() {
                    *d = self.checked(b, rows[k], c)?;
                }
            }
            i = j;
        }
        Ok(())
    }

    /// [`ArrayFile::gather`] from memory where the values are stored as F
    /// is: a copy per row, with the rows a few ahead prefetched, so that
    /// their cache misses overlap instead of each row waiting for its own
    /// (a random row of a large array is not in any cache).
    fn gather_in_memory<F: Real>(
        &self,
        m: &[u8],
        rows: &[u64],
        mut out: ArrayViewMut2<'_, F>,
    ) -> Result<()> {
        const AHEAD_ROWS: usize = 8;
        let row_bytes = self.cols * std::mem::size_of::<F>();
        let at = |r: u64| r as usize * row_bytes;
        let prefetch = |r: u64| {
            #[cfg(target_arch = "x86_64")]
            for line in (0..row_bytes).step_by(64) {
                // SAFETY: a prefetch is a hint: it never faults, and the
                // address is inside `m` (a row of the array).
                unsafe {
                    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                    _mm_prefetch::<_MM_HINT_T0>(m.as_ptr().add(at(r) + line).cast());
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = r;
        };
        rows.iter().take(AHEAD_ROWS).for_each(|&r| prefetch(r));
        let out = out.as_slice_mut().expect("a row-major batch");
        for (k, (&r, dst)) in rows.iter().zip(out.chunks_exact_mut(self.cols)).enumerate() {
            if let Some(&next) = rows.get(k + AHEAD_ROWS) {
                prefetch(next);
            }
            let src = &m[at(r)..at(r) + row_bytes];
            // SAFETY: F is f32 or f64 (`native` checked its size and byte
            // order), for which every bit pattern is a value; the byte view
            // covers exactly `dst`.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), row_bytes) };
            bytes.copy_from_slice(src);
            if let Some(c) = dst.iter().position(|v| !v.is_finite()) {
                return Err(self.not_finite(dst[c].to_f64(), r, c));
            }
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

/// Asks the kernel to back `buf`'s reserved (not yet touched) memory with
/// 2 MiB pages where it can. A batch gathers rows from all over the
/// array: with 4 KiB pages nearly every row is a TLB miss, which under a
/// hypervisor's nested paging costs a walk of both page tables — on these
/// VMs a gather of 200 random 800-byte rows from a 128 MB array took
/// 156 µs, as long as the step it feeds. Advice only: where transparent
/// huge pages are off, nothing changes.
fn advise_huge_pages(buf: &Vec<u8>) {
    const HUGE: usize = 2 << 20;
    let start = buf.as_ptr() as usize;
    let (from, to) = (
        start.next_multiple_of(HUGE),
        (start + buf.capacity()) / HUGE * HUGE,
    );
    if to > from {
        // SAFETY: the range lies inside `buf`'s allocation, and
        // MADV_HUGEPAGE changes how it is backed, never its contents.
        unsafe {
            libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE);
        }
    }
}

/// Where a dataset's values are read from while training
/// ([`Dataset::prepare`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residency {
    /// Loaded (or decompressed) into memory: a batch is gathered by copies.
    Memory,
    /// In the files: a batch is read from them (the page cache, or disk).
    Streamed,
}

impl Residency {
    /// `memory` or `streamed`, as the train summary says it.
    pub fn name(self) -> &'static str {
        match self {
            Residency::Memory => "memory",
            Residency::Streamed => "streamed",
        }
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
    /// A dataset read in place from memory a caller holds (x and y, each
    /// row-major, little-endian values of `dtype`'s stored type, of `d_in`
    /// and `d_out` columns): nothing copied, every value checked finite;
    /// batches are gathered from it as from a loaded file, and train the
    /// same bits. What a binding lends a numpy array (or a memory map)
    /// through; an owned `Array2` lends its own memory.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use ndarray::Array2;
    /// use twolayer::dataset::Dataset;
    /// let x = Array2::<f64>::from_shape_fn((100, 3), |(i, j)| (i * 3 + j) as f64 / 300.0);
    /// let y = Array2::<f64>::from_shape_fn((100, 1), |(i, _)| i as f64 / 100.0);
    /// let d = Dataset::from_row_bytes(twolayer::Dtype::F64, Arc::new(x), 3, Arc::new(y), 1)?;
    /// assert_eq!((d.rows(), d.d_in(), d.d_out()), (100, 3, 1));
    /// # Ok::<(), twolayer::Error>(())
    /// ```
    pub fn from_row_bytes(
        dtype: Dtype,
        x: Arc<dyn RowBytes>,
        d_in: usize,
        y: Arc<dyn RowBytes>,
        d_out: usize,
    ) -> Result<Dataset> {
        let size = dtype.storage().dtype().size();
        let rows_of = |b: &Arc<dyn RowBytes>, cols: usize, name: &str| {
            let len = b.bytes().len();
            let row = cols.checked_mul(size).filter(|&r| r > 0);
            match row {
                Some(r) if len.is_multiple_of(r) && len > 0 => Ok((len / r) as u64),
                _ => Err(Error::invalid(format!(
                    "{name} is {len} bytes, not whole rows of {cols} {} values",
                    dtype.storage().dtype()
                ))),
            }
        };
        let (xr, yr) = (rows_of(&x, d_in, "x")?, rows_of(&y, d_out, "y")?);
        if xr != yr {
            return Err(Error::invalid(format!(
                "x has {xr} rows but y has {yr}: every row of x needs its target"
            )));
        }
        let array = |b: Arc<dyn RowBytes>, cols: usize, name: &'static str| ArrayFile {
            path: PathBuf::from("<memory>"),
            name,
            storage: Storage::Shared(b),
            rows: xr,
            cols,
            dtype: dtype.storage().dtype(),
            big_endian: false,
            fortran: false,
        };
        let d = Dataset {
            x: array(x, d_in, "x"),
            y: array(y, d_out, "y"),
            files: Vec::new(),
        };
        d.x.check_finite()?;
        d.y.check_finite()?;
        Ok(d)
    }

    /// A dataset of arrays a caller holds (x M×D_in, y M×D_out): copied
    /// once into the dataset's memory, every value checked finite. It
    /// trains as the same arrays saved to a file and loaded would, bit for
    /// bit; it has no files ([`Dataset::files`] is empty). To read memory
    /// in place instead, see [`Dataset::from_row_bytes`].
    ///
    /// ```
    /// use ndarray::Array2;
    /// let x = Array2::<f64>::from_shape_fn((100, 3), |(i, j)| (i * 3 + j) as f64 / 300.0);
    /// let y = Array2::<f64>::from_shape_fn((100, 1), |(i, _)| i as f64 / 100.0);
    /// let d = twolayer::dataset::Dataset::from_arrays(x.view(), y.view())?;
    /// assert_eq!((d.rows(), d.d_in(), d.d_out()), (100, 3, 1));
    /// # Ok::<(), twolayer::Error>(())
    /// ```
    pub fn from_arrays<F: Real>(
        x: ndarray::ArrayView2<'_, F>,
        y: ndarray::ArrayView2<'_, F>,
    ) -> Result<Dataset> {
        if x.nrows() != y.nrows() {
            return Err(Error::invalid(format!(
                "x has {} rows but y has {}: every row of x needs its target",
                x.nrows(),
                y.nrows()
            )));
        }
        if x.nrows() == 0 || x.ncols() == 0 || y.ncols() == 0 {
            return Err(Error::invalid(format!(
                "a dataset needs rows and columns: x is {}×{}, y {}×{}",
                x.nrows(),
                x.ncols(),
                y.nrows(),
                y.ncols()
            )));
        }
        let d = Dataset {
            x: ArrayFile::in_memory_from(x, "x"),
            y: ArrayFile::in_memory_from(y, "y"),
            files: Vec::new(),
        };
        d.x.check_finite()?;
        d.y.check_finite()?;
        Ok(d)
    }

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

    /// Bytes x's and y's values take (in their stored dtypes): what
    /// loading the dataset into memory costs.
    pub fn data_bytes(&self) -> u64 {
        self.x.data_bytes() + self.y.data_bytes()
    }

    /// Where its values are read from during training.
    pub fn residency(&self) -> Residency {
        if self.x.in_memory() && self.y.in_memory() {
            Residency::Memory
        } else {
            Residency::Streamed
        }
    }

    /// Makes the dataset ready to train on, before the first step: loads
    /// it into memory when `stream` is false and its values plus
    /// `run_bytes` (the run's own memory: its step, weights and batch
    /// buffers) take at most half the memory available, else leaves it in
    /// its files. Either way every value is checked finite here (the load
    /// checks as it copies; a streamed dataset gets one sequential pass),
    /// so a bad value is found before training whatever rows the seed
    /// visits. Returns where the values now are.
    pub fn prepare(&mut self, stream: bool, run_bytes: u64) -> Result<Residency> {
        let fits = self.data_bytes().saturating_add(run_bytes) <= available_memory_bytes() / 2;
        if !stream && fits {
            self.x.load()?;
            self.y.load()?;
        } else {
            self.x.check_finite()?;
            self.y.check_finite()?;
        }
        Ok(self.residency())
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

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use ndarray_npy::WriteNpyExt;
    use std::cell::Cell;

    thread_local! {
        /// Positioned reads of a file this thread made.
        pub(super) static FILE_READS: Cell<usize> = const { Cell::new(0) };
    }

    fn reads() -> usize {
        FILE_READS.with(|n| n.get())
    }

    /// A 1,000 × 10 f64 x (value = 100·row + column) and y in .npy files.
    fn dataset(dir: &Path) -> Dataset {
        let x = Array2::from_shape_fn((1000, 10), |(r, c)| (100 * r + c) as f64);
        let y = Array2::from_shape_fn((1000, 1), |(r, _)| r as f64);
        let (xp, yp) = (dir.join("x.npy"), dir.join("y.npy"));
        x.write_npy(File::create(&xp).unwrap()).unwrap();
        y.write_npy(File::create(&yp).unwrap()).unwrap();
        Dataset::open(&[xp, yp]).unwrap()
    }

    #[test]
    fn streamed_rows_close_together_are_one_read_and_far_apart_one_each() {
        let dir = tempfile::tempdir().unwrap();
        let data = dataset(dir.path());
        assert_eq!(data.residency(), Residency::Streamed);
        let mut x = Array2::<f64>::zeros((4, 10));
        let mut y = Array2::<f64>::zeros((4, 1));
        let mut scratch = Vec::new();
        let check = |x: &Array2<f64>, rows: &[u64]| {
            for (i, &r) in rows.iter().enumerate() {
                for c in 0..10 {
                    assert_eq!(x[[i, c]], (100 * r + c as u64) as f64);
                }
            }
        };
        // Rows 80 bytes wide, 8 KiB apart at most: one read each for x
        // and y, the rows between read and passed over.
        let near = [3, 10, 60, 100];
        let before = reads();
        data.gather(&near, x.view_mut(), y.view_mut(), &mut scratch)
            .unwrap();
        assert_eq!(reads() - before, 2);
        check(&x, &near);
        // 200 rows of x (16 KB) apart: one read a row for x; y's rows are
        // 8 bytes wide, so all four are still one read.
        let far = [0, 200, 400, 999];
        let before = reads();
        data.gather(&far, x.view_mut(), y.view_mut(), &mut scratch)
            .unwrap();
        assert_eq!(reads() - before, 4 + 1);
        check(&x, &far);
        assert_eq!(y.column(0).to_vec(), vec![0.0, 200.0, 400.0, 999.0]);
    }

    #[test]
    fn a_prepared_dataset_reads_no_file_and_gathers_the_same_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = dataset(dir.path());
        assert_eq!(data.prepare(false, 0).unwrap(), Residency::Memory);
        let rows = [1, 2, 500, 998];
        let mut x = Array2::<f64>::zeros((4, 10));
        let mut y = Array2::<f64>::zeros((4, 1));
        let before = reads();
        data.gather(&rows, x.view_mut(), y.view_mut(), &mut Vec::new())
            .unwrap();
        assert_eq!(reads(), before);
        assert_eq!(x[[2, 3]], 50003.0);
        assert_eq!(y.column(0).to_vec(), vec![1.0, 2.0, 500.0, 998.0]);
        // In f32, converted as it is copied.
        let mut x32 = Array2::<f32>::zeros((4, 10));
        let mut y32 = Array2::<f32>::zeros((4, 1));
        data.gather(&rows, x32.view_mut(), y32.view_mut(), &mut Vec::new())
            .unwrap();
        assert_eq!(x32, x.mapv(|v| v as f32));
        // Forced to stream, it stays in its files (and is still checked).
        let mut streamed = dataset(dir.path());
        assert_eq!(streamed.prepare(true, 0).unwrap(), Residency::Streamed);
    }
}
