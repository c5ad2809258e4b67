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
use crate::net::{check_finite, checked_shape, shape_from_dims, Data, Weights};
use crate::output::write_atomic;
use crate::scalar::{Dtype, Real};
use crate::shape::Shape;
use ndarray::Array2;
use ndarray_npy::{NpzWriter, ReadNpyExt};
use std::fs::File;
use std::io::{Read, Seek};
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
    /// The element type, when it is one the trainer runs in.
    pub fn dtype(&self) -> Option<Dtype> {
        // By characters, not bytes: the descriptor is untrusted text (the
        // fuzzer found a multi-byte first character panicking a byte split).
        let mut chars = self.descr.chars();
        if !matches!(chars.next(), Some('<' | '>' | '=' | '|')) {
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
/// there, 2-D, of one supported dtype, consistent in shape, complete, and
/// within the memory available.
struct Checked<R: Read + Seek> {
    zip: zip::ZipArchive<R>,
    entries: Vec<Entry>,
    shape: Shape,
    dtype: Dtype,
}

impl<R: Read + Seek> Checked<R> {
    fn open(reader: R, path: &Path) -> Result<Self> {
        let mut zip = zip::ZipArchive::new(reader)
            .map_err(|e| Error::read(path, format!("not a valid .npz file ({e})")))?;
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
        shape.check_bytes_fit(
            (shape.data_elems() + shape.weight_elems()) * dtype.size() as u128,
            dtype,
        )?;
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
    let file = File::open(path).map_err(|e| Error::read(path, e))?;
    load_init_from(file, path)
}

/// [`load_init`] from any seekable reader (`path` names it in messages).
pub fn load_init_from<R: Read + Seek>(reader: R, path: &Path) -> Result<Init> {
    let mut c = Checked::open(reader, path)?;
    Ok(match c.dtype {
        Dtype::F32 => {
            let (d, w) = read_all::<f32, R>(path, &mut c.zip, &c.entries)?;
            Init::F32(d, w)
        }
        Dtype::F64 => {
            let (d, w) = read_all::<f64, R>(path, &mut c.zip, &c.entries)?;
            Init::F64(d, w)
        }
    })
}

fn inspect_entry<R: Read + Seek>(
    path: &Path,
    zip: &mut zip::ZipArchive<R>,
    name: &str,
) -> Result<Entry> {
    let index = zip
        .index_for_name(&format!("{name}.npy"))
        .or_else(|| zip.index_for_name(name))
        .ok_or_else(|| {
            let found: Vec<&str> = zip
                .file_names()
                .map(|n| n.strip_suffix(".npy").unwrap_or(n))
                .collect();
            Error::read(
                path,
                format!(
                    "missing array '{name}' (the file holds: {}); it needs x, y, w1 and w2",
                    if found.is_empty() {
                        "nothing".to_string()
                    } else {
                        found.join(", ")
                    }
                ),
            )
        })?;
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
    let to_usize = |v: u64| usize::try_from(v).map_err(|_| bad("dimension too large".into()));
    Ok(Entry {
        index,
        dims: (to_usize(dims.0)?, to_usize(dims.1)?),
        dtype,
    })
}

fn read_all<F: Real, R: Read + Seek>(
    path: &Path,
    zip: &mut zip::ZipArchive<R>,
    entries: &[Entry],
) -> Result<(Data<F>, Weights<F>)> {
    let mut arrays = Vec::with_capacity(4);
    for (name, e) in NAMES.iter().zip(entries) {
        let entry = zip
            .by_index(e.index)
            .map_err(|err| Error::read(path, format!("array '{name}': {err}")))?;
        let a = Array2::<F>::read_npy(entry)
            .map_err(|err| Error::read(path, format!("array '{name}': {err}")))?;
        // Keep every buffer row-major so GEMM and the kernels see one layout.
        let a = if a.is_standard_layout() {
            a
        } else {
            a.as_standard_layout().into_owned()
        };
        check_finite(name, &a).map_err(|err| Error::read(path, err))?;
        arrays.push(a);
    }
    let w2 = arrays.pop().expect("four arrays");
    let w1 = arrays.pop().expect("four arrays");
    let y = arrays.pop().expect("four arrays");
    let x = arrays.pop().expect("four arrays");
    let (data, weights) = (Data { x, y }, Weights { w1, w2 });
    checked_shape(&data, &weights).map_err(|e| Error::read(path, e))?;
    Ok((data, weights))
}

/// Writes arrays under their names as an uncompressed `.npz`, atomically.
fn write_npz<F: Real>(path: &Path, arrays: &[(&str, &Array2<F>)]) -> Result<()> {
    write_atomic(path, |w| {
        let mut npz = NpzWriter::new(w);
        for (name, a) in arrays {
            npz.add_array(*name, *a).map_err(std::io::Error::other)?;
        }
        npz.finish().map_err(std::io::Error::other)?;
        Ok(())
    })
}

/// Writes the weights as `w1` and `w2`, readable with `np.load`.
pub fn save_weights<F: Real>(path: &Path, weights: &Weights<F>) -> Result<()> {
    write_npz(path, &[("w1", &weights.w1), ("w2", &weights.w2)])
}

/// Writes a whole initial state (x, y, w1, w2) in the layout
/// [`load_init`] reads.
pub fn save_init<F: Real>(path: &Path, data: &Data<F>, weights: &Weights<F>) -> Result<()> {
    write_npz(
        path,
        &[
            ("x", &data.x),
            ("y", &data.y),
            ("w1", &weights.w1),
            ("w2", &weights.w2),
        ],
    )
}

/// The shape and dtype of the state stored in a `.npz` file, from its
/// headers alone.
pub fn peek_shape(path: &Path) -> Result<(Shape, Dtype)> {
    let file = File::open(path).map_err(|e| Error::read(path, e))?;
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
