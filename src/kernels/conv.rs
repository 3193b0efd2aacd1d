//! 2-D convolution with bias (groups = 1, no padding: callers pad) as
//! im2col + GEMM, forward and the three backward products, parallel over the
//! batch. candle's CPU conv backward runs a direct transposed-convolution loop
//! that dominated the training step of image models (see benches/README.md).

use super::conv_fused::run_direct;
use super::cpu_ops::{relu_grad, MaxPool2d};
use super::direct::{self, Dy, Grid};
use super::gemm::{matmul, transpose_into, transposed, View};
use super::host::{contiguous, host};
use super::im2col::{geom, Geom};
use super::winograd::{self, Out, Tiles};
use super::{par, scratch};
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
    /// Max-pool each output plane 2×2 with stride 2, [N, F, OH/2, OW/2] (a
    /// fused max pool, for inference: there is no backward).
    pub pool: bool,
}

/// What a training forward keeps for the backward: a fused max pool's
/// maxima (window offsets) and a direct convolution's padded images.
type Keep<'a> = (Option<&'a mut [u16]>, Option<&'a mut [f32]>);

/// The fused max pool's window and stride.
pub(super) const POOL: ((usize, usize), (usize, usize)) = ((2, 2), (2, 2));

impl Conv2dIm2col {
    /// Values per image of the output for input dims `xd` and weight dims `wd`.
    pub fn out_len(&self, xd: &[usize], wd: &[usize]) -> Result<usize> {
        let g = geom(xd, wd, self.stride, self.dilation, self.pad)?;
        Ok(match (self.mean, self.pooled(&g)?) {
            (true, _) => g.f,
            (false, Some((ph, pw))) => g.f * ph * pw,
            (false, None) => g.f * g.p(),
        })
    }

    /// The fused pool's output plane, when there is one.
    fn pooled(&self, g: &Geom) -> Result<Option<(usize, usize)>> {
        if !self.pool {
            return Ok(None);
        }
        match MaxPool2d::new(POOL.0, POOL.1, false).out_dims(g.oh, g.ow) {
            Some(d) => Ok(Some(d)),
            None => candle_core::bail!("conv op: a {}×{} output to max-pool 2×2", g.oh, g.ow),
        }
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
        self.forward_arg_into((x, xd), (w, wd), bias, out, ((None, None), None))
    }

