//! Data-parallel training: every rank holds the same weights, computes the
//! gradients of its rows of each global batch, and the ranks sum them before
//! the same optimizer step everywhere (as Horovod and PyTorch DDP do).
//!
//! The transport is an engine users already run, behind [`Collective`]: MPI
//! on CPUs (`mpi`, feature `mpi`) and NCCL on GPUs (`nccl`, feature `nccl`,
//! started over MPI). The rest of mtl sees only the trait, a
//! [`Part`] (which rows of a batch this rank holds) and the helpers here.
//!
//! What makes a run with N ranks equal a run with one, up to the order of
//! floating-point sums:
//! - every rank draws the same shuffled order and the same random numbers;
//!   per-sample draws (dropout, modality dropout) are made for the whole
//!   batch and each rank keeps its own rows ([`Part::keep`]);
//! - a head's loss is divided by the global batch, so the ranks' gradients
//!   add up to the single process's ([`Part::share`]);
//! - training batch norm reduces its statistics over ranks, forward and
//!   backward ([`batch_norm`]);
//! - per-task gradients, loss values and label counts are summed before any
//!   gradient method or weighting reads them; metrics are merged.

pub mod all_reduce;
pub mod batch_norm;
pub mod local;
#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;

use candle_core::{Device, Tensor};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// A shared handle on the run's transport (autograd ops keep one).
pub type Comm = Arc<dyn Collective>;

/// A collective operation that failed or did not finish in time.
#[derive(Debug, Clone)]
pub struct CommError(pub String);

impl std::fmt::Display for CommError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl CommError {
    /// A collective of `rank` of `size` that waited `waited` in vain.
    pub fn timed_out(rank: usize, size: usize, what: &str, waited: Duration) -> CommError {
        CommError(format!(
            "rank {rank} of {size}: {what} waited {} s for the other ranks: one of them died or stalled (a longer wait: --timeout SECS)",
            waited.as_secs()
        ))
    }
}

impl From<CommError> for candle_core::Error {
    fn from(e: CommError) -> Self {
        candle_core::Error::Msg(e.0)
    }
}

/// What data-parallel training needs from a transport. Every rank calls the
/// same collectives in the same order; a call that waits longer than the
/// transport's timeout fails instead of hanging (a rank died or stalled).
pub trait Collective: Send + Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Element-wise sum over ranks, in place; every rank gets the sum.
    fn all_reduce_f32(&self, buf: &mut [f32]) -> Result<(), CommError>;
    fn all_reduce_f64(&self, buf: &mut [f64]) -> Result<(), CommError>;
    /// `root`'s bytes on every rank.
    fn broadcast(&self, buf: &mut Vec<u8>, root: usize) -> Result<(), CommError>;
    /// Waits for every rank, at most `patience` (setup waits longer than a step).
    fn barrier(&self, patience: Duration) -> Result<(), CommError>;
    /// Ends the processes of every rank: after an error on this one, the
    /// others would otherwise wait in their next collective.
    fn abort(&self, code: i32) -> !;

    /// The sum over ranks of a tensor, on its device (through host memory;
    /// a device transport overrides this).
    fn all_reduce_tensor(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        all_reduce_on_host(self, t)
    }
}

/// The sum over ranks of a tensor through host memory, back on its device.
pub fn all_reduce_on_host<C: Collective + ?Sized>(
    comm: &C,
    t: &Tensor,
) -> candle_core::Result<Tensor> {
    let mut v = t
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?;
    comm.all_reduce_f32(&mut v)?;
    Tensor::from_vec(v, t.shape(), t.device())?.to_dtype(t.dtype())
}

/// The rows `rank` holds of a batch of `len`: contiguous, sizes differing by
/// at most one.
pub fn rows(len: usize, rank: usize, size: usize) -> Range<usize> {
    let size = size.max(1);
    (rank * len / size)..((rank + 1) * len / size)
}

/// This rank's share of one global batch.
#[derive(Clone, Copy)]
pub struct Part<'a> {
    /// The first of its rows in the global batch, and the batch's size.
    pub offset: usize,
    pub len: usize,
    pub total: usize,
    /// `None` when every rank runs the whole batch (fewer rows than ranks).
    pub comm: Option<&'a Comm>,
}

