//! Which OpenBLAS runs, and that everything says so.
//!
//! scripts/test.sh runs the suite twice: on the library built for this CPU
//! (linked with an rpath to its cache folder) with
//! `TWOLAYER_EXPECT_BLAS=native`, and on Debian's generic one (the same
//! binaries, through `LD_LIBRARY_PATH`) with `TWOLAYER_EXPECT_BLAS=generic`.
//! Where set, the variable must match what the loader took; a machine with
//! no native build (setup fell back) runs with it set to `generic`.

mod common;

use twolayer::blas::{Library, LINKED_FROM};

#[test]
fn the_library_that_runs_is_the_one_expected_and_describes_itself() {
    let lib = Library::current();
    assert!(
        std::path::Path::new(&lib.path).exists(),
        "loaded from {}",
        lib.path
    );
    assert!(
        lib.version
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit()),
        "{lib:?}"
    );
    assert_eq!(lib.native, lib.target != "DYNAMIC_ARCH", "{lib:?}");
    assert!(
        lib.config_mentions_target(),
        "{lib:?} against {}",
        twolayer::blas::config()
    );
    match std::env::var("TWOLAYER_EXPECT_BLAS").as_deref() {
        Ok("native") => {
            assert!(lib.native, "expected the native build, ran {lib:?}");
            // The build's own folder, found through the rpath build.rs set.
            assert!(
                LINKED_FROM != "system" && lib.path.starts_with(LINKED_FROM),
                "linked from {LINKED_FROM}, loaded {}",
                lib.path
            );
            assert!(lib.bf16_gemm, "a native build has cblas_sbgemm: {lib:?}");
        }
        Ok("generic") => assert!(!lib.native, "expected a generic build, ran {lib:?}"),
        Ok(other) => panic!("TWOLAYER_EXPECT_BLAS={other}: expected native or generic"),
        Err(_) => {}
    }
}

#[test]
fn info_train_and_reports_name_the_library() {
    let lib = Library::current();
    // `info --json`: the same library as this test process (same binary
    // folder, same rpath, same environment).
    let o = common::bin().args(["info", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let got: Library = serde_json::from_value(j["env"]["openblas_library"].clone()).unwrap();
    assert_eq!(got, lib);
    // The train summary names version and build.
    let o = common::bin()
        .args(["train", "--steps", "2", "-q"])
        .output()
        .unwrap();
    let e = common::stderr(&o);
    assert!(o.status.success(), "{e}");
    let named = if lib.native {
        format!("kernels of OpenBLAS {} native {}", lib.version, lib.target)
    } else {
        format!("kernels of OpenBLAS {} generic", lib.version)
    };
    assert!(e.contains(&named), "{e}");
    // `info` in text says native or generic and whether bf16 GEMM is there.
    let o = common::bin().args(["info"]).output().unwrap();
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains(&lib.describe()), "{text}");
}
