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

use crate::dataset::batches::Schedule;
use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::scalar::Real;
use crate::step::Exchange;
use crate::train::{RunStats, Trainer};
use mpi::collective::SystemOperation;
use mpi::ffi::{MPI_Datatype, MPI_Request};
use mpi::raw::AsRaw;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use std::ffi::{c_int, c_void};
use std::ops::ControlFlow;
use std::ops::Range;
use std::time::{Duration, Instant};

pub use crate::launch::launched_by_mpi;

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

    /// The [`Exchange`] that sums a step's gradients and loss over every
    /// rank of this job: non-blocking allreduces started as each part is
    /// final (`overlap`), or blocking ones once the whole step's gradients
    /// are done.
    pub fn exchange(&self, overlap: bool) -> MpiExchange<'_> {
        MpiExchange {
            world: &self.world,
            overlap,
            requests: Vec::with_capacity(64),
            blocking: Vec::with_capacity(64),
            busy: Duration::ZERO,
            steps: 0,
        }
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

    /// Sum of `v` over the ranks.
    pub fn sum(&self, v: f64) -> f64 {
        let mut out = 0.0;
        self.world
            .all_reduce_into(&v, &mut out, SystemOperation::sum());
        out
    }

    /// Replaces each element of `v` by its largest value over the ranks
    /// (every rank passes a slice of the same length).
    pub fn max_each(&self, v: &mut [f64]) {
        let mine = v.to_vec();
        self.world
            .all_reduce_into(&mine[..], v, SystemOperation::max());
    }

    /// Rank 0's `flag`, on every rank: lets rank 0 make a decision (such as
    /// "measure another step") that every rank must follow.
    pub fn lead_decides(&self, flag: bool) -> bool {
        let mut v = u8::from(flag);
        self.world.process_at_rank(0).broadcast_into(&mut v);
        v != 0
    }

    /// Runs `work` on rank 0 alone while the other ranks wait without
    /// holding their cores (a non-blocking barrier polled every 0.2 ms),
    /// so rank 0 can measure something by itself.
    pub fn on_lead_alone<T>(&self, work: impl FnOnce() -> T) -> Option<T> {
        let out = (self.rank() == 0).then(work);
        let mut req: MPI_Request = unsafe { mpi::ffi::RSMPI_REQUEST_NULL };
        // SAFETY: a barrier on the world communicator with a valid
        // out-pointer; polled until complete below.
        unsafe { mpi::ffi::MPI_Ibarrier(self.world.as_raw(), &mut req) };
        loop {
            let mut flag: c_int = 0;
            // SAFETY: the request just started (completion sets it to
            // MPI_REQUEST_NULL and the flag).
            unsafe {
                mpi::ffi::MPI_Test(&mut req, &mut flag, mpi::ffi::RSMPI_STATUS_IGNORE);
            }
            if flag != 0 {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        out
    }

    /// Largest value of `v` over the ranks.
    pub fn max(&self, v: f64) -> f64 {
        let mut out = 0.0;
        self.world
            .all_reduce_into(&v, &mut out, SystemOperation::max());
        out
    }
}

/// A sum in flight: send buffer, receive buffer, element count, datatype.
type Pending = (*const c_void, *mut c_void, usize, MPI_Datatype);

/// Sums a step's gradients and loss over every rank (see
/// [`Cluster::exchange`]). Times the MPI calls on the step's critical path.
pub struct MpiExchange<'a> {
    world: &'a SimpleCommunicator,
    overlap: bool,
    /// Non-blocking allreduces started and not yet known complete.
    requests: Vec<MPI_Request>,
    /// Sums left for [`Exchange::finish`] when not overlapping.
    blocking: Vec<Pending>,
    busy: Duration,
    steps: usize,
}

/// Largest element count handed to one MPI call (counts are C ints).
const MAX_COUNT: usize = 1 << 30;

impl MpiExchange<'_> {
    /// Time spent inside MPI calls, per finished step, in ms: for the
    /// overlapped exchange, what is left of the allreduces once the work
    /// between them has hidden what it can.
    pub fn ms_per_step(&self) -> f64 {
        self.busy.as_secs_f64() * 1e3 / self.steps.max(1) as f64
    }

    /// Time spent inside MPI calls since the last reset, in ms.
    pub fn busy_ms(&self) -> f64 {
        self.busy.as_secs_f64() * 1e3
    }

    /// Forgets the time measured so far.
    pub fn reset_time(&mut self) {
        self.busy = Duration::ZERO;
        self.steps = 0;
    }

    fn start_raw(&mut self, p: Pending) {
        let t = Instant::now();
        let (send, recv, count, dtype) = p;
        let size = datatype_size(dtype);
        let mut done = 0;
        while done < count {
            let n = (count - done).min(MAX_COUNT);
            // SAFETY: `Exchange::start`'s caller keeps both buffers valid
            // and untouched until `finish`; the chunk lies inside them.
            let (s, r) = unsafe {
                (
                    send.cast::<u8>().add(done * size).cast::<c_void>(),
                    recv.cast::<u8>().add(done * size).cast::<c_void>(),
                )
            };
            if self.overlap {
                let mut req: MPI_Request = unsafe { mpi::ffi::RSMPI_REQUEST_NULL };
                // SAFETY: as above; MPI's default error handler aborts the
                // job on failure, so the return code needs no check.
                unsafe {
                    mpi::ffi::MPI_Iallreduce(
                        s,
                        r,
                        n as c_int,
                        dtype,
                        mpi::ffi::RSMPI_SUM,
                        self.world.as_raw(),
                        &mut req,
                    );
                }
                self.requests.push(req);
            } else {
                self.blocking.push((s, r, n, dtype));
            }
            done += n;
        }
        self.busy += t.elapsed();
    }
}

