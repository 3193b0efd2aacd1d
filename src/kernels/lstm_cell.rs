//! The LSTM cell's element-wise part as two ops, for the step loop that runs
//! where our fused CPU recurrence does not (a GPU): candle's ops take about
//! thirteen kernels per step forward and thirty backward, each a launch and
//! an allocation; these take one each way.
//!
//! Gates in PyTorch's order [i, f, g, o] along the last axis of `gates` [B, 4H]:
//! - [`Part::C`]: (gates, c₋₁) → c = σ(f)·c₋₁ + σ(i)·tanh(g)
//! - [`Part::H`]: (gates, c)   → h = σ(o)·tanh(c)
//!
//! The backward of each is a forward-only op giving (∂gates | ∂state) as one
//! [B, 5H] tensor. CPU code (run by `--kernels candle`, and tested against
//! candle's ops) and CUDA code (compiled by NVRTC on first use) compute the
//! same expressions.

use crate::kernels::host::contiguous;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The new cell state from the previous one.
    C = 0,
    /// The output from the new cell state.
    H = 1,
}

/// (gates [B, 4H], state [B, H]) → [B, H]; see [`Part`].
pub struct Cell(pub Part);

/// (gates, state, ∂out) → [B, 5H] = (∂gates | ∂state).
struct CellGrad(Part);

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// One element: gates (i, f, g, o) of its row, its state.
fn cell(part: Part, [i, f, g, o]: [f32; 4], s: f32) -> f32 {
    match part {
        Part::C => sigmoid(f) * s + sigmoid(i) * g.tanh(),
        Part::H => sigmoid(o) * s.tanh(),
    }
}

/// One element's gradients: (∂i, ∂f, ∂g, ∂o) and ∂state, from ∂out = d.
fn cell_grad(part: Part, [i, f, g, o]: [f32; 4], s: f32, d: f32) -> ([f32; 4], f32) {
    match part {
        Part::C => {
            let (si, sf, tg) = (sigmoid(i), sigmoid(f), g.tanh());
            let di = d * tg * si * (1.0 - si);
            let df = d * s * sf * (1.0 - sf);
            let dg = d * si * (1.0 - tg * tg);
            ([di, df, dg, 0.0], d * sf)
        }
        Part::H => {
            let (so, t) = (sigmoid(o), s.tanh());
            (
                [0.0, 0.0, 0.0, d * t * so * (1.0 - so)],
                d * so * (1.0 - t * t),
            )
        }
    }
}

impl CustomOp2 for Cell {
    fn name(&self) -> &'static str {
        "mtl-lstm-cell"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        gl: &Layout,
        s: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, h) = sl.shape().dims2()?;
        let (g, s) = (contiguous(g, gl)?, contiguous(s, sl)?);
        let out = (0..b * h)
            .map(|k| {
                let (r, j) = (k / h, k % h);
                let row = &g[r * 4 * h..];
                cell(
                    self.0,
                    [row[j], row[h + j], row[2 * h + j], row[3 * h + j]],
                    s[k],
                )
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from((b, h))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        g: &candle_core::CudaStorage,
        gl: &Layout,
        s: &candle_core::CudaStorage,
        sl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, h) = sl.shape().dims2()?;
        let out = cuda::launch("mtl_lstm_cell", &[(g, gl), (s, sl)], b * h, h, self.0)?;
        Ok((out, Shape::from((b, h))))
    }

    fn bwd(
        &self,
        gates: &Tensor,
        state: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let h = state.dim(1)?;
        let packed = gates.apply_op3_no_bwd(state, &grad.contiguous()?, &CellGrad(self.0))?;
        Ok((
            Some(packed.narrow(1, 0, 4 * h)?),
            Some(packed.narrow(1, 4 * h, h)?),
        ))
    }
}

impl CustomOp3 for CellGrad {
    fn name(&self) -> &'static str {
        "mtl-lstm-cell-grad"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        gl: &Layout,
        s: &CpuStorage,
        sl: &Layout,
        d: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, h) = sl.shape().dims2()?;
        let (g, s, d) = (contiguous(g, gl)?, contiguous(s, sl)?, contiguous(d, dl)?);
        let mut out = vec![0f32; b * 5 * h];
        for k in 0..b * h {
            let (r, j) = (k / h, k % h);
            let row = &g[r * 4 * h..];
            let gates = [row[j], row[h + j], row[2 * h + j], row[3 * h + j]];
            let (dg, ds) = cell_grad(self.0, gates, s[k], d[k]);
            let o = &mut out[r * 5 * h..];
            for (q, v) in dg.into_iter().enumerate() {
                o[q * h + j] = v;
            }
            o[4 * h + j] = ds;
        }
        Ok((CpuStorage::F32(out), Shape::from((b, 5 * h))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        g: &candle_core::CudaStorage,
        gl: &Layout,
        s: &candle_core::CudaStorage,
        sl: &Layout,
        d: &candle_core::CudaStorage,
        dl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, h) = sl.shape().dims2()?;
        let args = [(g, gl), (s, sl), (d, dl)];
        let out = cuda::launch("mtl_lstm_cell_grad", &args, b * h, h, self.0)?;
        Ok((out, Shape::from((b, 5 * h))))
    }
}

