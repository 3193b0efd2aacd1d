//! A whole-sequence LSTM recurrence as one candle custom op with its own
//! backward (BPTT) on raw buffers. Its inputs are the hoisted input projection
//! `xw = x·W_ihᵀ + b` [B, T, 4H] and `W_hh` [4H, H]; its output is every
//! step's hidden state [B, T, H] in time order (gates i, f, g, o).
//!
//! Why: with candle's autograd, each per-step slice of the hoisted projection
//! gets a zero-padded gradient of the whole sequence in backward (O(T²)
//! work), and each gate op allocates. Here the forward keeps the gate
//! activations for the backward, which runs the recurrence in place and forms
//! dW_hh with one GEMM over all steps.

use super::gemm::{matmul, transposed, View};
use super::gemm_small::matmul_small;
use super::host::{contiguous, host};
use super::lanes::{lane_blocks, LANES};
use super::math::exp_fast;
use super::par;
use super::projected::Projected;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

pub struct LstmSeq {
    pub units: usize,
    pub reverse: bool,
    /// Keep the activations for a backward (training).
    save: bool,
    /// [B, T]: 0 at padded steps, over which the state carries over
    /// unchanged and is the step's output (Keras's masked RNN); `None`:
    /// every step is real.
    valid: Option<Vec<f32>>,
    /// Forward activations (i, f, g, o per step) and cell states, for backward.
    saved: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
    /// The same on a GPU, where they stay ([`super::recurrence_cuda`]).
    #[cfg(feature = "cuda")]
    kept: Mutex<Option<(Tensor, Tensor)>>,
}

impl LstmSeq {
    pub fn new(units: usize, reverse: bool, save: bool) -> Self {
        LstmSeq {
            units,
            reverse,
            save,
            valid: None,
            saved: Mutex::new(None),
            #[cfg(feature = "cuda")]
            kept: Mutex::new(None),
        }
    }

    /// The recurrence over padded sequences (`valid` [B, T], 1 at real
    /// steps); the planned executor's only.
    pub fn with_valid(mut self, valid: Option<Vec<f32>>) -> Self {
        self.valid = valid;
        self
    }

    /// Whether step `ts` of batch row `bi` (of `t` steps) is padding.
    #[inline(always)]
    fn padded(valid: Option<&[f32]>, bi: usize, t: usize, ts: usize) -> bool {
        valid.is_some_and(|v| v[bi * t + ts] == 0.0)
    }

    fn order(&self, t: usize) -> Vec<usize> {
        if self.reverse {
            (0..t).rev().collect()
        } else {
            (0..t).collect()
        }
    }

    /// (hidden states, activations, cell states), all [B, T, ·]. Batch rows
    /// are independent through the whole recurrence, so each thread runs all
    /// steps for its own block of rows: no synchronisation per step.
    fn forward(
        &self,
        xw: &[f32],
        w: &[f32],
        b: usize,
        t: usize,
        keep: bool,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let hu = self.units;
        let g4 = 4 * hu;
        // Cell states and activations only when a backward will need them.
        let keep = |len: usize| vec![0f32; if keep { len } else { 0 }];
        let (mut hs, mut cs, mut acts) =
            (vec![0f32; b * t * hu], keep(b * t * hu), keep(b * t * g4));
        // W_hhᵀ [H, 4H], copied out once for all steps.
        let wt = transposed(w, g4, hu);
        let xw = Projected::Rows(xw);
        self.run(xw, &wt, (b, t), &mut hs, &mut cs, &mut acts);
        (hs, acts, cs)
    }

    /// The inference forward: hidden states [B, T, H] into `hs` from the
    /// input projections `xw` [B, T, 4H] and `wt` = W_hhᵀ [H, 4H].
    pub fn forward_into(&self, xw: Projected, wt: &[f32], (b, t): (usize, usize), hs: &mut [f32]) {
        self.run(xw, wt, (b, t), hs, &mut [], &mut [])
    }

