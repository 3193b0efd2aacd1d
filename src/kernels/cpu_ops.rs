//! Small CPU ops with their own backward, where candle's autograd makes
//! several single-threaded, allocating passes (measured in `benches/backward.rs`):
//! relu, max pooling for any stride (candle's backward needs stride = size),
//! and nearest upsampling.

use super::host::{contiguous, host};
use super::lanes::LANES;
use super::par;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
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

/// [`relu_grad`] in place: `g` zeroed where the relu's output `y` is.
pub fn relu_mask(g: &mut [f32], y: &[f32]) {
    // A select, not a branch: relu outputs are zero at random, and the
    // branchy loop measured about twice the convolution's own backward
    // (`siamese`: ~160 µs against ~70 µs). Bound by memory, so both cores
    // on a large one (a convolution's output).
    const CHUNK: usize = 1 << 14;
    let big = g.len() >= par::MIN_ELEMENTS;
    par::chunks_mut(g, CHUNK, big, |i, g| {
        let y = &y[i * CHUNK..][..g.len()];
        par::widest(
            #[inline(always)]
            || {
                g.iter_mut()
                    .zip(y)
                    .for_each(|(g, y)| *g = if *y > 0.0 { *g } else { 0.0 })
            },
        )
    });
}

/// Max pooling over the last two axes of [N, C, H, W], any stride (floor).
/// For training the forward keeps each window's first maximum (its offset
/// in the window) for the backward; for inference it is a plain max.
pub struct MaxPool2d {
    pub k: (usize, usize),
    pub s: (usize, usize),
    train: bool,
    argmax: Mutex<Option<Vec<u16>>>,
    /// On CUDA, the training forward's first-maximum offsets.
    #[cfg(feature = "cuda")]
    kept: Mutex<Option<Tensor>>,
}

impl MaxPool2d {
    pub fn new(k: (usize, usize), s: (usize, usize), train: bool) -> Self {
        MaxPool2d {
            k,
            s,
            train,
            argmax: Mutex::new(None),
            #[cfg(feature = "cuda")]
            kept: Mutex::new(None),
        }
    }
    fn out(&self, h: usize, w: usize) -> (usize, usize) {
        ((h - self.k.0) / self.s.0 + 1, (w - self.k.1) / self.s.1 + 1)
    }

    /// One plane of `hw` = (h, w) values whose rows lie `pitch` apart (a
    /// direct convolution's grid, [`crate::kernels::conv`]) into `y`, with
    /// each window's first maximum into `arg` when given: a fused pool reads
    /// the grid without copying the plane out first.
    pub fn plane_pitched(
        &self,
        x: &[f32],
        pitch: usize,
        (h, w): (usize, usize),
        y: &mut [f32],
        arg: Option<&mut [u16]>,
    ) {
        let (_, ow) = self.out(h, w);
        self.plane(x, pitch, ow, y, arg)
    }

    /// The output size of an [h, w] plane, or `None` where the window does not fit.
    pub fn out_dims(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        (h >= self.k.0 && w >= self.k.1 && self.s.0 > 0 && self.s.1 > 0).then(|| self.out(h, w))
    }

    /// The inference forward of contiguous planes of `hw` = (h, w) into `y`
    /// (no argmax is kept). The caller checks the window fits ([`Self::out_dims`]).
    pub fn forward_into(&self, x: &[f32], (h, w): (usize, usize), y: &mut [f32]) {
        let (oh, ow) = self.out(h, w);
        let par = y.len() * self.k.0 * self.k.1 >= par::MIN_ELEMENTS;
        par::chunks_mut(y, oh * ow, par, |plane, y| {
            self.plane(&x[plane * h * w..(plane + 1) * h * w], w, ow, y, None)
        });
    }

