//! After the first step, a training step makes no heap allocation, in either
//! mode and either form (primal, dual), below and above the size where the
//! elementwise passes go parallel.
//! A counting global allocator sees every allocation in this test binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use twolayer::step::Form;
use twolayer::{Data, LearningRates, Shape, StepMode, Trainer, Weights};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn steps_after_the_first_do_not_allocate() {
    twolayer::threads::set_budget(2).unwrap();
    let shapes = [
        Shape::REFERENCE,
        // N·H = 65,536 and N·D_out = 32,768: every pass runs on rayon.
        Shape::new(512, 256, 128, 64).unwrap(),
    ];
    for shape in shapes {
        for (mode, form, biases) in [
            (StepMode::Fused, Form::Primal, false),
            (StepMode::Explicit, Form::Primal, false),
            (StepMode::Fused, Form::Dual, false),
            (StepMode::Fused, Form::Primal, true),
            (StepMode::Explicit, Form::Primal, true),
            (StepMode::Fused, Form::Dual, true),
        ] {
            let w = Weights::random(shape, 2);
            let mut t = Trainer::builder(
                Data::<f64>::random(shape, 1),
                if biases { w.with_zero_biases() } else { w },
                LearningRates::uniform(1e-9),
            )
            .mode(mode)
            .build_in(form)
            .unwrap();
            t.run(2, |_, _, _| std::ops::ControlFlow::Continue(()))
                .unwrap();
            t.reserve(20);
            let before = ALLOCS.load(Ordering::SeqCst);
            t.run(20, |_, _, _| std::ops::ControlFlow::Continue(()))
                .unwrap();
            let during = ALLOCS.load(Ordering::SeqCst) - before;
            assert_eq!(
                during, 0,
                "{during} allocations in 20 steps at {shape} {mode:?} {form:?}, biases {biases}"
            );
        }
    }
}
