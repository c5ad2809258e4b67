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

/// Checks, before any work is done, that a file can be written at `path`
/// the way [`write_atomic`] will write it, so that a run never does its
/// work and then loses it: the path is not a folder nor a link that
/// [`write_atomic`] would refuse, its folder exists, the temporary file
/// the write will create there (under the very name it will use) can be
/// created, and an existing file can be replaced — not immutable or
/// append-only (`chattr +i`, `+a`), not another user's in a folder with
/// the sticky bit (`/tmp`). Devices and FIFOs, written in place, and `-`
/// (standard output, when open) pass. Leaves nothing behind.
pub fn check_writable(path: &Path) -> Result<()> {
    // `-`: standard output, when it is open.
    if crate::input::is_stdio(path) {
        return check_stdout_open();
    }
    // A link refused at the end would be refused now.
    let resolved = link_target(path)?;
    let path = resolved.as_deref().unwrap_or(path);
    if path.is_dir() {
        return Err(Error::write(path, "it is a directory"));
    }
    match special_file(path) {
        Some(kind @ ("socket" | "block device")) => {
            return Err(Error::write(path, format!("it is a {kind}")));
        }
        // Written in place, through a temporary copy (no seeking).
        Some(_) => return Ok(()),
        None => {}
    }
    let dir = parent_dir(path);
    if !dir.is_dir() {
        return Err(Error::write(
            path,
            format!("folder {} does not exist", dir.display()),
        ));
    }
    let name = path
        .file_name()
        .ok_or_else(|| Error::write(path, "not a file name"))?;
    temp_sibling(dir, name)
        .map(drop)
        .map_err(|e| Error::write(path, e))?;
    if let Ok(existing) = std::fs::symlink_metadata(path) {
        if let Some(why) = cannot_replace(path, dir, &existing) {
            return Err(Error::write(path, why));
        }
    }
    Ok(())
}

/// Why an existing `file` in folder `dir` cannot be replaced by a rename,
/// when it cannot: its immutable or append-only attribute, or the sticky
/// bit of a folder that is not the caller's over a file that is not
/// either (rename(2) then fails with EPERM, for any user but root).
fn cannot_replace(path: &Path, dir: &Path, file: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    if let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
    {
        use std::os::fd::AsRawFd;
        let mut flags: libc::c_long = 0;
        // SAFETY: FS_IOC_GETFLAGS writes one long through the pointer.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
        const IMMUTABLE: libc::c_long = 0x10; // FS_IMMUTABLE_FL
        const APPEND_ONLY: libc::c_long = 0x20; // FS_APPEND_FL
        if r == 0 && flags & IMMUTABLE != 0 {
            return Some("it is immutable (chattr +i): it cannot be replaced; remove the attribute or write elsewhere".into());
        }
        if r == 0 && flags & APPEND_ONLY != 0 {
            return Some("it is append-only (chattr +a): it cannot be replaced; remove the attribute or write elsewhere".into());
        }
    }
    let folder = std::fs::metadata(dir).ok()?;
    // SAFETY: geteuid has no failure mode.
    let me = unsafe { libc::geteuid() };
    sticky_refuses(folder.mode(), folder.uid(), file.uid(), me).then(|| {
        format!(
            "it belongs to another user (uid {}) in {}, a folder with the sticky bit: only its owner can replace it; write elsewhere",
            file.uid(),
            dir.display()
        )
    })
}

/// Whether the sticky bit of a folder (`dir_mode`, owned by `dir_uid`)
/// stops user `me` from replacing a file owned by `file_uid` in it (root
/// may; so may the owner of the file or of the folder).
fn sticky_refuses(dir_mode: u32, dir_uid: u32, file_uid: u32, me: u32) -> bool {
    dir_mode & libc::S_ISVTX != 0 && me != 0 && me != file_uid && me != dir_uid
}

/// Checks, before any work is done, that `path` can be appended to (an
/// existing file: a regular one, opened for appending now; none yet: as
/// [`check_writable`], which creates it).
pub fn check_appendable(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop)
            .map_err(|e| Error::write(path, e)),
        Ok(_) => Err(Error::write(path, "not a regular file to append to")),
        Err(_) => check_writable(path),
    }
}

/// Checks, before any work is done, that files can be written in folder
/// `path` (made by the command when it does not exist yet: then its
/// nearest existing ancestor must take a new folder).
pub fn check_folder_writable(path: &Path) -> Result<()> {
    let mut at = path;
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => {
                at = Path::new(".");
                break;
            }
        }
    }
    if !at.is_dir() {
        return Err(Error::write(
            path,
            format!("{} is not a folder", at.display()),
        ));
    }
    tempfile::Builder::new()
        .prefix(".twolayer-check-")
        .tempdir_in(at)
        .map(drop)
        .map_err(|e| Error::write(path, e))
}

