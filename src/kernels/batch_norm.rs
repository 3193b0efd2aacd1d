//! Training-mode batch norm over axis 1 of [N, C, ...] as one CPU op with its
//! own backward. Through candle's autograd its backward is a chain of
//! broadcast reductions over non-trailing axes, which candle's CPU reduction
//! runs with a division per element: on `models/fusions.mtl` that was over
//! half of a training step.
//!
//! Forward: x̂ = (x − μ_c) / √(σ²_c + ε), y = γ·x̂ + β, with μ, σ² (biased)
//! over every axis but the channel. Backward, with M values per channel:
//! dβ = Σ dy, dγ = Σ dy·x̂, dx = γ / (M·√(σ² + ε)) · (M·dy − dβ − x̂·dγ).

use super::host::{contiguous, host};
use super::par;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// Per-channel batch mean and biased variance of the last forward, [C]
/// each, on its device.
pub type Stats = Arc<Mutex<Option<(Tensor, Tensor)>>>;

pub struct BatchNormTrain {
    pub eps: f64,
    /// Written by the forward, for the running statistics.
    pub stats: Stats,
}

/// (channels, values per channel per sample).
fn dims(shape: &Shape) -> Result<(usize, usize, usize)> {
    let d = shape.dims();
    if d.len() < 2 || d.contains(&0) {
        candle_core::bail!("batch norm expects a non-empty [N, C, ...], got {d:?}")
    }
    Ok((d[0], d[1], d[2..].iter().product()))
}

/// Mean and biased variance of every channel (two passes; plane sums in
/// f32 lanes, added up in f64).
fn moments(x: &[f32], n: usize, c: usize, s: usize) -> (Vec<f32>, Vec<f32>) {
    let m = (n * s) as f64;
    let plane = |i: usize, ch: usize| &x[(i * c + ch) * s..(i * c + ch + 1) * s];
    let mut mean = vec![0f32; c];
    let mut var = vec![0f32; c];
    for ch in 0..c {
        let mu = (0..n)
            .map(|i| {
                let p = plane(i, ch);
                par::lane_sum_f64(s, |k| p[k])
            })
            .sum::<f64>()
            / m;
        let muf = mu as f32;
        let v = (0..n)
            .map(|i| {
                let p = plane(i, ch);
                par::lane_sum_f64(s, |k| (p[k] - muf) * (p[k] - muf))
            })
            .sum::<f64>()
            / m;
        (mean[ch], var[ch]) = (muf, v as f32);
    }
    (mean, var)
}

impl BatchNormTrain {
    fn keep(&self, mean: Tensor, var: Tensor) {
        if let Ok(mut st) = self.stats.lock() {
            *st = Some((mean, var));
        }
    }
}

