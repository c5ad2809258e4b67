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

/// The name that means standard input (for an input) or standard output
/// (for an output), as `-` does for most Unix tools.
pub const STDIO: &str = "-";

/// Whether `path` is [`STDIO`].
pub fn is_stdio(path: &Path) -> bool {
    path.as_os_str() == STDIO
}

/// Standard input copied to a temporary file, for the readers that need a
/// regular file (they seek: a `.npz`'s directory is at its end, and rows
/// are read in any order). The file has no name (it is unlinked as it is
/// made), so nothing is left behind however the process ends — `kill -9`
/// during the copy left `.tmpXXXXXX` in `$TMPDIR` before; it is opened
/// through `/proc/self/fd/N` and goes when this is dropped.
#[derive(Debug)]
pub struct Spooled {
    /// Held open: the copy lives as long as its descriptor.
    _file: std::fs::File,
    path: std::path::PathBuf,
}

impl Spooled {
    /// The path that opens the copy (`/proc/self/fd/N`), as the input.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Spooled {
    fn drop(&mut self) {
        crate::error::forget_standard_input_copy(&self.path);
    }
}

/// `path` itself, or — when it is `-` — the path of standard input copied
/// to an unnamed temporary file (in `$TMPDIR`), with the guard that keeps
/// it. The copy is bounded by the free space of that folder less 1 GiB: an
/// endless stream ends in an error, not a full disk. While it waits for
/// input it asks `stop` ten times a second (and at once when a signal
/// interrupts the wait) whether to give up: a command stopped by Ctrl-C
/// or SIGTERM there returns `stop`'s error within a second, instead of at
/// the stream's end.
pub fn resolve_stdin(
    path: &Path,
    stop: &dyn Fn() -> Option<Error>,
) -> Result<(std::path::PathBuf, Option<Spooled>)> {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    if !is_stdio(path) {
        return Ok((path.to_path_buf(), None));
    }
    let name = Path::new(crate::error::STDIN_NAME);
    let err = |e: std::io::Error| Error::read(name, e);
    let mut file = tempfile::tempfile().map_err(err)?;
    let room = free_bytes(&std::env::temp_dir()).saturating_sub(1 << 30);
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        if let Some(e) = stop() {
            return Err(e);
        }
        // Wait for input in slices: a blocked read(2) would be restarted
        // after a signal's handler, poll(2) is not.
        let mut fds = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, owned here.
        if unsafe { libc::poll(&mut fds, 1, 100) } <= 0 {
            continue;
        }
        let n = match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(err(e)),
        };
        total += n as u64;
        if total > room {
            return Err(Error::read(
                name,
                format!(
                    "it is larger than the room in {} ({}) it is copied to; point TMPDIR at a folder with more",
                    std::env::temp_dir().display(),
                    crate::error::human_bytes(room as f64)
                ),
            ));
        }
        file.write_all(&buf[..n]).map_err(err)?;
    }
    file.flush().map_err(err)?;
    let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    crate::error::name_standard_input_copy(&path);
    Ok((path.clone(), Some(Spooled { _file: file, path })))
}

/// Free bytes of the filesystem holding `dir` (0 when unknown).
fn free_bytes(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return 0;
    };
    // SAFETY: a valid NUL-terminated path and a zeroed out-parameter.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return 0;
        }
        st.f_bavail as u64 * st.f_frsize as u64
    }
}

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

/// Whether `a` and `b` are the same existing file (device and inode:
/// links and other spellings of one path included).
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => false,
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