/// The prefix of the temporary files written on the way to `name`:
/// `.NAME.PID.`, NAME cut (at a character) so that the whole temporary
/// name, `.NAME.PID.XXXXXX.tmp`, fits the 255 bytes a file name may have
/// (before, a 240-character output name trained to the end and then
/// failed: "File name too long").
fn temp_prefix(name: &std::ffi::OsStr) -> String {
    let mut base = name.to_string_lossy().into_owned();
    // 255 − (two dots, up to 10 digits of pid, a dot, 6 random, ".tmp").
    const ROOM: usize = 255 - (2 + 10 + 1 + 6 + 4) - 1;
    while base.len() > ROOM {
        base.pop();
    }
    base
}

/// A new temporary file in `dir` for an output named `name`
/// (`.NAME.PID.XXXXXX.tmp`: see [`temp_prefix`]), created with O_EXCL.
fn temp_sibling(dir: &Path, name: &std::ffi::OsStr) -> std::io::Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(&format!(".{}.{}.", temp_prefix(name), std::process::id()))
        .suffix(".tmp")
        .tempfile_in(dir)
}

/// Where the result of a run goes when the output asked for failed at
/// the end (the disk filled during the run, the device went away):
/// `twolayer-rescue-PID-WHAT.EXT` in the temporary folder (`$TMPDIR`),
/// else the current folder, else `$HOME`, the first that takes it. `write`
/// writes the file at the path it is given. `None` when none took it.
pub fn rescue(
    what: &str,
    ext: &str,
    write: impl Fn(&Path) -> Result<()>,
) -> Option<std::path::PathBuf> {
    let name = format!("twolayer-rescue-{}-{what}.{ext}", std::process::id());
    let mut dirs = vec![std::env::temp_dir()];
    dirs.extend(std::env::current_dir().ok());
    dirs.extend(std::env::var_os("HOME").map(std::path::PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(&name))
        .find(|p| write(p).is_ok())
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
    if crate::input::is_stdio(path) {
        return write_stdout(write);
    }
    let resolved;
    let path = match link_target(path)? {
        Some(target) => {
            resolved = target;
            resolved.as_path()
        }
        None => path,
    };
    if let Some(kind) = special_file(path) {
        if kind == "socket" || kind == "block device" {
            return Err(Error::write(path, format!("it is a {kind}")));
        }
        // Through a temporary copy: a writer that seeks (a `.npz`'s) then
        // works on a FIFO or a pipe too (before: "Illegal seek" after the
        // whole run), and a failed write sends nothing.
        return write_via_copy(write, || open_special_for_writing(path))
            .map_err(|e| Error::write(path, e));
    }
    replace_regular(path, |f| {
        let mut w = BufWriter::new(f);
        write(&mut w)?;
        w.flush()
    })
    .map(drop)
}

/// The regular file an output that is updated in place (a checkpoint)
/// is written to: `path`, or with `--follow-links` the file a link at
/// `path` resolves to. Standard output, devices, FIFOs and sockets are
/// refused: such an output is appended to between writes, which only a
/// regular file allows.
pub fn regular_target(path: &Path) -> Result<std::path::PathBuf> {
    if crate::input::is_stdio(path) {
        return Err(Error::write(
            path,
            "standard output cannot hold a file that is updated in place",
        ));
    }
    let target = link_target(path)?.unwrap_or_else(|| path.to_path_buf());
    if let Some(kind) = special_file(&target) {
        return Err(Error::write(
            &target,
            format!("it is a {kind}, not a regular file"),
        ));
    }
    Ok(target)
}

/// Writes a regular file at `path` (no link, device or `-`: the caller
/// has resolved those) atomically, as [`write_atomic`] does, with `fill`
/// given the temporary file itself (it may seek and write at offsets), and
/// returns the file, open for reading and writing under its final name: a
/// checkpoint goes on appending to the file it wrote whole once.
pub fn replace_regular(
    path: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<File> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| Error::write(path, "not a file name"))?;
    // The mode the file had, or the usual 0644 for a new one.
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    let result = (|| -> std::io::Result<File> {
        // `.NAME.PID.XXXXXX.tmp`: the writer's process id in the name, so
        // that a later writer removes only the temporary files of writers
        // that are gone, never one another process is still filling.
        let mut tmp = temp_sibling(dir, name)?;
        fill(tmp.as_file_mut())?;
        let f = tmp.as_file();
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        tmp.persist(path).map_err(|e| e.error)
    })();
    let file = result.map_err(|e| Error::write(path, e))?;
    remove_stale_temps(dir, &temp_prefix(name), path);
    // Make the rename itself durable. Some filesystems refuse to fsync a
    // directory; the data is written either way.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(file)
}

