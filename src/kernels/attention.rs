//! Scaled dot-product attention as one CPU op with its own backward, per
//! (sample, head) block: scores, mask, softmax and the weighted sum in one
//! pass, the probabilities kept for backward only in training. Through
//! candle's autograd the same was a batched product, a transpose copy, the
//! mask addition, five softmax ops and a second product, each with its
//! backward and its own [B, H, Tq, Tk] tensor.
//!
//! Forward, per block: S = scale·Q·Kᵀ; S += −1e9 where a (query, key) pair
//! is not allowed (Keras's masked softmax); P = softmax(S) by rows; O = P·V.
//! Backward: dV = Pᵀ·dO; dP = dO·Vᵀ; dS = P ⊙ (dP − rowsum(dP ⊙ P));
//! dQ = scale·dS·K; dK = scale·dSᵀ·Q.

use super::gemm::{matmul, View};
use super::host::{contiguous, host};
use super::lanes::{lane_blocks, LANES};
use super::math::exp_fast;
use super::{par, scratch};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

pub struct Sdpa {
    pub scale: f32,
    /// 1 where query i may attend to key j, 0 elsewhere: [B, Tq, Tk], shared
    /// by the heads of a sample; `None` allows every pair.
    pub allowed: Option<Vec<f32>>,
    /// The same mask as a [B, Tq, Tk] tensor on a GPU ([`Sdpa::with_mask`]),
    /// which its CUDA code reads there.
    mask: Option<Tensor>,
    /// Keep P for backward (training).
    pub train: bool,
    probs: Mutex<Option<Vec<f32>>>,
    /// On CUDA, P kept for backward.
    #[cfg(feature = "cuda")]
    kept: Mutex<Option<Tensor>>,
}

/// The most keys and the widest key or value rows the GPU path's fused
/// attention takes (its CUDA code keeps a row's scores in shared memory).
pub fn fits_gpu(tk: usize, kd: usize, vd: usize) -> bool {
    tk <= 8192 && kd <= 1024 && vd <= 1024
}

impl Sdpa {
    pub fn new(scale: f32, allowed: Option<Vec<f32>>, train: bool) -> Self {
        Sdpa {
            scale,
            allowed,
            mask: None,
            train,
            probs: Mutex::new(None),
            #[cfg(feature = "cuda")]
            kept: Mutex::new(None),
        }
    }

    /// The op with its mask as a 0/1 [B, Tq, Tk] tensor where it was built
    /// (the GPU path builds it on the device, so that no step waits for a
    /// copy to the host); a mask on the CPU is read into the host form.
    pub fn with_mask(scale: f32, mask: Option<Tensor>, train: bool) -> Result<Self> {
        let mut op = Sdpa::new(scale, None, train);
        match mask {
            Some(m) if m.device().is_cpu() => op.allowed = Some(m.flatten_all()?.to_vec1()?),
            m => op.mask = m,
        }
        Ok(op)
    }
}

/// Block geometry: (B, H, Tq, Tk, K, V).
fn dims(q: &Shape, k: &Shape, v: &Shape) -> Result<(usize, usize, usize, usize, usize, usize)> {
    let (b, h, tq, kd) = q.dims4()?;
    let (b2, h2, tk, kd2) = k.dims4()?;
    let (b3, h3, tk2, vd) = v.dims4()?;
    if (b, h, kd, tk) != (b2, h2, kd2, tk2) || (b, h) != (b3, h3) || tq * tk == 0 {
        candle_core::bail!("attention: q {q:?}, k {k:?} and v {v:?} do not fit")
    }
    Ok((b, h, tq, tk, kd, vd))
}

fn view(data: &[f32], rows: usize, cols: usize) -> View<'_> {
    View {
        data,
        rows,
        cols,
        rs: cols,
        cs: 1,
    }
}

/// The transpose of a row-major [rows, cols] block, as a strided view.
fn view_t(data: &[f32], rows: usize, cols: usize) -> View<'_> {
    View {
        data,
        rows: cols,
        cols: rows,
        rs: 1,
        cs: cols,
    }
}

impl Sdpa {
    /// P of one block: softmax(scale·Q·Kᵀ + mask) by rows, written into `p`.
    fn probs_of(
        &self,
        q: &[f32],
        k: &[f32],
        mask: Option<&[f32]>,
        d: (usize, usize, usize),
        p: &mut [f32],
    ) {
        let (tq, tk, kd) = d;
        matmul(p, tk, false, view(q, tq, kd), view_t(k, tk, kd));
        for (i, row) in p.chunks_mut(tk).enumerate() {
            self.softmax_row(row, mask.map(|m| &m[i * tk..(i + 1) * tk]));
        }
    }