/// Bytes per element of an MPI datatype.
fn datatype_size(dtype: MPI_Datatype) -> usize {
    let mut size: c_int = 0;
    // SAFETY: a committed predefined datatype and a valid out-pointer.
    unsafe { mpi::ffi::MPI_Type_size(dtype, &mut size) };
    size as usize
}

impl<F: Real + Equivalence> Exchange<F> for MpiExchange<'_> {
    unsafe fn start(&mut self, local: &[F], total: &mut [F]) {
        assert_eq!(local.len(), total.len());
        self.start_raw((
            local.as_ptr().cast(),
            total.as_mut_ptr().cast(),
            local.len(),
            F::equivalent_datatype().as_raw(),
        ));
    }

    unsafe fn start_loss(&mut self, local: &f64, total: &mut f64) {
        self.start_raw((
            (local as *const f64).cast(),
            (total as *mut f64).cast(),
            1,
            f64::equivalent_datatype().as_raw(),
        ));
    }

    fn progress(&mut self) {
        if self.requests.is_empty() {
            return;
        }
        let t = Instant::now();
        let mut flag: c_int = 0;
        // SAFETY: requests from MPI_Iallreduce (completed ones are set to
        // MPI_REQUEST_NULL, which MPI_Testall accepts).
        unsafe {
            mpi::ffi::MPI_Testall(
                self.requests.len() as c_int,
                self.requests.as_mut_ptr(),
                &mut flag,
                mpi::ffi::RSMPI_STATUSES_IGNORE,
            );
        }
        if flag != 0 {
            self.requests.clear();
        }
        self.busy += t.elapsed();
    }

    fn finish(&mut self) {
        let t = Instant::now();
        if !self.requests.is_empty() {
            // SAFETY: as in `progress`.
            unsafe {
                mpi::ffi::MPI_Waitall(
                    self.requests.len() as c_int,
                    self.requests.as_mut_ptr(),
                    mpi::ffi::RSMPI_STATUSES_IGNORE,
                );
            }
            self.requests.clear();
        }
        for (s, r, n, dtype) in self.blocking.drain(..) {
            // SAFETY: buffers recorded by `start`, still valid and
            // untouched (its contract).
            unsafe {
                mpi::ffi::MPI_Allreduce(
                    s,
                    r,
                    n as c_int,
                    dtype,
                    mpi::ffi::RSMPI_SUM,
                    self.world.as_raw(),
                );
            }
        }
        self.busy += t.elapsed();
        self.steps += 1;
    }
}

/// How a data-parallel run sums each step's gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summing {
    /// Non-blocking allreduces started as each part is final (true), or
    /// blocking ones after the gradients.
    pub overlap: bool,
    /// Pieces g_w1's sum is started in, when overlapped.
    pub pieces: usize,
}

/// The end of a data-parallel run on this rank.
#[derive(Debug)]
pub struct Finished {
    /// The run's result, the same on every rank: its timing, or the error
    /// that stopped it (a diverged loss; weights that differ between
    /// ranks at the end).
    pub result: Result<RunStats>,
    /// Milliseconds per step spent in MPI calls, on the slowest rank.
    pub allreduce_ms: f64,
    /// The signal that stopped the run, when one arrived on any rank (the
    /// largest signal number, when ranks saw different ones): every rank
    /// reports the same.
    pub signal: Option<i32>,
}

/// Runs up to `steps` data-parallel steps of `trainer`, which holds this
/// rank's rows ([`Cluster::rows`] of the batch) — or, with `batches`, a
/// minibatch run where it reads this rank's part of every batch from the
/// dataset. Each step's gradients and loss are summed over the ranks and
/// every rank applies the same update. After each step every rank learns
/// whether `pending_signal()` is set on any rank (so all stop at the same
/// step) and calls `on_step(trainer, t, loss, stop)`, which may end the
/// run with `Break` (on every rank alike, or the job hangs: an error on
/// one rank must end in [`Cluster::abort`]). At the end the weights are
/// checked to be bit-identical on every rank.
#[allow(clippy::too_many_arguments)]
pub fn train<F: Real + Equivalence>(
    cluster: &Cluster,
    trainer: &mut Trainer<F>,
    batches: Option<(&Dataset, &Schedule)>,
    summing: Summing,
    steps: usize,
    pending_signal: impl Fn() -> Option<i32>,
    mut on_step: impl FnMut(&Trainer<F>, usize, f64, bool) -> ControlFlow<()>,
) -> Finished {
    let mut exchange = cluster.exchange(summing.overlap);
    let pieces = if summing.overlap { summing.pieces } else { 1 };
    let mut after = |t: &Trainer<F>, step: usize, loss: f64| {
        let stop = cluster.any(pending_signal().is_some());
        on_step(t, step, loss, stop)
    };
    let mut result = match batches {
        Some((data, schedule)) => crate::minibatch::run_exchanged(
            trainer,
            data,
            schedule,
            cluster.rows(schedule.batch()),
            &mut exchange,
            pieces,
            steps,
            &mut after,
        ),
        None => trainer.run_exchanged(steps, &mut exchange, pieces, &mut after),
    };
    if result.is_ok()
        && !cluster.identical_everywhere(digest(&[&trainer.weights().w1, &trainer.weights().w2]))
    {
        result = Err(Error::invalid(
            "the weights differ between ranks after training",
        ));
    }
    Finished {
        result,
        allreduce_ms: cluster.max(exchange.ms_per_step()),
        signal: match cluster.max(pending_signal().unwrap_or(0) as f64) as i32 {
            0 => None,
            s => Some(s),
        },
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
