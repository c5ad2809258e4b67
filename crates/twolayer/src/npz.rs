//! Reading and writing numpy's `.npz` files (what `np.savez` writes: a zip
//! archive of `.npy` arrays).
//!
//! A file is checked before anything is allocated for it: every `.npy`
//! header is parsed here first, so a missing array, a wrong dtype or rank,
//! disagreeing shapes, a truncated entry, or a header claiming more memory
//! than the machine has, each fail with a message naming the array — and a
//! header that claims a terabyte is refused without trying to allocate it.
//! Only then does ndarray-npy read the data.

use crate::error::{Error, Result};
use crate::net::{check_finite, checked_shape, shape_from_dims, Biases, Data, Weights};
use crate::output::write_atomic;
use crate::scalar::{Dtype, Real, Storage};
use crate::shape::Shape;
use ndarray::Array2;
use ndarray_npy::NpzWriter;
use std::fs::File;
use std::io::{Read, Seek};
use std::ops::Range;
use std::path::Path;

/// The arrays of an initial state, x, y, w1 and w2, in the dtype the file
/// holds them in.
#[derive(Debug)]
pub enum Init {
    /// All four arrays are float32.
    F32(Data<f32>, Weights<f32>),
    /// All four arrays are float64.
    F64(Data<f64>, Weights<f64>),
}

impl Init {
    /// The arrays as `F` (moved when they are `F` already, else rounded).
    pub fn into_typed<F: Real + 'static>(self) -> (Data<F>, Weights<F>) {
        match self {
            Init::F32(d, w) => (d.into_dtype(), w.into_dtype()),
            Init::F64(d, w) => (d.into_dtype(), w.into_dtype()),
        }
    }

    /// The dtype of the arrays.
    pub fn dtype(&self) -> Dtype {
        match self {
            Init::F32(..) => Dtype::F32,
            Init::F64(..) => Dtype::F64,
        }
    }
}

/// What a `.npy` header says about the array that follows it.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyHeader {
    /// numpy's type descriptor, e.g. `<f8`.
    pub descr: String,
    /// Whether the data is stored column-major.
    pub fortran_order: bool,
    /// The array's shape.
    pub shape: Vec<u64>,
    /// Bytes before the data: magic, version, length and the header text.
    pub header_bytes: u64,
}

impl NpyHeader {
    /// Whether the values are stored big-endian.
    pub fn big_endian(&self) -> bool {
        self.descr.starts_with('>') || (self.descr.starts_with('=') && cfg!(target_endian = "big"))
    }

    /// The element type, when it is one the trainer runs in.
    pub fn dtype(&self) -> Option<Dtype> {
        // By characters, not bytes: the descriptor is untrusted text (the
        // fuzzer found a multi-byte first character panicking a byte split).
        // '<' little-endian, '>' big-endian, '=' the machine's order; numpy
        // writes '|' ("not applicable") only for one-byte types, so it is
        // refused for floats.
        let mut chars = self.descr.chars();
        if !matches!(chars.next(), Some('<' | '>' | '=')) {
            return None;
        }
        let kind = chars.as_str();
        match kind {
            "f4" => Some(Dtype::F32),
            "f8" => Some(Dtype::F64),
            _ => None,
        }
    }
}

/// Largest header accepted; numpy's own limit for untrusted files is 10,000.
const MAX_HEADER_LEN: usize = 1 << 16;

/// Parses the header at the start of a `.npy` stream.
pub fn read_npy_header(r: &mut impl Read) -> std::result::Result<NpyHeader, String> {
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre)
        .map_err(|_| "too short to be a .npy array".to_string())?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (bad magic bytes)".into());
    }
    let (len, len_bytes) = match pre[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).map_err(|_| "truncated .npy header")?;
            (u16::from_le_bytes(b) as usize, 2)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(|_| "truncated .npy header")?;
            (u32::from_le_bytes(b) as usize, 4)
        }
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    if len > MAX_HEADER_LEN {
        return Err(format!(".npy header of {len} bytes is implausibly long"));
    }
    let mut text = vec![0u8; len];
    r.read_exact(&mut text)
        .map_err(|_| "truncated .npy header".to_string())?;
    let text = String::from_utf8(text).map_err(|_| "the .npy header is not text".to_string())?;
    // One reader for every path, and a key given twice is an error: which
    // copy counts differs between parsers (numpy takes the last), so the
    // same file could mean two arrays.
    for key in ["descr", "fortran_order", "shape"] {
        if text.matches(&format!("'{key}'")).count() > 1 {
            return Err(format!("the .npy header gives '{key}' more than once"));
        }
    }
    let descr = dict_value(&text, "descr")
        .and_then(|v| v.strip_prefix('\'')?.split('\'').next())
        .ok_or("the .npy header has no 'descr'")?
        .to_string();
    let fortran_order = match dict_value(&text, "fortran_order") {
        Some(v) if v.starts_with("True") => true,
        Some(v) if v.starts_with("False") => false,
        _ => return Err("the .npy header has no valid 'fortran_order'".into()),
    };
    let shape_text = dict_value(&text, "shape")
        .and_then(|v| v.strip_prefix('('))
        .and_then(|v| v.split(')').next())
        .ok_or("the .npy header has no 'shape'")?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<u64>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| format!("the .npy header has a malformed shape ({shape_text})"))?;
    Ok(NpyHeader {
        descr,
        fortran_order,
        shape,
        header_bytes: (6 + 2 + len_bytes + len) as u64,
    })
}

