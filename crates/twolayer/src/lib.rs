//! # twolayer
//!
//! Trains a two-layer fully connected network — x → Linear → ReLU → Linear,
//! sum-of-squares loss, plain SGD, backprop written out as matrix products —
//! as fast as the machine allows: every product is an OpenBLAS GEMM into a
//! preallocated buffer, and the work split into shards of rows, one per
//! rayon thread.
//!
//! The algorithm is the classic numpy warm-up, exactly (docs/design.md §1):
//! N, D_in, H, D_out = 64, 1000, 100, 10; lr 1e-6; 500 steps; float64.
//!
//! ```
//! use twolayer::{Data, LearningRates, Shape, Trainer, Weights};
//! let shape = Shape::REFERENCE; // N, D_in, H, D_out = 64, 1000, 100, 10
//! let data = Data::<f64>::random(shape, 0); // x N×D_in, y N×D_out
//! let weights = Weights::random(shape, 0); // w1 D_in×H, w2 H×D_out
//! let mut t = Trainer::builder(data, weights, LearningRates::uniform(1e-6)).build()?;
//! t.run(500, |_, _step, _loss| std::ops::ControlFlow::Continue(()))?;
//! let (losses, trained) = (t.losses().to_vec(), t.into_weights());
//! assert!(losses[499] < 1e-3 * losses[0] && trained.w1.dim() == (1000, 100));
//! # Ok::<(), twolayer::Error>(())
//! ```
//!
//! [`Trainer::builder`] sets up every kind of run: a plan, the dual form,
//! bf16, a resumed run, the mean loss ([`train::TrainerBuilder`]).
//!
//! Where things are: [`step`] is the training step (read it first;
//! [`step::bf16`] its bf16 mixed precision);
//! [`kernels`] the elementwise passes; [`net`] the data and weights;
//! [`npz`] numpy's file format; [`train`] the loop; [`dataset`] and
//! [`minibatch`] training on users' data a batch at a time; [`predict`]
//! the forward pass alone; [`blas`] and
//! [`threads`] the thread budget; [`shape`] sizes and checks; [`run`]
//! the run's description that checkpoints, wisdom and reports share;
//! [`checkpoint`] and [`output`] long runs and safe writes; [`bench`](mod@bench) the
//! sweep harness and regression gate; `distributed` (feature `mpi`)
//! data-parallel training, whose gradients are summed through the step's
//! [`Exchange`] seam ([`Update::Exchanged`]). The `twolayer`
//! command line is a thin binary over this library (`src/bin/twolayer/`).
//!
//! ## One call before the first GEMM
//!
//! OpenBLAS keeps its idle worker threads spinning for about 2^28 cycles
//! after every call unless `OPENBLAS_THREAD_TIMEOUT` is set when the
//! library loads. A spinning worker holds a core that rayon's passes need.
//! With today's step this costs little — `examples/spin_fix.rs` measured,
//! 2 threads, 7 interleaved rounds of fresh processes, Cooperlake kernels:
//! per-round ratio unset/set 0.96–1.12x at the reference shape, 1.01x at N
//! = 512, 0.96x at N = 4096, 1.00x at (256, 1024, 1024, 256) — because
//! narrow layers run single-threaded GEMMs inside each shard, leaving no
//! worker to spin; the first, multi-threaded-GEMM version of the step was
//! 2.5x slower without it (1.20 against 0.48 ms/step). The variable must be
//! set before OpenBLAS loads, which a library cannot do for its caller, so
//! a program that wants it starts with
//!
//! ```no_run
//! // First thing in main: restarts the process with
//! // OPENBLAS_THREAD_TIMEOUT set, once; returns at once when it is already
//! // set (or with the error if the restart failed: the run goes on, slower).
//! if let Some(e) = twolayer::blas::reexec_with_short_spin() {
//!     eprintln!("warning: OpenBLAS will spin ({e})");
//! }
//! // ... then train.
//! ```
//!
//! or set `OPENBLAS_THREAD_TIMEOUT=4` in its environment. The `twolayer`
//! binary does the former.

#![warn(missing_docs)]

pub mod bench;
pub mod blas;
pub mod checkpoint;
pub mod dataset;
#[cfg(feature = "mpi")]
pub mod distributed;
pub mod epochs;
pub mod error;
pub mod input;
pub mod kernel_set;
pub mod kernels;
pub mod launch;
pub mod lock;
pub mod machine;
pub mod minibatch;
pub mod named;
pub mod net;
pub mod npz;
pub mod output;
pub mod predict;
pub mod run;
pub mod scalar;
pub mod shape;
pub mod stats;
pub mod step;
pub mod threads;
pub mod train;
pub mod tune;

pub use error::{Error, Result};
pub use net::{Data, Weights};
pub use scalar::{Dtype, Real};
pub use shape::Shape;
pub use step::{Exchange, Gradients, LearningRates, NoExchange, Plan, Step, StepMode, Update};
pub use train::{Loss, RunStats, Trainer, TrainerBuilder};
