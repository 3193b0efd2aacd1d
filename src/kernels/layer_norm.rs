//! Training-mode layer norm over the last axis as one CPU op with its own
//! backward. Through candle's autograd the differentiable form is eight
//! ops (two means, sub, sqr, add, sqrt, div, affine), each with its backward.
//!
//! Forward, per row of D values: x̂ = (x − μ) / √(σ² + ε), y = γ·x̂ + β.
//! Backward, per row, with g = dy·γ:
//! dx = (g − mean(g) − x̂·mean(g·x̂)) / √(σ² + ε); over all rows
//! dγ = Σ dy·x̂, dβ = Σ dy.

use super::host::{contiguous, host};
use super::par;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

pub struct LayerNormTrain {
    pub eps: f64,
}

fn row_len(shape: &Shape) -> Result<usize> {
    match shape.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => candle_core::bail!("layer norm over an empty last axis: {shape:?}"),
    }
}

impl LayerNormTrain {
    /// Mean and 1/√(σ² + ε) of one row (biased variance, as Keras).
    fn stats(&self, x: &[f32]) -> (f32, f32) {
        let d = x.len() as f32;
        let mu = x.iter().sum::<f32>() / d;
        let var = x.iter().map(|v| (v - mu) * (v - mu)).sum::<f32>() / d;
        (mu, 1.0 / (var + self.eps as f32).sqrt())
    }
}

impl LayerNormTrain {
    /// The backward over rows of `gamma.len()` values: x's gradient added to
    /// `dx`, γ's and β's (summed over rows in a fixed order, deterministic)
    /// added to theirs.
    pub fn backward_into(
        &self,
        x: &[f32],
        gamma: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        (dg, db): (&mut [f32], &mut [f32]),
    ) {
        let d = gamma.len();
        let (mut dgamma, mut dbeta) = (vec![0f64; d], vec![0f64; d]);
        let mut xhat = vec![0f32; d];
        let rows = x.chunks(d).zip(dy.chunks(d)).zip(dx.chunks_mut(d));
        for ((xr, gr), dxr) in rows {
            let (mu, inv) = self.stats(xr);
            let (mut mg, mut mgx) = (0f32, 0f32);
            for k in 0..d {
                xhat[k] = (xr[k] - mu) * inv;
                let gk = gr[k] * gamma[k];
                mg += gk;
                mgx += gk * xhat[k];
                dgamma[k] += (gr[k] * xhat[k]) as f64;
                dbeta[k] += gr[k] as f64;
            }
            let (mg, mgx) = (mg / d as f32, mgx / d as f32);
            for (k, dx) in dxr.iter_mut().enumerate() {
                *dx += (gr[k] * gamma[k] - mg - xhat[k] * mgx) * inv;
            }
        }
        dg.iter_mut().zip(dgamma).for_each(|(a, v)| *a += v as f32);
        db.iter_mut().zip(dbeta).for_each(|(a, v)| *a += v as f32);
    }
}

impl CustomOp3 for LayerNormTrain {
    fn name(&self) -> &'static str {
        "mtl-layer-norm-train"
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
        let d = row_len(l1.shape())?;
        let (x, g, b) = (
            contiguous(s1, l1)?,
            contiguous(s2, l2)?,
            contiguous(s3, l3)?,
        );
        if g.len() != d || b.len() != d {
            candle_core::bail!(
                "layer norm: {d} features, but γ {} and β {}",
                g.len(),
                b.len()
            )
        }
        let mut y = vec![0f32; x.len()];
        let big = x.len() >= par::MIN_ELEMENTS;
        par::chunks_mut(&mut y, d, big, |r, y| {
            let xr = &x[r * d..(r + 1) * d];
            let (mu, inv) = self.stats(xr);
            for (k, (y, x)) in y.iter_mut().zip(xr).enumerate() {
                *y = (x - mu) * inv * g[k] + b[k];
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
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
        let d = row_len(l1.shape())?;
        if l2.shape().elem_count() != d || l3.shape().elem_count() != d {
            candle_core::bail!("layer norm: {d} features, but γ {l2:?} and β {l3:?}")
        }
        let rows = l1.shape().elem_count() / d;
        let y = cuda::forward([(s1, l1), (s2, l2), (s3, l3)], (rows, d), self.eps)?;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = row_len(x.shape())?;
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            let (dx, dg, db) = cuda::backward(x, gamma, grad, d, self.eps)?;
            return Ok((Some(dx), Some(dg), Some(db)));
        }
        let (xv, g, dy) = (host(x)?, host(gamma)?, host(grad)?);
        let mut dx = vec![0f32; xv.len()];
        let (mut dgamma, mut dbeta) = (vec![0f32; d], vec![0f32; d]);
        self.backward_into(&xv, &g, &dy, &mut dx, (&mut dgamma, &mut dbeta));
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.dims(), dev)?),
            Some(Tensor::from_vec(dgamma, d, dev)?),
            Some(Tensor::from_vec(dbeta, d, dev)?),
        ))
    }
}