/// The text after `'key':` in a Python dict literal, left-trimmed.
fn dict_value<'a>(dict: &'a str, key: &str) -> Option<&'a str> {
    let at = dict.find(&format!("'{key}'"))?;
    let rest = dict[at + key.len() + 2..].trim_start();
    Some(rest.strip_prefix(':')?.trim_start())
}

/// The names the four arrays go by in the file.
const NAMES: [&str; 4] = ["x", "y", "w1", "w2"];

/// One array's place in the archive and what its header promises.
struct Entry {
    index: usize,
    dims: (usize, usize),
    dtype: Dtype,
}

/// An opened `.npz` whose four headers have been checked: the arrays are
/// there, 2-D, of one supported dtype, consistent in shape and complete.
/// (Whether what a caller reads of it fits in memory, the caller checks.)
struct Checked<R: Read + Seek> {
    zip: zip::ZipArchive<R>,
    entries: Vec<Entry>,
    shape: Shape,
    dtype: Dtype,
}

impl<R: Read + Seek> Checked<R> {
    fn open(reader: R, path: &Path) -> Result<Self> {
        let mut zip = zip::ZipArchive::new(reader)
            .map_err(|e| not_npz(path, &e, "an --init file holds x, y, w1 and w2: np.savez('init.npz', x=x, y=y, w1=w1, w2=w2)"))?;
        let mut entries = Vec::with_capacity(4);
        for name in NAMES {
            entries.push(inspect_entry(path, &mut zip, name)?);
        }
        let dtype = entries[0].dtype;
        if let Some((name, e)) = NAMES.iter().zip(&entries).find(|(_, e)| e.dtype != dtype) {
            return Err(Error::read(
                path,
                format!(
                    "arrays differ in dtype: x is {} but {name} is {}; all four must match",
                    dtype, e.dtype
                ),
            ));
        }
        let shape = shape_from_dims(
            entries[0].dims,
            entries[1].dims,
            entries[2].dims,
            entries[3].dims,
        )
        .map_err(|e| Error::read(path, e))?;
        Ok(Checked {
            zip,
            entries,
            shape,
            dtype,
        })
    }
}

/// Loads x, y, w1 and w2 from a `.npz` file, checking everything the module
/// docs list, and that the arrays agree in shape and dtype and hold only
/// finite values.
pub fn load_init(path: &Path) -> Result<Init> {
    let file = crate::input::open_regular(path)?;
    load_init_from(file, path)
}

/// [`load_init`] from any seekable reader (`path` names it in messages).
pub fn load_init_from<R: Read + Seek>(reader: R, path: &Path) -> Result<Init> {
    let mut c = Checked::open(reader, path)?;
    c.shape.check_bytes_fit(
        (c.shape.data_elems() + c.shape.weight_elems()) * c.dtype.size() as u128,
        c.dtype,
    )?;
    Ok(match c.dtype.storage() {
        Storage::F32 => {
            let (d, w) = read_all::<f32, R>(path, &mut c.zip, &c.entries)?;
            Init::F32(d, w)
        }
        Storage::F64 => {
            let (d, w) = read_all::<f64, R>(path, &mut c.zip, &c.entries)?;
            Init::F64(d, w)
        }
    })
}

/// The index of array `name` in an archive, stored as `name.npy` (as numpy
/// writes it) or `name`, when it is there.
fn array_index<R: Read + Seek>(zip: &zip::ZipArchive<R>, name: &str) -> Option<usize> {
    zip.index_for_name(&format!("{name}.npy"))
        .or_else(|| zip.index_for_name(name))
}

