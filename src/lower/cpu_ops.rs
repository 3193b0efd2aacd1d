//! Small CPU ops with their own backward, where candle's autograd makes
//! several single-threaded, allocating passes (measured in `benches/backward.rs`):
//! relu, max pooling for any stride (candle's backward needs stride = size),
//! and nearest upsampling.

use super::host::{contiguous, host};
use super::par;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

/// max(x, 0); backward passes the gradient where the output is positive.
pub struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "mtl-relu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let v = par::map(contiguous(s, l)?, |x| x.max(0.0));
        Ok((CpuStorage::F32(v), l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = relu_grad(&host(grad)?, &host(res)?);
        Ok(Some(Tensor::from_vec(g, res.dims(), res.device())?))
    }
}

/// The gradient through a relu whose output is `y`: kept where y > 0.
pub fn relu_grad(g: &[f32], y: &[f32]) -> Vec<f32> {
    par::zip_map(g, y, |g, y| if y > 0.0 { g } else { 0.0 })
}

/// Max pooling over the last two axes of [N, C, H, W], any stride (floor).
/// The forward keeps each output's argmax for the backward.
pub struct MaxPool2d {
    pub k: (usize, usize),
    pub s: (usize, usize),
    argmax: Mutex<Option<Vec<u32>>>,
}

impl MaxPool2d {
    pub fn new(k: (usize, usize), s: (usize, usize)) -> Self {
        MaxPool2d {
            k,
            s,
            argmax: Mutex::new(None),
        }
    }
    fn out(&self, h: usize, w: usize) -> (usize, usize) {
        ((h - self.k.0) / self.s.0 + 1, (w - self.k.1) / self.s.1 + 1)
    }
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "mtl-max-pool2d"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        if h < self.k.0 || w < self.k.1 {
            candle_core::bail!("max pool of {:?} does not fit [{h}, {w}]", self.k)
        }
        let x = contiguous(s, l)?;
        let (oh, ow) = self.out(h, w);
        // Each plane's outputs and argmaxes, side by side.
        let mut out = vec![(0f32, 0u32); n * c * oh * ow];
        let work = n * c * oh * ow * self.k.0 * self.k.1;
        par::chunks_mut(
            &mut out,
            oh * ow,
            work >= par::MIN_ELEMENTS,
            |plane, out| {
                let xp = &x[plane * h * w..(plane + 1) * h * w];
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (mut best, mut at) = (f32::NEG_INFINITY, 0);
                        for i in 0..self.k.0 {
                            for j in 0..self.k.1 {
                                let idx = (oy * self.s.0 + i) * w + ox * self.s.1 + j;
                                if xp[idx] > best {
                                    best = xp[idx];
                                    at = idx;
                                }
                            }
                        }
                        out[oy * ow + ox] = (best, at as u32);
                    }
                }
            },
        );
        let (y, arg): (Vec<f32>, Vec<u32>) = out.into_iter().unzip();
        if let Ok(mut a) = self.argmax.lock() {
            *a = Some(arg);
        }
        Ok((CpuStorage::F32(y), Shape::from((n, c, oh, ow))))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        let (oh, ow) = self.out(h, w);
        let arg = match self.argmax.lock().ok().and_then(|mut a| a.take()) {
            Some(a) => a,
            None => {
                // Recompute (e.g. a second backward through the same graph).
                let xv = host(x)?.to_vec();
                let (s, l) = (CpuStorage::F32(xv), Layout::contiguous(x.shape()));
                self.cpu_fwd(&s, &l)?;
                self.argmax
                    .lock()
                    .ok()
                    .and_then(|mut a| a.take())
                    .unwrap_or_default()
            }
        };
        if arg.len() != grad.elem_count() {
            candle_core::bail!("max pool backward: saved positions do not fit the gradient")
        }
        let g = host(grad)?;
        let mut dx = vec![0f32; x.elem_count()];
        let par = dx.len() >= par::MIN_ELEMENTS;
        par::chunks_mut(&mut dx, h * w, par, |plane, dx| {
            for p in 0..oh * ow {
                let o = plane * oh * ow + p;
                dx[arg[o] as usize] += g[o];
            }
        });
        Ok(Some(Tensor::from_vec(dx, x.dims(), x.device())?))
    }
}

/// Nearest-neighbour upsampling of [N, C, H, W] by an integer `scale`;
/// backward sums each scale×scale block (candle's runs a grouped conv).
pub struct Upsample2d {
    pub scale: usize,
}

