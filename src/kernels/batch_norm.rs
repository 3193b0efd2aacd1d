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

/// Per-channel batch mean and biased variance of the last forward.
pub type Stats = Arc<Mutex<Option<(Vec<f32>, Vec<f32>)>>>;

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
        let (mean, var) = moments(x, n, c, s);
        let mut y = vec![0f32; x.len()];
        let big = x.len() >= par::MIN_ELEMENTS;
        par::chunks_mut(&mut y, s, big, |plane, y| {
            let ch = plane % c;
            let inv = 1.0 / (var[ch] + self.eps as f32).sqrt();
            let (scale, shift) = (g[ch] * inv, b[ch] - g[ch] * inv * mean[ch]);
            let xp = &x[plane * s..(plane + 1) * s];
            y.iter_mut()
                .zip(xp)
                .for_each(|(y, x)| *y = x * scale + shift);
        });
        if let Ok(mut st) = self.stats.lock() {
            *st = Some((mean, var));
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
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
        let (xv, g, dy) = (host(x)?, host(gamma)?, host(grad)?);
        let (mean, var) = moments(&xv, n, c, s);
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
        let dx = x.track_op().then(|| {
            let mut dx = vec![0f32; xv.len()];
            let big = xv.len() >= par::MIN_ELEMENTS;
            par::chunks_mut(&mut dx, s, big, |plane, dx| {
                let ch = plane % c;
                let k = g[ch] * inv[ch] / m;
                let (xp, gp) = (
                    &xv[plane * s..(plane + 1) * s],
                    &dy[plane * s..(plane + 1) * s],
                );
                for ((dx, x), d) in dx.iter_mut().zip(xp).zip(gp) {
                    let xhat = (x - mean[ch]) * inv[ch];
                    *dx = k * (m * d - dbeta[ch] - xhat * dgamma[ch]);
                }
            });
            dx
        });
        let dev = x.device();
        Ok((
            dx.map(|v| Tensor::from_vec(v, x.dims(), dev)).transpose()?,
            Some(Tensor::from_vec(dgamma, c, dev)?),
            Some(Tensor::from_vec(dbeta, c, dev)?),
        ))
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