/// [`write_atomic`] to `-`, standard output: written whole to an unnamed
/// temporary file first (a `.npz` writer seeks; a failed write then sends
/// nothing), then copied to standard output.
fn write_stdout(
    write: impl FnOnce(&mut BufWriter<&mut File>) -> std::io::Result<()>,
) -> Result<()> {
    check_stdout_open()?;
    let name = Path::new("<standard output>");
    write_via_copy(write, || Ok(std::io::stdout().lock())).map_err(|e| Error::write(name, e))
}

/// Writes through an unnamed temporary file: `write` fills it (and may
/// seek), then it is copied to what `open` opens — only once it is whole.
fn write_via_copy<W: Write>(
    write: impl FnOnce(&mut BufWriter<&mut File>) -> std::io::Result<()>,
    open: impl FnOnce() -> std::io::Result<W>,
) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut tmp = tempfile::tempfile()?;
    {
        let mut w = BufWriter::new(&mut tmp);
        write(&mut w)?;
        w.flush()?;
    }
    tmp.seek(SeekFrom::Start(0))?;
    let mut out = open()?;
    std::io::copy(&mut tmp, &mut out)?;
    out.flush()
}

/// Whether standard output was closed (`>&-`) when the process started.
/// Rust's runtime reopens a closed descriptor 0, 1 or 2 on /dev/null before
/// `main` (so that no file opened later takes its number), after which a
/// closed stdout cannot be told from `> /dev/null`; this is recorded by a
/// constructor that runs before the runtime does.
static STDOUT_CLOSED_AT_START: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static RECORD_STDOUT_AT_START: extern "C" fn() = {
    extern "C" fn record() {
        // SAFETY: F_GETFD only reads a descriptor's flags; -1 (EBADF)
        // means descriptor 1 is not open.
        if unsafe { libc::fcntl(1, libc::F_GETFD) } == -1 {
            STDOUT_CLOSED_AT_START.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    record
};

/// Whether standard output was closed when the process started (see
/// [`check_stdout_open`]).
pub fn stdout_closed_at_start() -> bool {
    STDOUT_CLOSED_AT_START.load(std::sync::atomic::Ordering::Relaxed)
}

/// Fails when standard output is closed (`>&-`): Rust's runtime then
/// points it at /dev/null, so an output sent there would be lost with exit
/// status 0.
pub fn check_stdout_open() -> Result<()> {
    // SAFETY: F_GETFD on a descriptor number only reads its flags; -1
    // (EBADF) means no such descriptor is open.
    if stdout_closed_at_start() || unsafe { libc::fcntl(1, libc::F_GETFD) } == -1 {
        return Err(Error::write(
            Path::new("-"),
            "standard output is closed: nothing written there would arrive",
        ));
    }
    Ok(())
}

/// Whether outputs that are symbolic links may be written through
/// (`--follow-links`).
static FOLLOW_LINKS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lets [`write_atomic`] write through symbolic links from now on (the
/// binary's `--follow-links`).
pub fn set_follow_links(yes: bool) {
    FOLLOW_LINKS.store(yes, std::sync::atomic::Ordering::Relaxed);
}

/// Where an output at `path` goes when `path` is a symbolic link: renaming
/// a new file over the name would replace the link itself (`--losses
/// /dev/stdout` while stdout is a file replaced the system's /dev/stdout),
/// so a link to a regular file (or to nothing) is refused, unless links
/// may be followed: then the file it resolves to is written atomically, the
/// link kept. `None`: not a link, or a link to a device or FIFO (written
/// in place, through it).
fn link_target(path: &Path) -> Result<Option<std::path::PathBuf>> {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    // A link to a device or FIFO (`/dev/stdout` on a terminal or a pipe)
    // is written in place, through the link, with no rename: safe.
    if !is_link || special_file(path).is_some() {
        return Ok(None);
    }
    let target = std::fs::canonicalize(path).map_err(|e| {
        Error::write(
            path,
            format!("it is a symbolic link that leads nowhere ({e})"),
        )
    })?;
    if FOLLOW_LINKS.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(Some(target));
    }
    Err(Error::write(
        path,
        format!(
            "it is a symbolic link (to {}); writing would replace the link: give that path, or pass --follow-links to write through it",
            target.display()
        ),
    ))
}

/// How long a write to a FIFO waits for a process to open it for reading.
const FIFO_READER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens a device or FIFO for writing without blocking in open(2): a FIFO
/// that no process reads fails after [`FIFO_READER_WAIT`] (ENXIO, said in
/// words) instead of waiting for a reader for ever, deaf to Ctrl-C and
/// SIGTERM. Once open, writes block as usual (a reader that is there
/// drains them).
fn open_special_for_writing(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // A reader that is about to open the FIFO gets a few seconds to do so.
    let deadline = std::time::Instant::now() + FIFO_READER_WAIT;
    let f = loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => break f,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                if std::time::Instant::now() >= deadline {
                    return Err(std::io::Error::other(format!(
                        "it is a FIFO that no process read within {} s",
                        FIFO_READER_WAIT.as_secs()
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    };
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function owns; clears O_NONBLOCK.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(f)
}

/// Removes the temporary files that writes to `path` killed midway left
/// behind (`.NAME.PID.XXXXXX.tmp`): regular files only, never links, only
/// those owned by whoever owns the file just written, and only those whose
/// writer process no longer runs (two processes writing the same output at
/// once each keep their own temporary file until they rename it; the one
/// that renames last wins, whole).
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
        let Some(pid) = temp_writer(&n, &prefix) else {
            continue;
        };
        let stale = !process_runs(pid)
            && std::fs::symlink_metadata(e.path())
                .is_ok_and(|m| m.file_type().is_file() && m.uid() == owner);
        if stale {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The writer's process id in a temporary file's name
/// `PREFIX` `PID.XXXXXX.tmp`, or `None` when the name is not one.
fn temp_writer(file_name: &str, prefix: &str) -> Option<u32> {
    let rest = file_name.strip_prefix(prefix)?.strip_suffix(".tmp")?;
    let (pid, random) = rest.split_once('.')?;
    (random.len() == 6 && !random.contains('.'))
        .then(|| pid.parse().ok())
        .flatten()
}

/// Whether process `pid` runs on this machine (kill(pid, 0): it exists,
/// whether or not this process may signal it).
pub fn process_runs(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
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

/// Whether `a` and `b` are the same existing file (same device and inode,
/// links followed).
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => false,
    }
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
    let stdio = crate::input::is_stdio;
    for (i, &(fa, pa, out_a)) in all.iter().enumerate() {
        for &(fb, pb, out_b) in &all[i + 1..] {
            if !(out_a || out_b) {
                continue;
            }
            // `-` is standard input for an input, standard output for an
            // output: the same only for two outputs.
            if stdio(pa) || stdio(pb) {
                if out_a && out_b && stdio(pa) && stdio(pb) {
                    return Err(Error::write(
                        pb,
                        format!("{fb} and {fa} both name standard output (-); give one a file"),
                    ));
                }
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

    /// A process id that runs no process now: one past the kernel's
    /// largest (`/proc/sys/kernel/pid_max`).
    fn dead_pid() -> u32 {
        let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4_194_304);
        assert!(!process_runs(max + 1));
        max + 1
    }

    #[test]
    fn a_write_removes_the_temporary_files_killed_writes_left_but_not_links() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let dead = dead_pid();
        let other = d.join("other");
        std::fs::write(&other, "keep").unwrap();
        let stale = d.join(format!(".out.txt.{dead}.AbC123.tmp"));
        std::fs::write(&stale, "stale").unwrap();
        let link = d.join(format!(".out.txt.{dead}.XyZ789.tmp"));
        std::os::unix::fs::symlink(&other, &link).unwrap();
        let another = d.join(format!(".another.txt.{dead}.AbC123.tmp"));
        std::fs::write(&another, "not ours").unwrap();
        write_atomic(&d.join("out.txt"), |w| w.write_all(b"new")).unwrap();
        assert!(!stale.exists());
        assert!(std::fs::symlink_metadata(&link).is_ok());
        assert!(another.exists());
        assert_eq!(std::fs::read_to_string(&other).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(d.join("out.txt")).unwrap(), "new");
    }

    #[test]
    fn a_write_leaves_alone_the_temporary_file_a_running_writer_fills() {
        // Two processes writing the same output: the first to finish must
        // not remove the other's temporary file (it then died with ENOENT
        // at its rename). A running process's id in the name: this one's,
        // and pid 1's.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut live = Vec::new();
        for pid in [std::process::id(), 1] {
            let p = d.join(format!(".out.txt.{pid}.QwE456.tmp"));
            std::fs::write(&p, "half written").unwrap();
            live.push(p);
        }
        write_atomic(&d.join("out.txt"), |w| w.write_all(b"new")).unwrap();
        for p in &live {
            assert!(p.exists(), "{} was removed", p.display());
        }
        assert_eq!(temp_writer(".out.txt.77.QwE456.tmp", ".out.txt."), Some(77));
        assert_eq!(temp_writer(".out.txt.QwE456.tmp", ".out.txt."), None);
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
