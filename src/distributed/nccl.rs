//! The NCCL transport: one process per GPU (feature `nccl`). Gradients are
//! summed in device memory; the host-side collectives (loss values, counts,
//! metric bytes) go through small device buffers.
//!
//! NCCL starts from a unique id that rank 0 makes and every rank must get:
//! the caller passes it over MPI (`exchange`), as Horovod does; one rank
//! needs no exchange. A collective that does not finish within the timeout
//! is an error, as with MPI (the stream is polled through an event).

use super::{Collective, CommError};
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, NcclType, ReduceOp};
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Handle(Comm);

// SAFETY: a NCCL communicator may be used from any thread, one call at a
// time; every use goes through the mutex in `Nccl`.
unsafe impl Send for Handle {}

pub struct Nccl {
    comm: Mutex<Handle>,
    device: CudaDevice,
    rank: usize,
    size: usize,
    timeout: Duration,
}

fn err(what: &str, e: impl std::fmt::Debug) -> CommError {
    CommError(format!("NCCL: {what}: {e:?}"))
}

impl Nccl {
    /// Rank `rank` of `size` on `device`. `exchange` gives every rank rank
    /// 0's bytes (the id).
    pub fn init(
        device: &Device,
        (rank, size): (usize, usize),
        timeout: Duration,
        exchange: impl FnOnce(&mut Vec<u8>) -> Result<(), CommError>,
    ) -> Result<Nccl, CommError> {
        let Device::Cuda(dev) = device else {
            return Err(CommError(
                "NCCL runs on GPUs: pass --device cuda:LOCAL_RANK".into(),
            ));
        };
        let mut bytes: Vec<u8> = if rank == 0 {
            let id = Id::new().map_err(|e| err("making the unique id", e))?;
            id.internal().iter().map(|c| *c as u8).collect()
        } else {
            vec![]
        };
        exchange(&mut bytes)?;
        let mut internal = [0 as std::ffi::c_char; 128];
        if bytes.len() != internal.len() {
            return Err(CommError(format!(
                "NCCL: the unique id has {} bytes, not 128",
                bytes.len()
            )));
        }
        for (i, b) in internal.iter_mut().zip(&bytes) {
            *i = *b as std::ffi::c_char;
        }
        let comm = Comm::from_rank(dev.cuda_stream(), rank, size, Id::uninit(internal))
            .map_err(|e| err("joining the communicator", e))?;
        Ok(Nccl {
            comm: Mutex::new(Handle(comm)),
            device: dev.clone(),
            rank,
            size,
            timeout,
        })
    }

    fn comm(&self) -> Result<std::sync::MutexGuard<'_, Handle>, CommError> {
        self.comm
            .lock()
            .map_err(|_| CommError("a thread panicked inside a NCCL call".into()))
    }

    /// Waits for the stream's work so far, at most the timeout.
    fn wait(&self, what: &str) -> Result<(), CommError> {
        let event = self
            .device
            .cuda_stream()
            .record_event(None)
            .map_err(|e| err(what, e))?;
        let start = Instant::now();
        loop {
            match event.try_is_complete() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(err(what, e)),
            }
            if start.elapsed() > self.timeout {
                return Err(CommError::timed_out(
                    self.rank,
                    self.size,
                    what,
                    self.timeout,
                ));
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }

    /// Sums a host buffer over ranks through device memory.
    fn sum_host<T: NcclType + DeviceRepr + ValidAsZeroBits + Copy + 'static>(
        &self,
        host: &mut [T],
        what: &str,
    ) -> Result<(), CommError> {
        if host.is_empty() {
            return Ok(());
        }
        let dev = &self.device;
        let send = dev.clone_htod(&*host).map_err(|e| err(what, e))?;
        let mut recv = dev.alloc_zeros::<T>(host.len()).map_err(|e| err(what, e))?;
        self.comm()?
            .0
            .all_reduce(&send, &mut recv, &ReduceOp::Sum)
            .map_err(|e| err(what, e))?;
        self.wait(what)?;
        let v = dev.clone_dtoh(&recv).map_err(|e| err(what, e))?;
        host.copy_from_slice(&v);
        Ok(())
    }

    fn broadcast_host(&self, host: &mut [u8], root: usize) -> Result<(), CommError> {
        if host.is_empty() {
            return Ok(());
        }
        let dev = &self.device;
        let what = "a broadcast";
        let send = dev.clone_htod(&*host).map_err(|e| err(what, e))?;
        let mut recv = dev
            .alloc_zeros::<u8>(host.len())
            .map_err(|e| err(what, e))?;
        self.comm()?
            .0
            .broadcast(Some(&send), &mut recv, root as i32)
            .map_err(|e| err(what, e))?;
        self.wait(what)?;
        let v = dev.clone_dtoh(&recv).map_err(|e| err(what, e))?;
        host.copy_from_slice(&v);
        Ok(())
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_f32(&self, buf: &mut [f32]) -> Result<(), CommError> {
        self.sum_host(buf, "an all-reduce")
    }
    fn all_reduce_f64(&self, buf: &mut [f64]) -> Result<(), CommError> {
        self.sum_host(buf, "an all-reduce of losses and counts")
    }
    fn broadcast(&self, buf: &mut Vec<u8>, root: usize) -> Result<(), CommError> {
        let mut len = (buf.len() as u64).to_le_bytes();
        self.broadcast_host(&mut len, root)?;
        buf.resize(u64::from_le_bytes(len) as usize, 0);
        self.broadcast_host(buf, root)
    }
    fn barrier(&self, _patience: Duration) -> Result<(), CommError> {
        self.sum_host(&mut [0f32], "a barrier")
    }
    fn abort(&self, code: i32) -> ! {
        // The launcher ends the other ranks when one exits with an error.
        std::process::exit(code)
    }
    fn all_reduce_tensor(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        if !t.device().is_cuda() {
            return super::all_reduce_on_host(self, t);
        }
        let f = t.to_dtype(candle_core::DType::F32)?.contiguous()?;
        f.apply_op1_no_bwd(&DeviceSum(self))?.to_dtype(t.dtype())
    }
}

/// The sum over ranks of a device tensor, in device memory.
struct DeviceSum<'a>(&'a Nccl);

impl CustomOp1 for DeviceSum<'_> {
    fn name(&self) -> &'static str {
        "mtl-nccl-sum"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the NCCL sum runs on GPU tensors")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let what = "a gradient all-reduce";
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("the NCCL sum takes contiguous tensors")
        };
        let src = s.as_cuda_slice::<f32>()?.slice(a..b);
        let mut out = s.device.alloc_zeros::<f32>(b - a)?;
        self.0
            .comm()?
            .0
            .all_reduce(&src, &mut out, &ReduceOp::Sum)
            .map_err(|e| err(what, e))?;
        self.0.wait(what)?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, s.device.clone()),
            l.shape().clone(),
        ))
    }
}
