//! 2-D convolution with bias (groups = 1, no padding: callers pad) as
//! im2col + GEMM, forward and the three backward products, parallel over the
//! batch. candle's CPU conv backward runs a direct transposed-convolution loop
//! that dominated the training step of image models (see benches/README.md).

use super::cpu_ops::relu_grad;
use super::gemm::{matmul, View};
use super::host::{contiguous, host};
use super::par;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

pub struct Conv2dIm2col {
    pub stride: usize,
    pub dilation: usize,
    /// Zero padding (top, bottom, left, right), applied inside im2col so no
    /// padded copy of the input (and no gradient of one) is ever made.
    pub pad: [usize; 4],
    /// Apply max(0, ·) after the bias (a fused relu).
    pub relu: bool,
    /// Output each plane's mean, [N, F] (a fused global average pool; for
    /// inference: there is no backward).
    pub mean: bool,
}

/// Sizes of one convolution.
#[derive(Clone, Copy)]
struct Geom {
    c: usize,
    h: usize,
    w: usize,
    f: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    s: usize,
    d: usize,
    /// Padding before the first row and column.
    pt: usize,
    pl: usize,
}

impl Geom {
    fn ckk(&self) -> usize {
        self.c * self.kh * self.kw
    }
    fn p(&self) -> usize {
        self.oh * self.ow
    }

