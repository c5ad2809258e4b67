//! How fast this machine's OpenBLAS multiplies the step's two big products
//! (x·w1 and xᵀ·g_h) for blocks of B rows, and a few whole-batch and square
//! shapes: the measurements behind the step's `Plan` (docs/performance.md).
//!
//! `cargo run --release --example gemm_blocks -- THREADS` (run it with
//! `OPENBLAS_THREAD_TIMEOUT=4` set, as the twolayer binary does).

use ndarray::linalg::general_mat_mul;
use ndarray::Array2;
use std::time::Instant;
fn t<F: twolayer::Real>(m: usize, k: usize, n: usize, ta: bool, reps: usize) -> f64 {
    let a = if ta {
        Array2::<F>::from_elem((k, m), F::one())
    } else {
        Array2::<F>::from_elem((m, k), F::one())
    };
    let b = Array2::<F>::from_elem((k, n), F::one());
    let mut c = Array2::<F>::zeros((m, n));
    let mut ts = vec![];
    for _ in 0..reps + 1 {
        let s = Instant::now();
        if ta {
            general_mat_mul(F::one(), &a.t(), &b, F::zero(), &mut c);
        } else {
            general_mat_mul(F::one(), &a, &b, F::zero(), &mut c);
        }
        ts.push(s.elapsed().as_secs_f64());
    }
    ts.remove(0);
    ts.sort_by(f64::total_cmp);
    let med = ts[ts.len() / 2];
    2.0 * (m * k * n) as f64 / med / 1e9
}
fn main() {
    let thr: usize = std::env::args().nth(1).unwrap().parse().unwrap();
    twolayer::threads::set_budget(thr).unwrap();
    for b in [32usize, 64, 128, 256, 512, 1024] {
        println!("B={b:5}: x.w1 f64 {:5.1} f32 {:5.1} | xT.gh f64 {:5.1} f32 {:5.1} | H50 x.w1 f64 {:5.1} | big x.w1 f64 {:5.1} xT.gh {:5.1} f32 {:5.1} {:5.1}",
            t::<f64>(b, 1000, 100, false, 50), t::<f32>(b, 1000, 100, false, 50),
            t::<f64>(1000, b, 100, true, 50), t::<f32>(1000, b, 100, true, 50),
            t::<f64>(b, 1000, 50, false, 50),
            t::<f64>(b, 4096, 1024, false, 5), t::<f64>(4096, b, 1024, true, 5),
            t::<f32>(b, 4096, 1024, false, 5), t::<f32>(4096, b, 1024, true, 5));
    }
}