    /// As [`Self::forward_into`] (no fused pool), and each output plane's
    /// mean into `means` ([N, F]) while the image's outputs are in cache: a
    /// global average pool reading the output beside other readers (on
    /// `seed_multitask_small` a pass of its own was 8% of the inference).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_with_means(
        &self,
        x: &[f32],
        xd: &[usize],
        w: &[f32],
        wd: &[usize],
        bias: &[f32],
        out: &mut [f32],
        means: &mut [f32],
    ) -> Result<()> {
        self.forward_arg_into((x, xd), (w, wd), bias, out, ((None, None), Some(means)))
    }

    /// The training forward: as [`Self::forward_into`], and with a fused
    /// max pool each pooled output's window offset of its first maximum
    /// into `arg` (one per output, required then), for
    /// [`Self::backward_pooled_into`]. With `padded` ([`Self::grids_len`]
    /// values) a direct convolution keeps each image's padded grid there,
    /// so that the backward need not pad the images again (the pads of
    /// `shapes_mm`'s backward took 0.38 ms of a 8.5 ms one-thread step).
    pub fn forward_train_into(
        &self,
        (x, xd): (&[f32], &[usize]),
        (w, wd): (&[f32], &[usize]),
        bias: &[f32],
        out: &mut [f32],
        (arg, padded): (Option<&mut [u16]>, Option<&mut [f32]>),
    ) -> Result<()> {
        let arg_fits = arg.as_ref().is_none_or(|a| a.len() == out.len());
        if self.mean || self.pool != arg.is_some() || !arg_fits {
            candle_core::bail!("conv op: a training forward saves a fused max pool's maxima")
        }
        let grids = self.grids_len(xd, wd)?;
        if padded.as_ref().is_some_and(|p| p.len() != grids) {
            candle_core::bail!("conv op: padded grids of the wrong size")
        }
        self.forward_arg_into((x, xd), (w, wd), bias, out, ((arg, padded), None))
    }

    fn forward_arg_into(
        &self,
        (x, xd): (&[f32], &[usize]),
        (w, wd): (&[f32], &[usize]),
        bias: &[f32],
        out: &mut [f32],
        ((arg, padded), means): (Keep, Option<&mut [f32]>),
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
        let lhs = View {
            data: w,
            rows: g.f,
            cols: ckk,
            rs: ckk,
            cs: 1,
        };
        let finish = |row: &mut [f32], b: f32| {
            if self.relu {
                row.iter_mut().for_each(|v| *v = (*v + b).max(0.0));
            } else {
                row.iter_mut().for_each(|v| *v += b);
            }
        };
        // One image: its f × p outputs into `y`, block by block of output
        // rows (its columns, then its outputs).
        let conv = |cols: &mut [f32], xb: &[f32], y: &mut [f32]| {
            for (r, n, t0) in g.blocks() {
                let rhs = g.columns(xb, cols, (r, n, t0));
                matmul(&mut y[t0..], p, false, lhs, rhs);
            }
            y.chunks_mut(p)
                .zip(bias)
                .for_each(|(row, b)| finish(row, *b));
        };
        let out_len = self.out_len(xd, wd)?;
        let pooler = MaxPool2d::new(POOL.0, POOL.1, arg.is_some());
        // A plane's outputs into its slot of the output: as they are, their
        // mean, or max-pooled (with the maxima's offsets into `arg` when given).
        let emit = |src: &[f32], dst: &mut [f32], arg: Option<&mut [u16]>| {
            if self.mean {
                dst[0] = par::lane_sum(src) / p as f32;
            } else if let (true, Some(arg)) = (self.pool, arg) {
                pooler.forward_train_into(src, (g.oh, g.ow), dst, arg);
            } else if self.pool {
                pooler.forward_into(src, (g.oh, g.ow), dst);
            } else {
                dst.copy_from_slice(src);
            }
        };
        if out.len() != b * out_len {
            candle_core::bail!(
                "conv op: an output of {} values for {b} × {out_len}",
                out.len()
            )
        }
        // Direct where it serves (see `direct`), else im2col + GEMM.
        let direct = Grid::forward_of(&g).map(|gr| (gr, gr.offsets(), direct::by_tap(w, g.f)));
        // Else Winograd where it serves (see `winograd`).
        let wino = Tiles::forward_of(&g)
            .filter(|_| direct.is_none())
            .map(|t| (t, winograd::transform_kernel(w, (g.f, g.c), false)));
        let m = if direct.is_some() || wino.is_some() {
            1
        } else {
            g.images_per_block(b)
        };
        // A patch convolution's Wᵀ [ckk, f], once for all groups of images.
        let patch_wt = (m > 1 && g.patches()).then(|| transposed(w, g.f, ckk));
        // Several small images: one GEMM into [f, m·p], then each image's
        // rows out of it.
        let images = |b0: usize, o: &mut [f32], mut arg: Option<&mut [u16]>| {
            let mc = o.len() / out_len;
            let n = mc * p;
            let patch_len = if patch_wt.is_some() { n * g.f } else { 0 };
            scratch::with([ckk * n, g.f * n, patch_len], |[cols, yt, ty]| {
                let xs = &x[b0 * in_len..(b0 + mc) * in_len];
                if let Some(wt) = &patch_wt {
                    // [m·p, f] = rows · Wᵀ, then transposed to [f, m·p].
                    let rows = g.group_patches(xs, in_len, cols);
                    let wt = View {
                        data: wt,
                        rows: ckk,
                        cols: g.f,
                        rs: g.f,
                        cs: 1,
                    };
                    matmul(ty, g.f, false, rows, wt);
                    transpose_into(ty, n, g.f, yt);
                } else {
                    matmul(yt, n, false, lhs, g.group_columns(xs, in_len, cols));
                }
                for (row, b) in yt.chunks_mut(n).zip(bias) {
                    finish(row, *b);
                }
                let plane = out_len / g.f;
                for (k, ok) in o.chunks_mut(out_len).enumerate() {
                    for (f, of) in ok.chunks_mut(plane).enumerate() {
                        let at = (k * g.f + f) * plane;
                        let a = arg.as_deref_mut().map(|a| &mut a[at..at + plane]);
                        emit(&yt[f * n + k * p..][..p], of, a);
                    }
                }
            })
        };
        // The plane means or pools while the image's outputs are in cache.
        let emit_planes = |tmp: &[f32], o: &mut [f32], mut arg: Option<&mut [u16]>| {
            let plane = out_len / g.f;
            for (f, (src, dst)) in tmp.chunks(p).zip(o.chunks_mut(plane)).enumerate() {
                emit(
                    src,
                    dst,
                    arg.as_deref_mut().map(|a| &mut a[f * plane..][..plane]),
                );
            }
        };
        let whole = !self.mean && !self.pool;
        let tmp_len = if whole { 0 } else { g.f * p };
        type Image<'a> = (&'a mut [f32], Keep<'a>);
        let image = |(bi, (o, (arg, grid))): (usize, Image)| {
            if m > 1 {
                return images(bi * m, o, arg);
            }
            let xb = &x[bi * in_len..(bi + 1) * in_len];
            if let Some((t, u)) = &wino {
                let out = Out::Set {
                    bias: Some(bias),
                    relu: self.relu,
                };
                if whole {
                    return t.conv(xb, u, out, o);
                }
                return scratch::with([tmp_len], |[tmp]| {
                    t.conv(xb, u, out, tmp);
                    emit_planes(tmp, o, arg);
                });
            }
            if let Some((gr, off, wt)) = &direct {
                // Only a mean copies the planes out of the grid.
                let lens = [
                    if grid.is_some() { 0 } else { gr.padded_len() },
                    g.f * gr.q(),
                    if self.mean { tmp_len } else { 0 },
                ];
                return scratch::with(lens, |[xp, yg, tmp]| {
                    // Into the kept grid, when the backward reads it.
                    let xp = grid.unwrap_or(xp);
                    gr.pad(xb, xp);
                    gr.conv(xp, off, wt, Some(bias), self.relu, yg);
                    if whole {
                        gr.take(yg, o);
                    } else if self.pool {
                        // Pooled straight from the grid: no copy of the planes.
                        let (plane, q) = (out_len / g.f, gr.q());
                        let mut arg = arg;
                        for (f, dst) in o.chunks_mut(plane).enumerate() {
                            let a = arg.as_deref_mut().map(|a| &mut a[f * plane..][..plane]);
                            let src = &yg[f * q..(f + 1) * q];
                            pooler.plane_pitched(src, gr.pitch(), (g.oh, g.ow), dst, a);
                        }
                    } else {
                        gr.take(yg, tmp);
                        emit_planes(tmp, o, arg);
                    }
                });
            }
            scratch::with([g.cols_len(), tmp_len], |[cols, tmp]| {
                if whole {
                    conv(cols, xb, o);
                } else {
                    conv(cols, xb, tmp);
                    emit_planes(tmp, o, arg);
                }
            })
        };
        let args: Vec<Option<&mut [u16]>> = match arg {
            Some(a) => a.chunks_mut(m * out_len).map(Some).collect(),
            None => (0..b.div_ceil(m)).map(|_| None).collect(),
        };
        // Each image's kept grid (direct only: m is 1 there; none for the
        // small images the backward does not run direct).
        let grids: Vec<Option<&mut [f32]>> = match (padded, &direct) {
            (Some(p), Some((gr, ..))) if !p.is_empty() => {
                p.chunks_mut(gr.padded_len()).map(Some).collect()
            }
            _ => (0..b.div_ceil(m)).map(|_| None).collect(),
        };
        if means.as_ref().is_some_and(|v| !whole || v.len() != b * g.f) {
            candle_core::bail!("conv op: plane means of a pooled output, or of the wrong size")
        }
        let means: Vec<Option<&mut [f32]>> = match means {
            Some(v) => v.chunks_mut(m * g.f).map(Some).collect(),
            None => (0..b.div_ceil(m)).map(|_| None).collect(),
        };
        let args: Vec<_> = args.into_iter().zip(grids).zip(means).collect();
        // A group of images, then its planes' means (when asked for) while
        // they are in cache.
        type Group<'a> = (&'a mut [f32], (Keep<'a>, Option<&'a mut [f32]>));
        let group = |(bi, (o, (keep, means))): (usize, Group)| {
            image((bi, (&mut *o, keep)));
            for (v, plane) in means.into_iter().flatten().zip(o.chunks(p)) {
                *v = par::lane_sum(plane) / p as f32;
            }
        };
        if b * g.f * p * ckk >= par::MIN_MACS {
            out.par_chunks_mut(m * out_len)
                .zip(args)
                .enumerate()
                .for_each(group);
        } else {
            out.chunks_mut(m * out_len)
                .zip(args)
                .enumerate()
                .for_each(group);
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
        let shape = match (self.mean, self.pooled(&g)?) {
            (true, _) => Shape::from((b, g.f)),
            (false, Some((ph, pw))) => Shape::from((b, g.f, ph, pw)),
            (false, None) => Shape::from((b, g.f, g.oh, g.ow)),
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
        if self.mean || self.pool {
            candle_core::bail!("a conv with a fused pool is for inference only")
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
        let (ckk, p, in_len, out_len) = (g.ckk(), g.p(), g.c * g.h * g.w, g.f * g.p());
        check_backward(
            &g,
            (xv, xd),
            dy.len() == b * out_len,
            dx.as_deref(),
            (dw, db),
        )?;
        let w_t = View {
            data: wv,
            rows: ckk,
            cols: g.f,
            rs: 1,
            cs: ckk,
        };
        let par = b * g.f * p * ckk >= par::MIN_MACS;
        if let Some(gr) = direct_grid(&g, dx.is_some()) {
            return run_direct(&gr, (&g, b), (xv, None, wv, Dy::Full(dy)), (dx, dw, db));
        }
        if let Some(t) = Tiles::forward_of(&g) {
            winograd::backward(&t, (xv, wv, dy), (dx, dw, db), b, par);
            return Ok(());
        }
        // Within a group, `m` small images share each GEMM, as in the forward.
        let m = g.images_per_block(b);
        let per = b.div_ceil(8).max(m).max(1);
        // pdw += dWᵀ ([ckk, F]) transposed: gemm ran cols·dyᵀ 1.8–1.9×
        // faster than dy·colsᵀ on the shapes of shapes_mm's convolutions
        // (N = ckk is small).
        let add_dw = |pdw: &mut [f32], dwt: &[f32]| {
            for (f, row) in pdw.chunks_mut(ckk).enumerate() {
                row.iter_mut()
                    .zip(dwt[f..].iter().step_by(g.f))
                    .for_each(|(v, t)| *v += t);
            }
        };
        let group = |gi: usize, pdw: &mut [f32], pdb: &mut [f32], mut dxg: Option<&mut [f32]>| {
            let len = g.cols_len().max(if m > 1 { ckk * m * p } else { 0 });
            let dyg_len = if m > 1 { g.f * m * p } else { 0 };
            let count = per.min(b - gi * per);
            scratch::with([len, len, ckk * g.f, dyg_len], |[cols, dcols, dwt, dyg]| {
                for k0 in (0..count).step_by(m) {
                    let (mc, b0) = (m.min(count - k0), gi * per + k0);
                    let dyb = &dy[b0 * out_len..(b0 + mc) * out_len];
                    if m > 1 {
                        // The images' dy side by side, [f, mc·p], then the
                        // forward's three products over all of them at once.
                        let n = mc * p;
                        for (k, dk) in dyb.chunks_exact(out_len).enumerate() {
                            for (f, src) in dk.chunks_exact(p).enumerate() {
                                dyg[f * n + k * p..][..p].copy_from_slice(src);
                            }
                        }
                        let dyg = &dyg[..g.f * n];
                        if let Some(dxg) = dxg.as_deref_mut() {
                            let dy_v = View {
                                data: dyg,
                                rows: g.f,
                                cols: n,
                                rs: n,
                                cs: 1,
                            };
                            matmul(&mut dcols[..ckk * n], n, false, w_t, dy_v);
                            let dxs = dxg[k0 * in_len..(k0 + mc) * in_len].chunks_exact_mut(in_len);
                            for (k, dxk) in dxs.enumerate() {
                                g.col2im_rows(&mut dcols[k * p..], dxk, 0..g.oh, n);
                            }
                        }
                        let xs = &xv[b0 * in_len..(b0 + mc) * in_len];
                        let cols_v = g.group_columns(xs, in_len, cols);
                        let dy_t = View {
                            data: dyg,
                            rows: n,
                            cols: g.f,
                            rs: 1,
                            cs: n,
                        };
                        matmul(dwt, g.f, false, cols_v, dy_t);
                        add_dw(pdw, dwt);
                    } else {
                        let xb = &xv[b0 * in_len..(b0 + 1) * in_len];
                        // Block by block of output rows, as the forward.
                        for (r, n, t0) in g.blocks() {
                            if let Some(dxg) = dxg.as_deref_mut() {
                                // dcols = Wᵀ·dy, then col2im into dx.
                                let dy_view = View {
                                    data: &dyb[t0..],
                                    rows: g.f,
                                    cols: n,
                                    rs: p,
                                    cs: 1,
                                };
                                let dxb = &mut dxg[k0 * in_len..(k0 + 1) * in_len];
                                if g.pointwise() {
                                    // The columns are the image: dx += Wᵀ·dy.
                                    matmul(&mut dxb[t0..], p, true, w_t, dy_view);
                                } else {
                                    let dcols = &mut dcols[..ckk * n];
                                    matmul(dcols, n, false, w_t, dy_view);
                                    g.col2im_rows(dcols, dxb, r.clone(), n);
                                }
                            }
                            let cols_v = g.columns(xb, cols, (r, n, t0));
                            let dy_t = View {
                                data: &dyb[t0..],
                                rows: n,
                                cols: g.f,
                                rs: 1,
                                cs: p,
                            };
                            matmul(dwt, g.f, false, cols_v, dy_t);
                            add_dw(pdw, dwt);
                        }
                    }
                    for dk in dyb.chunks_exact(out_len) {
                        for (f, d) in pdb.iter_mut().enumerate() {
                            *d += par::lane_sum(&dk[f * p..(f + 1) * p]);
                        }
                    }
                }
            })
        };
        in_groups((b, per, in_len), par, dx, (dw, db), group);
        Ok(())
    }
}

/// The direct backward's grid for `g`, when it serves (with a dx grid too
/// when `want_dx`).
///
/// Not for outputs of 64 positions or fewer (8×8 and smaller): their grids
/// fill few of dW's 16 lanes (a 4×4 output's 24 grid positions take two
/// vectors), and im2col + GEMM trained `digits` (8×8, then 4×4) faster:
/// one thread, alternated, 1.09–1.21 against 1.26–1.47 ms a step.
pub(super) fn direct_grid(g: &Geom, want_dx: bool) -> Option<Grid> {
    let small = g.oh * g.ow <= 64;
    Grid::forward_of(g).filter(|gr| !small && (!want_dx || gr.backward_of(g.f).is_some()))
}

/// An error unless the backward's buffers fit `g` (`dy_fits`: the output's
/// gradient, checked by the caller).
pub(super) fn check_backward(
    g: &Geom,
    (xv, xd): (&[f32], &[usize]),
    dy_fits: bool,
    dx: Option<&[f32]>,
    (dw, db): (&[f32], &[f32]),
) -> Result<()> {
    let in_len = xd[0] * g.c * g.h * g.w;
    let fits = xv.len() == in_len
        && dy_fits
        && dw.len() == g.f * g.ckk()
        && db.len() == g.f
        && dx.is_none_or(|d| d.len() == in_len);
    if !fits {
        candle_core::bail!(
            "conv op backward: buffers do not fit {xd:?} and {} filters",
            g.f
        )
    }
    Ok(())
}

/// Runs `group(gi, pdw, pdb, dx)` for each group of `per` images of the
/// batch of `b` (on rayon's pool when `par`; `dx` the group's part of the
/// input gradient, `in_len` values an image), each summing its dW and db
/// into a zeroed partial of its own; then adds the partials to `dw` and `db`
/// in group order. `per` is a function of the sizes alone, so the sums
/// depend neither on the thread count nor on how rayon splits the work.
pub(super) fn in_groups(
    (b, per, in_len): (usize, usize, usize),
    par: bool,
    dx: Option<&mut [f32]>,
    (dw, db): (&mut [f32], &mut [f32]),
    group: impl Fn(usize, &mut [f32], &mut [f32], Option<&mut [f32]>) + Sync + Send,
) {
    let groups = b.div_ceil(per);
    let (nw, part) = (dw.len(), dw.len() + db.len());
    let dx_groups: Vec<Option<&mut [f32]>> = match dx {
        Some(dx) => dx.chunks_mut(per * in_len).map(Some).collect(),
        None => (0..groups).map(|_| None).collect(),
    };
    let run = |(gi, (partial, dxg)): (usize, (&mut [f32], Option<&mut [f32]>))| {
        partial.fill(0.0);
        let (pdw, pdb) = partial.split_at_mut(nw);
        group(gi, pdw, pdb, dxg)
    };
    scratch::with([groups * part], |[partials]| {
        if par {
            partials
                .par_chunks_mut(part)
                .zip(dx_groups)
                .enumerate()
                .for_each(run);
        } else {
            partials
                .chunks_mut(part)
                .zip(dx_groups)
                .enumerate()
                .for_each(run);
        }
        for partial in partials.chunks(part) {
            let (pdw, pdb) = partial.split_at(nw);
            dw.iter_mut().zip(pdw).for_each(|(a, v)| *a += v);
            db.iter_mut().zip(pdb).for_each(|(a, v)| *a += v);
        }
    });
}

#[cfg(test)]
#[path = "conv_tests.rs"]
mod tests;