    /// One row of scores (Q·Kᵀ, unscaled) into its probabilities: scaled,
    /// masked, softmax.
    #[inline(always)]
    fn softmax_row(&self, row: &mut [f32], allowed: Option<&[f32]>) {
        row.iter_mut().for_each(|s| *s *= self.scale);
        if let Some(m) = allowed {
            for (s, a) in row.iter_mut().zip(m) {
                *s += (a - 1.0) * 1e9;
            }
        }
        // The max in lanes (one f32 fold ran scalar). The sum stays one
        // sequential fold: in lanes it moved BERT's outputs past the 1e-4
        // of tests/pretrained.rs against `transformers`.
        let mx = par::lane_max(row);
        // The exponentials as one pass of their own, which vectorizes;
        // summed in the same pass, they ran one libm `expf` call at a
        // time (5% of `captions`' inference on one thread).
        row.iter_mut().for_each(|s| *s = exp_fast(*s - mx));
        let sum: f32 = row.iter().sum();
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|s| *s *= inv);
    }
}

/// Keys short enough for [`Sdpa::forward_rows_into`]: a head's Kᵀ (`tk`·`kd`
/// floats) stays in L1 while every query row reads it.
pub fn short_keys(tk: usize, kd: usize) -> bool {
    tk <= 64 && tk * kd <= 4096
}

impl Sdpa {
    /// The inference forward read from and written to token rows, heads side
    /// by side as the projections produce them and the output projection
    /// reads them: q [B, Tq, H·K], k [B, Tk, H·K], v [B, Tk, H·V] → out
    /// [B, Tq, H·V]. For [`short_keys`]: there a GEMM call per (sample, head)
    /// block of 16 × 16 × 16 cost more than its arithmetic, and splitting
    /// the rows into heads and back took three copies in and one out
    /// (together a third of `captions`' attention, `perf`). Here each head's
    /// Kᵀ is gathered once into a small buffer and each query row's scores,
    /// softmax and weighted sum of V rows are loops over a row.
    pub fn forward_rows_into(
        &self,
        (q, k, v): (&[f32], &[f32], &[f32]),
        (b, h, tq, tk, kd, vd): (usize, usize, usize, usize, usize, usize),
        out: &mut [f32],
    ) {
        let (hk, hv) = (h * kd, h * vd);
        let big = b * h * tq * tk * (kd + vd) >= par::MIN_MACS;
        // Kᵀ in blocks of LANES keys, [⌈tk/LANES⌉, kd, LANES], the last block
        // padded with zero keys whose scores are computed and dropped: every
        // score row is whole vectors accumulated in registers.
        let blocks = tk.div_ceil(LANES);
        let sample = |bi: usize, o: &mut [f32]| {
            let qs = &q[bi * tq * hk..][..tq * hk];
            let ks = &k[bi * tk * hk..][..tk * hk];
            let vs = &v[bi * tk * hv..][..tk * hv];
            let mask = self
                .allowed
                .as_deref()
                .map(|m| &m[bi * tq * tk..][..tq * tk]);
            scratch::with([blocks * kd * LANES, blocks * LANES], |[kt, s]| {
                par::widest(
                    #[inline(always)]
                    || {
                        kt.fill(0.0);
                        for hi in 0..h {
                            for (j, kr) in ks.chunks_exact(hk).enumerate() {
                                let blk = &mut kt[(j / LANES) * kd * LANES + j % LANES..];
                                for (d, x) in kr[hi * kd..][..kd].iter().enumerate() {
                                    blk[d * LANES] = *x;
                                }
                            }
                            let rows = qs.chunks_exact(hk).zip(o.chunks_exact_mut(hv));
                            for (i, (qr, orow)) in rows.enumerate() {
                                let qh = &qr[hi * kd..][..kd];
                                for (sb, kb) in
                                    s.chunks_exact_mut(LANES).zip(kt.chunks_exact(kd * LANES))
                                {
                                    let mut acc = [0f32; LANES];
                                    for (a, kr) in qh.iter().zip(kb.chunks_exact(LANES)) {
                                        acc.iter_mut().zip(kr).for_each(|(s, k)| *s += a * k);
                                    }
                                    sb.copy_from_slice(&acc);
                                }
                                let s = &mut s[..tk];
                                self.softmax_row(s, mask.map(|m| &m[i * tk..][..tk]));
                                let od = &mut orow[hi * vd..][..vd];
                                lane_blocks(
                                    vd,
                                    #[inline(always)]
                                    |c0, whole| {
                                        let n = if whole { LANES } else { 1 };
                                        let mut acc = [0f32; LANES];
                                        for (pj, vr) in s.iter().zip(vs.chunks_exact(hv)) {
                                            let vr = &vr[hi * vd + c0..][..n];
                                            acc.iter_mut().zip(vr).for_each(|(o, v)| *o += pj * v);
                                        }
                                        od[c0..c0 + n].copy_from_slice(&acc[..n]);
                                    },
                                );
                            }
                        }
                    },
                )
            })
        };
        par::chunks_mut(out, tq * hv, big, sample);
    }
}

