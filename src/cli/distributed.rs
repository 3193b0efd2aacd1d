//! `train --distributed`: joining the MPI job, one compute thread pool per
//! rank, and ending every rank when one fails.

use super::Fail;
#[cfg(feature = "mpi")]
use mtl::distributed::Collective;
use mtl::distributed::Comm;
#[cfg(any(feature = "mpi", feature = "nccl"))]
use std::sync::Arc;
use std::time::Duration;

/// This process's place in a data-parallel run (a lone process otherwise).
pub struct Ranks {
    pub comm: Option<Comm>,
    /// The MPI job, when the collective in use is another transport
    /// started over it (NCCL): it lives as long as the run.
    #[cfg(feature = "mpi")]
    _mpi: Option<Comm>,
    #[cfg(feature = "mpi")]
    _finalize: Option<mtl::distributed::mpi::Finalize>,
}

#[cfg(any(feature = "mpi", feature = "nccl"))]
fn joining(e: mtl::distributed::CommError) -> Fail {
    Fail::usage(format!("error: --distributed: {e}"))
}

impl Ranks {
    pub fn alone() -> Ranks {
        Ranks {
            comm: None,
            #[cfg(feature = "mpi")]
            _mpi: None,
            #[cfg(feature = "mpi")]
            _finalize: None,
        }
    }

    /// Joins the MPI job this process was launched in (`mpirun`, `srun`, …);
    /// on a GPU with the `nccl` feature, the ranks then sum over NCCL.
    #[cfg(feature = "mpi")]
    pub fn join(timeout: Duration, device: &candle_core::Device) -> Result<Ranks, Fail> {
        let (mpi, fin) = mtl::distributed::mpi::Mpi::init(timeout).map_err(joining)?;
        share_cores(mpi.size());
        let mpi: Comm = Arc::new(mpi);
        let place = (mpi.rank(), mpi.size());
        let comm = gpu_comm(device, place, timeout, |b| mpi.broadcast(b, 0))?;
        Ok(Ranks {
            comm: Some(comm.unwrap_or_else(|| mpi.clone())),
            _mpi: Some(mpi),
            _finalize: Some(fin),
        })
    }