    /// The recurrence over row blocks; `cs` and `acts` empty when not kept.
    fn run(
        &self,
        xw: Projected,
        wt: &[f32],
        (b, t): (usize, usize),
        hs: &mut [f32],
        cs: &mut [f32],
        acts: &mut [f32],
    ) {
        let (hu, g4) = (self.units, 4 * self.units);
        let par = b * t * self.units * self.units * 4 >= par::MIN_MACS;
        let rows = if par { row_block(b) } else { b };
        let (mut cs_blocks, mut act_blocks) =
            (cs.chunks_mut(rows * t * hu), acts.chunks_mut(rows * t * g4));
        let items: Vec<_> = hs
            .chunks_mut(rows * t * hu)
            .enumerate()
            .map(|(i, h)| {
                let cs = cs_blocks.next().unwrap_or_default();
                (i, (h, cs, act_blocks.next().unwrap_or_default()))
            })
            .collect();
        par::each(items, par, |(blk, (hs, cs, acts))| {
            let n = hs.len() / (t * hu);
            let xw = xw.rows(blk * rows * t, n * t, g4);
            let valid = self.valid.as_deref().map(|v| &v[blk * rows * t..][..n * t]);
            par::widest(
                #[inline(always)]
                || self.forward_rows(xw, wt, (n, t), valid, hs, cs, acts),
            )
        });
    }