impl Sdpa {
    /// The forward of blocks [B, H, T, ·] into `out` [B, H, Tq, V], with the
    /// probabilities in `probs` [B, H, Tq, Tk]; the mask (if any) was checked
    /// to be [B, Tq, Tk].
    pub fn forward_into(
        &self,
        (q, k, v): (&[f32], &[f32], &[f32]),
        (b, h, tq, tk, kd, vd): (usize, usize, usize, usize, usize, usize),
        out: &mut [f32],
        probs: &mut [f32],
    ) {
        let big = b * h * tq * tk * (kd + vd) >= par::MIN_MACS;
        let block = |blk: usize, (o, p): (&mut [f32], &mut [f32])| {
            let mask = self
                .allowed
                .as_deref()
                .map(|m| &m[(blk / h) * tq * tk..(blk / h + 1) * tq * tk]);
            let qb = &q[blk * tq * kd..(blk + 1) * tq * kd];
            let kb = &k[blk * tk * kd..(blk + 1) * tk * kd];
            let vb = &v[blk * tk * vd..(blk + 1) * tk * vd];
            self.probs_of(qb, kb, mask, (tq, tk, kd), p);
            matmul(o, vd, false, view(p, tq, tk), view(vb, tk, vd));
        };
        if big {
            out.par_chunks_mut(tq * vd)
                .zip(probs.par_chunks_mut(tq * tk))
                .enumerate()
                .for_each(|(i, pair)| block(i, pair));
        } else {
            out.chunks_mut(tq * vd)
                .zip(probs.chunks_mut(tq * tk))
                .enumerate()
                .for_each(|(i, pair)| block(i, pair));
        }
    }
}

