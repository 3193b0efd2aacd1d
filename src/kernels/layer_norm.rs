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

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = row_len(x.shape())?;
        let (xv, g, dy) = (host(x)?, host(gamma)?, host(grad)?);
        let rows = xv.len() / d;
        let mut dx = vec![0f32; xv.len()];
        // dγ and dβ summed over rows in a fixed order (deterministic).
        let (mut dgamma, mut dbeta) = (vec![0f64; d], vec![0f64; d]);
        let mut xhat = vec![0f32; d];
        for r in 0..rows {
            let (xr, gr) = (&xv[r * d..(r + 1) * d], &dy[r * d..(r + 1) * d]);
            let (mu, inv) = self.stats(xr);
            let (mut mg, mut mgx) = (0f32, 0f32);
            for k in 0..d {
                xhat[k] = (xr[k] - mu) * inv;
                let gk = gr[k] * g[k];
                mg += gk;
                mgx += gk * xhat[k];
                dgamma[k] += (gr[k] * xhat[k]) as f64;
                dbeta[k] += gr[k] as f64;
            }
            let (mg, mgx) = (mg / d as f32, mgx / d as f32);
            for (k, dx) in dx[r * d..(r + 1) * d].iter_mut().enumerate() {
                *dx = (gr[k] * g[k] - mg - xhat[k] * mgx) * inv;
            }
        }
        let dev = x.device();
        let f32s = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<_>>();
        Ok((
            Some(Tensor::from_vec(dx, x.dims(), dev)?),
            Some(Tensor::from_vec(f32s(dgamma), d, dev)?),
            Some(Tensor::from_vec(f32s(dbeta), d, dev)?),
        ))
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