    /// The recurrence for `b` batch rows, sequentially; `wt` is W_hhᵀ [H, 4H].
    /// `cs` and `acts` are empty when nothing is kept for a backward.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn forward_rows(
        &self,
        xw: Projected,
        wt: &[f32],
        (b, t): (usize, usize),
        valid: Option<&[f32]>,
        hs: &mut [f32],
        cs: &mut [f32],
        acts: &mut [f32],
    ) {
        let hu = self.units;
        let g4 = 4 * hu;
        let (mut h, mut c, mut g) = (vec![0f32; b * hu], vec![0f32; b * hu], vec![0f32; b * g4]);
        let w_t = View {
            data: wt,
            rows: hu,
            cols: g4,
            rs: g4,
            cs: 1,
        };
        let order = self.order(t);
        for (k, &ts) in order.iter().enumerate() {
            if let Some(&next) = order.get(k + 1) {
                (0..b).for_each(|bi| xw.prefetch(bi * t + next, g4));
            }
            // g = h·W_hhᵀ, then + the input projection in the activation pass
            // (without the copy of it into g first, `memmove` fell from 9% to 5%
            // of reviews' inference).
            matmul_small(
                &mut g,
                g4,
                false,
                View {
                    data: &h,
                    rows: b,
                    cols: hu,
                    rs: hu,
                    cs: 1,
                },
                w_t,
            );
            // Activations run as whole-slice passes the compiler vectorizes.
            for (bi, ((h, c), row)) in h
                .chunks_mut(hu)
                .zip(c.chunks_mut(hu))
                .zip(g.chunks_mut(g4))
                .enumerate()
            {
                let (a, s) = ((bi * t + ts) * g4, (bi * t + ts) * hu);
                if Self::padded(valid, bi, t, ts) {
                    // The state carries over and is the step's output.
                    hs[s..s + hu].copy_from_slice(h);
                    if !acts.is_empty() {
                        cs[s..s + hu].copy_from_slice(c);
                    }
                    continue;
                }
                let x = xw.row(bi * t + ts, g4);
                row.iter_mut().zip(x).for_each(|(g, x)| *g += x);
                sigmoid_slice(&mut row[..2 * hu]);
                tanh_slice(&mut row[2 * hu..3 * hu]);
                sigmoid_slice(&mut row[3 * hu..]);
                // The gates as slices of exactly `hu` lanes: no bounds checks.
                let (gi, rest) = row.split_at(hu);
                let (gf, rest) = rest.split_at(hu);
                let (gg, go) = rest.split_at(hu);
                for j in 0..hu {
                    c[j] = gf[j] * c[j] + gi[j] * gg[j];
                }
                h.copy_from_slice(c);
                tanh_slice(h);
                for j in 0..hu {
                    h[j] *= go[j];
                }
                hs[s..s + hu].copy_from_slice(h);
                if !acts.is_empty() {
                    acts[a..a + g4].copy_from_slice(row);
                    cs[s..s + hu].copy_from_slice(c);
                }
            }
        }
    }

    /// Backward through the recurrence for `b` batch rows: turns their gate
    /// activations `acts_dg` into the gates' gradients, in place, and fills
    /// the previous hidden states `h_prev` [b, T, ·].
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn backward_rows(
        &self,
        w: &[f32],
        (b, t): (usize, usize),
        valid: Option<&[f32]>,
        (cs, hs, grad): (&[f32], &[f32], &[f32]),
        acts_dg: &mut [f32],
        h_prev: &mut [f32],
    ) {
        let hu = self.units;
        let g4 = 4 * hu;
        let steps = self.order(t);
        let (mut dh_next, mut dc_next) = (vec![0f32; b * hu], vec![0f32; b * hu]);
        // A padded step's state gradient, carried past the product.
        let mut carry = vec![0f32; if valid.is_some() { b * hu } else { 0 }];
        // The cell state before the first step.
        let c0 = vec![0f32; hu];
        let w_hh = View {
            data: w,
            rows: g4,
            cols: hu,
            rs: hu,
            cs: 1,
        };
        for k in (0..t).rev() {
            let ts = steps[k];
            let prev = (k > 0).then(|| steps[k - 1]);
            for bi in 0..b {
                let (a, s) = ((bi * t + ts) * g4, (bi * t + ts) * hu);
                let (cp, hp) = match prev.map(|p| (bi * t + p) * hu) {
                    Some(p) => (&cs[p..p + hu], &hs[p..p + hu]),
                    None => (&c0[..], &c0[..]),
                };
                h_prev[s..s + hu].copy_from_slice(hp);
                let (c, gr) = (&cs[s..s + hu], &grad[s..s + hu]);
                if Self::padded(valid, bi, t, ts) {
                    // No gate saw this step; the state's gradient passes to
                    // the step before (the cell's, in dc_next, as it is).
                    acts_dg[a..a + g4].fill(0.0);
                    let dh = &dh_next[bi * hu..(bi + 1) * hu];
                    let cr = &mut carry[bi * hu..(bi + 1) * hu];
                    cr.iter_mut()
                        .zip(dh.iter().zip(gr))
                        .for_each(|(r, (d, g))| *r = d + g);
                    continue;
                }
                let (dc_next, dh_next) = (
                    &mut dc_next[bi * hu..(bi + 1) * hu],
                    &dh_next[bi * hu..(bi + 1) * hu],
                );
                // Step ts's activations become its gradients.
                let dgates = &mut acts_dg[a..a + g4];
                gates_backward(dgates, dc_next, (c, cp), (gr, dh_next));
            }
            // dh_{t−1} = dgates_t · W_hh; rows of step ts are T·4H apart.
            let lhs = View {
                data: &acts_dg[ts * g4..],
                rows: b,
                cols: g4,
                rs: t * g4,
                cs: 1,
            };
            matmul_small(&mut dh_next, hu, false, lhs, w_hh);
            for bi in (0..b).filter(|bi| Self::padded(valid, *bi, t, ts)) {
                let r = bi * hu..(bi + 1) * hu;
                dh_next[r.clone()].copy_from_slice(&carry[r]);
            }
        }
    }
}

