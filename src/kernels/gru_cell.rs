//! The GRU cell's element-wise part as one op, for the step loop that runs
//! where our fused CPU recurrence does not (a GPU): candle's ops take about
//! fifteen kernels per step forward and thirty backward; this takes one
//! each way, as [`super::lstm_cell`] does for the LSTM.
//!
//! Keras's GRU with `reset_after` (PyTorch's gate order r, z, n): from the
//! input projection `x` [B, 3H] and the recurrent one `hw` [B, 3H] (bias
//! included), packed as `xh` = (x | hw) [B, 6H], and the state `h` [B, H]:
//! r = σ(x_r + hw_r), z = σ(x_z + hw_z), n = tanh(x_n + r·hw_n),
//! h' = (1 − z)·n + z·h.
//!
//! The backward is a forward-only op giving (∂xh | ∂h) as one [B, 7H]
//! tensor. CPU code (run by `--kernels candle`, and tested against candle's
//! ops) and CUDA code (compiled by NVRTC on first use) compute the same
//! expressions.

use crate::kernels::host::contiguous;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// (xh [B, 6H], h [B, H]) → h' [B, H].
pub struct GruCell;

/// (xh, h, ∂h') → [B, 7H] = (∂xh | ∂h).
struct GruCellGrad;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// One unit's six pre-activations (x_r, x_z, x_n, hw_r, hw_z, hw_n).
fn inputs(xh: &[f32], h: usize, row: usize, j: usize) -> [f32; 6] {
    let p = &xh[row * 6 * h..];
    std::array::from_fn(|q| p[q * h + j])
}

/// (r, z, n) of one unit.
fn gates([xr, xz, xn, hr, hz, hn]: [f32; 6]) -> (f32, f32, f32) {
    let (r, z) = (sigmoid(xr + hr), sigmoid(xz + hz));
    (r, z, (xn + r * hn).tanh())
}

/// One unit's gradients: the six pre-activations' and the state's, from ∂h' = d.
fn cell_grad(p: [f32; 6], s: f32, d: f32) -> ([f32; 6], f32) {
    let (r, z, n) = gates(p);
    let dz = d * (s - n) * z * (1.0 - z);
    let dn = d * (1.0 - z) * (1.0 - n * n);
    let dr = dn * p[5] * r * (1.0 - r);
    ([dr, dz, dn, dr, dz, dn * r], d * z)
}

impl CustomOp2 for GruCell {
    fn name(&self) -> &'static str {
        "mtl-gru-cell"
    }

    fn cpu_fwd(
        &self,
        xh: &CpuStorage,
        xl: &Layout,
        s: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, h) = sl.shape().dims2()?;
        let (xh, s) = (contiguous(xh, xl)?, contiguous(s, sl)?);
        let out = (0..b * h)
            .map(|k| {
                let (_, z, n) = gates(inputs(xh, h, k / h, k % h));
                (1.0 - z) * n + z * s[k]
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from((b, h))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xh: &candle_core::CudaStorage,
        xl: &Layout,
        s: &candle_core::CudaStorage,
        sl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, h) = sl.shape().dims2()?;
        let out = cuda::launch("mtl_gru_cell", &[(xh, xl), (s, sl)], b * h, h)?;
        Ok((out, Shape::from((b, h))))
    }

    fn bwd(
        &self,
        xh: &Tensor,
        state: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let h = state.dim(1)?;
        let packed = xh.apply_op3_no_bwd(state, &grad.contiguous()?, &GruCellGrad)?;
        Ok((
            Some(packed.narrow(1, 0, 6 * h)?),
            Some(packed.narrow(1, 6 * h, h)?),
        ))
    }
}

impl CustomOp3 for GruCellGrad {
    fn name(&self) -> &'static str {
        "mtl-gru-cell-grad"
    }

    fn cpu_fwd(
        &self,
        xh: &CpuStorage,
        xl: &Layout,
        s: &CpuStorage,
        sl: &Layout,
        d: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, h) = sl.shape().dims2()?;
        let (xh, s, d) = (contiguous(xh, xl)?, contiguous(s, sl)?, contiguous(d, dl)?);
        let mut out = vec![0f32; b * 7 * h];
        for k in 0..b * h {
            let (r, j) = (k / h, k % h);
            let (dp, ds) = cell_grad(inputs(xh, h, r, j), s[k], d[k]);
            let o = &mut out[r * 7 * h..];
            for (q, v) in dp.into_iter().enumerate() {
                o[q * h + j] = v;
            }
            o[6 * h + j] = ds;
        }
        Ok((CpuStorage::F32(out), Shape::from((b, 7 * h))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xh: &candle_core::CudaStorage,
        xl: &Layout,
        s: &candle_core::CudaStorage,
        sl: &Layout,
        d: &candle_core::CudaStorage,
        dl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, h) = sl.shape().dims2()?;
        let args = [(xh, xl), (s, sl), (d, dl)];
        let out = cuda::launch("mtl_gru_cell_grad", &args, b * h, h)?;
        Ok((out, Shape::from((b, 7 * h))))
    }
}

