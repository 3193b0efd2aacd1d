//! Moving tensor data between candle and our CPU kernels' plain buffers.

use candle_core::{CpuStorage, Layout, Result, Tensor};

/// The f32 elements of a contiguous CPU storage view, copied out.
pub fn contiguous(s: &CpuStorage, l: &Layout) -> Result<Vec<f32>> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(data[a..b].to_vec()),
        None => candle_core::bail!("own CPU kernels expect contiguous inputs"),
    }
}

/// A tensor's elements in row-major order (any layout), detached.
pub fn host(t: &Tensor) -> Result<Vec<f32>> {
    t.detach().flatten_all()?.to_vec1::<f32>()
}