/// One step's gate gradients for one row, in place of the gate activations
/// (i, f, g, o), and the cell gradient carried to the step before.
///
/// The lanes go through in blocks of 16 copied into local arrays: written as
/// one loop over the slices, LLVM vectorized it behind runtime checks that
/// the nine slices do not overlap, the checks sent it to the scalar loop,
/// and that loop took 22% of `reviews`' training step. Locals cannot alias.
#[inline(always)]
fn gates_backward(
    dgates: &mut [f32],
    dc_next: &mut [f32],
    (c, c_prev): (&[f32], &[f32]),
    (grad, dh_next): (&[f32], &[f32]),
) {
    let n = dc_next.len();
    lane_blocks(
        n,
        #[inline(always)]
        |j, whole| match whole {
            true => gates_block::<LANES>(dgates, dc_next, (c, c_prev), (grad, dh_next), j),
            false => gates_block::<1>(dgates, dc_next, (c, c_prev), (grad, dh_next), j),
        },
    );
}

/// Lanes `j0..j0 + M` of [`gates_backward`].
#[inline(always)]
fn gates_block<const M: usize>(
    dgates: &mut [f32],
    dc_next: &mut [f32],
    (c, c_prev): (&[f32], &[f32]),
    (grad, dh_next): (&[f32], &[f32]),
    j0: usize,
) {
    let n = dc_next.len();
    // Copies of a constant length M (vector moves); `array::from_fn` was not
    // inlined into the AVX-512 caller and ran outside it.
    let mut v = [[0f32; M]; 9];
    let srcs = [
        &dgates[j0..],
        &dgates[n + j0..],
        &dgates[2 * n + j0..],
        &dgates[3 * n + j0..],
        &c[j0..],
        &c_prev[j0..],
        &grad[j0..],
        &dh_next[j0..],
        &dc_next[j0..],
    ];
    for (v, s) in v.iter_mut().zip(srcs) {
        v.copy_from_slice(&s[..M]);
    }
    let [i, f, g, o, c, cp, gr, dhn, dcn] = &v;
    let mut out = [[0f32; M]; 5];
    for l in 0..M {
        let tc = tanh(c[l]);
        let dh = gr[l] + dhn[l];
        let dc = dh * o[l] * (1.0 - tc * tc) + dcn[l];
        out[0][l] = dc * g[l] * i[l] * (1.0 - i[l]);
        out[1][l] = dc * cp[l] * f[l] * (1.0 - f[l]);
        out[2][l] = dc * i[l] * (1.0 - g[l] * g[l]);
        out[3][l] = dh * tc * o[l] * (1.0 - o[l]);
        out[4][l] = dc * f[l];
    }
    for (k, o) in out[..4].iter().enumerate() {
        let d = &mut dgates[k * n + j0..][..M];
        d.copy_from_slice(o);
    }
    let d = &mut dc_next[j0..][..M];
    d.copy_from_slice(&out[4]);
}

/// dW_hh += Σ_t dgᵀ · h_{t−1} over all rows and steps as one GEMM: `dg`
/// [B·T, G] (the gates' or recurrent pre-activations' gradient), `h_prev`
/// [B·T, H], `dw` [G, H].
pub(super) fn recurrent_weight_grad(dg: &[f32], h_prev: &[f32], hu: usize, dw: &mut [f32]) {
    let (rows, g) = (h_prev.len() / hu, dw.len() / hu);
    let dg_t = View {
        data: dg,
        rows: g,
        cols: rows,
        rs: 1,
        cs: g,
    };
    let hp = View {
        data: h_prev,
        rows,
        cols: hu,
        rs: hu,
        cs: 1,
    };
    matmul(dw, hu, true, dg_t, hp);
}

/// Batch rows per thread for the recurrence.
pub(super) fn row_block(b: usize) -> usize {
    b.div_ceil(rayon::current_num_threads().clamp(1, b.max(1)))
        .max(1)
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_fast(-x))
}

#[inline(always)]
fn tanh(x: f32) -> f32 {
    2.0 * sigmoid(2.0 * x) - 1.0
}