/// The CUDA side: the same expressions as [`cell`] and [`cell_grad`], one
/// thread per (row, unit).
#[cfg(feature = "cuda")]
mod cuda {
    use super::Part;
    use crate::kernels::cuda::{launch as run, Arg};
    use candle_core::{CudaStorage, Layout, Result};

    const SOURCE: &str = r#"
__device__ float sg(float x) { return 1.0f / (1.0f + expf(-x)); }

extern "C" __global__ void mtl_lstm_cell(const float* gates, const float* s, float* out, int n, int h, int part) {
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n) return;
    const float* g = gates + (size_t)(k / h) * 4 * h;
    int j = k % h;
    if (part == 0) out[k] = sg(g[h + j]) * s[k] + sg(g[j]) * tanhf(g[2 * h + j]);
    else out[k] = sg(g[3 * h + j]) * tanhf(s[k]);
}

extern "C" __global__ void mtl_lstm_cell_grad(const float* gates, const float* s, const float* d, float* out, int n, int h, int part) {
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n) return;
    const float* g = gates + (size_t)(k / h) * 4 * h;
    float* o = out + (size_t)(k / h) * 5 * h;
    int j = k % h;
    float dv = d[k];
    if (part == 0) {
        float si = sg(g[j]), sf = sg(g[h + j]), tg = tanhf(g[2 * h + j]);
        o[j] = dv * tg * si * (1.0f - si);
        o[h + j] = dv * s[k] * sf * (1.0f - sf);
        o[2 * h + j] = dv * si * (1.0f - tg * tg);
        o[3 * h + j] = 0.0f;
        o[4 * h + j] = dv * sf;
    } else {
        float so = sg(g[3 * h + j]), t = tanhf(s[k]);
        o[j] = 0.0f;
        o[h + j] = 0.0f;
        o[2 * h + j] = 0.0f;
        o[3 * h + j] = dv * t * so * (1.0f - so);
        o[4 * h + j] = dv * so * (1.0f - t * t);
    }
}
"#;

    /// `name` over `n` = rows × `h` elements; the output is [B, H] for the
    /// cell, [B, 5H] for its gradient.
    pub fn launch(
        name: &str,
        operands: &[(&CudaStorage, &Layout)],
        n: usize,
        h: usize,
        part: Part,
    ) -> Result<CudaStorage> {
        let width = if operands.len() == 3 { 5 } else { 1 };
        let args = [
            Arg::I32(n as i32),
            Arg::I32(h as i32),
            Arg::I32(part as i32),
        ];
        run(
            ("mtl_lstm_cell", SOURCE),
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

    /// The two ops and their backward equal candle's expressions of the cell.
    #[test]
    fn matches_candle_forward_and_backward() {
        let dev = Device::Cpu;
        let (b, h) = (3, 5);
        let g = Var::from_tensor(&Tensor::randn(0f32, 2.0, (b, 4 * h), &dev).unwrap()).unwrap();
        let c0 = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, h), &dev).unwrap()).unwrap();
        let ours = |g: &Tensor, c0: &Tensor| {
            let c = g.apply_op2(c0, Cell(Part::C)).unwrap();
            let h = g.apply_op2(&c, Cell(Part::H)).unwrap();
            Tensor::cat(&[&h, &c], 1).unwrap()
        };
        let theirs = |g: &Tensor, c0: &Tensor| {
            let sg = |t: Tensor| candle_nn::ops::sigmoid(&t).unwrap();
            let gate = |q: usize| g.narrow(1, q * h, h).unwrap();
            let c = ((sg(gate(1)) * c0).unwrap()
                + (sg(gate(0)) * gate(2).tanh().unwrap()).unwrap())
            .unwrap();
            let hh = (sg(gate(3)) * c.tanh().unwrap()).unwrap();
            Tensor::cat(&[&hh, &c], 1).unwrap()
        };
        let (a, t) = (
            ours(g.as_tensor(), c0.as_tensor()),
            theirs(g.as_tensor(), c0.as_tensor()),
        );
        assert!(super::super::max_abs_diff(&a, &t) < 1e-6);
        super::super::assert_same_gradients(&a, &t, &[&g, &c0], 1e-5, "lstm cell");
    }
}
