//! A whole-sequence GRU recurrence (Keras `reset_after`, gates r, z, n) as
//! one candle custom op with its own backward, like `lstm_op.rs`. Inputs: the
//! hoisted input projection `xw = x·W_ihᵀ + b_ih` [B, T, 3H], `W_hh` [3H, H]
//! and `b_hh` [3H]; output: every step's hidden state [B, T, H] in time order.
//!
//! Per step: hw = h·W_hhᵀ + b_hh; r = σ(xw_r + hw_r); z = σ(xw_z + hw_z);
//! n = tanh(xw_n + r·hw_n); h' = (1 − z)·n + z·h.
//!
//! Why: through candle's autograd a GRU trained at 0.11× Keras's speed on
//! `models/fusions.mtl` (each step's ops allocate, and every per-step slice
//! of a hoisted projection gets a zero-padded gradient of the whole sequence).

use super::gemm::{matmul, transposed, View};
use super::host::{contiguous, host};
use super::lstm::{row_block, sigmoid_slice, tanh_slice};
use super::par;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

pub struct GruSeq {
    pub units: usize,
    pub reverse: bool,
    /// Keep the activations for a backward (training).
    save: bool,
    /// Per step and row: r, z, n and hw_n [B, T, 4H], for the backward.
    saved: Mutex<Option<Vec<f32>>>,
}

impl GruSeq {
    pub fn new(units: usize, reverse: bool, save: bool) -> Self {
        GruSeq {
            units,
            reverse,
            save,
            saved: Mutex::new(None),
        }
    }

    fn order(&self, t: usize) -> Vec<usize> {
        if self.reverse {
            (0..t).rev().collect()
        } else {
            (0..t).collect()
        }
    }

    /// (hidden states [B, T, H], activations [B, T, 4H]); each thread runs
    /// all steps for its own block of batch rows.
    fn forward(
        &self,
        xw: &[f32],
        w: &[f32],
        bias: &[f32],
        b: usize,
        t: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let hu = self.units;
        let g3 = 3 * hu;
        // W_hhᵀ [H, 3H], copied out once for all steps.
        let wt = transposed(w, g3, hu);
        let (mut hs, mut acts) = (vec![0f32; b * t * hu], vec![0f32; b * t * 4 * hu]);
        self.forward_into(xw, &wt, bias, (b, t), &mut hs, &mut acts);
        (hs, acts)
    }

    /// The forward into `hs` [B, T, H] and `acts` [B, T, 4H] from the input
    /// projections `xw` [B, T, 3H], `wt` = W_hhᵀ [H, 3H] and the recurrent bias.
    pub fn forward_into(
        &self,
        xw: &[f32],
        wt: &[f32],
        bias: &[f32],
        (b, t): (usize, usize),
        hs: &mut [f32],
        acts: &mut [f32],
    ) {
        let (hu, g3) = (self.units, 3 * self.units);
        let par = b * t * self.units * self.units * 4 >= par::MIN_MACS;
        let rows = if par { row_block(b) } else { b };
        let items: Vec<_> = hs
            .chunks_mut(rows * t * hu)
            .zip(acts.chunks_mut(rows * t * 4 * hu))
            .enumerate()
            .collect();
        par::each(items, par, |(blk, (hs, acts))| {
            let n = hs.len() / (t * hu);
            let xw = &xw[blk * rows * t * g3..][..n * t * g3];
            par::widest(
                #[inline(always)]
                || self.forward_rows(xw, wt, bias, n, t, hs, acts),
            )
        });
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn forward_rows(
        &self,
        xw: &[f32],
        wt: &[f32],
        bias: &[f32],
        b: usize,
        t: usize,
        hs: &mut [f32],
        acts: &mut [f32],
    ) {
        let hu = self.units;
        let (g3, g4) = (3 * hu, 4 * hu);
        let mut h = vec![0f32; b * hu];
        let mut hw = vec![0f32; b * g3];
        let w_t = View {
            data: wt,
            rows: hu,
            cols: g3,
            rs: g3,
            cs: 1,
        };
        for ts in self.order(t) {
            for row in hw.chunks_mut(g3) {
                row.copy_from_slice(bias);
            }
            let hv = View {
                data: &h,
                rows: b,
                cols: hu,
                rs: hu,
                cs: 1,
            };
            matmul(&mut hw, g3, true, hv, w_t);
            for (bi, (h, hw)) in h.chunks_mut(hu).zip(hw.chunks(g3)).enumerate() {
                let x = &xw[(bi * t + ts) * g3..][..g3];
                let a = &mut acts[(bi * t + ts) * g4..][..g4];
                // r and z: σ(x + hw); n: tanh(x_n + r·hw_n).
                for j in 0..2 * hu {
                    a[j] = x[j] + hw[j];
                }
                sigmoid_slice(&mut a[..2 * hu]);
                for j in 0..hu {
                    a[2 * hu + j] = x[2 * hu + j] + a[j] * hw[2 * hu + j];
                    a[3 * hu + j] = hw[2 * hu + j];
                }
                tanh_slice(&mut a[2 * hu..3 * hu]);
                for j in 0..hu {
                    let (z, n) = (a[hu + j], a[2 * hu + j]);
                    h[j] = (1.0 - z) * n + z * h[j];
                }
                hs[(bi * t + ts) * hu..][..hu].copy_from_slice(h);
            }
        }
    }

    /// Backward for `b` rows: the input-projection gradient `dx` and the
    /// recurrent pre-activation gradient `dhw` [b, T, 3H], and h_{t−1}.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn backward_rows(
        &self,
        w: &[f32],
        b: usize,
        t: usize,
        (acts, hs, grad): (&[f32], &[f32], &[f32]),
        dx: &mut [f32],
        dhw: &mut [f32],
        h_prev: &mut [f32],
    ) {
        let hu = self.units;
        let (g3, g4) = (3 * hu, 4 * hu);
        let steps = self.order(t);
        let mut dh_next = vec![0f32; b * hu];
        let w_hh = View {
            data: w,
            rows: g3,
            cols: hu,
            rs: hu,
            cs: 1,
        };
        let mut carry = vec![0f32; b * hu];
        for k in (0..t).rev() {
            let ts = steps[k];
            let prev = (k > 0).then(|| steps[k - 1]);
            for bi in 0..b {
                let (a, s, g) = ((bi * t + ts) * g4, (bi * t + ts) * hu, (bi * t + ts) * g3);
                let p = prev.map(|p| (bi * t + p) * hu);
                let carry = &mut carry[bi * hu..(bi + 1) * hu];
                let dh_in = &dh_next[bi * hu..(bi + 1) * hu];
                for j in 0..hu {
                    let (r, z, n, hwn) = (
                        acts[a + j],
                        acts[a + hu + j],
                        acts[a + 2 * hu + j],
                        acts[a + 3 * hu + j],
                    );
                    let hp = p.map_or(0.0, |p| hs[p + j]);
                    let dh = grad[s + j] + dh_in[j];
                    let dan = dh * (1.0 - z) * (1.0 - n * n);
                    let daz = dh * (hp - n) * z * (1.0 - z);
                    let dar = dan * hwn * r * (1.0 - r);
                    dx[g + j] = dar;
                    dx[g + hu + j] = daz;
                    dx[g + 2 * hu + j] = dan;
                    dhw[g + j] = dar;
                    dhw[g + hu + j] = daz;
                    dhw[g + 2 * hu + j] = dan * r;
                    carry[j] = dh * z;
                    h_prev[s + j] = hp;
                }
            }
            // dh_{t−1} = dh·z + dhw_t · W_hh; rows of step ts are T·3H apart.
            dh_next.copy_from_slice(&carry);
            let lhs = View {
                data: &dhw[ts * g3..],
                rows: b,
                cols: g3,
                rs: t * g3,
                cs: 1,
            };
            matmul(&mut dh_next, hu, true, lhs, w_hh);
        }
    }
}

