//! The MPI transport (Open MPI, MPICH) through the `mpi` crate: what runs
//! under `mpirun` or any launcher that sets the MPI environment.
//!
//! Every collective is started non-blocking and polled, so a wait that
//! outlives the timeout becomes an error (a rank died or stalled) instead of
//! a hang. Its buffers are handed to MPI for good (leaked) and taken back
//! only once the request completes: after a timeout MPI may still write
//! them, until the caller aborts the job.

use super::{Collective, CommError};
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::datatype::Equivalence;
use mpi::environment::Universe;
use mpi::request::{Request, StaticScope};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Threading;
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct World {
    comm: SimpleCommunicator,
}

/// Finalizes MPI when dropped: keep it until no collective runs any more
/// (the end of the command), since autograd ops may hold the [`Mpi`] longer.
pub struct Finalize(#[allow(dead_code)] Universe);

// SAFETY: MPI is initialized with `Threading::Serialized` (checked in
// `init`), and every call goes through the mutex below, so no two threads
// call MPI at once; the handles themselves are plain process-wide ids.
unsafe impl Send for World {}

pub struct Mpi {
    world: Mutex<World>,
    rank: usize,
    size: usize,
    timeout: Duration,
}

impl Mpi {
    /// Initializes MPI for this process. `timeout`: how long one collective
    /// of a training step may wait for the other ranks.
    pub fn init(timeout: Duration) -> Result<(Mpi, Finalize), CommError> {
        let (universe, level) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| CommError("MPI cannot be initialized (or was already)".into()))?;
        if level < Threading::Serialized {
            return Err(CommError(format!(
                "this MPI library offers thread support {level:?}; mtl needs Serialized"
            )));
        }
        let comm = universe.world();
        let (rank, size) = (comm.rank() as usize, comm.size() as usize);
        let mpi = Mpi {
            world: Mutex::new(World { comm }),
            rank,
            size,
            timeout,
        };
        Ok((mpi, Finalize(universe)))
    }

    fn world(&self) -> Result<std::sync::MutexGuard<'_, World>, CommError> {
        self.world
            .lock()
            .map_err(|_| CommError("a thread panicked inside an MPI call".into()))
    }

    /// Polls `req` until it completes or `patience` runs out.
    fn wait<D: ?Sized>(
        &self,
        what: &str,
        req: Request<'static, D>,
        patience: Duration,
    ) -> Result<(), CommError> {
        let start = Instant::now();
        let mut req = req;
        let mut polls = 0u32;
        loop {
            match req.test() {
                Ok(_) => return Ok(()),
                Err(r) => req = r,
            }
            if start.elapsed() > patience {
                // Never completed, so never dropped (dropping panics).
                std::mem::forget(req);
                return Err(CommError::timed_out(self.rank, self.size, what, patience));
            }
            polls += 1;
            if polls < 10_000 {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    fn sum<T: Equivalence + Copy + Default + 'static>(
        &self,
        buf: &mut [T],
        what: &str,
    ) -> Result<(), CommError> {
        let send: &'static [T] = Box::leak(buf.to_vec().into_boxed_slice());
        let recv: &'static mut [T] = Box::leak(vec![T::default(); buf.len()].into_boxed_slice());
        let (send_ptr, recv_ptr) = (send as *const [T] as *mut [T], recv as *mut [T]);
        {
            let w = self.world()?;
            let req =
                w.comm
                    .immediate_all_reduce_into(StaticScope, send, recv, SystemOperation::sum());
            self.wait(what, req, self.timeout)?;
        }
        // SAFETY: both came from `Box::leak` above and the request that
        // borrowed them has completed, so MPI no longer touches them.
        let (send, recv) = unsafe { (Box::from_raw(send_ptr), Box::from_raw(recv_ptr)) };
        drop(send);
        buf.copy_from_slice(&recv);
        Ok(())
    }

    fn broadcast_fixed<T: Equivalence + Copy + 'static>(
        &self,
        buf: &mut [T],
        root: usize,
    ) -> Result<(), CommError> {
        let data: &'static mut [T] = Box::leak(buf.to_vec().into_boxed_slice());
        let ptr = data as *mut [T];
        {
            let w = self.world()?;
            let req = w
                .comm
                .process_at_rank(root as i32)
                .immediate_broadcast_into(StaticScope, data);
            self.wait("a broadcast", req, self.timeout)?;
        }
        // SAFETY: as in `sum`.
        let data = unsafe { Box::from_raw(ptr) };
        buf.copy_from_slice(&data);
        Ok(())
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_f32(&self, buf: &mut [f32]) -> Result<(), CommError> {
        self.sum(buf, "a gradient all-reduce")
    }
    fn all_reduce_f64(&self, buf: &mut [f64]) -> Result<(), CommError> {
        self.sum(buf, "an all-reduce of losses and counts")
    }
    fn broadcast(&self, buf: &mut Vec<u8>, root: usize) -> Result<(), CommError> {
        let mut len = [buf.len() as u64];
        self.broadcast_fixed(&mut len, root)?;
        buf.resize(len[0] as usize, 0);
        self.broadcast_fixed(buf.as_mut_slice(), root)
    }
    fn barrier(&self, patience: Duration) -> Result<(), CommError> {
        let w = self.world()?;
        let req = w.comm.immediate_barrier();
        self.wait("a barrier", req, patience.max(self.timeout))
    }
    fn abort(&self, code: i32) -> ! {
        // Even with the lock poisoned: the communicator is still valid.
        let w = match self.world.lock() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        };
        w.comm.abort(code)
    }
}