/// The index of array `name` (stored as `name.npy` or `name`) in an
/// archive, or an error listing what the file holds and `needs` (what the
/// caller needs of it).
pub fn find_array<R: Read + Seek>(
    path: &Path,
    zip: &zip::ZipArchive<R>,
    name: &str,
    needs: &str,
) -> Result<usize> {
    array_index(zip, name).ok_or_else(|| {
        let found: Vec<&str> = zip
            .file_names()
            .map(|n| n.strip_suffix(".npy").unwrap_or(n))
            .collect();
        Error::read(
            path,
            format!(
                "missing array '{name}' (the file holds: {}); {needs}",
                if found.is_empty() {
                    "nothing".to_string()
                } else {
                    found.join(", ")
                }
            ),
        )
    })
}

fn inspect_entry<R: Read + Seek>(
    path: &Path,
    zip: &mut zip::ZipArchive<R>,
    name: &str,
) -> Result<Entry> {
    let index = find_array(path, zip, name, "it needs x, y, w1 and w2")?;
    inspect_at(path, zip, name, index, false)
}

/// A bias vector's entry, 1-D (read as a column), when the file has it.
fn inspect_vector<R: Read + Seek>(
    path: &Path,
    zip: &mut zip::ZipArchive<R>,
    name: &str,
) -> Result<Option<Entry>> {
    match array_index(zip, name) {
        Some(index) => inspect_at(path, zip, name, index, true).map(Some),
        None => Ok(None),
    }
}

/// The checked header of entry `index`: 2-D, or 1-D when `vector` (as
/// n×1).
fn inspect_at<R: Read + Seek>(
    path: &Path,
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    index: usize,
    vector: bool,
) -> Result<Entry> {
    let bad = |msg: String| Error::read(path, format!("array '{name}': {msg}"));
    let mut entry = zip.by_index(index).map_err(|e| bad(e.to_string()))?;
    let entry_size = entry.size();
    let header = read_npy_header(&mut entry).map_err(bad)?;
    let dtype = header.dtype().ok_or_else(|| {
        bad(format!(
            "unsupported dtype '{}'; only float64 (<f8) and float32 (<f4) are accepted",
            header.descr
        ))
    })?;
    let dims = match header.shape[..] {
        [n] if vector => (n, 1),
        _ if vector => {
            return Err(bad(format!(
                "must be 1-D (a bias vector), but its shape is {:?}",
                header.shape
            )))
        }
        [r, c] => (r, c),
        _ => {
            return Err(bad(format!(
                "must be 2-D, but its shape is {:?}",
                header.shape
            )))
        }
    };
    let data_bytes = (dims.0 as u128) * (dims.1 as u128) * dtype.size() as u128;
    let have = entry_size.saturating_sub(header.header_bytes) as u128;
    if data_bytes != have {
        return Err(bad(format!(
            "its header promises {}×{} {} values ({data_bytes} bytes) but the file holds {have} bytes of data (truncated or garbled)",
            dims.0, dims.1, dtype
        )));
    }
    drain_checked(&mut entry, have as u64).map_err(bad)?;
    let to_usize = |v: u64| usize::try_from(v).map_err(|_| bad("dimension too large".into()));
    Ok(Entry {
        index,
        dims: (to_usize(dims.0)?, to_usize(dims.1)?),
        dtype,
    })
}

/// Reads the rest of a zip entry — `remaining` bytes by what its header
/// declares — and one read past it, so that the zip reader, which checks
/// an entry's CRC-32 only when it reaches the end, checks it: a stored
/// entry with a wrong CRC is refused here, as numpy refuses it, before a
/// run reads its rows out of order. Never reads more than one byte past
/// the declared size: a deflate stream that expands beyond it (a zip bomb)
/// is refused after `remaining` + 1 bytes, not inflated to its end.
pub(crate) fn drain_checked(
    entry: &mut impl Read,
    remaining: u64,
) -> std::result::Result<(), String> {
    let copied = std::io::copy(&mut entry.by_ref().take(remaining), &mut std::io::sink())
        .map_err(|e| format!("cannot read its data ({e})"))?;
    if copied != remaining {
        return Err(format!(
            "it holds {copied} bytes of data where its entry declares {remaining} (truncated)"
        ));
    }
    check_end(entry)
}

