//! Reading tensor data in our CPU kernels without copying it out of candle.

use candle_core::{CpuStorage, Layout, Result, Storage, StorageRef, Tensor};

/// The f32 elements of a contiguous CPU storage view.
pub fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("own CPU kernels expect contiguous inputs"),
    }
}

/// A tensor's elements in row-major order: borrowed from its storage when
/// contiguous on the CPU (a read lock is held while the view lives), else a copy.
pub enum HostView<'a> {
    Borrowed(StorageRef<'a>, usize, usize),
    Owned(Vec<f32>),
}

impl std::ops::Deref for HostView<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            HostView::Borrowed(s, a, b) => match &**s {
                // Checked to be F32 CPU storage when built.
                Storage::Cpu(CpuStorage::F32(v)) => &v[*a..*b],
                _ => &[],
            },
            HostView::Owned(v) => v,
        }
    }
}

pub fn host(t: &Tensor) -> Result<HostView<'_>> {
    let (s, l) = t.storage_and_layout();
    if let (Storage::Cpu(CpuStorage::F32(_)), Some((a, b))) = (&*s, l.contiguous_offsets()) {
        return Ok(HostView::Borrowed(s, a, b));
    }
    drop(s);
    Ok(HostView::Owned(t.detach().flatten_all()?.to_vec1::<f32>()?))
}
