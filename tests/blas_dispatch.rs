//! Every product of the step reaches OpenBLAS: this binary defines
//! cblas_dgemm and cblas_sgemm itself, so the calls ndarray makes land here
//! first; each is counted and forwarded to the real OpenBLAS function
//! (found with dlsym(RTLD_NEXT)). If a buffer's layout ever made ndarray
//! fall back to its own matmul, the count would come out short.
//!
//! ndarray also keeps GEMMs whose dimensions are all ≤ 7 for itself, so the
//! shapes here have at least one dimension above 7 in every product.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};
use twolayer::step::{NoProbe, Step, Update};
use twolayer::{Data, LearningRates, Real, Shape, StepMode, Trainer, Weights};

static DGEMM: AtomicUsize = AtomicUsize::new(0);
static SGEMM: AtomicUsize = AtomicUsize::new(0);
/// A call's (transA, transB, m, n, k, beta ≠ 0).
type Call = (c_int, c_int, c_int, c_int, c_int, bool);
/// Every call, when recording.
static LOG: std::sync::Mutex<Vec<Call>> = std::sync::Mutex::new(Vec::new());
static RECORD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

type Gemm<T> = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    T,
    *const T,
    c_int,
    *const T,
    c_int,
    T,
    *mut T,
    c_int,
);

fn real<T>(name: &std::ffi::CStr) -> Gemm<T> {
    // SAFETY: looks up the next definition of a C function by name.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    assert!(!p.is_null(), "OpenBLAS's {name:?} not found");
    // SAFETY: the symbol is the cblas function with exactly this signature.
    unsafe { std::mem::transmute::<*mut c_void, Gemm<T>>(p) }
}

macro_rules! interpose {
    ($name:ident, $t:ty, $counter:ident) => {
        /// Counts and forwards to OpenBLAS.
        ///
        /// # Safety
        /// The cblas contract: pointers and leading dimensions describe valid matrices.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            layout: c_int,
            ta: c_int,
            tb: c_int,
            m: c_int,
            n: c_int,
            k: c_int,
            alpha: $t,
            a: *const $t,
            lda: c_int,
            b: *const $t,
            ldb: c_int,
            beta: $t,
            c: *mut $t,
            ldc: c_int,
        ) {
            $counter.fetch_add(1, Ordering::SeqCst);
            if RECORD.load(Ordering::SeqCst) {
                LOG.lock()
                    .unwrap()
                    .push((ta, tb, m, n, k, beta != (0 as $t)));
            }
            if std::env::var_os("DBG").is_some() {
                eprintln!("{} m{m} n{n} k{k}", stringify!($name));
            }
            let f = real::<$t>(
                std::ffi::CStr::from_bytes_with_nul(concat!(stringify!($name), "\0").as_bytes())
                    .unwrap(),
            );
            f(layout, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        }
    };
}

interpose!(cblas_dgemm, f64, DGEMM);
interpose!(cblas_sgemm, f32, SGEMM);

/// cblas calls per step, and the number the plan implies: five per block.
fn gemms_per_step<F: Real>(shape: Shape, mode: StepMode, counter: &AtomicUsize) -> (usize, usize) {
    let mut t = Trainer::new(
        Data::<F>::random(shape, 1),
        Weights::random(shape, 2),
        LearningRates::uniform(1e-9),
        mode,
    )
    .unwrap();
    let plan = t.plan();
    let blocks: usize = (0..plan.shards)
        .map(|i| plan.shard_rows(shape.n, i).len().div_ceil(plan.block_rows))
        .sum();
    let before = counter.load(Ordering::SeqCst);
    t.run(3, |_, _, _| std::ops::ControlFlow::Continue(()))
        .unwrap();
    ((counter.load(Ordering::SeqCst) - before) / 3, 5 * blocks)
}