impl BatchNormTrain {
    /// y = γ·x̂ + β over [N, C, S] (`dims`) into `y`; returns the batch's
    /// per-channel mean and biased variance.
    pub fn forward_into(
        &self,
        x: &[f32],
        (n, c, s): (usize, usize, usize),
        (g, b): (&[f32], &[f32]),
        y: &mut [f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let (mean, var) = moments(x, n, c, s);
        let big = x.len() >= par::MIN_ELEMENTS;
        par::chunks_mut(y, s, big, |plane, y| {
            let ch = plane % c;
            let inv = 1.0 / (var[ch] + self.eps as f32).sqrt();
            let (scale, shift) = (g[ch] * inv, b[ch] - g[ch] * inv * mean[ch]);
            let xp = &x[plane * s..(plane + 1) * s];
            y.iter_mut()
                .zip(xp)
                .for_each(|(y, x)| *y = x * scale + shift);
        });
        (mean, var)
    }

    /// The backward from `dy`, the statistics recomputed from `x`: x's
    /// gradient added to `dx` (if wanted), γ's and β's added to `dg`, `db`.
    pub fn backward_into(
        &self,
        xv: &[f32],
        (n, c, s): (usize, usize, usize),
        g: &[f32],
        dy: &[f32],
        (dx, dg, db): (Option<&mut [f32]>, &mut [f32], &mut [f32]),
    ) {
        let (mean, var) = moments(xv, n, c, s);
        let m = (n * s) as f32;
        let inv: Vec<f32> = var
            .iter()
            .map(|v| 1.0 / (v + self.eps as f32).sqrt())
            .collect();
        // dβ and dγ per channel, in a fixed order (deterministic).
        let (mut dbeta, mut dgamma) = (vec![0f64; c], vec![0f64; c]);
        for plane in 0..n * c {
            let ch = plane % c;
            let (xp, gp) = (
                &xv[plane * s..(plane + 1) * s],
                &dy[plane * s..(plane + 1) * s],
            );
            let (mu, iv) = (mean[ch], inv[ch]);
            dbeta[ch] += par::lane_sum_f64(s, |k| gp[k]);
            dgamma[ch] += par::lane_sum_f64(s, |k| gp[k] * (xp[k] - mu)) * iv as f64;
        }
        let (dbeta, dgamma): (Vec<f32>, Vec<f32>) = (
            dbeta.iter().map(|v| *v as f32).collect(),
            dgamma.iter().map(|v| *v as f32).collect(),
        );
        if let Some(dx) = dx {
            let big = xv.len() >= par::MIN_ELEMENTS;
            par::chunks_mut(dx, s, big, |plane, dx| {
                let ch = plane % c;
                let k = g[ch] * inv[ch] / m;
                let (xp, gp) = (
                    &xv[plane * s..(plane + 1) * s],
                    &dy[plane * s..(plane + 1) * s],
                );
                for ((dx, x), d) in dx.iter_mut().zip(xp).zip(gp) {
                    let xhat = (x - mean[ch]) * inv[ch];
                    *dx += k * (m * d - dbeta[ch] - xhat * dgamma[ch]);
                }
            });
        }
        dg.iter_mut().zip(&dgamma).for_each(|(a, v)| *a += v);
        db.iter_mut().zip(&dbeta).for_each(|(a, v)| *a += v);
    }
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "mtl-batch-norm-train"
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
        let (n, c, s) = dims(l1.shape())?;
        let (x, g, b) = (
            contiguous(s1, l1)?,
            contiguous(s2, l2)?,
            contiguous(s3, l3)?,
        );
        if g.len() != c || b.len() != c {
            candle_core::bail!(
                "batch norm: {c} channels, but γ {} and β {}",
                g.len(),
                b.len()
            )
        }
        let mut y = vec![0f32; x.len()];
        let (mean, var) = self.forward_into(x, (n, c, s), (g, b), &mut y);
        let cpu = |v: Vec<f32>| Tensor::from_vec(v, c, &candle_core::Device::Cpu);
        self.keep(cpu(mean)?, cpu(var)?);
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
        let dims = dims(l1.shape())?;
        let c = dims.1;
        if l2.shape().elem_count() != c || l3.shape().elem_count() != c {
            candle_core::bail!("batch norm: {c} channels, but γ {l2:?} and β {l3:?}")
        }
        let (y, mean, var) = cuda::forward([(s1, l1), (s2, l2), (s3, l3)], dims, self.eps)?;
        self.keep(mean, var);
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
        let (n, c, s) = dims(x.shape())?;
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            let (dx, dg, db) = cuda::backward(x, gamma, grad, (n, c, s), self.eps)?;
            return Ok((Some(dx), Some(dg), Some(db)));
        }
        let (xv, g, dy) = (host(x)?, host(gamma)?, host(grad)?);
        let mut dx = x.track_op().then(|| vec![0f32; xv.len()]);
        let (mut dgamma, mut dbeta) = (vec![0f32; c], vec![0f32; c]);
        let grads = (dx.as_deref_mut(), &mut dgamma[..], &mut dbeta[..]);
        self.backward_into(&xv, (n, c, s), &g, &dy, grads);
        let dev = x.device();
        Ok((
            dx.map(|v| Tensor::from_vec(v, x.dims(), dev)).transpose()?,
            Some(Tensor::from_vec(dgamma, c, dev)?),
            Some(Tensor::from_vec(dbeta, c, dev)?),
        ))
    }
}