impl<'a> Part<'a> {
    /// The part of a batch of `total` rows `comm`'s rank holds; with fewer
    /// rows than ranks, every rank runs them all, without collectives.
    pub fn of(total: usize, comm: Option<&'a Comm>) -> Part<'a> {
        match comm.filter(|c| c.size() > 1 && total >= c.size()) {
            Some(c) => {
                let r = rows(total, c.rank(), c.size());
                Part {
                    offset: r.start,
                    len: r.len(),
                    total,
                    comm: Some(c),
                }
            }
            None => Part {
                offset: 0,
                len: total,
                total,
                comm: None,
            },
        }
    }

    /// This rank's rows of the batch.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len
    }

    /// Whether the batch is split over ranks.
    pub fn split(&self) -> bool {
        self.comm.is_some()
    }

    /// The fraction of a batch-mean loss this rank contributes.
    pub fn share(&self) -> f64 {
        self.len as f64 / self.total.max(1) as f64
    }

    /// Keeps this rank's rows of per-sample draws: `draw` is called for
    /// every row of the whole batch (`per` values each), so the random
    /// stream advances as in one process and each rank sees its own rows'.
    pub fn keep<T>(&self, per: usize, mut draw: impl FnMut() -> T) -> Vec<T> {
        let mut out = Vec::with_capacity(self.len * per);
        for i in 0..self.total * per {
            let v = draw();
            if (self.offset * per..(self.offset + self.len) * per).contains(&i) {
                out.push(v);
            }
        }
        out
    }
}

/// Sums gradients over ranks in one fused buffer; `None` stays `None` (the
/// graph, hence which parameters get a gradient, is the same on every rank).
pub fn all_reduce_grads(
    comm: Option<&dyn Collective>,
    grads: Vec<Option<Tensor>>,
) -> candle_core::Result<Vec<Option<Tensor>>> {
    let Some(comm) = comm.filter(|c| c.size() > 1) else {
        return Ok(grads);
    };
    let present: Vec<&Tensor> = grads.iter().flatten().collect();
    if present.is_empty() {
        return Ok(grads);
    }
    let dev: Device = present[0].device().clone();
    let flat: Vec<Tensor> = present
        .iter()
        .map(|g| g.flatten_all()?.to_dtype(candle_core::DType::F32))
        .collect::<candle_core::Result<_>>()?;
    let summed = comm.all_reduce_tensor(&Tensor::cat(&flat, 0)?.to_device(&dev)?)?;
    let mut at = 0;
    grads
        .into_iter()
        .map(|g| {
            g.map(|g| {
                let n = g.elem_count();
                let s = summed
                    .narrow(0, at, n)?
                    .reshape(g.shape())?
                    .to_dtype(g.dtype());
                at += n;
                s
            })
            .transpose()
        })
        .collect()
}

/// Every rank's bytes, in rank order, on every rank.
pub fn all_gather_bytes(comm: &dyn Collective, own: Vec<u8>) -> Result<Vec<Vec<u8>>, CommError> {
    (0..comm.size())
        .map(|r| {
            let mut b = if r == comm.rank() {
                own.clone()
            } else {
                vec![]
            };
            comm.broadcast(&mut b, r)?;
            Ok(b)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_cover_the_batch_once_in_order() {
        for len in [2usize, 3, 7, 32, 33] {
            for size in [1usize, 2, 3] {
                let parts: Vec<Range<usize>> = (0..size).map(|r| rows(len, r, size)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[size - 1].end, len);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len().abs_diff(w[1].len()) <= 1);
                }
            }
        }
    }

    #[test]
    fn kept_draws_are_the_whole_batch_draws_of_own_rows() {
        use rand::{Rng, SeedableRng};
        let comms: Vec<Comm> = local::group(2)
            .into_iter()
            .map(|c| Arc::new(c) as Comm)
            .collect();
        let whole: Vec<f32> = {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            (0..5 * 3).map(|_| rng.random::<f32>()).collect()
        };
        let mut joined = vec![];
        for c in &comms {
            let part = Part::of(5, Some(c));
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            joined.extend(part.keep(3, || rng.random::<f32>()));
            // The stream continues where one process's would.
            let next: f32 = rng.random();
            let mut one = rand::rngs::StdRng::seed_from_u64(7);
            (0..15).for_each(|_| {
                one.random::<f32>();
            });
            assert_eq!(next, one.random::<f32>());
        }
        assert_eq!(joined, whole);
        // One row, two ranks: both run it whole.
        let p = Part::of(1, Some(&comms[1]));
        assert_eq!((p.range(), p.split()), (0..1, false));
    }
}
