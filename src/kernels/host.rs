//! Reading tensor data in our CPU kernels without copying it out of candle.

use candle_core::{CpuStorage, InplaceOp1, Layout, Result, Storage, StorageRef, Tensor};
use std::cell::RefCell;

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

/// `f` of a contiguous f32 CPU tensor's elements, written in place (the
/// storage is write-locked while `f` runs, so every tensor sharing it sees
/// the change). Nests: `f` may update another tensor the same way.
pub fn with_host_mut<R>(t: &Tensor, f: impl FnOnce(&mut [f32]) -> Result<R>) -> Result<R> {
    let op = InPlace {
        f: RefCell::new(Some(f)),
        out: RefCell::new(None),
    };
    t.inplace_op1(&op)?;
    op.out
        .into_inner()
        .unwrap_or_else(|| candle_core::bail!("in-place update did not run"))
}

struct InPlace<F, R> {
    f: RefCell<Option<F>>,
    out: RefCell<Option<Result<R>>>,
}

impl<F: FnOnce(&mut [f32]) -> Result<R>, R> InplaceOp1 for InPlace<F, R> {
    fn name(&self) -> &'static str {
        "mtl-in-place"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let (CpuStorage::F32(data), Some((a, b))) = (s, l.contiguous_offsets()) else {
            candle_core::bail!("in-place update of a strided or non-f32 tensor")
        };
        let f = self.f.borrow_mut().take();
        if let Some(f) = f {
            *self.out.borrow_mut() = Some(f(&mut data[a..b]));
        }
        Ok(())
    }
}