/// The CUDA side: a block per channel, which reads the channel's values
/// over every sample (sums in f64, as the CPU code's), for the statistics,
/// then writes its outputs; the backward recomputes the statistics, as the
/// CPU code does, so the op keeps nothing between the passes.
#[cfg(feature = "cuda")]
mod cuda {
    use crate::kernels::cuda::{blocks, launch_on, launch_tensors, missing, tensor, Arg};
    use candle_core::{CudaStorage, Layout, Result, Tensor};

    const SOURCE: &str = r#"
#define THREADS 256

// The sum of every thread's v in the block (THREADS threads).
__device__ double block_sum(double v, double* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int o = THREADS / 2; o > 0; o /= 2) {
        if (threadIdx.x < o) sh[threadIdx.x] += sh[threadIdx.x + o];
        __syncthreads();
    }
    const double r = sh[0];
    __syncthreads();
    return r;
}

// Element k of channel ch's m = n·s values of x [n, c, s].
__device__ size_t at(size_t k, int ch, int c, int s) {
    return ((k / s) * c + ch) * s + k % s;
}

// Channel ch's mean and biased variance.
__device__ float2 moments(const float* x, int ch, int n, int c, int s, double* sh) {
    const size_t m = (size_t)n * s;
    double acc = 0.0;
    for (size_t k = threadIdx.x; k < m; k += THREADS) acc += x[at(k, ch, c, s)];
    const float mu = (float)(block_sum(acc, sh) / m);
    acc = 0.0;
    for (size_t k = threadIdx.x; k < m; k += THREADS) {
        const float d = x[at(k, ch, c, s)] - mu;
        acc += d * d;
    }
    return make_float2(mu, (float)(block_sum(acc, sh) / m));
}

extern "C" __global__ void mtl_bn_train(const float* x, const float* g, const float* b, float* y,
                                        float* mean, float* var, int n, int c, int s, float eps) {
    __shared__ double sh[THREADS];
    const int ch = blockIdx.x;
    const float2 mv = moments(x, ch, n, c, s, sh);
    const float inv = 1.0f / sqrtf(mv.y + eps);
    const float scale = g[ch] * inv, shift = b[ch] - g[ch] * inv * mv.x;
    const size_t m = (size_t)n * s;
    for (size_t k = threadIdx.x; k < m; k += THREADS) {
        const size_t i = at(k, ch, c, s);
        y[i] = x[i] * scale + shift;
    }
    if (threadIdx.x == 0) {
        mean[ch] = mv.x;
        var[ch] = mv.y;
    }
}