#[test]
fn all_five_products_go_to_cblas() {
    // Also makes this binary link OpenBLAS, so dlsym(RTLD_NEXT) can find it.
    twolayer::threads::set_budget(2).unwrap();
    assert_ne!(twolayer::blas::core_name(), "unknown");
    // One test function: the counters are global, so nothing may run beside it.
    for shape in [
        Shape::REFERENCE,
        Shape::new(1000, 257, 65, 9).unwrap(),
        Shape::new(16, 8, 8, 1).unwrap(),
        Shape::new(64, 600, 512, 10).unwrap(),
    ] {
        for mode in [StepMode::Fused, StepMode::Explicit] {
            let (calls, expected) = gemms_per_step::<f64>(shape, mode, &DGEMM);
            assert_eq!(calls, expected, "f64 {shape} {mode:?}");
            let (calls, expected) = gemms_per_step::<f32>(shape, mode, &SGEMM);
            assert_eq!(calls, expected, "f32 {shape} {mode:?}");
        }
    }
    // The units layout (a row per hidden unit), whatever the rule picks
    // on this library: the transposed views still reach cblas, five calls
    // a block.
    for shape in [Shape::new(1000, 257, 65, 9).unwrap(), Shape::REFERENCE] {
        let plan = twolayer::Plan {
            shards: 2,
            block_rows: 128,
            blas_threads: 1,
            fused_gemm_update: false,
            layout: twolayer::step::Layout::Units,
        };
        let blocks: usize = (0..2)
            .map(|i| plan.shard_rows(shape.n, i).len().div_ceil(128))
            .sum();
        let mut step = Step::primal(shape, plan, StepMode::Fused).unwrap();
        let data = Data::<f64>::random(shape, 1);
        let mut w = Weights::random(shape, 2);
        let before = DGEMM.load(Ordering::SeqCst);
        step.run(
            &data,
            &mut w,
            LearningRates::uniform(1e-9),
            Update::Sgd,
            &mut NoProbe,
        )
        .unwrap();
        assert_eq!(
            DGEMM.load(Ordering::SeqCst) - before,
            5 * blocks,
            "{shape} units"
        );
    }

    // The exchanged step (data-parallel training): each shard's last g_w1
    // GEMM runs in `pieces` row ranges, each still one cblas call.
    for (shape, shards) in [
        (Shape::new(1000, 257, 65, 9).unwrap(), 2),
        (Shape::REFERENCE, 1),
        (Shape::new(16, 8, 8, 1).unwrap(), 1),
    ] {
        let plan = twolayer::Plan {
            shards,
            block_rows: 128,
            blas_threads: 1,
            fused_gemm_update: false,
            layout: twolayer::step::Layout::Rows,
        };
        let blocks: usize = (0..shards)
            .map(|i| plan.shard_rows(shape.n, i).len().div_ceil(128))
            .sum();
        let mut step = Step::primal(shape, plan, StepMode::Explicit).unwrap();
        let data = Data::<f64>::random(shape, 1);
        let mut w = Weights::random(shape, 2);
        for pieces in [1, 4, 8] {
            let before = DGEMM.load(Ordering::SeqCst);
            let update = Update::Exchanged {
                exchange: &mut twolayer::NoExchange,
                pieces,
            };
            step.run(
                &data,
                &mut w,
                LearningRates::uniform(0.0),
                update,
                &mut NoProbe,
            )
            .unwrap();
            let pieces = pieces.min(shape.d_in);
            assert_eq!(
                DGEMM.load(Ordering::SeqCst) - before,
                5 * blocks + shards * (pieces - 1),
                "{shape}, {pieces} pieces"
            );
        }
    }

    // Holding w1 fixed (lr 0) with the update in the GEMMs skips its GEMM.
    let shape = Shape::REFERENCE;
    let plan = twolayer::Plan {
        shards: 1,
        block_rows: shape.n,
        blas_threads: 1,
        fused_gemm_update: true,
        layout: twolayer::step::Layout::Rows,
    };
    let mut step = Step::primal(shape, plan, StepMode::Fused).unwrap();
    let data = Data::<f64>::random(shape, 1);
    let mut w = Weights::random(shape, 2);
    let before = DGEMM.load(Ordering::SeqCst);
    let lr = LearningRates { w1: 0.0, w2: 1e-6 };
    step.run(&data, &mut w, lr, Update::Sgd, &mut NoProbe)
        .unwrap();
    assert_eq!(DGEMM.load(Ordering::SeqCst) - before, 4);

    // The benchmarks' "GEMMs alone" are the step's own calls: the same
    // number, shapes, transposes and betas, whatever the plan.
    for shape in [
        Shape::REFERENCE,
        Shape::new(1000, 257, 65, 9).unwrap(),
        Shape::new(64, 600, 512, 10).unwrap(),
    ] {
        for mode in [StepMode::Fused, StepMode::Explicit] {
            let mut step = Step::<f64>::planned(shape, 2, mode).unwrap();
            let data = Data::<f64>::random(shape, 1);
            let mut w = Weights::random(shape, 2);
            let lr = LearningRates::uniform(1e-9);
            let calls = |f: &mut dyn FnMut()| {
                LOG.lock().unwrap().clear();
                RECORD.store(true, Ordering::SeqCst);
                f();
                RECORD.store(false, Ordering::SeqCst);
                let mut log = LOG.lock().unwrap().clone();
                log.sort();
                log
            };
            // In either mode (explicit: gradients, then the update pass).
            let step_calls = calls(&mut || {
                step.run(&data, &mut w, lr, Update::Sgd, &mut NoProbe)
                    .unwrap();
            });
            let gemm_calls = calls(&mut || {
                step.run(&data, &mut w, lr, Update::GemmsOnly, &mut NoProbe)
                    .unwrap();
            });
            assert!(!step_calls.is_empty());
            assert_eq!(step_calls, gemm_calls, "{shape} {mode:?}");
        }
    }
}