    /// The training forward: outputs and each window's first-maximum offset.
    pub fn forward_train_into(
        &self,
        x: &[f32],
        (h, w): (usize, usize),
        y: &mut [f32],
        arg: &mut [u16],
    ) {
        let (oh, ow) = self.out(h, w);
        let p = oh * ow;
        let one = |plane: usize, (y, a): (&mut [f32], &mut [u16])| {
            self.plane(&x[plane * h * w..(plane + 1) * h * w], w, ow, y, Some(a))
        };
        if y.len() * self.k.0 * self.k.1 >= par::MIN_ELEMENTS {
            y.par_chunks_mut(p)
                .zip(arg.par_chunks_mut(p))
                .enumerate()
                .for_each(|(i, c)| one(i, c));
        } else {
            y.chunks_mut(p)
                .zip(arg.chunks_mut(p))
                .enumerate()
                .for_each(|(i, c)| one(i, c));
        }
    }

    /// The backward: each window's gradient added to `dx` at its first maximum.
    pub fn backward_into(&self, arg: &[u16], (h, w): (usize, usize), g: &[f32], dx: &mut [f32]) {
        let (oh, ow) = self.out(h, w);
        let ((kh, kw), (sh, sw)) = (self.k, self.s);
        // Each window offset's place in the plane, looked up: a division by
        // the window width per output measured as 9% of a shapes_mm step.
        let offset: Vec<usize> = (0..kh * kw).map(|at| at / kw * w + at % kw).collect();
        let par = dx.len() >= par::MIN_ELEMENTS;
        par::chunks_mut(dx, h * w, par, |plane, dx| {
            let o0 = plane * oh * ow;
            for oy in 0..oh {
                let (args, gs) = (&arg[o0 + oy * ow..][..ow], &g[o0 + oy * ow..][..ow]);
                let row = oy * sh * w;
                for (ox, (at, gv)) in args.iter().zip(gs).enumerate() {
                    dx[row + ox * sw + offset[*at as usize]] += gv;
                }
            }
        });
    }

    /// [`Self::backward_into`] written over `dx` rather than added to it:
    /// every value of every plane is set, the window maxima to their
    /// gradient, the rest to zero, so the caller need not zero `dx` first.
    /// 2×2 windows at stride 2 only (they tile the plane; an odd last row
    /// or column is zero); other pools take the zeroing and the addition.
    /// Fill then scatter were 7% of `shapes_mm`'s one-thread training step.
    pub fn backward_over(&self, arg: &[u16], (h, w): (usize, usize), g: &[f32], dx: &mut [f32]) {
        if (self.k, self.s) != ((2, 2), (2, 2)) {
            dx.fill(0.0);
            return self.backward_into(arg, (h, w), g, dx);
        }
        let (oh, ow) = self.out(h, w);
        par::widest(
            #[inline(always)]
            || {
                let planes = dx.chunks_exact_mut(h * w);
                let windows = arg.chunks_exact(oh * ow).zip(g.chunks_exact(oh * ow));
                for (dx, (arg, g)) in planes.zip(windows) {
                    let (pairs, rest) = dx.split_at_mut(2 * oh * w);
                    rest.fill(0.0);
                    let rows = pairs.chunks_exact_mut(2 * w);
                    for (rr, (a, g)) in rows.zip(arg.chunks_exact(ow).zip(g.chunks_exact(ow))) {
                        let (r0, r1) = rr.split_at_mut(w);
                        r0[2 * ow..].fill(0.0);
                        r1[2 * ow..].fill(0.0);
                        // 0 + g, as the zeroing and addition give (−0 → +0).
                        let at = |a: u16, g: f32, k: u16| if a == k { 0.0 + g } else { 0.0 };
                        // Blocks of LANES windows through fixed-size arrays,
                        // so the selects and the interleaving vectorize.
                        let whole = ow / LANES * LANES;
                        for j0 in (0..whole).step_by(LANES) {
                            let (mut t, mut b) = ([0f32; 2 * LANES], [0f32; 2 * LANES]);
                            let (a, g) = (&a[j0..j0 + LANES], &g[j0..j0 + LANES]);
                            for j in 0..LANES {
                                (t[2 * j], t[2 * j + 1]) = (at(a[j], g[j], 0), at(a[j], g[j], 1));
                                (b[2 * j], b[2 * j + 1]) = (at(a[j], g[j], 2), at(a[j], g[j], 3));
                            }
                            r0[2 * j0..][..2 * LANES].copy_from_slice(&t);
                            r1[2 * j0..][..2 * LANES].copy_from_slice(&b);
                        }
                        let cells = r0[2 * whole..].chunks_exact_mut(2);
                        let cells = cells.zip(r1[2 * whole..].chunks_exact_mut(2));
                        for ((t, b), (a, g)) in cells.zip(a[whole..].iter().zip(&g[whole..])) {
                            (t[0], t[1]) = (at(*a, *g, 0), at(*a, *g, 1));
                            (b[0], b[1]) = (at(*a, *g, 2), at(*a, *g, 3));
                        }
                    }
                }
            },
        )
    }