// dβ = Σ dy, dγ = Σ dy·x̂, dx = γ / (m·√(σ² + ε)) · (m·dy − dβ − x̂·dγ).
extern "C" __global__ void mtl_bn_grad(const float* x, const float* g, const float* dy, float* dx,
                                       float* dg, float* db, int n, int c, int s, float eps) {
    __shared__ double sh[THREADS];
    const int ch = blockIdx.x;
    const float2 mv = moments(x, ch, n, c, s, sh);
    const float inv = 1.0f / sqrtf(mv.y + eps);
    const size_t m = (size_t)n * s;
    double sb = 0.0, sg = 0.0;
    for (size_t k = threadIdx.x; k < m; k += THREADS) {
        const size_t i = at(k, ch, c, s);
        sb += dy[i];
        sg += dy[i] * (x[i] - mv.x);
    }
    const float dbeta = (float)block_sum(sb, sh);
    const float dgamma = (float)(block_sum(sg, sh) * inv);
    const float k0 = g[ch] * inv / m;
    for (size_t k = threadIdx.x; k < m; k += THREADS) {
        const size_t i = at(k, ch, c, s);
        const float xhat = (x[i] - mv.x) * inv;
        dx[i] = k0 * ((float)m * dy[i] - dbeta - xhat * dgamma);
    }
    if (threadIdx.x == 0) {
        dg[ch] = dgamma;
        db[ch] = dbeta;
    }
}
"#;

    const MODULE: (&str, &str) = ("mtl_batch_norm", SOURCE);
    const THREADS: u32 = 256;

    fn args((n, c, s): (usize, usize, usize), eps: f64) -> [Arg; 4] {
        let i = |v: usize| Arg::I32(v as i32);
        [i(n), i(c), i(s), Arg::F32(eps as f32)]
    }

    /// (y, batch mean, batch variance) from x, γ and β (`operands`).
    pub fn forward(
        operands: [(&CudaStorage, &Layout); 3],
        dims: (usize, usize, usize),
        eps: f64,
    ) -> Result<(CudaStorage, Tensor, Tensor)> {
        let (n, c, s) = dims;
        let name = "mtl_bn_train";
        let lens = [n * c * s, c, c];
        let grid = blocks(c, THREADS);
        let outs = launch_on(MODULE, name, &operands, &lens, grid, &args(dims, eps))?;
        let [y, mean, var]: [CudaStorage; 3] = outs.try_into().map_err(|_| missing(name))?;
        Ok((y, tensor(mean, c), tensor(var, c)))
    }

    /// (dx, dγ, dβ).
    pub fn backward(
        x: &Tensor,
        g: &Tensor,
        dy: &Tensor,
        dims: (usize, usize, usize),
        eps: f64,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (n, c, s) = dims;
        let name = "mtl_bn_grad";
        let lens = [n * c * s, c, c];
        let grid = blocks(c, THREADS);
        let outs = launch_tensors(MODULE, name, &[x, g, dy], &lens, grid, &args(dims, eps))?;
        let [dx, dg, db]: [CudaStorage; 3] = outs.try_into().map_err(|_| missing(name))?;
        Ok((tensor(dx, x.shape()), tensor(dg, c), tensor(db, c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{assert_same_gradients, max_abs_diff as diff};
    use candle_core::{Device, Var};

    /// Output and all three gradients equal candle's differentiable form.
    #[test]
    fn matches_candle_batch_norm_forward_and_backward() {
        let dev = Device::Cpu;
        for shape in [vec![4, 3, 5, 6], vec![8, 5], vec![3, 2, 7]] {
            let c = shape[1];
            let var = |s: &[usize], lo: f32| {
                Var::from_tensor(&Tensor::rand(lo, 2.0, s, &dev).unwrap()).unwrap()
            };
            let (x, g, b) = (var(&shape, -2.0), var(&[c], 0.5), var(&[c], -1.0));
            let stats: Stats = Arc::default();
            let op = BatchNormTrain {
                eps: 1e-3,
                stats: stats.clone(),
            };
            let ours = x
                .as_tensor()
                .apply_op3(g.as_tensor(), b.as_tensor(), op)
                .unwrap();
            let mut bshape = vec![1, c];
            bshape.extend(std::iter::repeat_n(1, shape.len() - 2));
            let flat = x
                .as_tensor()
                .transpose(0, 1)
                .unwrap()
                .flatten_from(1)
                .unwrap();
            let mean = flat.mean_keepdim(1).unwrap();
            let v = flat
                .broadcast_sub(&mean)
                .unwrap()
                .sqr()
                .unwrap()
                .mean_keepdim(1)
                .unwrap();
            let (mean, v) = (
                mean.reshape(bshape.clone()).unwrap(),
                v.reshape(bshape.clone()).unwrap(),
            );
            let theirs = x
                .as_tensor()
                .broadcast_sub(&mean)
                .unwrap()
                .broadcast_div(&(v.clone() + 1e-3).unwrap().sqrt().unwrap())
                .unwrap()
                .broadcast_mul(&g.as_tensor().reshape(bshape.clone()).unwrap())
                .unwrap()
                .broadcast_add(&b.as_tensor().reshape(bshape).unwrap())
                .unwrap();
            assert!(diff(&ours, &theirs) < 1e-4, "forward {shape:?}");
            let saved = stats.lock().unwrap().clone().unwrap();
            let want_var = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(saved
                .1
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .zip(&want_var)
                .all(|(a, b)| (a - b).abs() < 1e-5));
            assert_same_gradients(
                &ours,
                &theirs,
                &[&x, &g, &b],
                1e-3,
                &format!("batch norm {shape:?}"),
            );
        }
    }
}
