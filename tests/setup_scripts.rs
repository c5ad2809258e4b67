//! The set-up scripts (scripts/build-openblas.sh, scripts/setup.sh) under
//! attack (issue 35, class 7), run against stand-ins for apt, dpkg, the
//! compilers and cargo in a private cache, so nothing here installs,
//! downloads or builds anything and the machine's own cache is never
//! touched:
//! - a cached build is trusted only when its library matches the checksum
//!   recorded when it was built;
//! - a killed build's folder is swept;
//! - packages install under the set-up lock;
//! - a Debian patch that does not apply stops the build (`set -e` is off
//!   inside `( … ) || …`, so every step must say how it fails);
//! - a failed `apt-get source` ends with the one line the script promises.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Stand-ins for the programs the scripts call. Each logs its arguments to
/// `$STUB_LOG`; what they do is set by `STUB_*` variables.
const STUBS: &[(&str, &str)] = &[
    (
        "apt-get",
        r#"echo "apt-get $*" >>"$STUB_LOG"
case " $* " in
  *" install "*)
    # Is the set-up lock held while packages install?
    if flock -n "$TWOLAYER_CACHE/apt.lock" true; then echo "install unlocked" >>"$STUB_LOG";
    else echo "install locked" >>"$STUB_LOG"; fi ;;
  *" source "*)
    [ "${STUB_SOURCE:-fail}" = ok ] || exit 100
    # Debian's two archives (plain tar: GNU tar reads them whatever the name).
    t=$(mktemp -d)
    mkdir -p "$t/openblas-0.3.34/exports" "$t/debian/patches"
    echo "all:" >"$t/openblas-0.3.34/Makefile"
    echo "x" >"$t/openblas-0.3.34/exports/Makefile"
    printf '# Debian patches\nbad.patch\n' >"$t/debian/patches/series"
    echo "not a patch" >"$t/debian/patches/bad.patch"
    tar -cf "openblas_0.3.34+ds.orig.tar.xz" -C "$t" openblas-0.3.34
    tar -cf "openblas_0.3.34+ds-1.debian.tar.xz" -C "$t" debian
    rm -rf "$t" ;;
