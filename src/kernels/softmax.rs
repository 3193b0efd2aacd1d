//! Softmax over the last axis as one CPU op with its own backward. Through
//! candle's autograd, the differentiable softmax is five ops (max, sub, exp,
//! sum, div) each with its backward; attention runs it on every [T, T] score
//! block of every head.
//!
//! Forward, per row: y = exp(x − max x) / Σ exp(x − max x).
//! Backward, per row: dx = y ⊙ (dy − Σ dy ⊙ y).

use super::host::{contiguous, host};
use super::math::exp_fast;
use super::par;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

pub struct SoftmaxLastDim;

fn row_len(shape: &Shape) -> Result<usize> {
    match shape.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => candle_core::bail!("softmax over an empty last axis: {shape:?}"),
    }
}

/// Rows per parallel task and per vector-unit dispatch.
const ROWS: usize = 64;

/// A row's softmax in place: max, exp, sum and scale as vectorizing passes
/// (`exp_fast`, lane maxima and sums). libm's scalar `exp` and a sequential
/// sum were most of a softmax's time. Call it inside [`par::widest`] for
/// the CPU's widest vectors.
#[inline(always)]
pub fn softmax_row(row: &mut [f32]) {
    let mx = par::lane_max(row);
    row.iter_mut().for_each(|s| *s = exp_fast(*s - mx));
    let inv = 1.0 / par::lane_sum(row);
    row.iter_mut().for_each(|s| *s *= inv);
}

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "mtl-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = row_len(l.shape())?;
        let x = contiguous(s, l)?;
        let mut y = vec![0f32; x.len()];
        let big = x.len() >= par::MIN_ELEMENTS;
        par::chunks_mut(&mut y, d * ROWS, big, |r, y| {
            y.copy_from_slice(&x[r * d * ROWS..][..y.len()]);
            par::widest(
                #[inline(always)]
                || y.chunks_exact_mut(d).for_each(softmax_row),
            )
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = row_len(l.shape())?;
        let rows = l.shape().elem_count() / d;
        let out = cuda::rows("mtl_softmax_rows", &[(s, l)], (rows, d))?;
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let d = row_len(res.shape())?;
        #[cfg(feature = "cuda")]
        if res.device().is_cuda() {
            return cuda::grad(res, grad, d).map(Some);
        }
        let (y, dy) = (host(res)?, host(grad)?);
        let mut dx = vec![0f32; y.len()];
        let big = y.len() >= par::MIN_ELEMENTS;
        par::chunks_mut(&mut dx, d, big, |r, dx| {
            let (yr, gr) = (&y[r * d..(r + 1) * d], &dy[r * d..(r + 1) * d]);
            let dot: f32 = yr.iter().zip(gr).map(|(y, g)| y * g).sum();
            for ((dx, y), g) in dx.iter_mut().zip(yr).zip(gr) {
                *dx = y * (g - dot);
            }
        });
        Ok(Some(Tensor::from_vec(dx, res.dims(), res.device())?))
    }
}

/// The CUDA side: a warp per row, as the CPU code a row per task.
#[cfg(feature = "cuda")]
mod cuda {
    use crate::kernels::cuda::{first, launch_on, launch_tensors, tensor, warp_rows, Arg};
    use candle_core::{CudaStorage, Layout, Result, Tensor};

    const SOURCE: &str = r#"
#define NEG_INF __int_as_float(0xff800000)

__device__ float warp_sum(float v) {
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

extern "C" __global__ void mtl_softmax_rows(const float* x, float* y, int rows, int d) {
    const int r = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (r >= rows) return;
    const float* xr = x + (size_t)r * d;
    float* yr = y + (size_t)r * d;
    float m = NEG_INF;
    for (int k = lane; k < d; k += 32) m = fmaxf(m, xr[k]);
    for (int o = 16; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, o));
    float s = 0.0f;
    for (int k = lane; k < d; k += 32) {
        const float e = expf(xr[k] - m);
        yr[k] = e;
        s += e;
    }
    const float inv = 1.0f / warp_sum(s);
    for (int k = lane; k < d; k += 32) yr[k] *= inv;
}

// dx = y ⊙ (dy − Σ dy ⊙ y) per row.
extern "C" __global__ void mtl_softmax_rows_grad(const float* y, const float* dy, float* dx,
                                                 int rows, int d) {
    const int r = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (r >= rows) return;
    const size_t o = (size_t)r * d;
    float dot = 0.0f;
    for (int k = lane; k < d; k += 32) dot += y[o + k] * dy[o + k];
    dot = warp_sum(dot);
    for (int k = lane; k < d; k += 32) dx[o + k] = y[o + k] * (dy[o + k] - dot);
}
"#;

    const MODULE: (&str, &str) = ("mtl_softmax", SOURCE);

    fn dims((rows, d): (usize, usize)) -> [Arg; 2] {
        [Arg::I32(rows as i32), Arg::I32(d as i32)]
    }

    /// The forward kernel over `rows` rows of `d` values.
    pub fn rows(
        name: &str,
        operands: &[(&CudaStorage, &Layout)],
        (rows, d): (usize, usize),
    ) -> Result<CudaStorage> {
        let args = dims((rows, d));
        let outs = launch_on(MODULE, name, operands, &[rows * d], warp_rows(rows), &args)?;
        first(outs, name)
    }

    /// dx from the forward's output `y` and its gradient.
    pub fn grad(y: &Tensor, dy: &Tensor, d: usize) -> Result<Tensor> {
        let rows = y.elem_count() / d;
        let name = "mtl_softmax_rows_grad";
        let args = dims((rows, d));
        let outs = launch_tensors(MODULE, name, &[y, dy], &[rows * d], warp_rows(rows), &args)?;
        Ok(tensor(first(outs, name)?, y.shape()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{assert_same_gradients, max_abs_diff as diff};
    use candle_core::{Device, Var, D};

    #[test]
    fn matches_candle_softmax_forward_and_backward() {
        let dev = Device::Cpu;
        for shape in [vec![3, 7], vec![2, 3, 5, 5], vec![4, 1]] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 3.0, shape.as_slice(), &dev).unwrap())
                .unwrap();
            let ours = x.as_tensor().apply_op1(SoftmaxLastDim).unwrap();
            let theirs = candle_nn::ops::softmax(x.as_tensor(), D::Minus1).unwrap();
            assert!(diff(&ours, &theirs) < 1e-6, "forward {shape:?}");
            assert_same_gradients(&ours, &theirs, &[&x], 1e-5, &format!("softmax {shape:?}"));
        }
    }

    #[test]
    fn large_scores_do_not_overflow() {
        let x = Tensor::new(&[[1e4f32, 1e4 - 1.0, -1e9]], &Device::Cpu).unwrap();
        let y = x
            .apply_op1(SoftmaxLastDim)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!((y[0][0] + y[0][1] - 1.0).abs() < 1e-6 && y[0][2] == 0.0);
    }
}