    /// Outputs, and with `arg` each window's first-maximum offset, of one
    /// plane: compiled for the widest vectors the CPU has (identical results).
    fn plane(&self, xp: &[f32], w: usize, ow: usize, y: &mut [f32], arg: Option<&mut [u16]>) {
        par::widest(
            #[inline(always)]
            || self.plane_any(xp, w, ow, y, arg),
        )
    }

    #[inline(always)]
    fn plane_any(
        &self,
        xp: &[f32],
        w: usize,
        ow: usize,
        y: &mut [f32],
        mut arg: Option<&mut [u16]>,
    ) {
        let ((kh, kw), (sh, sw)) = (self.k, self.s);
        for (oy, row) in y.chunks_mut(ow).enumerate() {
            if (kh, kw, sh, sw) == (2, 2, 2, 2) {
                let (r0, r1) = (
                    &xp[2 * oy * w..][..2 * ow],
                    &xp[(2 * oy + 1) * w..][..2 * ow],
                );
                match arg.as_deref_mut() {
                    None => pool_row_2x2(r0, r1, row),
                    Some(arg) => pool_row_2x2_arg(r0, r1, row, &mut arg[oy * ow..(oy + 1) * ow]),
                }
                continue;
            }
            for (ox, v) in row.iter_mut().enumerate() {
                let (mut best, mut at) = (f32::NEG_INFINITY, 0);
                for i in 0..kh {
                    let r = &xp[(oy * sh + i) * w + ox * sw..][..kw];
                    for (j, x) in r.iter().enumerate() {
                        if *x > best {
                            best = *x;
                            at = i * kw + j;
                        }
                    }
                }
                *v = best;
                if let Some(a) = arg.as_deref_mut() {
                    a[oy * ow + ox] = at as u16;
                }
            }
        }
    }
}

/// One output row of 2×2 windows at stride 2 from input rows `r0`, `r1`:
/// whole-row iterators over pairs and selects by comparison, which compile to
/// vector max/blend (an indexed form with `f32::max` ran scalar and was 23%
/// of shapes_mm's inference).
#[inline(always)]
fn pool_row_2x2(r0: &[f32], r1: &[f32], out: &mut [f32]) {
    for ((v, a), b) in out
        .iter_mut()
        .zip(r0.chunks_exact(2))
        .zip(r1.chunks_exact(2))
    {
        let top = if a[1] > a[0] { a[1] } else { a[0] };
        let bottom = if b[1] > b[0] { b[1] } else { b[0] };
        *v = if bottom > top { bottom } else { top };
    }
}