/// One read at an entry's declared end: 0 bytes is its end (the zip
/// reader has then checked the CRC-32, and says if it is wrong); more is
/// data past what the entry declares.
pub(crate) fn check_end(entry: &mut impl Read) -> std::result::Result<(), String> {
    let mut probe = [0u8; 1];
    match entry.read(&mut probe) {
        Ok(0) => Ok(()),
        Ok(_) => Err("it expands past the size its entry declares (garbled or hostile)".into()),
        Err(e) => Err(format!("its data does not match its CRC-32 ({e})")),
    }
}

fn read_all<F: Real, R: Read + Seek>(
    path: &Path,
    zip: &mut zip::ZipArchive<R>,
    entries: &[Entry],
) -> Result<(Data<F>, Weights<F>)> {
    // The same header parser and reader as every other path (load_rows,
    // load_weights, the dataset reader): one meaning per file.
    let mut arrays = Vec::with_capacity(4);
    for (name, e) in NAMES.iter().zip(entries) {
        arrays.push(read_entry_rows::<F, R>(path, zip, e, name, 0..e.dims.0)?);
    }
    let w2 = arrays.pop().expect("four arrays");
    let w1 = arrays.pop().expect("four arrays");
    let y = arrays.pop().expect("four arrays");
    let x = arrays.pop().expect("four arrays");
    let (data, weights) = (
        Data { x, y },
        Weights {
            w1,
            w2,
            biases: None,
        },
    );
    checked_shape(&data, &weights).map_err(|e| Error::read(path, e))?;
    Ok((data, weights))
}

/// Rows `rows` of x and y from a `.npz` file, without reading the other
/// rows into memory: what one rank of a data-parallel job reads of its
/// `--init` file. The headers are checked as by [`load_init`]; the values
/// read must be finite. Stored (np.savez) entries are read by seeking past
/// the other rows; compressed (np.savez_compressed) ones by decompressing
/// and discarding them. Row-major and column-major arrays, either byte
/// order, float32 or float64 (converted to `F`).
pub fn load_rows<F: Real>(path: &Path, rows: Range<usize>) -> Result<Data<F>> {
    let file = crate::input::open_regular(path)?;
    let mut c = Checked::open(std::io::BufReader::new(file), path)?;
    if rows.start > rows.end || rows.end > c.shape.n {
        return Err(Error::read(
            path,
            format!(
                "rows {}..{} asked of arrays with {} rows",
                rows.start, rows.end, c.shape.n
            ),
        ));
    }
    let elems = rows.len() as u128 * (c.shape.d_in + c.shape.d_out) as u128;
    c.shape
        .check_bytes_fit(elems * F::DTYPE.size() as u128, F::DTYPE)?;
    let x = read_entry_rows::<F, _>(path, &mut c.zip, &c.entries[0], "x", rows.clone())?;
    let y = read_entry_rows::<F, _>(path, &mut c.zip, &c.entries[1], "y", rows)?;
    Ok(Data { x, y })
}

/// w1 and w2 alone from a `.npz` file (x and y are checked, not read).
pub fn load_weights<F: Real>(path: &Path) -> Result<Weights<F>> {
    let file = crate::input::open_regular(path)?;
    let mut c = Checked::open(std::io::BufReader::new(file), path)?;
    c.shape
        .check_bytes_fit(c.shape.weight_elems() * F::DTYPE.size() as u128, F::DTYPE)?;
    let all = |e: &Entry| 0..e.dims.0;
    let w1 = read_entry_rows::<F, _>(path, &mut c.zip, &c.entries[2], "w1", all(&c.entries[2]))?;
    let w2 = read_entry_rows::<F, _>(path, &mut c.zip, &c.entries[3], "w2", all(&c.entries[3]))?;
    Ok(Weights {
        w1,
        w2,
        biases: None,
    })
}

/// The two weight entries of a weights file (`--save`'s: w1 and w2, any
/// other arrays ignored), checked: 2-D, one dtype, H agreeing.
fn weight_entries<R: Read + Seek>(
    path: &Path,
    zip: &mut zip::ZipArchive<R>,
) -> Result<(Entry, Entry)> {
    let w1 = inspect_entry(path, zip, "w1")?;
    let w2 = inspect_entry(path, zip, "w2")?;
    if w1.dims.1 != w2.dims.0 {
        return Err(Error::read(
            path,
            format!(
                "shape mismatch: w1 is {}×{} but w2 is {}×{}; w2 needs as many rows as w1 has columns (H)",
                w1.dims.0, w1.dims.1, w2.dims.0, w2.dims.1
            ),
        ));
    }
    if w1.dtype != w2.dtype {
        return Err(Error::read(path, "w1 and w2 differ in dtype"));
    }
    Ok((w1, w2))
}