impl Sdpa {
    /// The gradients of Q, K and V [B, H, T, ·] (overwritten) from the
    /// output's `dout` [B, H, Tq, V] and the forward's probabilities.
    #[allow(clippy::type_complexity)]
    pub fn backward_into(
        &self,
        (q, k, v): (&[f32], &[f32], &[f32]),
        probs: &[f32],
        dout: &[f32],
        (b, h, tq, tk, kd, vd): (usize, usize, usize, usize, usize, usize),
        (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
    ) {
        let one = |blk: usize, ((dqb, dkb), dvb): ((&mut [f32], &mut [f32]), &mut [f32])| {
            let qb = &q[blk * tq * kd..(blk + 1) * tq * kd];
            let kb = &k[blk * tk * kd..(blk + 1) * tk * kd];
            let vb = &v[blk * tk * vd..(blk + 1) * tk * vd];
            let dob = &dout[blk * tq * vd..(blk + 1) * tq * vd];
            let p = &probs[blk * tq * tk..(blk + 1) * tq * tk];
            matmul(dvb, vd, false, view_t(p, tq, tk), view(dob, tq, vd));
            let mut ds = vec![0f32; tq * tk];
            matmul(&mut ds, tk, false, view(dob, tq, vd), view_t(vb, tk, vd));
            for (drow, prow) in ds.chunks_mut(tk).zip(p.chunks(tk)) {
                let dot: f32 = drow.iter().zip(prow).map(|(d, p)| d * p).sum();
                for (d, p) in drow.iter_mut().zip(prow) {
                    *d = p * (*d - dot) * self.scale;
                }
            }
            matmul(dqb, kd, false, view(&ds, tq, tk), view(kb, tk, kd));
            matmul(dkb, kd, false, view_t(&ds, tq, tk), view(qb, tq, kd));
        };
        if b * h * tq * tk * (kd + vd) >= par::MIN_MACS {
            dq.par_chunks_mut(tq * kd)
                .zip(dk.par_chunks_mut(tk * kd))
                .zip(dv.par_chunks_mut(tk * vd))
                .enumerate()
                .for_each(|(i, blk)| one(i, blk));
        } else {
            dq.chunks_mut(tq * kd)
                .zip(dk.chunks_mut(tk * kd))
                .zip(dv.chunks_mut(tk * vd))
                .enumerate()
                .for_each(|(i, blk)| one(i, blk));
        }
    }
}

impl CustomOp3 for Sdpa {
    fn name(&self) -> &'static str {
        "mtl-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, h, tq, tk, kd, vd) = dims(l1.shape(), l2.shape(), l3.shape())?;
        if self.mask.is_some() {
            candle_core::bail!("attention: a mask on a GPU for operands on the CPU")
        }
        let (q, k, v) = (
            contiguous(s1, l1)?,
            contiguous(s2, l2)?,
            contiguous(s3, l3)?,
        );
        if self
            .allowed
            .as_ref()
            .is_some_and(|m| m.len() != b * tq * tk)
        {
            candle_core::bail!("attention: the mask does not fit [{b}, {tq}, {tk}]")
        }
        let mut out = vec![0f32; b * h * tq * vd];
        let mut probs = vec![0f32; b * h * tq * tk];
        self.forward_into((q, k, v), (b, h, tq, tk, kd, vd), &mut out, &mut probs);
        if self.train {
            if let Ok(mut s) = self.probs.lock() {
                *s = Some(probs);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b, h, tq, vd))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dims = dims(l1.shape(), l2.shape(), l3.shape())?;
        let (b, h, tq, tk, kd, vd) = dims;
        if !fits_gpu(tk, kd, vd) || self.allowed.is_some() {
            candle_core::bail!(
                "attention on CUDA: {tk} keys of {kd} and {vd} (at most 8192 of 1024), mask on the device"
            )
        }
        let qkv = [(s1, l1), (s2, l2), (s3, l3)];
        let (out, probs) =
            super::attention_cuda::forward(qkv, self.mask.as_ref(), dims, self.scale, self.train)?;
        if let (Some(p), Ok(mut slot)) = (probs, self.kept.lock()) {
            *slot = Some(p);
        }
        Ok((out, Shape::from((b, h, tq, vd))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, h, tq, tk, kd, vd) = dims(q.shape(), k.shape(), v.shape())?;
        #[cfg(feature = "cuda")]
        if q.device().is_cuda() {
            let (dq, dk, dv) = self.cuda_bwd((q, k, v), grad, (b, h, tq, tk, kd, vd))?;
            return Ok((Some(dq), Some(dk), Some(dv)));
        }
        let (qv, kv, vv, dov) = (host(q)?, host(k)?, host(v)?, host(grad)?);
        let probs = match self.probs.lock().ok().and_then(|mut s| s.take()) {
            Some(p) => p,
            None => {
                // Recomputed (a second backward through the same graph).
                let mut p = vec![0f32; b * h * tq * tk];
                for (blk, pb) in p.chunks_mut(tq * tk).enumerate() {
                    let mask = self
                        .allowed
                        .as_deref()
                        .map(|m| &m[(blk / h) * tq * tk..(blk / h + 1) * tq * tk]);
                    let qb = &qv[blk * tq * kd..(blk + 1) * tq * kd];
                    let kb = &kv[blk * tk * kd..(blk + 1) * tk * kd];
                    self.probs_of(qb, kb, mask, (tq, tk, kd), pb);
                }
                p
            }
        };
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; qv.len()],
            vec![0f32; kv.len()],
            vec![0f32; vv.len()],
        );
        let dims = (b, h, tq, tk, kd, vd);
        self.backward_into(
            (&qv, &kv, &vv),
            &probs,
            &dov,
            dims,
            (&mut dq, &mut dk, &mut dv),
        );
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.dims(), dev)?),
            Some(Tensor::from_vec(dk, k.dims(), dev)?),
            Some(Tensor::from_vec(dv, v.dims(), dev)?),
        ))
    }
}

