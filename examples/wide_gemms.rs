//! The five GEMMs of the wide shape (8192, 4096, 1024, 256) f64 one by one
//! on 2 OpenBLAS threads, beside square 2048² and 4096² GEMMs: whether the
//! step's time is the sum of its GEMMs at OpenBLAS's own rate
//! (docs/performance.md, "Where the time goes"). Best of 3 after one
//! untimed call.
//!
//! `OPENBLAS_THREAD_TIMEOUT=4 cargo run --release --example wide_gemms`

use ndarray::linalg::general_mat_mul;
use ndarray::Array2;
use std::time::Instant;
/// Best wall time of `f` over 3 calls, after one untimed.
fn best<F: FnMut()>(mut f: F) -> f64 {
    f();
    let mut b = f64::INFINITY;
    for _ in 0..3 {
        let s = Instant::now();
        f();
        b = b.min(s.elapsed().as_secs_f64());
    }
    b
}
fn main() {
    twolayer::blas::set_threads(2);
    let (n, d, h, o) = (8192usize, 4096usize, 1024usize, 256usize);
    let x = Array2::<f64>::from_elem((n, d), 0.5);
    let w1 = Array2::<f64>::from_elem((d, h), 0.5);
    let w2 = Array2::<f64>::from_elem((h, o), 0.5);
    let mut hh = Array2::<f64>::zeros((n, h));
    let mut yp = Array2::<f64>::zeros((n, o));
    let mut gh = Array2::<f64>::zeros((n, h));
    let mut gw1 = Array2::<f64>::zeros((d, h));
    let mut gw1t = Array2::<f64>::zeros((h, d));
    let mut gw2 = Array2::<f64>::zeros((h, o));
    let r = |fl: f64, t: f64| format!("{:.1} ms {:.1} GF/s", t * 1e3, fl / t / 1e9);
    let f = 2.0 * (n * d * h) as f64;
    let g = 2.0 * (n * h * o) as f64;
    println!(
        "x·w1        {}",
        r(f, best(|| general_mat_mul(1.0, &x, &w1, 0.0, &mut hh)))
    );
    println!(
        "h·w2        {}",
        r(g, best(|| general_mat_mul(1.0, &hh, &w2, 0.0, &mut yp)))
    );
    println!(
        "gy·w2ᵀ      {}",
        r(g, best(|| general_mat_mul(1.0, &yp, &w2.t(), 0.0, &mut gh)))
    );
    println!(
        "hᵀ·gy       {}",
        r(
            g,
            best(|| general_mat_mul(1.0, &hh.t(), &yp, 0.0, &mut gw2))
        )
    );
    println!(
        "xᵀ·gh       {}",
        r(f, best(|| general_mat_mul(1.0, &x.t(), &gh, 0.0, &mut gw1)))
    );
    // The same product transposed (g_w1ᵀ = g_hᵀ·x), for comparison.
    println!(
        "(ghᵀ·x)     {}",
        r(
            f,
            best(|| general_mat_mul(1.0, &gh.t(), &x, 0.0, &mut gw1t))
        )
    );
    let s = Array2::<f64>::from_elem((2048, 2048), 0.5);
    let mut c = Array2::<f64>::zeros((2048, 2048));
    println!(
        "2048²       {}",
        r(
            2.0 * 2048f64.powi(3),
            best(|| general_mat_mul(1.0, &s, &s, 0.0, &mut c))
        )
    );
    let s = Array2::<f64>::from_elem((4096, 4096), 0.5);
    let mut c = Array2::<f64>::zeros((4096, 4096));
    println!(
        "4096²       {}",
        r(
            2.0 * 4096f64.powi(3),
            best(|| general_mat_mul(1.0, &s, &s, 0.0, &mut c))
        )
    );
}
