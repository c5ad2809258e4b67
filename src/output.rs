//! Output files that are never left half-written: everything is written to a
//! temporary file in the destination's folder, flushed to disk, and renamed
//! over the final name in one step; then the folder itself is synced so the
//! rename survives a crash.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The folder a file at `path` lives in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Checks, before any work is done, that a file can be written at `path`:
/// the path is not a folder, its folder exists, and a file can be created
/// there. Leaves nothing behind.
pub fn check_writable(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::write(path, "it is a directory"));
    }
    let dir = parent_dir(path);
    if !dir.is_dir() {
        return Err(Error::write(
            path,
            format!("folder {} does not exist", dir.display()),
        ));
    }
    tempfile::Builder::new()
        .prefix(".twolayer-check-")
        .tempfile_in(dir)
        .map(drop)
        .map_err(|e| Error::write(path, e))
}

/// Writes a file at `path` atomically: `write` fills a buffered temporary
/// file in the same folder, created under an unpredictable name
/// (`.NAME.XXXXXX.tmp`, with O_EXCL, so a file or link planted under the
/// name cannot be followed); only when `write` succeeds is the file synced
/// and renamed to `path`, and the folder synced so the rename survives a
/// crash. On any error the final name is untouched and the temporary file
/// removed.
///
/// A `path` that is a character device, a FIFO or a socket (`/dev/null`,
/// `/dev/stdout`, a named pipe) is not replaced by a regular file: devices
/// and FIFOs are written in place, without a rename, and their write
/// errors reported (`/dev/full`: no space left); sockets and block devices
/// are refused.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<&mut File>) -> std::io::Result<()>,
) -> Result<()> {
    if let Some(kind) = special_file(path) {
        if kind == "socket" || kind == "block device" {
            return Err(Error::write(path, format!("it is a {kind}")));
        }
        let result = (|| -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
            let mut w = BufWriter::new(&mut f);
            write(&mut w)?;
            w.flush()
        })();
        return result.map_err(|e| Error::write(path, e));
    }
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| Error::write(path, "not a file name"))?;
    // The mode the file had, or the usual 0644 for a new one.
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    let result = (|| -> std::io::Result<()> {
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".tmp")
            .tempfile_in(dir)?;
        {
            let mut w = BufWriter::new(tmp.as_file_mut());
            write(&mut w)?;
            w.flush()?;
        }
        let f = tmp.as_file();
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        tmp.persist(path).map(drop).map_err(|e| e.error)
    })();
    if let Err(e) = result {
        return Err(Error::write(path, e));
    }
    remove_stale_temps(dir, &name.to_string_lossy(), path);
    // Make the rename itself durable. Some filesystems refuse to fsync a
    // directory; the data is written either way.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Removes the temporary files that writes to `path` killed midway left