    /// For kernel column `j`: the output columns `lo..hi` whose input column
    /// `ox·s + j·d − pl` lies inside the image.
    fn cols_inside(&self, j: usize) -> (usize, usize) {
        let off = j * self.d;
        // ox·s + off ≥ pl  and  ox·s + off − pl < w
        let lo = self.pl.saturating_sub(off).div_ceil(self.s);
        let hi = if self.w + self.pl > off {
            ((self.w + self.pl - off - 1) / self.s + 1).min(self.ow)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// The input row for output row `oy` and kernel row `i`, if inside.
    fn row_inside(&self, oy: usize, i: usize) -> Option<usize> {
        (oy * self.s + i * self.d)
            .checked_sub(self.pt)
            .filter(|y| *y < self.h)
    }

    /// cols[(c·kh + i)·kw + j][oy·ow + ox] = x[c, oy·s + i·d − pt, ox·s + j·d − pl]
    /// (zero outside the image).
    fn im2col(&self, x: &[f32], cols: &mut [f32]) {
        let p = self.p();
        for c in 0..self.c {
            for i in 0..self.kh {
                for j in 0..self.kw {
                    let row = &mut cols[((c * self.kh + i) * self.kw + j) * p..][..p];
                    let (lo, hi) = self.cols_inside(j);
                    for oy in 0..self.oh {
                        let dst = &mut row[oy * self.ow..(oy + 1) * self.ow];
                        let Some(y) = self.row_inside(oy, i) else {
                            dst.fill(0.0);
                            continue;
                        };
                        dst[..lo].fill(0.0);
                        dst[hi..].fill(0.0);
                        if lo == hi {
                            continue;
                        }
                        // Input column of output column ox: ox·s + j·d − pl.
                        let base = (c * self.h + y) * self.w + lo * self.s + j * self.d - self.pl;
                        if self.s == 1 {
                            dst[lo..hi].copy_from_slice(&x[base..base + (hi - lo)]);
                        } else {
                            for (k, v) in dst[lo..hi].iter_mut().enumerate() {
                                *v = x[base + k * self.s];
                            }
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of `im2col`: dx[c, y, x] += dcols[k][p] inside the image.
    fn col2im(&self, dcols: &[f32], dx: &mut [f32]) {
        let p = self.p();
        for c in 0..self.c {
            for i in 0..self.kh {
                for j in 0..self.kw {
                    let row = &dcols[((c * self.kh + i) * self.kw + j) * p..][..p];
                    let (lo, hi) = self.cols_inside(j);
                    for oy in 0..self.oh {
                        let Some(y) = self.row_inside(oy, i).filter(|_| lo < hi) else {
                            continue;
                        };
                        let base = (c * self.h + y) * self.w + lo * self.s + j * self.d - self.pl;
                        let src = &row[oy * self.ow + lo..oy * self.ow + hi];
                        if self.s == 1 {
                            dx[base..base + (hi - lo)]
                                .iter_mut()
                                .zip(src)
                                .for_each(|(d, v)| *d += v);
                        } else {
                            for (k, v) in src.iter().enumerate() {
                                dx[base + k * self.s] += v;
                            }
                        }
                    }
                }
            }
        }
    }
}

fn geom(x: &[usize], w: &[usize], s: usize, d: usize, pad: [usize; 4]) -> Result<Geom> {
    let (&[_, c, h, wd], &[f, c2, kh, kw]) = (x, w) else {
        candle_core::bail!("conv op: expected 4-d input and kernel")
    };
    let (span_h, span_w) = (d * (kh - 1) + 1, d * (kw - 1) + 1);
    let (ph, pw) = (h + pad[0] + pad[1], wd + pad[2] + pad[3]);
    if c != c2 || ph < span_h || pw < span_w || s == 0 {
        candle_core::bail!("conv op: input {x:?} (padded {pad:?}) does not fit kernel {w:?}")
    }
    Ok(Geom {
        c,
        h,
        w: wd,
        f,
        kh,
        kw,
        oh: (ph - span_h) / s + 1,
        ow: (pw - span_w) / s + 1,
        s,
        d,
        pt: pad[0],
        pl: pad[2],
    })
}

impl Conv2dIm2col {
    /// Values per image of the output for input dims `xd` and weight dims `wd`.
    pub fn out_len(&self, xd: &[usize], wd: &[usize]) -> Result<usize> {
        let g = geom(xd, wd, self.stride, self.dilation, self.pad)?;
        Ok(if self.mean { g.f } else { g.f * g.p() })
    }

    /// The forward into `out` ([N, F, OH, OW], or [N, F] with `mean`), from
    /// contiguous `x` (dims `xd`), weights `w` (dims `wd`) and `bias`.
    pub fn forward_into(
        &self,
        x: &[f32],
        xd: &[usize],
        w: &[f32],
        wd: &[usize],
        bias: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        let g = geom(xd, wd, self.stride, self.dilation, self.pad)?;
        let b = xd[0];
        if x.len() != xd.iter().product::<usize>() || w.len() != wd.iter().product::<usize>() {
            candle_core::bail!(
                "conv op: data of {} and {} values for shapes {xd:?} and {wd:?}",
                x.len(),
                w.len()
            )
        }
        if bias.len() != g.f {
            candle_core::bail!("conv op: a bias of {} for {} filters", bias.len(), g.f)
        }
        let (ckk, p, in_len) = (g.ckk(), g.p(), g.c * g.h * g.w);
        // One image: its f × p outputs into `y`.
        let conv = |cols: &mut [f32], bi: usize, y: &mut [f32]| {
            g.im2col(&x[bi * in_len..(bi + 1) * in_len], cols);
            let lhs = View {
                data: w,
                rows: g.f,
                cols: ckk,
                rs: ckk,
                cs: 1,
            };
            let rhs = View {
                data: cols,
                rows: ckk,
                cols: p,
                rs: p,
                cs: 1,
            };
            matmul(y, p, false, lhs, rhs);
            for (row, b) in y.chunks_mut(p).zip(bias) {
                if self.relu {
                    row.iter_mut().for_each(|v| *v = (*v + b).max(0.0));
                } else {
                    row.iter_mut().for_each(|v| *v += b);
                }
            }
        };
        let out_len = if self.mean { g.f } else { g.f * p };
        if out.len() != b * out_len {
            candle_core::bail!(
                "conv op: an output of {} values for {b} × {out_len}",
                out.len()
            )
        }
        let image = |(cols, tmp): &mut (Vec<f32>, Vec<f32>), (bi, o): (usize, &mut [f32])| {
            if self.mean {
                // The plane means while the image's outputs are in cache.
                conv(cols, bi, tmp);
                for (o, row) in o.iter_mut().zip(tmp.chunks(p)) {
                    *o = par::lane_sum(row) / p as f32;
                }
            } else {
                conv(cols, bi, o);
            }
        };
        let scratch = || {
            (
                vec![0f32; ckk * p],
                vec![0f32; if self.mean { g.f * p } else { 0 }],
            )
        };
        if b * g.f * p * ckk >= par::MIN_MACS {
            out.par_chunks_mut(out_len)
                .enumerate()
                .for_each_init(scratch, image);
        } else {
            let mut bufs = scratch();
            out.chunks_mut(out_len)
                .enumerate()
                .for_each(|item| image(&mut bufs, item));
        }
        Ok(())
    }
}

impl CustomOp3 for Conv2dIm2col {
    fn name(&self) -> &'static str {
        "mtl-conv2d-im2col"
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
        let (x, w, bias) = (
            contiguous(s1, l1)?,
            contiguous(s2, l2)?,
            contiguous(s3, l3)?,
        );
        let g = geom(l1.dims(), l2.dims(), self.stride, self.dilation, self.pad)?;
        let b = l1.dims()[0];
        let mut out = vec![0f32; b * self.out_len(l1.dims(), l2.dims())?];
        self.forward_into(x, l1.dims(), w, l2.dims(), bias, &mut out)?;
        let shape = if self.mean {
            Shape::from((b, g.f))
        } else {
            Shape::from((b, g.f, g.oh, g.ow))
        };
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if self.mean {
            candle_core::bail!("the fused conv + global average pool is for inference only")
        }
        let g = geom(x.dims(), w.dims(), self.stride, self.dilation, self.pad)?;
        let (xv, wv, dy) = (host(x)?, host(w)?, host(grad)?);
        let masked;
        let dy: &[f32] = if self.relu {
            masked = relu_grad(&dy, &host(res)?);
            &masked
        } else {
            &dy
        };
        // The first layer's input (data) needs no gradient: skip Wᵀ·dy and col2im.
        let want_dx = x.track_op();
        let mut dx = vec![0f32; if want_dx { xv.len() } else { 0 }];
        let (mut dw, mut db) = (vec![0f32; wv.len()], vec![0f32; g.f]);
        let dxs = want_dx.then_some(dx.as_mut_slice());
        self.backward_into((&xv, x.dims()), (&wv, w.dims()), dy, dxs, &mut dw, &mut db)?;
        let dev = x.device();
        Ok((
            want_dx
                .then(|| Tensor::from_vec(dx, x.dims(), dev))
                .transpose()?,
            Some(Tensor::from_vec(dw, w.dims(), dev)?),
            Some(Tensor::from_vec(db, g.f, dev)?),
        ))
    }
}

impl Conv2dIm2col {
    /// The backward from `dy` (relu already applied), added to `dx` (when
    /// given), `dw` and `db`; `x` and `w` with their dims.
    pub fn backward_into(
        &self,
        (xv, xd): (&[f32], &[usize]),
        (wv, wd): (&[f32], &[usize]),
        dy: &[f32],
        dx: Option<&mut [f32]>,
        dw: &mut [f32],
        db: &mut [f32],
    ) -> Result<()> {
        let g = geom(xd, wd, self.stride, self.dilation, self.pad)?;
        let b = xd[0];
        let (ckk, p, in_len) = (g.ckk(), g.p(), g.c * g.h * g.w);
        let want_dx = dx.is_some();
        let dx = dx.unwrap_or_default();
        let w_t = View {
            data: wv,
            rows: ckk,
            cols: g.f,
            rs: 1,
            cs: ckk,
        };
        // Per batch row: dcols = Wᵀ·dy → dx (col2im); dW_b = dy·colsᵀ and
        // db_b = Σ_p dy, summed over the batch.
        // Each batch row's dW and db go to their own buffers, summed after in
        // batch order: the result does not depend on how rayon splits the work.
        let mut dw_rows = vec![0f32; b * g.f * ckk];
        let mut db_rows = vec![0f32; b * g.f];
        let mut no_dx = vec![Vec::new(); if want_dx { 0 } else { b }];
        let dx_rows: Vec<&mut [f32]> = if want_dx {
            dx.chunks_mut(in_len).collect()
        } else {
            no_dx.iter_mut().map(Vec::as_mut_slice).collect()
        };
        type Item<'a> = (usize, (&'a mut [f32], (&'a mut [f32], &'a mut [f32])));
        let image = |(cols, dcols): &mut (Vec<f32>, Vec<f32>), (bi, (dxb, (dw, db))): Item| {
            let dyb = &dy[bi * g.f * p..(bi + 1) * g.f * p];
            let dy_view = View {
                data: dyb,
                rows: g.f,
                cols: p,
                rs: p,
                cs: 1,
            };
            if want_dx {
                matmul(dcols, p, false, w_t, dy_view);
                g.col2im(dcols, dxb);
            }
            g.im2col(&xv[bi * in_len..(bi + 1) * in_len], cols);
            let cols_t = View {
                data: cols,
                rows: p,
                cols: ckk,
                rs: 1,
                cs: p,
            };
            matmul(dw, ckk, false, dy_view, cols_t);
            for (d, row) in db.iter_mut().zip(dyb.chunks(p)) {
                *d = row.iter().sum::<f32>();
            }
        };
        let scratch = || (vec![0f32; ckk * p], vec![0f32; ckk * p]);
        if b * g.f * p * ckk >= par::MIN_MACS {
            dx_rows
                .into_par_iter()
                .zip(
                    dw_rows
                        .par_chunks_mut(g.f * ckk)
                        .zip(db_rows.par_chunks_mut(g.f)),
                )
                .enumerate()
                .for_each_init(scratch, image);
        } else {
            let mut bufs = scratch();
            dx_rows
                .into_iter()
                .zip(dw_rows.chunks_mut(g.f * ckk).zip(db_rows.chunks_mut(g.f)))
                .enumerate()
                .for_each(|item| image(&mut bufs, item));
        }
        let sum_rows = |rows: &[f32], acc: &mut [f32]| {
            for r in rows.chunks(acc.len()) {
                acc.iter_mut().zip(r).for_each(|(a, v)| *a += v);
            }
        };
        sum_rows(&dw_rows, dw);
        sum_rows(&db_rows, db);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Conv2dIm2col;
    use crate::kernels::max_abs_diff as diff;
    use candle_core::{Device, Tensor, Var};

    /// Output and both gradients equal candle's own conv2d (whose backward we replace).
    #[test]
    fn matches_candle_conv2d_forward_and_backward() {
        let dev = Device::Cpu;
        for (b, c, h, w, f, k, s, d, pad) in [
            (2, 3, 7, 6, 4, 3, 1, 1, [0; 4]),
            (3, 2, 9, 9, 5, 3, 2, 1, [0; 4]),
            (1, 4, 8, 7, 2, 2, 1, 2, [0; 4]),
            (2, 1, 5, 5, 3, 1, 1, 1, [0; 4]),
            (2, 3, 7, 6, 4, 3, 1, 1, [1, 1, 1, 1]),
            (2, 2, 8, 8, 3, 3, 2, 1, [0, 1, 0, 1]),
            (1, 2, 6, 8, 3, 3, 2, 2, [2, 1, 3, 0]),
            (2, 1, 3, 3, 2, 5, 1, 1, [2, 2, 2, 2]),
        ] {
            for relu in [false, true] {
                let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap())
                    .unwrap();
                let k4 = Var::from_tensor(&Tensor::randn(0f32, 1.0, (f, c, k, k), &dev).unwrap())
                    .unwrap();
                let bias = Var::from_tensor(&Tensor::randn(0f32, 1.0, f, &dev).unwrap()).unwrap();
                let op = Conv2dIm2col {
                    stride: s,
                    dilation: d,
                    pad,
                    relu,
                    mean: false,
                };
                let ours = x
                    .as_tensor()
                    .apply_op3(k4.as_tensor(), bias.as_tensor(), op)
                    .unwrap();
                let bias4 = bias.as_tensor().reshape((1, f, 1, 1)).unwrap();
                let theirs = x
                    .as_tensor()
                    .pad_with_zeros(2, pad[0], pad[1])
                    .unwrap()
                    .pad_with_zeros(3, pad[2], pad[3])
                    .unwrap()
                    .conv2d(k4.as_tensor(), 0, s, d, 1)
                    .unwrap()
                    .broadcast_add(&bias4)
                    .unwrap();
                let theirs = if relu { theirs.relu().unwrap() } else { theirs };
                assert_eq!(ours.dims(), theirs.dims());
                let weights = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
                assert!(diff(&ours, &theirs) < 1e-4, "forward");
                let ga = (ours * &weights)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let gb = (theirs * &weights)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                for v in [&x, &k4, &bias] {
                    let (p, q) = (
                        ga.get(v.as_tensor()).unwrap(),
                        gb.get(v.as_tensor()).unwrap(),
                    );
                    assert!(
                        diff(p, q) < 1e-3,
                        "gradient differs by {} for case {:?}",
                        diff(p, q),
                        (b, c, h, w, f, k, s, d, pad, relu)
                    );
                }
            }
        }
    }

    /// Data that needs no gradient gets none, and the kernel's gradient is unchanged.
    #[test]
    fn untracked_input_gets_no_gradient_and_the_same_weight_gradient() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 6, 6), &dev).unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        let k = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &dev).unwrap()).unwrap();
        let b =
            Var::from_tensor(&Tensor::zeros(4, candle_core::DType::F32, &dev).unwrap()).unwrap();
        let grads = |x: &Tensor| {
            let op = Conv2dIm2col {
                stride: 1,
                dilation: 1,
                pad: [0; 4],
                relu: false,
                mean: false,
            };
            x.apply_op3(k.as_tensor(), b.as_tensor(), op)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let (plain, tracked) = (grads(&x), grads(xv.as_tensor()));
        assert!(plain.get(&x).is_none());
        assert!(tracked.get(xv.as_tensor()).is_some());
        let d = (plain.get(k.as_tensor()).unwrap() - tracked.get(k.as_tensor()).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
    }
}