#[inline(always)]
pub(super) fn sigmoid_slice(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = sigmoid(*x));
}

#[inline(always)]
pub(super) fn tanh_slice(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = tanh(*x));
}

impl LstmSeq {
    /// The backward of the recurrence from the hidden states' gradient
    /// `grad` [B, T, H]: the gate activations `acts_dg` [B, T, 4H] become,
    /// in place, the gates' pre-activation gradient (which is also the input
    /// projections'), and W_hh's is added to `dw` [4H, H]; `saved` = (cell
    /// states, hidden states). In place, a [B, T, 4H] buffer fewer is live
    /// at the backward's peak (4 MiB for reviews at batch 32).
    pub fn backward_into(
        &self,
        w: &[f32],
        (b, t): (usize, usize),
        acts_dg: &mut [f32],
        (cs, hs_v): (&[f32], &[f32]),
        grad: &[f32],
        dw: &mut [f32],
    ) {
        let (hu, g4) = (self.units, 4 * self.units);
        let mut h_prev = vec![0f32; b * t * hu];
        let par = b * t * self.units * self.units * 4 >= par::MIN_MACS;
        let rows = if par { row_block(b) } else { b };
        let items: Vec<_> = acts_dg
            .chunks_mut(rows * t * g4)
            .zip(h_prev.chunks_mut(rows * t * hu))
            .enumerate()
            .collect();
        par::each(items, par, |(blk, (dg, h_prev))| {
            let n = h_prev.len() / (t * hu);
            let s = blk * rows * t * hu;
            let valid = self.valid.as_deref().map(|v| &v[blk * rows * t..][..n * t]);
            let saved = (
                &cs[s..s + n * t * hu],
                &hs_v[s..s + n * t * hu],
                &grad[s..s + n * t * hu],
            );
            par::widest(
                #[inline(always)]
                || self.backward_rows(w, (n, t), valid, saved, dg, h_prev),
            )
        });
        // dW_hh = Σ_t dgates_tᵀ · h_{t−1}: one GEMM over all steps.
        recurrent_weight_grad(acts_dg, &h_prev, hu, dw);
    }

    /// The training forward into `hs` [B, T, H], `acts` [B, T, 4H] and
    /// `cs` [B, T, H], from `wt` = W_hhᵀ [H, 4H].
    pub fn forward_saved_into(
        &self,
        xw: &[f32],
        wt: &[f32],
        (b, t): (usize, usize),
        hs: &mut [f32],
        acts: &mut [f32],
        cs: &mut [f32],
    ) {
        self.run(Projected::Rows(xw), wt, (b, t), hs, cs, acts)
    }
}