fn open_zip(path: &Path) -> Result<zip::ZipArchive<std::io::BufReader<File>>> {
    let file = crate::input::open_regular(path)?;
    zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
        not_npz(
            path,
            &e,
            "a weights file is a .npz holding w1 and w2 (and b1, b2), as --save writes it",
        )
    })
}

/// The error for a file that is not a `.npz` archive, saying what it is
/// when that can be told from its first bytes — a single `.npy` array,
/// text such as a CSV — and `hint`, what the flag takes.
pub fn not_npz(path: &Path, e: &dyn std::fmt::Display, hint: &str) -> Error {
    use std::io::Read as _;
    let mut head = [0u8; 512];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    let head = &head[..n];
    let text = n > 0
        && head
            .iter()
            .all(|&b| b == b'\n' || b == b'\r' || b == b'\t' || (0x20..0x7f).contains(&b));
    let what = if head.starts_with(b"\x93NUMPY") {
        "not a valid .npz file: it is a single .npy array".to_string()
    } else if text {
        "not a valid .npz file: it is text (a CSV?); load it with numpy (np.loadtxt) and save it with np.savez".to_string()
    } else if n == 0 {
        "not a valid .npz file: it is empty".to_string()
    } else {
        format!("not a valid .npz file ({e})")
    };
    Error::read(path, format!("{what}; {hint}"))
}

/// (D_in, H, D_out) and the dtype of the weights in a weights file, from
/// their headers alone.
pub fn peek_weights(path: &Path) -> Result<(usize, usize, usize, Dtype)> {
    let (w1, w2) = weight_entries(path, &mut open_zip(path)?)?;
    Ok((w1.dims.0, w1.dims.1, w2.dims.1, w1.dtype))
}

/// w1 and w2 from a weights file (as `--save` writes: w1 and w2 alone, or
/// any `.npz` that holds them), as `F`, checked finite.
pub fn load_weights_file<F: Real>(path: &Path) -> Result<Weights<F>> {
    let mut zip = open_zip(path)?;
    let (e1, e2) = weight_entries(path, &mut zip)?;
    let elems = (e1.dims.0 * e1.dims.1 + e2.dims.0 * e2.dims.1) as u128;
    let available = crate::machine::available_memory_bytes() as u128;
    if elems * F::DTYPE.size() as u128 > available {
        return Err(Error::read(path, "the weights do not fit in memory"));
    }
    let w1 = read_entry_rows::<F, _>(path, &mut zip, &e1, "w1", 0..e1.dims.0)?;
    let w2 = read_entry_rows::<F, _>(path, &mut zip, &e2, "w2", 0..e2.dims.0)?;
    let biases = match (
        inspect_vector(path, &mut zip, "b1")?,
        inspect_vector(path, &mut zip, "b2")?,
    ) {
        (None, None) => None,
        (Some(b1), Some(b2)) => {
            let read = |zip: &mut zip::ZipArchive<_>, e: &Entry, name: &str| {
                read_entry_rows::<F, _>(path, zip, e, name, 0..e.dims.0)
                    .map(|a| a.into_shape_with_order(e.dims.0).expect("a column"))
            };
            let b = Biases {
                b1: read(&mut zip, &b1, "b1")?,
                b2: read(&mut zip, &b2, "b2")?,
            };
            crate::net::check_biases(&b, e1.dims.1, e2.dims.1).map_err(|e| Error::read(path, e))?;
            Some(b)
        }
        _ => {
            return Err(Error::read(
                path,
                "it holds one of the biases b1 and b2 without the other; a model with biases needs both",
            ))
        }
    };
    Ok(Weights { w1, w2, biases })
}

/// Whether a weights file holds biases (b1 and b2), from its entry names.
pub fn weights_have_biases(path: &Path) -> Result<bool> {
    let zip = open_zip(path)?;
    Ok(array_index(&zip, "b1").is_some() && array_index(&zip, "b2").is_some())
}

/// A reader that can move forward without handing the bytes over.
trait Skip: Read {
    fn skip(&mut self, n: u64) -> std::io::Result<()>;
}

