//! Opening the files a run reads: regular files only, never blocking, and
//! never read without a bound.
//!
//! A FIFO opened for reading blocks until a writer appears, a character
//! device such as /dev/zero reads for ever, a directory fails with an
//! unhelpful "(i/o error)". [`open_regular`] opens with `O_NONBLOCK` (which
//! changes nothing for a regular file, and keeps a FIFO's open from
//! waiting), then refuses anything that is not a regular file, naming what
//! it is. [`read_bounded`] reads a whole file of at most a stated size.
//!
//! Bounds: grid files 1 MiB ([`GRID_LIMIT`]); sweep reports 1 GiB
//! ([`REPORT_LIMIT`]); `.npz`, `.npy` and checkpoints by the memory their
//! headers promise (checked before allocating: `npz`, `dataset`,
//! `checkpoint`).

use crate::error::{Error, Result};
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Largest grid file read.
pub const GRID_LIMIT: u64 = 1 << 20;
/// Largest report read (a 100k-sample report is ~10 MB).
pub const REPORT_LIMIT: u64 = 1 << 30;

/// What a file that is not a regular file is, for messages.
fn kind(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if it is a regular file (links followed),
/// without blocking on a FIFO; anything else is refused, named.
pub fn open_regular(path: &Path) -> Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::read(path, e))?;
    let t = f.metadata().map_err(|e| Error::read(path, e))?.file_type();
    if !t.is_file() {
        return Err(Error::read(
            path,
            format!("it is {}; give a regular file", kind(t)),
        ));
    }
    Ok(f)
}

/// The whole of a regular file of at most `limit` bytes.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = open_regular(path)?;
    let mut out = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::read(path, e))?;
    if out.len() as u64 > limit {
        return Err(Error::read(
            path,
            format!(
                "it is larger than the {} this file may be",
                crate::error::human_bytes(limit as f64)
            ),
        ));
    }
    Ok(out)
}

/// [`read_bounded`] as UTF-8 text.
pub fn read_text(path: &Path, limit: u64) -> Result<String> {
    String::from_utf8(read_bounded(path, limit)?).map_err(|_| Error::read(path, "it is not text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for (p, what) in [
            (fifo.as_path(), "a FIFO"),
            (Path::new("/dev/zero"), "a character device"),
            (dir.path(), "a directory"),
        ] {
            let e = open_regular(p).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
        let f = dir.path().join("big");
        std::fs::write(&f, vec![b'a'; 100]).unwrap();
        assert_eq!(read_bounded(&f, 100).unwrap().len(), 100);
        assert!(read_bounded(&f, 99)
            .unwrap_err()
            .to_string()
            .contains("larger"));
    }
}
