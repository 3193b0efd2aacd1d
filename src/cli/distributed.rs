//! `train --distributed`: joining the MPI job, one compute thread pool per
//! rank, and ending every rank when one fails.

use super::Fail;
use mtl::distributed::{Collective, Comm};
#[cfg(feature = "mpi")]
use std::sync::Arc;
use std::time::Duration;

/// This process's place in a data-parallel run (a lone process otherwise).
pub struct Ranks {
    pub comm: Option<Comm>,
    #[cfg(feature = "mpi")]
    _finalize: Option<mtl::distributed::mpi::Finalize>,
}

impl Ranks {
    pub fn alone() -> Ranks {
        Ranks {
            comm: None,
            #[cfg(feature = "mpi")]
            _finalize: None,
        }
    }

    /// Joins the MPI job this process was launched in (`mpirun`, `srun`, …).
    #[cfg(feature = "mpi")]
    pub fn join(timeout: Duration) -> Result<Ranks, Fail> {
        let (mpi, fin) = mtl::distributed::mpi::Mpi::init(timeout)
            .map_err(|e| Fail::usage(format!("error: --distributed: {e}")))?;
        share_cores(mpi.size());
        Ok(Ranks {
            comm: Some(Arc::new(mpi)),
            _finalize: Some(fin),
        })
    }

    #[cfg(not(feature = "mpi"))]
    pub fn join(_timeout: Duration) -> Result<Ranks, Fail> {
        Err(Fail::usage(
            "error: --distributed: this mtl was built without MPI; build it with the `mpi` feature (the default; it needs `apt-get install libopenmpi-dev libclang-dev`)",
        ))
    }

    pub fn rank(&self) -> usize {
        self.comm.as_ref().map_or(0, |c| c.rank())
    }

    /// Rank 0, or a lone process: the one that writes and reports.
    pub fn lead(&self) -> bool {
        self.rank() == 0
    }

    /// The other ranks wait here while rank 0 writes what they will read
    /// (generated data, caches, the run directory); rank 0 comes by once done.
    pub fn setup_barrier(&self) -> Result<(), Fail> {
        match &self.comm {
            Some(c) if c.size() > 1 => c
                .barrier(Duration::from_secs(3600))
                .map_err(|e| Fail::model(format!("error: {e}"))),
            _ => Ok(()),
        }
    }

    /// Rank 0's string on every rank.
    pub fn agree(&self, s: String) -> Result<String, Fail> {
        let Some(c) = self.comm.as_ref().filter(|c| c.size() > 1) else {
            return Ok(s);
        };
        let mut b = s.into_bytes();
        c.broadcast(&mut b, 0)
            .map_err(|e| Fail::model(format!("error: {e}")))?;
        String::from_utf8(b).map_err(|e| Fail::model(format!("error: {e}")))
    }

    /// After an error on this rank: says which rank failed and ends the job,
    /// since the others would wait for this one in their next collective.
    pub fn fail(&self, f: Fail) -> Fail {
        match self.comm.as_ref().filter(|c| c.size() > 1) {
            Some(c) => {
                eprintln!("rank {}: {}", c.rank(), f.message.trim_end());
                c.abort(f.code.max(1))
            }
            None => f,
        }
    }
}

/// One rank per core, by default: each rank's compute pool gets this
/// machine's cores divided by the ranks on it (an explicit
/// `RAYON_NUM_THREADS` wins).
#[cfg(feature = "mpi")]
fn share_cores(size: usize) {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let local = [
        "OMPI_COMM_WORLD_LOCAL_SIZE",
        "MPI_LOCALNRANKS",
        "SLURM_NTASKS_PER_NODE",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok()?.parse::<usize>().ok())
    .unwrap_or(size)
    .max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Fails only if the pool exists already; then it keeps its size.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads((cores / local).max(1))
        .build_global();
}