/// The CUDA side: a warp per row for the output and x's gradient; γ's and
/// β's gradients as column sums, a thread per column and eighth of the rows.
#[cfg(feature = "cuda")]
mod cuda {
    use crate::kernels::cuda::{self as launcher, first, missing, tensor, warp_rows, Arg};
    use candle_core::{CudaStorage, Layout, Result, Tensor};

    const SOURCE: &str = r#"
__device__ float warp_sum(float v) {
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

// The row's mean and 1/√(σ² + ε) (biased variance, two passes).
__device__ float2 row_stats(const float* xr, int d, float eps, int lane) {
    float s = 0.0f;
    for (int k = lane; k < d; k += 32) s += xr[k];
    const float mu = warp_sum(s) / d;
    float v = 0.0f;
    for (int k = lane; k < d; k += 32) v += (xr[k] - mu) * (xr[k] - mu);
    return make_float2(mu, 1.0f / sqrtf(warp_sum(v) / d + eps));
}

extern "C" __global__ void mtl_ln_rows(const float* x, const float* g, const float* b, float* y,
                                       int rows, int d, float eps) {
    const int r = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (r >= rows) return;
    const size_t o = (size_t)r * d;
    const float2 st = row_stats(x + o, d, eps, lane);
    for (int k = lane; k < d; k += 32) y[o + k] = (x[o + k] - st.x) * st.y * g[k] + b[k];
}

// dx = (dy·γ − mean(dy·γ) − x̂·mean(dy·γ·x̂)) / √(σ² + ε); each row's mean
// and 1/√(σ² + ε) into stats [2, rows] for the parameters' kernel.
extern "C" __global__ void mtl_ln_rows_grad(const float* x, const float* g, const float* dy,
                                            float* dx, float* stats, int rows, int d, float eps) {
    const int r = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (r >= rows) return;
    const size_t o = (size_t)r * d;
    const float2 st = row_stats(x + o, d, eps, lane);
    float mg = 0.0f, mgx = 0.0f;
    for (int k = lane; k < d; k += 32) {
        const float gk = dy[o + k] * g[k];
        mg += gk;
        mgx += gk * (x[o + k] - st.x) * st.y;
    }
    mg = warp_sum(mg) / d;
    mgx = warp_sum(mgx) / d;
    for (int k = lane; k < d; k += 32) {
        const float xhat = (x[o + k] - st.x) * st.y;
        dx[o + k] = (dy[o + k] * g[k] - mg - xhat * mgx) * st.y;
    }
    if (lane == 0) {
        stats[r] = st.x;
        stats[rows + r] = st.y;
    }
}

// dγ = Σ dy·x̂ and dβ = Σ dy over rows: 32 columns per block, each summed by
// 8 threads over every eighth row (reads coalesced along the columns), then
// added in a fixed order.
extern "C" __global__ void mtl_ln_params_grad(const float* x, const float* dy, const float* stats,
                                              float* dg, float* db, int rows, int d) {
    __shared__ float sg[8][32], sb[8][32];
    const int lane = threadIdx.x % 32, part = threadIdx.x / 32, col = blockIdx.x * 32 + lane;
    float a = 0.0f, c = 0.0f;
    if (col < d) {
        for (int r = part; r < rows; r += 8) {
            const size_t i = (size_t)r * d + col;
            a += dy[i] * (x[i] - stats[r]) * stats[rows + r];
            c += dy[i];
        }
    }
    sg[part][lane] = a;
    sb[part][lane] = c;
    __syncthreads();
    if (part == 0 && col < d) {
        for (int p = 1; p < 8; p++) {
            a += sg[p][lane];
            c += sb[p][lane];
        }
        dg[col] = a;
        db[col] = c;
    }
}
"#;

    const MODULE: (&str, &str) = ("mtl_layer_norm", SOURCE);

    fn dims((rows, d): (usize, usize)) -> [Arg; 2] {
        [Arg::I32(rows as i32), Arg::I32(d as i32)]
    }

    /// y from x, γ and β (`operands`) of `rows` rows of `d` features.
    pub fn forward(
        operands: [(&CudaStorage, &Layout); 3],
        (rows, d): (usize, usize),
        eps: f64,
    ) -> Result<CudaStorage> {
        let [r, c] = dims((rows, d));
        let args = [r, c, Arg::F32(eps as f32)];
        let name = "mtl_ln_rows";
        let outs =
            launcher::launch_on(MODULE, name, &operands, &[rows * d], warp_rows(rows), &args)?;
        first(outs, name)
    }

    /// (dx, dγ, dβ).
    pub fn backward(
        x: &Tensor,
        g: &Tensor,
        dy: &Tensor,
        d: usize,
        eps: f64,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let rows = x.elem_count() / d;
        let [r, c] = dims((rows, d));
        let args = [r, c, Arg::F32(eps as f32)];
        let name = "mtl_ln_rows_grad";
        let grid = warp_rows(rows);
        let outs = launcher::launch_tensors(
            MODULE,
            name,
            &[x, g, dy],
            &[rows * d, 2 * rows],
            grid,
            &args,
        )?;
        let [dx, stats]: [CudaStorage; 2] = outs.try_into().map_err(|_| missing(name))?;
        let stats = tensor(stats, 2 * rows);
        let name = "mtl_ln_params_grad";
        let grid = launcher::blocks(d.div_ceil(32), 256);
        let outs = launcher::launch_tensors(
            MODULE,
            name,
            &[x, dy, &stats],
            &[d, d],
            grid,
            &dims((rows, d)),
        )?;
        let [dg, db]: [CudaStorage; 2] = outs.try_into().map_err(|_| missing(name))?;
        Ok((tensor(dx, x.shape()), tensor(dg, d), tensor(db, d)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{assert_same_gradients, max_abs_diff as diff};
    use candle_core::{Device, Var, D};

    /// Output and all three gradients equal candle's differentiable form.
    #[test]
    fn matches_candle_layer_norm_forward_and_backward() {
        let dev = Device::Cpu;
        for shape in [vec![4, 6], vec![2, 5, 8], vec![3, 1]] {
            let d = shape[shape.len() - 1];
            let var = |s: &[usize], lo: f32| {
                Var::from_tensor(&Tensor::rand(lo, 2.0, s, &dev).unwrap()).unwrap()
            };
            let (x, g, b) = (var(&shape, -2.0), var(&[d], 0.5), var(&[d], -1.0));
            let ours = x
                .as_tensor()
                .apply_op3(g.as_tensor(), b.as_tensor(), LayerNormTrain { eps: 1e-3 })
                .unwrap();
            let xt = x.as_tensor();
            let mean = xt.mean_keepdim(D::Minus1).unwrap();
            let xc = xt.broadcast_sub(&mean).unwrap();
            let v = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let theirs = xc
                .broadcast_div(&(v + 1e-3).unwrap().sqrt().unwrap())
                .unwrap()
                .broadcast_mul(g.as_tensor())
                .unwrap()
                .broadcast_add(b.as_tensor())
                .unwrap();
            assert!(diff(&ours, &theirs) < 1e-5, "forward {shape:?}");
            let what = format!("layer norm {shape:?}");
            assert_same_gradients(&ours, &theirs, &[&x, &g, &b], 1e-4, &what);
        }
    }
}
