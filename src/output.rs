//! Output files that are never left half-written: everything is written to a
//! temporary file in the destination's folder, flushed to disk, and renamed
//! over the final name in one step; then the folder itself is synced so the
//! rename survives a crash.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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
/// file `.NAME.tmp` in the same folder; only when it succeeds is the file
/// synced and renamed to `path`, and the folder synced so the rename
/// survives a crash. On any error the final name is untouched and the
/// temporary file removed. A process killed mid-write leaves at most that
/// one `.NAME.tmp`, which the next write to `path` replaces.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<&mut File>) -> std::io::Result<()>,
) -> Result<()> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| Error::write(path, "not a file name"))?;
    let tmp_path = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    // The mode the file had, or the usual 0644 for a new one.
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp_path)?;
        {
            let mut w = BufWriter::new(&mut f);
            write(&mut w)?;
            w.flush()?;
        }
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp_path, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp_path);
        return Err(Error::write(path, e));
    }
    // Make the rename itself durable. Some filesystems refuse to fsync a
    // directory; the data is written either way.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
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