impl CustomOp3 for GruSeq {
    fn name(&self) -> &'static str {
        "mtl-gru-seq"
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
        let (b, t, g3) = l1.shape().dims3()?;
        let hu = self.units;
        if g3 != 3 * hu || l2.shape().dims2()? != (g3, hu) || l3.shape().dims1()? != g3 {
            candle_core::bail!(
                "gru op: shapes {:?}, {:?} and {:?} do not fit {hu} units",
                l1.shape(),
                l2.shape(),
                l3.shape()
            )
        }
        let (xw, w, bias) = (
            contiguous(s1, l1)?,
            contiguous(s2, l2)?,
            contiguous(s3, l3)?,
        );
        let (hs, acts) = self.forward(xw, w, bias, b, t);
        if self.save {
            if let Ok(mut saved) = self.saved.lock() {
                *saved = Some(acts);
            }
        }
        Ok((CpuStorage::F32(hs), Shape::from((b, t, hu))))
    }

    fn bwd(
        &self,
        xw: &Tensor,
        w_hh: &Tensor,
        b_hh: &Tensor,
        hs: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, t, g3) = xw.dims3()?;
        let hu = self.units;
        let (w, hs_v, grad) = (host(w_hh)?, host(hs)?, host(grad)?);
        let acts = match self.saved.lock().ok().and_then(|mut s| s.take()) {
            Some(a) => a,
            None => self.forward(&host(xw)?, &w, &host(b_hh)?, b, t).1,
        };
        let (mut dx, mut dhw, mut h_prev) = (
            vec![0f32; b * t * g3],
            vec![0f32; b * t * g3],
            vec![0f32; b * t * hu],
        );
        let par = b * t * self.units * self.units * 4 >= par::MIN_MACS;
        let rows = if par { row_block(b) } else { b };
        let items: Vec<_> = dx
            .chunks_mut(rows * t * g3)
            .zip(dhw.chunks_mut(rows * t * g3))
            .zip(h_prev.chunks_mut(rows * t * hu))
            .enumerate()
            .collect();
        par::each(items, par, |(blk, ((dx, dhw), h_prev))| {
            let n = h_prev.len() / (t * hu);
            let (a, s) = (blk * rows * t * 4 * hu, blk * rows * t * hu);
            let saved = (
                &acts[a..a + n * t * 4 * hu],
                &hs_v[s..s + n * t * hu],
                &grad[s..s + n * t * hu],
            );
            par::widest(
                #[inline(always)]
                || self.backward_rows(&w, n, t, saved, dx, dhw, h_prev),
            )
        });
        // dW_hh = Σ dhwᵀ · h_{t−1} (one GEMM over all steps); db_hh = Σ dhw.
        let mut dw = vec![0f32; g3 * hu];
        let dhw_t = View {
            data: &dhw,
            rows: g3,
            cols: b * t,
            rs: 1,
            cs: g3,
        };
        let hp = View {
            data: &h_prev,
            rows: b * t,
            cols: hu,
            rs: hu,
            cs: 1,
        };
        matmul(&mut dw, hu, false, dhw_t, hp);
        let mut db = vec![0f32; g3];
        for row in dhw.chunks(g3) {
            db.iter_mut().zip(row).for_each(|(a, v)| *a += v);
        }
        let dev = xw.device();
        Ok((
            Some(Tensor::from_vec(dx, (b, t, g3), dev)?),
            Some(Tensor::from_vec(dw, (g3, hu), dev)?),
            Some(Tensor::from_vec(db, g3, dev)?),
        ))
    }
}
