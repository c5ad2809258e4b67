//! Locks on the files a run owns: a checkpoint for the whole run (two runs
//! started together with one `--checkpoint` clobbered each other, both
//! exiting 0), a wisdom file while `tune` merges its entries into it (two
//! tunings at once lost one's entries).
//!
//! A lock is an exclusive `flock(2)` on `.NAME.lock` beside the file, held
//! as long as the [`FileLock`] lives; the lock file holds the holder's
//! process id, for the message another run gets. It is removed when the
//! lock is dropped (while still held), and a process that locked a lock
//! file just removed notices (its inode is no longer the name's) and tries
//! again, so two processes never both hold one. A process that dies
//! releases its lock with its descriptors; the file it leaves is reused.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// An exclusive lock on a file, released when dropped.
#[derive(Debug)]
pub struct FileLock {
    /// The lock file, `.NAME.lock`.
    path: PathBuf,
    file: File,
}

/// The lock file of `target`: `.NAME.lock` in its folder.
fn lock_path(target: &Path) -> Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| Error::write(target, "not a file name"))?;
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut n = std::ffi::OsString::from(".");
    n.push(name);
    n.push(".lock");
    Ok(dir.join(n))
}

/// Whether an error of flock(2) means another process holds the lock.
fn held_elsewhere(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EWOULDBLOCK)
}

impl FileLock {
    /// Takes the lock of `target` at once, or fails with a message naming
    /// `flag`, the file and the process that holds it.
    pub fn try_exclusive(target: &Path, flag: &str) -> Result<FileLock> {
        Self::acquire(target, None).map_err(|e| match e {
            Acquire::Held(pid) => Error::invalid(format!(
                "{flag} {} is in use by another twolayer run{}: two runs writing one file would destroy each other's work; give this one its own file",
                target.display(),
                pid.map_or(String::new(), |p| format!(" (process {p})"))
            )),
            Acquire::Io(e) => Error::write(target, format!("cannot lock it ({e})")),
        })
    }

    /// Takes the lock of `target`, waiting up to `wait` for another
    /// process to release it.
    pub fn wait_exclusive(target: &Path, flag: &str, wait: Duration) -> Result<FileLock> {
        Self::acquire(target, Some(wait)).map_err(|e| match e {
            Acquire::Held(pid) => Error::invalid(format!(
                "{flag} {}: another twolayer run{} held it for over {} s",
                target.display(),
                pid.map_or(String::new(), |p| format!(" (process {p})")),
                wait.as_secs()
            )),
            Acquire::Io(e) => Error::write(target, format!("cannot lock it ({e})")),
        })
    }

    fn acquire(target: &Path, wait: Option<Duration>) -> std::result::Result<FileLock, Acquire> {
        let path = lock_path(target).map_err(|e| Acquire::Io(std::io::Error::other(e)))?;
        let start = Instant::now();
        loop {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(Acquire::Io)?;
            // SAFETY: flock on a descriptor this function owns.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                if !held_elsewhere(&e) {
                    return Err(Acquire::Io(e));
                }
                match wait {
                    Some(w) if start.elapsed() < w => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    _ => {
                        let pid = std::fs::read_to_string(&path)
                            .ok()
                            .and_then(|t| t.trim().parse::<u32>().ok());
                        return Err(Acquire::Held(pid));
                    }
                }
            }
            // Locked: but if the holder before removed the file as this
            // process opened it, the lock is on a file no longer there,
            // and another process may lock the new one. Try again.
            let same = match (file.metadata(), std::fs::symlink_metadata(&path)) {
                (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
                _ => false,
            };
            if !same {
                continue;
            }
            let mut lock = FileLock { path, file };
            let _ = lock.file.set_len(0);
            let _ = writeln!(lock.file, "{}", std::process::id());
            return Ok(lock);
        }
    }
}

enum Acquire {
    /// Another process holds it (its process id, when it wrote one).
    Held(Option<u32>),
    Io(std::io::Error),
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Removed while still held; the lock goes with the descriptor.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_the_next_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("c.ck");
        let a = FileLock::try_exclusive(&target, "--checkpoint").unwrap();
        // flock locks belong to the open file description: a second open
        // in this process conflicts as another process's would.
        let e = FileLock::try_exclusive(&target, "--checkpoint")
            .unwrap_err()
            .to_string();
        assert!(e.contains("in use by another twolayer run"), "{e}");
        assert!(
            e.contains(&format!("process {}", std::process::id())),
            "{e}"
        );
        drop(a);
        assert!(!dir.path().join(".c.ck.lock").exists());
        let b = FileLock::try_exclusive(&target, "--checkpoint").unwrap();
        // A waiter gets it once the holder lets go.
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(b);
        });
        FileLock::wait_exclusive(&target, "--wisdom", Duration::from_secs(10)).unwrap();
        t.join().unwrap();
    }
}