/// [`pool_row_2x2`] with each window's first maximum in scan order (strict
/// `>` over r0[0], r0[1], r1[0], r1[1]: the pairwise tree picks the same one).
#[inline(always)]
fn pool_row_2x2_arg(r0: &[f32], r1: &[f32], out: &mut [f32], arg: &mut [u16]) {
    let pairs = r0.chunks_exact(2).zip(r1.chunks_exact(2));
    for ((v, at), (a, b)) in out.iter_mut().zip(arg.iter_mut()).zip(pairs) {
        let (top, ti) = if a[1] > a[0] { (a[1], 1) } else { (a[0], 0) };
        let (bottom, bi) = if b[1] > b[0] { (b[1], 3) } else { (b[0], 2) };
        (*v, *at) = if bottom > top {
            (bottom, bi)
        } else {
            (top, ti)
        };
    }
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "mtl-max-pool2d"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        if h < self.k.0 || w < self.k.1 || self.k.0 * self.k.1 > 1 << 16 {
            candle_core::bail!("max pool of {:?} does not fit [{h}, {w}]", self.k)
        }
        let x = contiguous(s, l)?;
        let (oh, ow) = self.out(h, w);
        let mut y = vec![0f32; n * c * oh * ow];
        if self.train {
            let mut arg = vec![0u16; y.len()];
            self.forward_train_into(x, (h, w), &mut y, &mut arg);
            if let Ok(mut a) = self.argmax.lock() {
                *a = Some(arg);
            }
        } else {
            self.forward_into(x, (h, w), &mut y);
        }
        Ok((CpuStorage::F32(y), Shape::from((n, c, oh, ow))))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let Some((oh, ow)) = self.out_dims(h, w) else {
            candle_core::bail!("max pool of {:?} does not fit [{h}, {w}]", self.k)
        };
        let geo = (n * c, (h, w), (oh, ow), self.k, self.s);
        let (y, arg) = super::max_pool_cuda::forward((s, l), geo, self.train)?;
        if let (Some(arg), Ok(mut slot)) = (arg, self.kept.lock()) {
            *slot = Some(arg);
        }
        Ok((y, Shape::from((n, c, oh, ow))))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        let (oh, ow) = self.out(h, w);
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            return self.cuda_bwd(x, grad).map(Some);
        }
        let arg = match self.argmax.lock().ok().and_then(|mut a| a.take()) {
            Some(a) => a,
            None => {
                // Recompute (e.g. a second backward through the same graph).
                let mut arg = vec![0u16; grad.elem_count()];
                let mut y = vec![0f32; oh * ow];
                let xv = host(x)?;
                for (plane, a) in arg.chunks_mut(oh * ow).enumerate() {
                    self.plane(
                        &xv[plane * h * w..(plane + 1) * h * w],
                        w,
                        ow,
                        &mut y,
                        Some(a),
                    );
                }
                arg
            }
        };
        if arg.len() != grad.elem_count() {
            candle_core::bail!("max pool backward: saved positions do not fit the gradient")
        }
        let mut dx = vec![0f32; x.elem_count()];
        self.backward_into(&arg, (h, w), &host(grad)?, &mut dx);
        Ok(Some(Tensor::from_vec(dx, x.dims(), x.device())?))
    }
}

#[cfg(feature = "cuda")]
impl MaxPool2d {
    /// x's gradient on CUDA, from the kept offsets (recomputed when a
    /// backward finds none, as on the CPU).
    fn cuda_bwd(&self, x: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let (oh, ow) = self.out(h, w);
        let kept = self.kept.lock().ok().and_then(|mut k| k.take());
        let arg = match kept {
            Some(a) if a.elem_count() == grad.elem_count() => a,
            _ => {
                let again = MaxPool2d::new(self.k, self.s, true);
                x.contiguous()?.apply_op1_no_bwd(&again)?;
                let k = again.kept.lock().ok().and_then(|mut k| k.take());
                k.ok_or_else(|| candle_core::Error::Msg("max pool: nothing kept".into()))?
            }
        };
        let geo = (n * c, (h, w), (oh, ow), self.k, self.s);
        let dx = super::max_pool_cuda::backward(grad, &arg, geo)?;
        Ok(super::cuda::tensor(dx, x.dims()))
    }
}

/// Global pooling of [N, C, S] (spatial axes flattened) to [N, C]: the mean
/// or the max of each plane, in parallel over planes. Backward: the mean's
/// gradient spread evenly; the max's to each plane's first maximum.
pub struct GlobalPool {
    pub max: bool,
}

impl GlobalPool {
    /// Each `s`-long plane of `x` pooled into one value of `y`.
    pub fn forward_into(&self, x: &[f32], s: usize, y: &mut [f32]) {
        let par = x.len() >= par::MIN_ELEMENTS;
        par::chunks_mut(y, 1, par, |plane, y| {
            let xp = &x[plane * s..(plane + 1) * s];
            y[0] = if self.max {
                xp.iter().fold(f32::NEG_INFINITY, |b, v| b.max(*v))
            } else {
                par::lane_sum(xp) / s as f32
            };
        });
    }
}