impl CustomOp2 for LstmSeq {
    fn name(&self) -> &'static str {
        "mtl-lstm-seq"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, t, g4) = l1.shape().dims3()?;
        if g4 != 4 * self.units || l2.shape().dims2()? != (g4, self.units) {
            candle_core::bail!(
                "lstm op: shapes {:?} and {:?} do not fit {} units",
                l1.shape(),
                l2.shape(),
                self.units
            )
        }
        let (xw, w) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        let (hs, acts, cs) = self.forward(xw, w, b, t, self.save);
        if self.save {
            if let Ok(mut saved) = self.saved.lock() {
                *saved = Some((acts, cs));
            }
        }
        Ok((CpuStorage::F32(hs), Shape::from((b, t, self.units))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, t, g4) = l1.shape().dims3()?;
        let hu = self.units;
        if g4 != 4 * hu || l2.shape().dims2()? != (g4, hu) || hu > super::recurrence_cuda::MAX_UNITS
        {
            candle_core::bail!(
                "lstm op on CUDA: shapes {:?} and {:?} do not fit {hu} units (at most {})",
                l1.shape(),
                l2.shape(),
                super::recurrence_cuda::MAX_UNITS
            )
        }
        let dims = (b, t, hu);
        let (hs, kept) = super::recurrence_cuda::lstm_forward(
            (s1, l1),
            (s2, l2),
            dims,
            self.reverse,
            self.save,
        )?;
        if let (Some(kept), Ok(mut slot)) = (kept, self.kept.lock()) {
            *slot = Some(kept);
        }
        Ok((hs, Shape::from(dims)))
    }

    fn bwd(
        &self,
        xw: &Tensor,
        w_hh: &Tensor,
        hs: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if xw.device().is_cuda() {
            return self.cuda_bwd(xw, w_hh, hs, grad);
        }
        let (b, t, g4) = xw.dims3()?;
        let hu = self.units;
        let (w, hs_v, grad) = (host(w_hh)?, host(hs)?, host(grad)?);
        let saved = self.saved.lock().ok().and_then(|mut s| s.take());
        let (mut dg, cs) = match saved {
            Some(s) => s,
            None => {
                let (_, a, c) = self.forward(&host(xw)?, &w, b, t, true);
                (a, c)
            }
        };
        let mut dw = vec![0f32; g4 * hu];
        self.backward_into(&w, (b, t), &mut dg, (&cs, &hs_v), &grad, &mut dw);
        let dev = xw.device();
        Ok((
            Some(Tensor::from_vec(dg, (b, t, g4), dev)?),
            Some(Tensor::from_vec(dw, (g4, hu), dev)?),
        ))
    }
}

#[cfg(feature = "cuda")]
impl LstmSeq {
    /// The backward on a GPU: the gates' gradients (also xw's) from one
    /// kernel over all steps, then dW_hh = Σ_t dgates_tᵀ · h_{t−1} as one
    /// GEMM, h_{t−1} being the hidden states shifted one step in the
    /// direction of the recurrence (zero before its first step).
    fn cuda_bwd(
        &self,
        xw: &Tensor,
        w_hh: &Tensor,
        hs: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, t, g4) = xw.dims3()?;
        let hu = self.units;
        let kept = self.kept.lock().ok().and_then(|mut k| k.take());
        let (acts, cs) = match kept {
            Some(k) => k,
            None => {
                // A backward without a training forward: run it again, keeping.
                let again = LstmSeq::new(hu, self.reverse, true);
                xw.apply_op2_no_bwd(w_hh, &again)?;
                let k = again.kept.lock().ok().and_then(|mut k| k.take());
                k.ok_or_else(|| candle_core::Error::Msg("lstm op: nothing kept".into()))?
            }
        };
        let dg = super::recurrence_cuda::lstm_backward(w_hh, grad, (&acts, &cs), self.reverse)?;
        let h_prev = super::recurrence_cuda::previous_states(hs, self.reverse)?;
        let dw = dg
            .reshape((b * t, g4))?
            .t()?
            .matmul(&h_prev.reshape((b * t, hu))?)?;
        Ok((Some(dg), Some(dw)))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fast_exp_sigmoid_tanh_are_accurate() {
        let mut worst = (0f32, 0f32, 0f32);
        for i in -80_000..80_000 {
            let x = i as f32 * 1e-3;
            let e = ((super::exp_fast(x) - x.exp()) / x.exp()).abs();
            let s = (super::sigmoid(x) - 1.0 / (1.0 + (-x).exp())).abs();
            let t = (super::tanh(x) - x.tanh()).abs();
            worst = (worst.0.max(e), worst.1.max(s), worst.2.max(t));
        }
        assert!(
            worst.0 < 1e-6 && worst.1 < 1e-6 && worst.2 < 1e-6,
            "{worst:?}"
        );
        // NaN propagates (a NaN loss must stay visible); infinities saturate.
        assert!(super::exp_fast(f32::NAN).is_nan() && super::sigmoid(f32::NAN).is_nan());
        assert_eq!(super::sigmoid(f32::INFINITY), 1.0);
        assert_eq!(super::tanh(f32::NEG_INFINITY), -1.0);
    }
}
