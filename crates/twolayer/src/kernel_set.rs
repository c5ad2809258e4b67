//! Whether OpenBLAS runs below what the CPU offers because the environment
//! says so — and whether the faster kernels would compute right here.
//!
//! `OPENBLAS_CORETYPE` forces a kernel set. It is set on some machines on
//! purpose: older OpenBLAS builds compute wrong results or crash on some
//! newer CPUs. So twolayer never changes it; it says when the forced set
//! is below the CPU's (AVX-512 present, an AVX2 set forced: on Zen 5 that
//! halves GEMM speed), and `twolayer info` measures OpenBLAS's own choice
//! in a child process — its GEMM rate, and its GEMMs at the step's shapes
//! against plain loops — so a crash or a wrong result stays in the child.

/// OpenBLAS kernel sets that use AVX-512.
const AVX512_CORES: [&str; 3] = ["SkylakeX", "Cooperlake", "SapphireRapids"];

/// The forced kernel set, when `OPENBLAS_CORETYPE` makes OpenBLAS run
/// without the AVX-512 this CPU has.
pub fn forced_below_cpu() -> Option<String> {
    let forced = std::env::var("OPENBLAS_CORETYPE").ok()?;
    let running = crate::blas::core_name();
    let cpu_has_avx512 = {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    };
    (cpu_has_avx512
        && !AVX512_CORES
            .iter()
            .any(|c| c.eq_ignore_ascii_case(&running)))
    .then(|| format!("{running} (OPENBLAS_CORETYPE={forced})"))
}

/// One line for stderr when [`forced_below_cpu`] holds.
pub fn warning() -> Option<String> {
    forced_below_cpu().map(|k| {
        format!(
            "note: OpenBLAS runs its {k} kernels, without the AVX-512 this CPU has; `twolayer info` measures and checks OpenBLAS's own choice. The variable is left as set: some machines set it because older OpenBLAS builds compute wrong results or crash on newer CPUs"
        )
    })
}

/// What in the environment slows this process down, one line each: a
/// kernel set forced below the CPU, OpenBLAS threads left spinning. The
/// report's environment block records them.
pub fn environment_warnings() -> Vec<String> {
    let mut v = Vec::new();
    if let Some(k) = forced_below_cpu() {
        v.push(format!(
            "OpenBLAS runs its {k} kernels, without the AVX-512 this CPU has"
        ));
    }
    v.extend(crate::blas::spin_warning());
    v
}

/// The largest relative error of OpenBLAS's GEMMs at the step's shapes
/// (the five products of (64, 1000, 100, 10), transposes included)
/// against plain loops, in f64.
pub fn gemm_check() -> f64 {
    use ndarray::linalg::general_mat_mul;
    use ndarray::{Array2, ArrayView2};
    let shape = crate::Shape::REFERENCE;
    let d = crate::Data::<f64>::random(shape, 5);
    let w = crate::Weights::<f64>::random(shape, 5);
    let naive = |a: ArrayView2<f64>, b: ArrayView2<f64>| {
        let mut c = Array2::<f64>::zeros((a.nrows(), b.ncols()));
        for i in 0..a.nrows() {
            for j in 0..b.ncols() {
                c[[i, j]] = (0..a.ncols()).map(|k| a[[i, k]] * b[[k, j]]).sum();
            }
        }
        c
    };
    let blas = |a: ArrayView2<f64>, b: ArrayView2<f64>| {
        let mut c = Array2::<f64>::zeros((a.nrows(), b.ncols()));
        general_mat_mul(1.0, &a, &b, 0.0, &mut c);
        c
    };
    let h = naive(d.x.view(), w.w1.view());
    let g = naive(d.y.view(), w.w2.t());
    let pairs = [
        (d.x.view(), w.w1.view()),
        (h.view(), w.w2.view()),
        (d.y.view(), w.w2.t()),
        (h.t(), d.y.view()),
        (d.x.t(), g.view()),
    ];
    pairs
        .iter()
        .map(|&(a, b)| {
            let (want, got) = (naive(a, b), blas(a, b));
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
            want.iter()
                .zip(&got)
                .fold(0.0f64, |m, (x, y)| m.max((x - y).abs() / scale))
        })
        .fold(0.0, f64::max)
}
