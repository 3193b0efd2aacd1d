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

use super::gemm::{transposed, View};
use super::gemm_small::matmul_small;
use super::host::{contiguous, host};
use super::lanes::{lane_blocks, LANES};
use super::lstm::{recurrent_weight_grad, row_block, sigmoid_slice, tanh_slice};
use super::par;
use super::projected::Projected;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

pub struct GruSeq {
    pub units: usize,
    pub reverse: bool,
    /// Keep the activations for a backward (training).
    save: bool,
    /// Per step and row: r, z, n and hw_n [B, T, 4H], for the backward.
    saved: Mutex<Option<Vec<f32>>>,
    /// The same on a GPU, where they stay ([`super::recurrence_cuda`]).
    #[cfg(feature = "cuda")]
    kept: Mutex<Option<Tensor>>,
}

impl GruSeq {
    pub fn new(units: usize, reverse: bool, save: bool) -> Self {
        GruSeq {
            units,
            reverse,
            save,
            saved: Mutex::new(None),
            #[cfg(feature = "cuda")]
            kept: Mutex::new(None),
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
        let xw = Projected::Rows(xw);
        self.forward_into(xw, &wt, bias, (b, t), &mut hs, &mut acts);
        (hs, acts)
    }

    /// The forward into `hs` [B, T, H] and `acts` [B, T, 4H] from the input
    /// projections `xw` [B, T, 3H], `wt` = W_hhᵀ [H, 3H] and the recurrent bias.
    pub fn forward_into(
        &self,
        xw: Projected,
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
            let xw = xw.rows(blk * rows * t, n * t, g3);
            par::widest(
                #[inline(always)]
                || self.forward_rows(xw, wt, bias, n, t, hs, acts),
            )
        });
    }

    /// The backward from the hidden states' gradient `grad` [B, T, H] and
    /// what the forward kept (`acts` [B, T, 4H], `hs` [B, T, H]): the input
    /// projections' gradient into `dx` [B, T, 3H] (overwritten), W_hh's and
    /// b_hh's added to `dw` [3H, H] and `db` [3H].
    pub fn backward_into(
        &self,
        w: &[f32],
        (b, t): (usize, usize),
        (acts, hs): (&[f32], &[f32]),
        grad: &[f32],
        dx: &mut [f32],
        (dw, db): (&mut [f32], &mut [f32]),
    ) {
        let (hu, g3) = (self.units, 3 * self.units);
        let (mut dhw, mut h_prev) = (vec![0f32; b * t * g3], vec![0f32; b * t * hu]);
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
                &hs[s..s + n * t * hu],
                &grad[s..s + n * t * hu],
            );
            par::widest(
                #[inline(always)]
                || self.backward_rows(w, n, t, saved, dx, dhw, h_prev),
            )
        });
        // dW_hh = Σ dhwᵀ · h_{t−1} (one GEMM over all steps); db_hh = Σ dhw.
        recurrent_weight_grad(&dhw, &h_prev, hu, dw);
        for row in dhw.chunks(g3) {
            db.iter_mut().zip(row).for_each(|(a, v)| *a += v);
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn forward_rows(
        &self,
        xw: Projected,
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
        let order = self.order(t);
        for (k, &ts) in order.iter().enumerate() {
            if let Some(&next) = order.get(k + 1) {
                (0..b).for_each(|bi| xw.prefetch(bi * t + next, g3));
            }
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
            matmul_small(&mut hw, g3, true, hv, w_t);
            for (bi, (h, hw)) in h.chunks_mut(hu).zip(hw.chunks(g3)).enumerate() {
                let x = xw.row(bi * t + ts, g3);
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
        // The hidden state before the first step.
        let h0 = vec![0f32; hu];
        for k in (0..t).rev() {
            let ts = steps[k];
            let prev = (k > 0).then(|| steps[k - 1]);
            for bi in 0..b {
                let (a, s, g) = ((bi * t + ts) * g4, (bi * t + ts) * hu, (bi * t + ts) * g3);
                let hp = match prev {
                    Some(p) => &hs[(bi * t + p) * hu..][..hu],
                    None => &h0[..],
                };
                h_prev[s..s + hu].copy_from_slice(hp);
                let carry = &mut carry[bi * hu..(bi + 1) * hu];
                let dh_in = &dh_next[bi * hu..(bi + 1) * hu];
                let (dx, dhw) = (&mut dx[g..g + g3], &mut dhw[g..g + g3]);
                let (acts, grad) = (&acts[a..a + g4], &grad[s..s + hu]);
                lane_blocks(
                    hu,
                    #[inline(always)]
                    |j, whole| {
                        let (ops, saved) = ([&mut *dx, &mut *dhw], (acts, hp));
                        match whole {
                            true => gates_block::<LANES>(ops, carry, saved, (grad, dh_in), j),
                            false => gates_block::<1>(ops, carry, saved, (grad, dh_in), j),
                        }
                    },
                );
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
            matmul_small(&mut dh_next, hu, true, lhs, w_hh);
        }
    }
}

/// Lanes `j0..j0 + M` of one row's step in the GRU backward: the gates'
/// gradients into `dx` (input projection, [r, z, n]) and `dhw` (recurrent
/// pre-activations), and dh·z into `carry`. The operands go through local
/// arrays: a loop over the slices themselves ran scalar (see the LSTM's
/// `gates_block`).
#[inline(always)]
fn gates_block<const M: usize>(
    [dx, dhw]: [&mut [f32]; 2],
    carry: &mut [f32],
    (acts, h_prev): (&[f32], &[f32]),
    (grad, dh_in): (&[f32], &[f32]),
    j0: usize,
) {
    let hu = carry.len();
    let mut v = [[0f32; M]; 7];
    let srcs = [
        &acts[j0..],
        &acts[hu + j0..],
        &acts[2 * hu + j0..],
        &acts[3 * hu + j0..],
        &h_prev[j0..],
        &grad[j0..],
        &dh_in[j0..],
    ];
    for (v, s) in v.iter_mut().zip(srcs) {
        v.copy_from_slice(&s[..M]);
    }
    let [r, z, n, hwn, hp, gr, dhi] = &v;
    let mut out = [[0f32; M]; 5];
    for l in 0..M {
        let dh = gr[l] + dhi[l];
        let dan = dh * (1.0 - z[l]) * (1.0 - n[l] * n[l]);
        let daz = dh * (hp[l] - n[l]) * z[l] * (1.0 - z[l]);
        out[0][l] = dan * hwn[l] * r[l] * (1.0 - r[l]);
        out[1][l] = daz;
        out[2][l] = dan;
        out[3][l] = dan * r[l];
        out[4][l] = dh * z[l];
    }
    // dx = [dr, dz, dn]; dhw = [dr, dz, dn·r]; carry = dh·z.
    let rows: [(&mut [f32], &[f32; M]); 7] = {
        let (dx_r, rest) = dx.split_at_mut(hu);
        let (dx_z, dx_n) = rest.split_at_mut(hu);
        let (dw_r, rest) = dhw.split_at_mut(hu);
        let (dw_z, dw_n) = rest.split_at_mut(hu);
        [
            (dx_r, &out[0]),
            (dx_z, &out[1]),
            (dx_n, &out[2]),
            (dw_r, &out[0]),
            (dw_z, &out[1]),
            (dw_n, &out[3]),
            (carry, &out[4]),
        ]
    };
    for (d, o) in rows {
        let d = &mut d[j0..][..M];
        d.copy_from_slice(o);
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
        use super::recurrence_cuda::{gru_forward, MAX_UNITS};
        let (b, t, g3) = l1.shape().dims3()?;
        let hu = self.units;
        if g3 != 3 * hu
            || l2.shape().dims2()? != (g3, hu)
            || l3.shape().dims1()? != g3
            || hu > MAX_UNITS
        {
            candle_core::bail!(
                "gru op on CUDA: shapes {:?}, {:?} and {:?} do not fit {hu} units (at most {MAX_UNITS})",
                l1.shape(),
                l2.shape(),
                l3.shape()
            )
        }
        let dims = (b, t, hu);
        let (hs, kept) = gru_forward((s1, l1), (s2, l2), (s3, l3), dims, self.reverse, self.save)?;
        if let (Some(kept), Ok(mut slot)) = (kept, self.kept.lock()) {
            *slot = Some(kept);
        }
        Ok((hs, Shape::from(dims)))
    }

    fn bwd(
        &self,
        xw: &Tensor,
        w_hh: &Tensor,
        b_hh: &Tensor,
        hs: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if xw.device().is_cuda() {
            return self.cuda_bwd(xw, w_hh, b_hh, hs, grad);
        }
        let (b, t, g3) = xw.dims3()?;
        let hu = self.units;
        let (w, hs_v, grad) = (host(w_hh)?, host(hs)?, host(grad)?);
        let acts = match self.saved.lock().ok().and_then(|mut s| s.take()) {
            Some(a) => a,
            None => self.forward(&host(xw)?, &w, &host(b_hh)?, b, t).1,
        };
        let (mut dx, mut dw, mut db) =
            (vec![0f32; b * t * g3], vec![0f32; g3 * hu], vec![0f32; g3]);
        self.backward_into(
            &w,
            (b, t),
            (&acts, &hs_v),
            &grad,
            &mut dx,
            (&mut dw, &mut db),
        );
        let dev = xw.device();
        Ok((
            Some(Tensor::from_vec(dx, (b, t, g3), dev)?),
            Some(Tensor::from_vec(dw, (g3, hu), dev)?),
            Some(Tensor::from_vec(db, g3, dev)?),
        ))
    }
}

#[cfg(feature = "cuda")]
impl GruSeq {
    /// The backward on a GPU: the input projection's and the recurrent
    /// pre-activations' gradients from one kernel over all steps, then
    /// dW_hh = Σ_t dhw_tᵀ · h_{t−1} as one GEMM and db_hh = Σ dhw.
    fn cuda_bwd(
        &self,
        xw: &Tensor,
        w_hh: &Tensor,
        b_hh: &Tensor,
        hs: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        use super::recurrence_cuda::{gru_backward, previous_states};
        let (b, t, g3) = xw.dims3()?;
        let hu = self.units;
        let acts = match self.kept.lock().ok().and_then(|mut k| k.take()) {
            Some(a) => a,
            None => {
                // A backward without a training forward: run it again, keeping.
                let again = GruSeq::new(hu, self.reverse, true);
                xw.apply_op3_no_bwd(w_hh, b_hh, &again)?;
                let k = again.kept.lock().ok().and_then(|mut k| k.take());
                k.ok_or_else(|| candle_core::Error::Msg("gru op: nothing kept".into()))?
            }
        };
        let (dx, dhw) = gru_backward(w_hh, grad, (hs, &acts), self.reverse)?;
        let dhw = dhw.reshape((b * t, g3))?;
        let h_prev = previous_states(hs, self.reverse)?.reshape((b * t, hu))?;
        let dw = dhw.t()?.matmul(&h_prev)?;
        let db = dhw.sum(0)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}