/// A stored entry: seek.
impl<R: Read + Seek> Skip for zip::read::ZipFileSeek<'_, R> {
    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let n = i64::try_from(n).map_err(std::io::Error::other)?;
        self.seek(std::io::SeekFrom::Current(n)).map(|_| ())
    }
}

/// A compressed entry: decompress and drop.
impl<R: Read> Skip for zip::read::ZipFile<'_, R> {
    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let got = std::io::copy(&mut self.by_ref().take(n), &mut std::io::sink())?;
        if got == n {
            Ok(())
        } else {
            Err(std::io::ErrorKind::UnexpectedEof.into())
        }
    }
}

/// Rows `rows` of the 2-D array in `entry` (its header already checked).
fn read_entry_rows<F: Real, R: Read + Seek>(
    path: &Path,
    zip: &mut zip::ZipArchive<R>,
    entry: &Entry,
    name: &str,
    rows: Range<usize>,
) -> Result<Array2<F>> {
    let bad = |msg: String| Error::read(path, format!("array '{name}': {msg}"));
    let stored = zip
        .by_index_raw(entry.index)
        .map(|f| f.compression() == zip::CompressionMethod::Stored)
        .map_err(|e| bad(e.to_string()))?;
    let a = if stored {
        let mut f = zip
            .by_index_seek(entry.index)
            .map_err(|e| bad(e.to_string()))?;
        read_rows_from::<F>(&mut f, entry.dims, rows)
    } else {
        let mut f = zip.by_index(entry.index).map_err(|e| bad(e.to_string()))?;
        read_rows_from::<F>(&mut f, entry.dims, rows)
    }
    .map_err(bad)?;
    check_finite(name, &a).map_err(|e| Error::read(path, e))?;
    Ok(a)
}

/// Reads rows `rows` of an r×c `.npy` array from `r`, positioned at the
/// start of its header; returns them row-major.
fn read_rows_from<F: Real>(
    r: &mut impl Skip,
    (nrows, ncols): (usize, usize),
    rows: Range<usize>,
) -> std::result::Result<Array2<F>, String> {
    let h = read_npy_header(r)?;
    let dtype = h.dtype().ok_or("unsupported dtype")?;
    let big_endian = h.big_endian();
    let size = dtype.size();
    let io = |e: std::io::Error| format!("cannot read its data ({e})");
    let mut out = Array2::<F>::zeros((rows.len(), ncols));
    let mut buf = vec![0u8; size * if h.fortran_order { rows.len() } else { ncols }];
    let decode = |bytes: &[u8], dst: &mut dyn FnMut(usize, F)| {
        for (i, b) in bytes.chunks_exact(size).enumerate() {
            let v = match (dtype.storage(), big_endian) {
                (Storage::F32, false) => f32::from_le_bytes(b.try_into().unwrap()) as f64,
                (Storage::F32, true) => f32::from_be_bytes(b.try_into().unwrap()) as f64,
                (Storage::F64, false) => f64::from_le_bytes(b.try_into().unwrap()),
                (Storage::F64, true) => f64::from_be_bytes(b.try_into().unwrap()),
            };
            dst(i, F::from_f64(v));
        }
    };
    let skip = |r: &mut dyn Skip, elems: usize| r.skip((elems * size) as u64).map_err(io);
    if h.fortran_order {
        // Column j holds rows 0..nrows; ours are a run inside each.
        for j in 0..ncols {
            skip(
                r,
                if j == 0 {
                    rows.start
                } else {
                    nrows - rows.len()
                },
            )?;
            r.read_exact(&mut buf).map_err(io)?;
            decode(&buf, &mut |i, v| out[[i, j]] = v);
        }
    } else {
        skip(r, rows.start * ncols)?;
        for i in 0..rows.len() {
            r.read_exact(&mut buf).map_err(io)?;
            let mut row = out.row_mut(i);
            decode(&buf, &mut |j, v| row[j] = v);
        }
    }
    Ok(out)
}

/// Writes the header of a row-major `rows`×`cols` little-endian `.npy`
/// array of `dtype` (format 1.0; the data, rows×cols values, follows).
pub fn write_npy_header(
    w: &mut impl std::io::Write,
    dtype: Dtype,
    rows: u64,
    cols: usize,
) -> std::io::Result<()> {
    let descr = match dtype.storage() {
        Storage::F32 => "<f4",
        Storage::F64 => "<f8",
    };
    let mut dict =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + length (2) + dict + '\n', padded with spaces
    // to a multiple of 64 bytes, as numpy writes it.
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    dict.push('\n');
    w.write_all(b"\x93NUMPY\x01\x00")?;
    w.write_all(&(dict.len() as u16).to_le_bytes())?;
    w.write_all(dict.as_bytes())
}

