//! The fuzzers' seed corpus (fuzz/corpus) through the readers in CI: every
//! seed reads, and thousands of corrupted variants of each (bit flips,
//! truncations, overwritten lengths) end in an error or a value — never a
//! panic or an allocation a header merely claims. The long coverage-guided
//! runs are `cargo fuzz run` (docs/fuzzing.md).

use std::io::Cursor;
use std::path::{Path, PathBuf};
use twolayer::checkpoint::AnyCheckpoint;
use twolayer::npz::load_init_from;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    assert!(v.len() >= 2, "seed corpus missing in {}", dir.display());
    v
}

/// Deterministic corruptions of `b`.
fn variants(b: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    let flips = (0..b.len() * 8).step_by(3).map(move |bit| {
        let mut v = b.to_vec();
        v[bit / 8] ^= 1 << (bit % 8);
        v
    });
    let cuts = (0..b.len()).step_by(5).map(move |n| b[..n].to_vec());
    let huge = (0..b.len().saturating_sub(8)).step_by(11).map(move |i| {
        let mut v = b.to_vec();
        v[i..i + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        v
    });
    flips.chain(cuts).chain(huge)
}

#[test]
fn npz_seeds_read_and_corruptions_never_panic() {
    for (p, b) in corpus("npz_reader") {
        // `regression-*` files are inputs the fuzzer once crashed the reader
        // with: they must now be refused cleanly. The others are valid.
        let r = load_init_from(Cursor::new(&b), &p);
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("regression-")
        {
            assert!(r.is_err(), "{} was accepted", p.display());
        } else {
            r.unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
        let mut n = 0;
        for v in variants(&b) {
            let _ = load_init_from(Cursor::new(&v), &p);
            n += 1;
        }
        assert!(n > 1000);
    }
}

#[test]
fn checkpoint_seeds_read_and_corruptions_are_refused() {
    for (p, b) in corpus("checkpoint_reader") {
        AnyCheckpoint::from_bytes(&b).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        for v in variants(&b) {
            // The checksum covers every byte: no corruption gets through.
            assert!(AnyCheckpoint::from_bytes(&v).is_err());
        }
    }
}

#[test]
fn every_path_reads_a_header_one_way() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/npz_reader");
    // A key given twice is refused, by the whole-file reader and by the
    // row reader of a data-parallel rank alike (they once disagreed: one
    // aborted allocating 8e16 bytes, the other read another array).
    for (file, key) in [
        ("regression-duplicate-shape-key.npz", "'shape'"),
        (
            "regression-duplicate-fortran-order-key.npz",
            "'fortran_order'",
        ),
    ] {
        let p = dir.join(file);
        for e in [
            twolayer::npz::load_init(&p).unwrap_err().to_string(),
            twolayer::npz::load_rows::<f64>(&p, 0..1)
                .unwrap_err()
                .to_string(),
        ] {
            assert!(
                e.contains(&format!("gives {key} more than once")),
                "{file}: {e}"
            );
        }
    }
    // '|f8' is refused everywhere; '=f8' (the machine's order) read the same
    // everywhere, and as '<f8' is.
    let p = dir.join("regression-pipe-f8.npz");
    assert!(twolayer::npz::load_init(&p).is_err());
    assert!(twolayer::npz::load_rows::<f64>(&p, 0..1).is_err());
    let eq = dir.join("native-order-eq-f8.npz");
    let (d, _) = twolayer::npz::load_init(&eq).unwrap().into_typed::<f64>();
    let rows = twolayer::npz::load_rows::<f64>(&eq, 0..2).unwrap();
    assert_eq!(d.x, rows.x);
}