impl GlobalPool {
    /// The backward, added to `dx`: the mean's gradient spread evenly, the
    /// max's to each plane's first maximum (`x` and its pooled `y`).
    pub fn backward_into(&self, (x, y): (&[f32], &[f32]), s: usize, g: &[f32], dx: &mut [f32]) {
        let par = dx.len() >= par::MIN_ELEMENTS;
        par::chunks_mut(dx, s, par, |plane, dx| {
            if self.max {
                let xp = &x[plane * s..(plane + 1) * s];
                if let Some(at) = xp.iter().position(|v| *v == y[plane]) {
                    dx[at] += g[plane];
                }
            } else {
                let v = g[plane] / s as f32;
                dx.iter_mut().for_each(|d| *d += v);
            }
        });
    }
}

impl CustomOp1 for GlobalPool {
    fn name(&self) -> &'static str {
        "mtl-global-pool"
    }
    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, s) = l.shape().dims3()?;
        if s == 0 {
            candle_core::bail!("global pool over an empty plane")
        }
        let x = contiguous(st, l)?;
        let mut y = vec![0f32; n * c];
        self.forward_into(x, s, &mut y);
        Ok((CpuStorage::F32(y), Shape::from((n, c))))
    }
    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, s) = x.dims3()?;
        let (xv, y, g) = (host(x)?, host(res)?, host(grad)?);
        let mut dx = vec![0f32; xv.len()];
        self.backward_into((&xv, &y), s, &g, &mut dx);
        Ok(Some(Tensor::from_vec(dx, x.dims(), x.device())?))
    }
}

/// Nearest-neighbour upsampling of [N, C, H, W] by an integer `scale`;
/// backward sums each scale×scale block (candle's runs a grouped conv).
pub struct Upsample2d {
    pub scale: usize,
}

impl Upsample2d {
    /// Contiguous [h, w] planes of `x` upsampled into `y`.
    pub fn forward_into(&self, x: &[f32], (h, w): (usize, usize), y: &mut [f32]) {
        let k = self.scale;
        let (oh, ow) = (h * k, w * k);
        let par = y.len() >= par::MIN_ELEMENTS;
        // Per input row: its first output row, then k − 1 copies of it (an
        // index division per output measured 2.2 ns a value on `shapes`).
        par::chunks_mut(y, oh * ow, par, |plane, y| {
            let xp = &x[plane * h * w..(plane + 1) * h * w];
            for (src, rows) in xp.chunks_exact(w).zip(y.chunks_exact_mut(k * ow)) {
                let (first, rest) = rows.split_at_mut(ow);
                if k == 2 {
                    for (d, v) in first.chunks_exact_mut(2).zip(src) {
                        d[0] = *v;
                        d[1] = *v;
                    }
                } else {
                    for (d, v) in first.chunks_exact_mut(k).zip(src) {
                        d.fill(*v);
                    }
                }
                for row in rest.chunks_exact_mut(ow) {
                    row.copy_from_slice(first);
                }
            }
        });
    }
}

