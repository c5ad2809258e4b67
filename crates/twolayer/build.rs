//! Records what a report must say about the build — the compiler's version
//! and the git commit the binary was built from — and makes the binaries
//! find the OpenBLAS they were linked against at run time. The build
//! script of both packages of the workspace: the library's (its tests and
//! doctests) and the command line's (the program, the suite, the benches).
//!
//! openblas-src (feature `system`) asks pkg-config for `openblas`; when
//! scripts/setup.sh has built OpenBLAS for this CPU, `.cargo/config.toml`
//! points `PKG_CONFIG_PATH` at that library's cache folder. Linking is not
//! enough there: the loader would still find Debian's `libopenblas.so.0`
//! first. So every binary of this package (the program, tests, benches,
//! examples) gets an rpath to the folder pkg-config named, unless it is a
//! system folder the loader searches anyway. `LD_LIBRARY_PATH` still wins
//! over it, which is how the suite runs the same binaries on Debian's
//! library (scripts/test.sh).

use std::process::Command;

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = output(&rustc, &["--version"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=TWOLAYER_RUSTC_VERSION={version}");

    let commit = match output("git", &["rev-parse", "--short=12", "HEAD"]) {
        Some(c) => {
            let dirty = output("git", &["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c}-dirty")
            } else {
                c
            }
        }
        None => "unknown".into(),
    };
    println!("cargo:rustc-env=TWOLAYER_GIT_COMMIT={commit}");
    // Run from either package's folder (this script builds both the
    // library and the command line), so the git folder is asked for.
    if let Some(git) = output("git", &["rev-parse", "--absolute-git-dir"]) {
        for f in ["HEAD", "index", "refs"] {
            let path = std::path::Path::new(&git).join(f);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=crates/twolayer/build.rs");

    // Same query as openblas-src's, without its link lines (it emits those).
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    let mut linked = String::from("system");
    if let Ok(lib) = pkg_config::Config::new()
        .cargo_metadata(false)
        .env_metadata(false)
        .probe("openblas")
    {
        for dir in lib.link_paths {
            let system = dir.starts_with("/usr/lib") || dir.starts_with("/lib");
            if !system {
                println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
                linked = dir.display().to_string();
            }
        }
    }
    // The folder linked against (or `system`), for `twolayer info`.
    println!("cargo:rustc-env=TWOLAYER_BLAS_LINKED={linked}");
}