/// The CUDA side: the same expressions as [`gates`] and [`cell_grad`], one
/// thread per (row, unit).
#[cfg(feature = "cuda")]
mod cuda {
    use crate::kernels::cuda::{launch as run, Arg};
    use candle_core::{CudaStorage, Layout, Result};

    const SOURCE: &str = r#"
__device__ float sg(float x) { return 1.0f / (1.0f + expf(-x)); }

extern "C" __global__ void mtl_gru_cell(const float* xh, const float* s, float* out, int n, int h) {
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n) return;
    const float* p = xh + (size_t)(k / h) * 6 * h;
    int j = k % h;
    float r = sg(p[j] + p[3 * h + j]), z = sg(p[h + j] + p[4 * h + j]);
    float nn = tanhf(p[2 * h + j] + r * p[5 * h + j]);
    out[k] = (1.0f - z) * nn + z * s[k];
}

extern "C" __global__ void mtl_gru_cell_grad(const float* xh, const float* s, const float* d, float* out, int n, int h) {
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n) return;
    const float* p = xh + (size_t)(k / h) * 6 * h;
    float* o = out + (size_t)(k / h) * 7 * h;
    int j = k % h;
    float r = sg(p[j] + p[3 * h + j]), z = sg(p[h + j] + p[4 * h + j]);
    float nn = tanhf(p[2 * h + j] + r * p[5 * h + j]);
    float dv = d[k];
    float dz = dv * (s[k] - nn) * z * (1.0f - z);
    float dn = dv * (1.0f - z) * (1.0f - nn * nn);
    float dr = dn * p[5 * h + j] * r * (1.0f - r);
    o[j] = dr; o[h + j] = dz; o[2 * h + j] = dn;
    o[3 * h + j] = dr; o[4 * h + j] = dz; o[5 * h + j] = dn * r;
    o[6 * h + j] = dv * z;
}
"#;

    /// `name` over `n` = rows × `h` elements; the output is [B, H] for the
    /// cell, [B, 7H] for its gradient.
    pub fn launch(
        name: &str,
        operands: &[(&CudaStorage, &Layout)],
        n: usize,
        h: usize,
    ) -> Result<CudaStorage> {
        let width = if operands.len() == 3 { 7 } else { 1 };
        let args = [Arg::I32(n as i32), Arg::I32(h as i32)];
        run(
            ("mtl_gru_cell", SOURCE),
            name,
            operands,
            n * width,
            n,
            &args,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The op and its backward equal candle's expressions of the cell
    /// (those of `lower::calls::rnn`).
    #[test]
    fn matches_candle_forward_and_backward() {
        let dev = Device::Cpu;
        let (b, h) = (3, 5);
        let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (b, 3 * h), &dev).unwrap()).unwrap();
        let hw = Var::from_tensor(&Tensor::randn(0f32, 2.0, (b, 3 * h), &dev).unwrap()).unwrap();
        let s = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, h), &dev).unwrap()).unwrap();
        let ours = |x: &Tensor, hw: &Tensor, s: &Tensor| {
            let xh = Tensor::cat(&[x, hw], 1).unwrap();
            xh.apply_op2(s, GruCell).unwrap()
        };
        let theirs = |x: &Tensor, hw: &Tensor, s: &Tensor| {
            let sg = |t: Tensor| candle_nn::ops::sigmoid(&t).unwrap();
            let part = |t: &Tensor, q: usize| t.narrow(1, q * h, h).unwrap();
            let r = sg((part(x, 0) + part(hw, 0)).unwrap());
            let z = sg((part(x, 1) + part(hw, 1)).unwrap());
            let n = (part(x, 2) + (r * part(hw, 2)).unwrap())
                .unwrap()
                .tanh()
                .unwrap();
            (((z.ones_like().unwrap() - &z).unwrap() * n).unwrap() + (z * s).unwrap()).unwrap()
        };
        let (a, t) = (
            ours(x.as_tensor(), hw.as_tensor(), s.as_tensor()),
            theirs(x.as_tensor(), hw.as_tensor(), s.as_tensor()),
        );
        assert!(super::super::max_abs_diff(&a, &t) < 1e-6);
        super::super::assert_same_gradients(&a, &t, &[&x, &hw, &s], 1e-5, "gru cell");
    }
}