impl Upsample2d {
    /// The backward, added to `dx`: each scale × scale block of `g` summed.
    pub fn backward_into(&self, g: &[f32], (h, w): (usize, usize), dx: &mut [f32]) {
        let k = self.scale;
        let (oh, ow) = (h * k, w * k);
        let par = g.len() >= par::MIN_ELEMENTS;
        par::chunks_mut(dx, h * w, par, |plane, dx| {
            let gp = &g[plane * oh * ow..(plane + 1) * oh * ow];
            // The same additions in the same order as one per output value.
            for (rows, dst) in gp.chunks_exact(k * ow).zip(dx.chunks_exact_mut(w)) {
                for row in rows.chunks_exact(ow) {
                    for (d, block) in dst.iter_mut().zip(row.chunks_exact(k)) {
                        for v in block {
                            *d += v;
                        }
                    }
                }
            }
        });
    }
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
        self.forward_into(x, (h, w), &mut y);
        Ok((CpuStorage::F32(y), Shape::from((n, c, oh, ow))))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        let mut dx = vec![0f32; x.elem_count()];
        self.backward_into(&host(grad)?, (h, w), &mut dx);
        Ok(Some(Tensor::from_vec(dx, x.dims(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::{GlobalPool, MaxPool2d, Relu};
    use candle_core::{Device, Tensor, Var};

    use crate::kernels::max_abs_diff as diff;

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
        // Scale 2 has a loop of its own.
        compare(
            &[2, 3, 4, 5],
            &|x| x.apply_op1(Upsample2d { scale: 2 }).unwrap(),
            &|x| x.upsample_nearest2d(8, 10).unwrap(),
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
    /// The 2×2 fast path keeps the first maximum in scan order, ties included.
    #[test]
    fn max_pool_2x2_picks_the_first_maximum_of_each_window() {
        let (h, w) = (6, 8);
        // Few distinct values, so most windows hold ties.
        let x: Vec<f32> = (0..h * w).map(|i| ((i * 7 + i / 5) % 3) as f32).collect();
        let pool = MaxPool2d::new((2, 2), (2, 2), true);
        let (mut y, mut arg) = (vec![0f32; 12], vec![0u16; 12]);
        pool.forward_train_into(&x, (h, w), &mut y, &mut arg);
        let mut y_infer = vec![0f32; 12];
        pool.forward_into(&x, (h, w), &mut y_infer);
        for oy in 0..3 {
            for ox in 0..4 {
                let at = |k: usize| x[(2 * oy + k / 2) * w + 2 * ox + k % 2];
                let (mut best, mut first) = (at(0), 0);
                for k in 1..4 {
                    if at(k) > best {
                        (best, first) = (at(k), k);
                    }
                }
                let o = oy * 4 + ox;
                assert_eq!((y[o], arg[o] as usize, y_infer[o]), (best, first, best));
            }
        }
    }

    #[test]
    fn max_pool_forward_matches_candle_and_backward_the_derivative() {
        for (shape, k, st) in [
            ([2, 3, 8, 6], (2, 2), (2, 2)),
            ([2, 3, 9, 7], (3, 2), (3, 2)),
            ([2, 2, 7, 9], (3, 3), (2, 2)),
        ] {
            let x = Tensor::randn(0f32, 1.0, &shape, &Device::Cpu).unwrap();
            let ours = x.apply_op1(MaxPool2d::new(k, st, true)).unwrap();
            assert!(diff(&ours, &x.max_pool2d_with_stride(k, st).unwrap()) < 1e-6);
            // The inference form (no argmax kept) gives the same maxima.
            let infer = x.apply_op1(MaxPool2d::new(k, st, false)).unwrap();
            assert_eq!(diff(&ours, &infer), 0.0);
            compare(
                &shape,
                &|x| x.apply_op1(MaxPool2d::new(k, st, true)).unwrap(),
                &|x| windows_max(x, k, st),
            );
        }
    }

    #[test]
    fn global_pools_match_candle() {
        for shape in [[2, 3, 10], [4, 5, 33], [1, 2, 1]] {
            compare(
                &shape,
                &|x| x.apply_op1(GlobalPool { max: false }).unwrap(),
                &|x| x.mean(2).unwrap(),
            );
            compare(
                &shape,
                &|x| x.apply_op1(GlobalPool { max: true }).unwrap(),
                &|x| x.max(2).unwrap(),
            );
        }
    }

    /// The backward written over a buffer of junk equals zeroing it and
    /// adding the backward, bit for bit: even and odd planes, a gradient of
    /// −0, and a 3×3 pool (which takes the zeroing and the addition).
    #[test]
    fn pool_backward_over_equals_zeroing_and_adding() {
        for (k, (h, w)) in [(2, (6, 8)), (2, (5, 7)), (2, (2, 34)), (3, (7, 7))] {
            let pool = MaxPool2d::new((k, k), (k, k), true);
            let (oh, ow) = pool.out(h, w);
            let planes = 3;
            let n = planes * oh * ow;
            let arg: Vec<u16> = (0..n).map(|i| ((i * 7 + i / 3) % (k * k)) as u16).collect();
            let mut g: Vec<f32> = (0..n).map(|i| i as f32 * 0.37 - 3.0).collect();
            g[1] = -0.0;
            let mut want = vec![0f32; planes * h * w];
            pool.backward_into(&arg, (h, w), &g, &mut want);
            let mut got = vec![f32::NAN; planes * h * w];
            pool.backward_over(&arg, (h, w), &g, &mut got);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{k}×{k} over {h}×{w}");
        }
    }
}