esac
exit 0"#,
    ),
    (
        "apt-cache",
        r#"echo "apt-cache $*" >>"$STUB_LOG"
case " $* " in *" showsrc openblas "*) printf 'Package: openblas\nVersion: 0.3.34+ds-1\n' ;; esac"#,
    ),
    (
        "dpkg",
        r#"echo "dpkg $*" >>"$STUB_LOG"
[ "${STUB_DPKG:-installed}" = installed ]"#,
    ),
    ("gfortran", r#"echo "gfortran $*" >>"$STUB_LOG""#),
    ("make", r#"echo "make $*" >>"$STUB_LOG"; exit 1"#),
    ("patch", r#"echo "patch $*" >>"$STUB_LOG"; exit 1"#),
    ("xz", r#"echo "xz $*" >>"$STUB_LOG""#),
    ("sudo", r#"exec "$@""#),
    ("cargo", r#"echo "cargo $*" >>"$STUB_LOG""#),
    ("pkg-config", r#"exit 0"#),
];

/// A private world: stubs first on PATH, a cache, a log.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for (name, body) in STUBS {
            let p = bin.join(name);
            std::fs::write(&p, format!("#!/usr/bin/env bash\n{body}\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::create_dir(dir.path().join("cache")).unwrap();
        World { dir }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Runs `script` with the stubs and the private cache.
    fn run(&self, script: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = Command::new("bash");
        c.arg(script)
            .args(args)
            .env("PATH", path)
            .env("TWOLAYER_CACHE", self.cache())
            .env("STUB_LOG", self.dir.path().join("log"))
            .env_remove("TWOLAYER_BLAS");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    fn build(&self, env: &[(&str, &str)]) -> Output {
        self.run(
            &common::root().join("scripts/build-openblas.sh"),
            &["--target", "HASWELL"],
            env,
        )
    }

    /// A finished build of 0.3.34 for HASWELL in the cache, as the script
    /// leaves one: `done`, the library, its recorded checksum.
    fn cached_build(&self) -> PathBuf {
        self.cached_build_for("HASWELL")
    }

    /// The same for `target`.
    fn cached_build_for(&self, target: &str) -> PathBuf {
        let dest = self.cache().join(format!("openblas-0.3.34-{target}"));
        let lib = dest.join("lib");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("libopenblas.so.0"), b"a library").unwrap();
        let sum = Command::new("sha256sum")
            .arg("libopenblas.so.0")
            .current_dir(&lib)
            .output()
            .unwrap();
        std::fs::write(lib.join("libopenblas.so.0.sha256"), sum.stdout).unwrap();
        std::fs::write(dest.join("done"), format!("0.3.34+ds-1 {target}\n")).unwrap();
        dest
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The script's last line on stderr: the one that says why it stopped.
fn last_line(o: &Output) -> String {
    text(&o.stderr).lines().last().unwrap_or("").to_string()
}

#[test]
fn a_cached_build_is_used_only_when_its_library_matches_its_checksum() {
    let w = World::new();
    let dest = w.cached_build();
    let o = w.build(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), dest.to_str().unwrap());
    assert!(!w.log().contains(" source "), "{}", w.log());

    // The library damaged: not trusted, built again (the download fails
    // here, and says so in one line).
    std::fs::write(dest.join("lib/libopenblas.so.0"), b"a library, damaged").unwrap();
    let o = w.build(&[("STUB_SOURCE", "fail")]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(
        err.contains("no library matching a recorded checksum"),
        "{err}"
    );
    assert!(w.log().contains(" source "), "{}", w.log());
    assert!(
        last_line(&o).starts_with("build-openblas: cannot download Debian's OpenBLAS"),
        "{err}"
    );
    assert!(text(&o.stdout).is_empty(), "no folder is offered");

    // A build marked done without a recorded checksum is not trusted either.
    std::fs::remove_file(dest.join("lib/libopenblas.so.0.sha256")).unwrap();
    let o = w.build(&[("STUB_SOURCE", "fail")]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stderr));
}

#[test]
fn a_killed_builds_folder_is_swept_and_a_failed_download_leaves_none() {
    let w = World::new();
    w.cached_build();
    let stale = w.cache().join("build.Ab3dE9");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("half.o"), b"x").unwrap();
    let o = w.build(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(!stale.exists(), "a killed build's folder is left behind");

    // A build that fails removes its own folder.
    std::fs::remove_dir_all(w.cache().join("openblas-0.3.34-HASWELL")).unwrap();
    let o = w.build(&[("STUB_SOURCE", "fail")]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stderr));
    let left: Vec<_> = std::fs::read_dir(w.cache())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("build."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_debian_patch_that_does_not_apply_stops_the_build() {
    let w = World::new();
    let o = w.build(&[("STUB_SOURCE", "ok")]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(5), "{err}");
    assert!(
        err.contains("build-openblas: Debian's patch bad.patch does not apply"),
        "{err}"
    );
    assert!(
        last_line(&o).starts_with("build-openblas: the build failed"),
        "{err}"
    );
    // Nothing after the failed patch ran: no make, no library offered.
    assert!(w.log().contains("patch -p1"), "{}", w.log());
    assert!(!w.log().contains("make "), "{}", w.log());
    assert!(text(&o.stdout).is_empty());
    assert!(!w.cache().join("openblas-0.3.34-HASWELL").exists());
}

#[test]
fn packages_install_under_the_set_up_lock() {
    // build-openblas.sh: liblapack-dev "missing".
    let w = World::new();
    w.cached_build();
    let o = w.build(&[("STUB_DPKG", "missing")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let log = w.log();
    assert!(log.contains("install locked"), "{log}");
    assert!(!log.contains("install unlocked"), "{log}");

    // setup.sh, from a copy of the scripts (it writes .cargo/config.toml
    // beside them and runs cargo, a stub here): libopenblas-dev "missing",
    // and the native build for this CPU's target in the cache.
    let w = World::new();
    let target = w.run(
        &common::root().join("scripts/build-openblas.sh"),
        &["--print-target"],
        &[],
    );
    if target.status.code() == Some(3) {
        // No native target on this CPU (no AVX2): setup keeps Debian's
        // library, and says so; the lock is what is tested.
        eprintln!("{}", text(&target.stderr));
    }
    let target = text(&target.stdout).trim().to_string();
    let dest = w.cached_build_for(if target.is_empty() { "NONE" } else { &target });
    let repo = w.dir.path().join("repo");
    std::fs::create_dir_all(repo.join("scripts")).unwrap();
    for f in ["setup.sh", "build-openblas.sh", "requirements.txt"] {
        std::fs::copy(
            common::root().join("scripts").join(f),
            repo.join("scripts").join(f),
        )
        .unwrap();
    }
    let o = w.run(
        &repo.join("scripts/setup.sh"),
        &[],
        &[("STUB_DPKG", "missing")],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let log = w.log();
    assert!(log.contains("install locked"), "{log}");
    assert!(!log.contains("install unlocked"), "{log}");
    assert!(log.contains("cargo build --release"), "{log}");
    let config = std::fs::read_to_string(repo.join(".cargo/config.toml")).unwrap();
    if target.is_empty() {
        assert!(config.contains("Debian's generic OpenBLAS"), "{config}");
    } else {
        assert!(
            config.contains(&format!("{}/lib/pkgconfig", dest.display())),
            "{config}"
        );
    }
}