    /// Without MPI, only one rank can start (NCCL on one GPU).
    #[cfg(not(feature = "mpi"))]
    pub fn join(timeout: Duration, device: &candle_core::Device) -> Result<Ranks, Fail> {
        let size = launcher_size();
        let none = "this mtl was built without MPI; build it with the `mpi` feature (the default; it needs `apt-get install libopenmpi-dev libclang-dev`)";
        if size > 1 {
            return Err(Fail::usage(format!(
                "error: --distributed: {size} ranks: {none}"
            )));
        }
        match gpu_comm(device, (0, 1), timeout, |_| Ok(()))? {
            Some(comm) => Ok(Ranks { comm: Some(comm) }),
            None => Err(Fail::usage(format!("error: --distributed: {none}"))),
        }
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
    // Does nothing if the pool exists already; then it keeps its size.
    mtl::kernels::par::adopt_caller(Some((cores / local).max(1)));
}

/// The NCCL collective for a GPU device (feature `nccl`); `None` on a CPU.
#[cfg(feature = "nccl")]
fn gpu_comm(
    device: &candle_core::Device,
    place: (usize, usize),
    timeout: Duration,
    exchange: impl FnOnce(&mut Vec<u8>) -> Result<(), mtl::distributed::CommError>,
) -> Result<Option<Comm>, Fail> {
    if !device.is_cuda() {
        return Ok(None);
    }
    let nccl =
        mtl::distributed::nccl::Nccl::init(device, place, timeout, exchange).map_err(joining)?;
    Ok(Some(Arc::new(nccl)))
}

/// Without NCCL a GPU run sums through host memory over MPI.
#[cfg(not(feature = "nccl"))]
fn gpu_comm(
    _device: &candle_core::Device,
    _place: (usize, usize),
    _timeout: Duration,
    _exchange: impl FnOnce(&mut Vec<u8>) -> Result<(), mtl::distributed::CommError>,
) -> Result<Option<Comm>, Fail> {
    Ok(None)
}

/// The number of ranks a launcher started, from its environment (1 if none).
#[cfg(not(feature = "mpi"))]
fn launcher_size() -> usize {
    env_number(&[
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "SLURM_NTASKS",
        "WORLD_SIZE",
    ])
    .unwrap_or(1)
}

fn env_number(keys: &[&str]) -> Option<usize> {
    keys.iter()
        .find_map(|k| std::env::var(k).ok()?.parse::<usize>().ok())
}

/// This rank's index among the ranks on its machine (picks its GPU).
pub fn local_rank() -> Option<usize> {
    env_number(&[
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
        "LOCAL_RANK",
    ])
}

#[derive(clap::Args)]
pub struct CollectiveArgs {
    /// Floats in each timed all-reduce (4 bytes each).
    #[arg(long, default_value_t = 1 << 22)]
    floats: usize,
    /// Timed all-reduces.
    #[arg(long, default_value_t = 20)]
    repeats: usize,
    /// How long one collective may wait for the other ranks (seconds).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    timeout: u64,
    #[command(flatten)]
    device: super::DeviceArgs,
    #[arg(long)]
    json: bool,
}

/// `mtl collective`: checks the data-parallel transport the way training
/// uses it and times its all-reduce (as nccl-tests does), on the device
/// given: every rank must agree on every result.
pub fn collective(mut a: CollectiveArgs) -> Result<i32, Fail> {
    a.device.per_rank(local_rank());
    let device = a.device.open()?;
    let ranks = Ranks::join(Duration::from_secs(a.timeout.max(1)), &device)?;
    mtl::kernels::par::adopt_caller(None);
    collective_checks(&ranks, &a, &device).map_err(|f| ranks.fail(f))
}

fn collective_checks(
    ranks: &Ranks,
    a: &CollectiveArgs,
    device: &candle_core::Device,
) -> Result<i32, Fail> {
    use candle_core::{Tensor, Var};
    let comm = ranks
        .comm
        .as_ref()
        .ok_or_else(|| Fail::usage("error: no collective"))?;
    let (rank, size) = (comm.rank(), comm.size());
    let f = |e: candle_core::Error| Fail::model(format!("error: rank {rank}: {e}"));
    let c = |e: mtl::distributed::CommError| Fail::model(format!("error: {e}"));
    let wrong = |what: &str, got: String| {
        Fail::model(format!("error: rank {rank} of {size}: {what}: got {got}"))
    };
    let whole = (size * (size + 1) / 2) as f32;
    // Gradients' path: a device tensor summed over ranks.
    let n = a.floats.max(1);
    let x = Tensor::full((rank + 1) as f32, n, device).map_err(f)?;
    let s = comm.all_reduce_tensor(&x).map_err(f)?;
    let v: Vec<f32> = s.to_vec1().map_err(f)?;
    if v.iter().any(|e| *e != whole) {
        return Err(wrong(
            "all-reduce of a tensor",
            format!("{:?}…", &v[..v.len().min(4)]),
        ));
    }
    // Losses and counts; metric bytes; a barrier.
    let mut h = [rank as f64, 1.0];
    comm.all_reduce_f64(&mut h).map_err(c)?;
    if h != [(size * (size - 1) / 2) as f64, size as f64] {
        return Err(wrong("all-reduce of host values", format!("{h:?}")));
    }
    for root in [0, size - 1] {
        let mut b = if rank == root {
            format!("from rank {root}").into_bytes()
        } else {
            vec![]
        };
        comm.broadcast(&mut b, root).map_err(c)?;
        if b != format!("from rank {root}").into_bytes() {
            return Err(wrong("broadcast", String::from_utf8_lossy(&b).into_owned()));
        }
    }
    comm.barrier(Duration::from_secs(a.timeout.max(1)))
        .map_err(c)?;
    // Synchronized batch norm's op: forward and backward both summed.
    let var =
        Var::from_tensor(&Tensor::full((rank + 1) as f32, 4, device).map_err(f)?).map_err(f)?;
    let y = mtl::distributed::all_reduce::all_reduce(var.as_tensor(), comm).map_err(f)?;
    let grads = y.sum_all().map_err(f)?.backward().map_err(f)?;
    let (fwd, bwd): (Vec<f32>, Vec<f32>) = (
        y.to_vec1().map_err(f)?,
        grads
            .get(var.as_tensor())
            .ok_or_else(|| wrong("differentiable all-reduce", "no gradient".into()))?
            .to_vec1()
            .map_err(f)?,
    );
    if fwd.iter().any(|e| *e != whole) || bwd.iter().any(|e| *e != size as f32) {
        return Err(wrong(
            "differentiable all-reduce",
            format!("{fwd:?} / {bwd:?}"),
        ));
    }
    // Timing: repeats of the tensor all-reduce, after one warm-up above.
    let start = std::time::Instant::now();
    for _ in 0..a.repeats.max(1) {
        let s = comm.all_reduce_tensor(&x).map_err(f)?;
        s.sum_all().map_err(f)?.to_scalar::<f32>().map_err(f)?;
    }
    let secs = start.elapsed().as_secs_f64() / a.repeats.max(1) as f64;
    let gbps = (n * 4) as f64 / secs / 1e9;
    if rank == 0 {
        let transport = if device.is_cuda() && cfg!(feature = "nccl") {
            "nccl"
        } else {
            "mpi"
        };
        if a.json {
            println!(
                "{}",
                serde_json::json!({"transport": transport, "ranks": size, "device": format!("{device:?}"),
                    "floats": n, "ms_per_all_reduce": secs * 1e3, "algorithm_gb_per_s": gbps, "checks": "passed"})
            );
        } else {
            println!("{transport}, {size} rank(s) on {device:?}: every check passed (tensor and host all-reduce, broadcast, barrier, differentiable all-reduce forward and backward)");
            println!(
                "all-reduce of {n} floats: {:.3} ms, {gbps:.2} GB/s (algorithm bandwidth)",
                secs * 1e3
            );
        }
    }
    Ok(0)
}