#[cfg(feature = "cuda")]
impl Sdpa {
    /// The backward on CUDA from the kept probabilities (recomputed when a
    /// backward finds none, as on the CPU).
    fn cuda_bwd(
        &self,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        grad: &Tensor,
        dims: (usize, usize, usize, usize, usize, usize),
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let kept = self.kept.lock().ok().and_then(|mut p| p.take());
        let probs = match kept {
            Some(p) => p,
            None => {
                let again = Sdpa::with_mask(self.scale, self.mask.clone(), true)?;
                q.contiguous()?
                    .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &again)?;
                let p = again.kept.lock().ok().and_then(|mut p| p.take());
                p.ok_or_else(|| candle_core::Error::Msg("attention: nothing kept".into()))?
            }
        };
        super::attention_cuda::backward((q, k, v), &probs, grad, dims, self.scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{assert_same_gradients, max_abs_diff as diff};
    use candle_core::{Device, Var, D};

    /// Output and the gradients of Q, K and V equal candle's composite form,
    /// with a padding-and-causal mask that leaves one row with no key.
    #[test]
    fn matches_candle_attention_forward_and_backward() {
        let dev = Device::Cpu;
        let (b, h, tq, tk, kd, vd) = (2, 3, 4, 5, 6, 2);
        let var =
            |s: &[usize]| Var::from_tensor(&Tensor::randn(0f32, 1.0, s, &dev).unwrap()).unwrap();
        let (q, k, v) = (
            var(&[b, h, tq, kd]),
            var(&[b, h, tk, kd]),
            var(&[b, h, tk, vd]),
        );
        let mut allowed = vec![1f32; b * tq * tk];
        for i in 0..tq {
            for j in 0..tk {
                if j > i + 1 || (i == 2 && j < 3) {
                    allowed[i * tk + j] = 0.0; // sample 0: causal, one row empty
                }
            }
        }
        allowed[tq * tk + 4] = 0.0; // sample 1: one padded key in row 0
        let scale = 0.4f32;
        let op = Sdpa::new(scale, Some(allowed.clone()), true);
        let ours = q
            .as_tensor()
            .apply_op3(k.as_tensor(), v.as_tensor(), op)
            .unwrap();
        let m = Tensor::from_vec(allowed, (b, 1, tq, tk), &dev).unwrap();
        let s =
            (q.as_tensor().matmul(&k.as_tensor().t().unwrap()).unwrap() * scale as f64).unwrap();
        let s = s
            .broadcast_add(&((m - 1.0).unwrap() * 1e9).unwrap())
            .unwrap();
        let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
        let theirs = p.matmul(v.as_tensor()).unwrap();
        assert!(diff(&ours, &theirs) < 1e-5, "forward");
        assert_same_gradients(&ours, &theirs, &[&q, &k, &v], 1e-4, "attention");
    }

    /// The token-row forward equals the blocked one on the same numbers
    /// split into heads, with a mask that leaves one query no key.
    #[test]
    fn rows_forward_matches_blocks() {
        let (b, h, tq, tk, kd, vd) = (3, 2, 5, 19, 7, 17);
        let rand = |n: usize, seed: u32| -> Vec<f32> {
            (0..n)
                .map(|i| {
                    (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 250.0 - 2.0
                })
                .collect()
        };
        let (q, k, v) = (
            rand(b * tq * h * kd, 1),
            rand(b * tk * h * kd, 2),
            rand(b * tk * h * vd, 3),
        );
        let mut allowed = rand(b * tq * tk, 4);
        allowed
            .iter_mut()
            .for_each(|a| *a = if *a > -1.0 { 1.0 } else { 0.0 });
        allowed[tq * tk..][..tk].fill(0.0);
        // [B, T, H, d] → [B, H, T, d]
        let split = |x: &[f32], t: usize, d: usize| {
            let mut y = vec![0f32; x.len()];
            for (xs, ys) in x.chunks(t * h * d).zip(y.chunks_mut(t * h * d)) {
                for ti in 0..t {
                    for hi in 0..h {
                        ys[(hi * t + ti) * d..][..d].copy_from_slice(&xs[(ti * h + hi) * d..][..d]);
                    }
                }
            }
            y
        };
        let op = Sdpa::new(0.3, Some(allowed), false);
        let dims = (b, h, tq, tk, kd, vd);
        let mut blocks = vec![0f32; b * h * tq * vd];
        let mut probs = vec![0f32; b * h * tq * tk];
        let heads = (
            &split(&q, tq, kd)[..],
            &split(&k, tk, kd)[..],
            &split(&v, tk, vd)[..],
        );
        op.forward_into(heads, dims, &mut blocks, &mut probs);
        let mut rows = vec![0f32; b * tq * h * vd];
        op.forward_rows_into((&q, &k, &v), dims, &mut rows);
        let rows = split(&rows, tq, vd);
        let worst = rows
            .iter()
            .zip(&blocks)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "largest difference {worst}");
    }
}