/// Writes arrays under their names as an uncompressed `.npz`, atomically.
fn write_npz<F: Real>(path: &Path, arrays: &[(&str, ndarray::ArrayViewD<F>)]) -> Result<()> {
    write_atomic(path, |w| {
        let mut npz = NpzWriter::new(w);
        for (name, a) in arrays {
            if let Err(e) = npz.add_array(*name, a) {
                // Dropping a failed archive makes the zip crate try to
                // finish it again and print "ZipWriter drop failed" on
                // stderr, a second line beside the error (the temporary
                // file is removed by write_atomic either way).
                std::mem::forget(npz);
                return Err(std::io::Error::other(with_causes(&e)));
            }
        }
        npz.finish()
            .map_err(|e| std::io::Error::other(with_causes(&e)))?;
        Ok(())
    })
}

/// An error's message followed by its causes' (ndarray-npy's and zip's
/// errors say "i/o error" and keep "No space left on device" in a source).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cause = c.source();
    }
    msg
}

/// Writes the weights as `w1` and `w2` (and the biases as the 1-D `b1`
/// and `b2`), readable with `np.load`.
pub fn save_weights<F: Real>(path: &Path, weights: &Weights<F>) -> Result<()> {
    let mut arrays = vec![
        ("w1", weights.w1.view().into_dyn()),
        ("w2", weights.w2.view().into_dyn()),
    ];
    if let Some(b) = &weights.biases {
        arrays.push(("b1", b.b1.view().into_dyn()));
        arrays.push(("b2", b.b2.view().into_dyn()));
    }
    write_npz(path, &arrays)
}

/// Writes a whole initial state (x, y, w1, w2) in the layout
/// [`load_init`] reads.
pub fn save_init<F: Real>(path: &Path, data: &Data<F>, weights: &Weights<F>) -> Result<()> {
    write_npz(
        path,
        &[
            ("x", data.x.view().into_dyn()),
            ("y", data.y.view().into_dyn()),
            ("w1", weights.w1.view().into_dyn()),
            ("w2", weights.w2.view().into_dyn()),
        ],
    )
}

/// The shape and dtype of the state stored in a `.npz` file, from its
/// headers alone.
pub fn peek_shape(path: &Path) -> Result<(Shape, Dtype)> {
    let file = crate::input::open_regular(path)?;
    let c = Checked::open(file, path)?;
    Ok((c.shape, c.dtype))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parses_numpy_output() {
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        let text = "{'descr': '<f8', 'fortran_order': False, 'shape': (64, 1000), }        \n";
        bytes.extend((text.len() as u16).to_le_bytes());
        bytes.extend(text.as_bytes());
        let h = read_npy_header(&mut &bytes[..]).unwrap();
        assert_eq!(h.descr, "<f8");
        assert_eq!(h.shape, [64, 1000]);
        assert_eq!(h.dtype(), Some(Dtype::F64));
        assert!(!h.fortran_order);
        assert_eq!(h.header_bytes as usize, 10 + text.len());
    }

    #[test]
    fn descriptor_with_a_multibyte_first_character_is_just_unsupported() {
        let h = NpyHeader {
            descr: "ĝ4".into(),
            fortran_order: false,
            shape: vec![1, 1],
            header_bytes: 0,
        };
        assert_eq!(h.dtype(), None);
    }

    #[test]
    fn header_rejects_garbage() {
        assert!(read_npy_header(&mut &b"hello world"[..]).is_err());
        assert!(read_npy_header(&mut &b"\x93NUMPY\x09\x00"[..]).is_err());
    }

    #[test]
    fn round_trip_through_npz() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("init.npz");
        let shape = Shape::new(5, 4, 3, 2).unwrap();
        let d = Data::<f32>::random(shape, 3);
        let w = Weights::<f32>::random(shape, 3);
        save_init(&p, &d, &w).unwrap();
        assert_eq!(peek_shape(&p).unwrap(), (shape, Dtype::F32));
        match load_init(&p).unwrap() {
            Init::F32(d2, w2) => {
                assert_eq!(d, d2);
                assert_eq!(w, w2);
            }
            Init::F64(..) => panic!("dtype changed"),
        }
    }
}

#[cfg(test)]
mod row_tests {
    use super::*;
    use std::io::Write;

