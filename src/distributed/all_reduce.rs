//! The sum of a tensor over ranks as a differentiable op: each rank's loss
//! depends on every rank's input through the sum, so the gradient reaching
//! a rank's input is the sum over ranks of the gradients at the output.
//! Every rank runs the same backward graph, so the backward collectives
//! meet in the same order.

use super::Comm;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// Σ over ranks; its backward is Σ over ranks too.
pub struct AllReduce {
    pub comm: Comm,
}

/// `t` summed over `comm`'s ranks, with the gradient flowing back to every rank.
pub fn all_reduce(t: &Tensor, comm: &Comm) -> Result<Tensor> {
    t.contiguous()?.apply_op1(AllReduce { comm: comm.clone() })
}

impl CustomOp1 for AllReduce {
    fn name(&self) -> &'static str {
        "mtl-all-reduce"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut v = crate::kernels::host::contiguous(s, l)?.to_vec();
        self.comm.all_reduce_f32(&mut v)?;
        Ok((CpuStorage::F32(v), l.shape().clone()))
    }

    /// Through host memory: the transport sums host buffers (NCCL's own
    /// device path is [`Collective::all_reduce_tensor`]; the values here
    /// are a few per channel).
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("all-reduce: contiguous tensors only")
        };
        let dev = &s.device;
        let mut v: Vec<f32> = dev.clone_dtoh(&s.as_cuda_slice::<f32>()?.slice(a..b))?;
        self.comm.all_reduce_f32(&mut v)?;
        let out = dev.clone_htod(&v)?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev.clone()),
            l.shape().clone(),
        ))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.comm.all_reduce_tensor(grad)?))
    }
}