impl CustomOp1 for Upsample2d {
    fn name(&self) -> &'static str {
        "mtl-upsample2d"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let k = self.scale;
        let x = contiguous(s, l)?;
        let (oh, ow) = (h * k, w * k);
        let mut y = vec![0f32; n * c * oh * ow];
        let par = y.len() >= par::MIN_ELEMENTS;
        par::chunks_mut(&mut y, oh * ow, par, |plane, y| {
            let xp = &x[plane * h * w..(plane + 1) * h * w];
            for (oy, row) in y.chunks_mut(ow).enumerate() {
                let src = &xp[(oy / k) * w..(oy / k + 1) * w];
                for (ox, v) in row.iter_mut().enumerate() {
                    *v = src[ox / k];
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((n, c, oh, ow))))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        let k = self.scale;
        let (oh, ow) = (h * k, w * k);
        let g = host(grad)?;
        let mut dx = vec![0f32; x.elem_count()];
        let par = g.len() >= par::MIN_ELEMENTS;
        par::chunks_mut(&mut dx, h * w, par, |plane, dx| {
            let gp = &g[plane * oh * ow..(plane + 1) * oh * ow];
            for (oy, row) in gp.chunks(ow).enumerate() {
                let dst = &mut dx[(oy / k) * w..(oy / k + 1) * w];
                for (ox, v) in row.iter().enumerate() {
                    dst[ox / k] += v;
                }
            }
        });
        Ok(Some(Tensor::from_vec(dx, x.dims(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::{MaxPool2d, Relu};
    use candle_core::{Device, Tensor, Var};

    fn diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Output and input gradient of `ours` and `theirs` on the same data.
    fn compare(
        shape: &[usize],
        ours: &dyn Fn(&Tensor) -> Tensor,
        theirs: &dyn Fn(&Tensor) -> Tensor,
    ) {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()).unwrap();
        let (a, b) = (ours(x.as_tensor()), theirs(x.as_tensor()));
        assert!(diff(&a, &b) < 1e-6, "forward");
        let w = Tensor::randn(0f32, 1.0, a.dims(), &Device::Cpu).unwrap();
        let ga = (a * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (ga, gb) = (
            ga.get(x.as_tensor()).unwrap(),
            gb.get(x.as_tensor()).unwrap(),
        );
        assert!(diff(ga, gb) < 1e-6, "backward");
    }

    #[test]
    fn upsample_matches_candle() {
        use super::Upsample2d;
        compare(
            &[2, 3, 4, 5],
            &|x| x.apply_op1(Upsample2d { scale: 3 }).unwrap(),
            &|x| x.upsample_nearest2d(12, 15).unwrap(),
        );
    }

    #[test]
    fn relu_matches_candle() {
        compare(&[3, 4, 5], &|x| x.apply_op1(Relu).unwrap(), &|x| {
            x.relu().unwrap()
        });
    }

    /// Max over every window as a stack of shifted slices: candle ops whose
    /// backward routes the gradient to the maximum (no ties in random data).
    fn windows_max(x: &Tensor, k: (usize, usize), st: (usize, usize)) -> Tensor {
        let (h, w) = (x.dim(2).unwrap(), x.dim(3).unwrap());
        let (oh, ow) = ((h - k.0) / st.0 + 1, (w - k.1) / st.1 + 1);
        let mut parts = vec![];
        for i in 0..k.0 {
            for j in 0..k.1 {
                let rows: Vec<Tensor> = (0..oh)
                    .map(|oy| x.narrow(2, oy * st.0 + i, 1).unwrap())
                    .collect();
                let r = Tensor::cat(&rows, 2).unwrap();
                let cols: Vec<Tensor> = (0..ow)
                    .map(|ox| r.narrow(3, ox * st.1 + j, 1).unwrap())
                    .collect();
                parts.push(Tensor::cat(&cols, 3).unwrap());
            }
        }
        Tensor::stack(&parts, 0).unwrap().max(0).unwrap()
    }

    /// Forward equals candle's max_pool2d. Backward equals the window-max
    /// reference, not candle's: candle 0.11 scales the gradient at the maximum
    /// by 1/(kh·kw) (on [[1, 2], [3, 4]] with a 2×2 pool it gives 0.25 where the
    /// derivative is 1), so candle is not the reference for the backward.
    #[test]
    fn max_pool_forward_matches_candle_and_backward_the_derivative() {
        for (shape, k, st) in [
            ([2, 3, 8, 6], (2, 2), (2, 2)),
            ([2, 3, 9, 7], (3, 2), (3, 2)),
            ([2, 2, 7, 9], (3, 3), (2, 2)),
        ] {
            let x = Tensor::randn(0f32, 1.0, &shape, &Device::Cpu).unwrap();
            let ours = x.apply_op1(MaxPool2d::new(k, st)).unwrap();
            assert!(diff(&ours, &x.max_pool2d_with_stride(k, st).unwrap()) < 1e-6);
            compare(
                &shape,
                &|x| x.apply_op1(MaxPool2d::new(k, st)).unwrap(),
                &|x| windows_max(x, k, st),
            );
        }
    }
}
