//! Data-parallel training over MPI (feature `mpi`, through rsmpi and the
//! system's OpenMPI).
//!
//! `mpirun -np K twolayer train …` starts K ranks. Each makes or loads only
//! its own rows of the batch ([`Cluster::rows`]: consecutive, as even as
//! possible); every step each rank computes the explicit gradients and loss
//! of its rows, an allreduce sums them, and every rank applies the same
//! update — so the weights stay bit-identical across ranks (checked at the
//! end), and equal the single-process result to rounding.
//!
//! Failure: a rank that errs or panics calls `MPI_Abort`, which ends every
//! rank at once (a rank left waiting in an allreduce would hang for ever);
//! mpirun ends the job when a rank is killed.

use crate::error::{Error, Result};
use crate::scalar::Real;
use crate::step::Gradients;
use mpi::collective::SystemOperation;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use std::ops::Range;

/// This process's place in an MPI job.
pub struct Cluster {
    _universe: mpi::environment::Universe,
    world: SimpleCommunicator,
}

impl Cluster {
    /// Initialises MPI (once per process) with serialized threading: the
    /// training loop runs on a rayon thread, one call at a time. Installs a
    /// panic hook that aborts the whole job, naming the rank.
    pub fn init() -> Result<Cluster> {
        let (universe, level) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or_else(|| Error::invalid("MPI was already initialised in this process"))?;
        if level < mpi::Threading::Serialized {
            return Err(Error::invalid(format!(
                "this MPI offers thread level {level:?}; twolayer needs Serialized"
            )));
        }
        let world = universe.world();
        let rank = world.rank();
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            eprintln!("twolayer: rank {rank} panicked; aborting the MPI job");
            default_hook(info);
            // SAFETY: MPI is initialised (the hook is installed after it);
            // MPI_Abort on the world communicator ends every rank.
            unsafe {
                mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, 1);
            }
        }));
        Ok(Cluster {
            _universe: universe,
            world,
        })
    }

    /// This rank, 0-based.
    pub fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.world.size() as usize
    }

    /// The rows of a batch of `n` this rank owns: consecutive, sizes
    /// differing by at most one, rank 0 first.
    pub fn rows(&self, n: usize) -> Range<usize> {
        let (k, r) = (self.size(), self.rank());
        let (q, m) = (n / k, n % k);
        let start = r * q + r.min(m);
        start..start + q + usize::from(r < m)
    }

    /// Ends every rank of the job now, after printing `msg` with this
    /// rank's number. For errors on one rank that the others cannot know
    /// about (they would wait in the next allreduce for ever).
    pub fn abort(&self, msg: &str) -> ! {
        eprintln!(
            "twolayer: error on rank {} of {}: {msg}",
            self.rank(),
            self.size()
        );
        self.world.abort(1)
    }

    /// Sums gradients and loss over all ranks, in place (the reducer of
    /// [`Trainer::run_local`](crate::Trainer::run_local)). `scratch` holds
    /// a copy of the send buffer (MPI's in-place allreduce is not exposed
    /// safely); sized once, it does not allocate per step.
    pub fn sum_gradients<F: Real + Equivalence>(
        &self,
        g: &mut Gradients<F>,
        loss: &mut f64,
        scratch: &mut Vec<F>,
    ) {
        for a in [&mut g.w1, &mut g.w2] {
            let buf = a.as_slice_mut().expect("gradients are contiguous");
            scratch.clear();
            scratch.extend_from_slice(buf);
            self.world
                .all_reduce_into(&scratch[..], buf, SystemOperation::sum());
        }
        let mine = *loss;
        self.world
            .all_reduce_into(&mine, loss, SystemOperation::sum());
    }

    /// Whether `flag` is set on any rank (a collective: every rank must
    /// call it at the same point).
    pub fn any(&self, flag: bool) -> bool {
        let mine = u8::from(flag);
        let mut out = 0u8;
        self.world
            .all_reduce_into(&mine, &mut out, SystemOperation::max());
        out != 0
    }

    /// A 64-bit digest of `values` that is the same on every rank exactly
    /// when the values are bit-identical on every rank (min == max).
    pub fn identical_everywhere(&self, digest: u64) -> bool {
        let (mut lo, mut hi) = (0u64, 0u64);
        self.world
            .all_reduce_into(&digest, &mut lo, SystemOperation::min());
        self.world
            .all_reduce_into(&digest, &mut hi, SystemOperation::max());
        lo == hi
    }

    /// Largest value of `v` over the ranks.
    pub fn max(&self, v: f64) -> f64 {
        let mut out = 0.0;
        self.world
            .all_reduce_into(&v, &mut out, SystemOperation::max());
        out
    }
}

/// FNV-1a over the bits of every value: cheap, and any differing bit
/// changes it.
pub fn digest<F: Real>(arrays: &[&ndarray::Array2<F>]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for a in arrays {
        for v in a.iter() {
            for b in Real::to_f64(*v).to_bits().to_le_bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    h
}