/// behind (`.NAME.XXXXXX.tmp`): regular files only, never links, and only
/// those owned by whoever owns the file just written.
fn remove_stale_temps(dir: &Path, name: &str, path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(owner) = std::fs::metadata(path).map(|m| m.uid()) else {
        return;
    };
    let prefix = format!(".{name}.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let stale = n.len() == prefix.len() + 6 + 4
            && n.starts_with(&prefix)
            && n.ends_with(".tmp")
            && std::fs::symlink_metadata(e.path())
                .is_ok_and(|m| m.file_type().is_file() && m.uid() == owner);
        if stale {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// What kind of special file `path` is (following links), or `None` for a
/// regular file, a folder or nothing.
pub fn special_file(path: &Path) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let t = std::fs::metadata(path).ok()?.file_type();
    if t.is_char_device() {
        Some("character device")
    } else if t.is_block_device() {
        Some("block device")
    } else if t.is_fifo() {
        Some("FIFO")
    } else if t.is_socket() {
        Some("socket")
    } else {
        None
    }
}

/// Writes `losses` as `t loss` lines (t from `first_step`), each loss with
/// the shortest decimal form that reads back to the same f64.
pub fn write_losses(path: &Path, first_step: usize, losses: &[f64]) -> Result<()> {
    write_atomic(path, |w| {
        for (i, l) in losses.iter().enumerate() {
            writeln!(w, "{} {:?}", first_step + i, l)?;
        }
        Ok(())
    })
}

/// Fails when two of the files a run reads and writes are the same file:
/// an output that would overwrite an input (`--init d.npz --checkpoint
/// d.npz`) or another output (`--save P --losses P`). `inputs` and
/// `outputs` are (flag, path) pairs. Files are the same when they are the
/// same inode (links and other spellings included) or, for outputs not yet
/// written, the same folder and name. Character devices and FIFOs
/// (`/dev/null` twice) are written in place and may repeat.
pub fn check_distinct(inputs: &[(&str, &Path)], outputs: &[(&str, &Path)]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    #[derive(PartialEq)]
    enum Id {
        Inode(u64, u64),
        Path(std::path::PathBuf),
    }
    let id = |p: &Path| -> Option<Id> {
        if special_file(p).is_some() {
            return None;
        }
        if let Ok(m) = std::fs::metadata(p) {
            return Some(Id::Inode(m.dev(), m.ino()));
        }
        let dir = std::fs::canonicalize(parent_dir(p)).ok()?;
        Some(Id::Path(dir.join(p.file_name()?)))
    };
    let all: Vec<(&str, &Path, bool)> = inputs
        .iter()
        .map(|&(f, p)| (f, p, false))
        .chain(outputs.iter().map(|&(f, p)| (f, p, true)))
        .collect();
    for (i, &(fa, pa, out_a)) in all.iter().enumerate() {
        for &(fb, pb, out_b) in &all[i + 1..] {
            if !(out_a || out_b) {
                continue;
            }
            if let (Some(a), Some(b)) = (id(pa), id(pb)) {
                if a == b {
                    let what = if out_a && out_b {
                        "one would overwrite the other"
                    } else {
                        "writing it would destroy the input"
                    };
                    return Err(Error::write(
                        pb,
                        format!(
                            "{fb} names the same file as {fa} ({}): {what}; give each its own file",
                            pa.display()
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.txt");
        let r = write_atomic(&p, |w| {
            w.write_all(b"half")?;
            Err(std::io::Error::other("boom"))
        });
        assert!(r.unwrap_err().to_string().contains("boom"));
        assert!(!p.exists());
        // The temporary file is gone too.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_write_removes_the_temporary_files_killed_writes_left_but_not_links() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let other = d.join("other");
        std::fs::write(&other, "keep").unwrap();
        std::fs::write(d.join(".out.txt.AbC123.tmp"), "stale").unwrap();
        std::os::unix::fs::symlink(&other, d.join(".out.txt.XyZ789.tmp")).unwrap();
        std::fs::write(d.join(".another.txt.AbC123.tmp"), "not ours").unwrap();
        write_atomic(&d.join("out.txt"), |w| w.write_all(b"new")).unwrap();
        assert!(!d.join(".out.txt.AbC123.tmp").exists());
        assert!(std::fs::symlink_metadata(d.join(".out.txt.XyZ789.tmp")).is_ok());
        assert!(d.join(".another.txt.AbC123.tmp").exists());
        assert_eq!(std::fs::read_to_string(&other).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(d.join("out.txt")).unwrap(), "new");
    }

    #[test]
    fn losses_round_trip_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.txt");
        let losses = [31386536.04936389, 1e-30, 0.1 + 0.2, 7.0];
        write_losses(&p, 0, &losses).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let back: Vec<f64> = text
            .lines()
            .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
            .collect();
        assert_eq!(back, losses);
        assert!(text.starts_with("0 31386536.04936389\n"));
    }

    #[test]
    fn unwritable_targets_are_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_writable(dir.path()).is_err());
        let e = check_writable(&dir.path().join("nope/x.npz")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(check_writable(&dir.path().join("ok.npz")).is_ok());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