    /// A .npy file of `vals` (given row-major for an r×c array), stored in
    /// the byte order and layout asked for.
    fn npy(r: usize, c: usize, vals: &[f64], descr: &str, fortran: bool) -> Vec<u8> {
        let header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': ({r}, {c}), }}",
            if fortran { "True" } else { "False" }
        );
        let pad = 64 - (10 + header.len() + 1) % 64;
        let text = format!("{header}{}\n", " ".repeat(pad % 64));
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((text.len() as u16).to_le_bytes());
        b.extend(text.as_bytes());
        let order: Vec<f64> = if fortran {
            (0..c)
                .flat_map(|j| (0..r).map(move |i| vals[i * c + j]))
                .collect()
        } else {
            vals.to_vec()
        };
        for v in order {
            match descr {
                "<f8" => b.extend(v.to_le_bytes()),
                ">f8" => b.extend(v.to_be_bytes()),
                "<f4" => b.extend((v as f32).to_le_bytes()),
                ">f4" => b.extend((v as f32).to_be_bytes()),
                _ => unreachable!(),
            }
        }
        b
    }

    fn write_npz(path: &Path, arrays: &[(&str, Vec<u8>)], compressed: bool) {
        let mut z = zip::ZipWriter::new(File::create(path).unwrap());
        let method = if compressed {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        for (name, bytes) in arrays {
            z.start_file(format!("{name}.npy"), opts).unwrap();
            z.write_all(bytes).unwrap();
        }
        z.finish().unwrap();
    }

    #[test]
    fn rows_read_alone_equal_the_same_rows_of_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let (n, d, h, o) = (13, 7, 4, 3);
        let vals = |r: usize, c: usize, k: f64| -> Vec<f64> {
            (0..r * c).map(|i| k + i as f64 * 0.25 - 3.0).collect()
        };
        for descr in ["<f8", ">f8", "<f4", ">f4"] {
            for fortran in [false, true] {
                for compressed in [false, true] {
                    let p = dir.path().join(format!("{descr}{fortran}{compressed}.npz"));
                    write_npz(
                        &p,
                        &[
                            ("x", npy(n, d, &vals(n, d, 1.0), descr, fortran)),
                            ("y", npy(n, o, &vals(n, o, 2.0), descr, fortran)),
                            ("w1", npy(d, h, &vals(d, h, 3.0), descr, fortran)),
                            ("w2", npy(h, o, &vals(h, o, 4.0), descr, fortran)),
                        ],
                        compressed,
                    );
                    let what = format!("{descr} fortran={fortran} compressed={compressed}");
                    // The whole file, through ndarray-npy: the oracle.
                    let (full, wf) = match load_init(&p).unwrap() {
                        Init::F32(d, w) => (d.cast::<f64>(), w.cast::<f64>()),
                        Init::F64(d, w) => (d, w),
                    };
                    for rows in [0..n, 0..1, 5..9, 12..13, 6..6] {
                        let part = load_rows::<f64>(&p, rows.clone()).unwrap();
                        assert_eq!(
                            part.x,
                            full.x.slice(ndarray::s![rows.clone(), ..]),
                            "{what} x {rows:?}"
                        );
                        assert_eq!(
                            part.y,
                            full.y.slice(ndarray::s![rows.clone(), ..]),
                            "{what} y {rows:?}"
                        );
                    }
                    assert_eq!(load_weights::<f64>(&p).unwrap(), wf, "{what}");
                    let e = load_rows::<f64>(&p, 10..14).unwrap_err().to_string();
                    assert!(e.contains("rows 10..14") && e.contains("13 rows"), "{e}");
                }
            }
        }
    }

    #[test]
    fn a_non_finite_value_in_the_rows_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nan.npz");
        let mut x: Vec<f64> = (0..12).map(|i| i as f64).collect();
        x[7] = f64::NAN; // row 2 of a 4×3 array
        let ok = |r, c| npy(r, c, &vec![1.0; r * c], "<f8", false);
        write_npz(
            &p,
            &[
                ("x", npy(4, 3, &x, "<f8", false)),
                ("y", ok(4, 1)),
                ("w1", ok(3, 2)),
                ("w2", ok(2, 1)),
            ],
            false,
        );
        assert!(load_rows::<f64>(&p, 0..2).is_ok());
        let e = load_rows::<f64>(&p, 2..4).unwrap_err().to_string();
        assert!(e.contains("non-finite"), "{e}");
    }
}
