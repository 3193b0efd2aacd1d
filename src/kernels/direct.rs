//! Direct convolution for stride-1, undilated convolutions whose output
//! channels come in eights (the 3×3 `same` convolutions over 3–32 channels
//! of every shipped image model): no im2col, no GEMM call per image.
//!
//! An image is padded once into a "wide grid" [c, hp, wp], and an output is
//! computed at every grid position k = oy·wp + ox, ox < wp; the last kw − 1
//! columns of each grid row are junk and never read back. On that grid the
//! input of output k at tap (c, i, j) is `xp[k + c·hp·wp + i·wp + j]`, so
//! every 16 consecutive outputs read 16 consecutive inputs per tap, whatever
//! the image's width: a block of 8 channels × 48 positions keeps its 24
//! accumulators in AVX-512 registers while the taps stream through.
//! im2col + GEMM ran `shapes_mm`'s two convolutions at 67 and 114 GFLOP/s
//! (inference), its GEMMs a few hundred columns wide.
//!
//! All three products use the grid:
//! - forward: y = conv(xp, W);
//! - dx: the convolution of dy, padded by kh − 1 − pt (…) rows and columns,
//!   with the flipped and transposed kernel, which stays stride 1;
//! - dW[f, tap] = Σₖ dy[f, k] · xp[k + tap], dy scattered onto the grid with
//!   zeros in the junk columns, summed in vector lanes over the images of a
//!   group before the lanes are added.
//!
//! The blocks run only where AVX-512 does (`par::widest`); elsewhere the
//! im2col path runs. Every sum has a fixed order, so results do not depend
//! on the thread count.

use super::cpu_ops::MaxPool2d;
use super::im2col::Geom;
use super::lanes::copy_short;
use super::{par, scratch};

/// Lanes of one vector.
const L: usize = 16;
/// Output channels per block, vectors of positions per block: 24
/// accumulators of AVX-512's 32 registers.
const FB: usize = 8;
const NV: usize = 3;
/// Grid positions per block.
const QB: usize = L * NV;
/// dW blocks: `OB` output channels × `TB` taps, 24 accumulators.
const OB: usize = 4;
const TB: usize = 6;

/// One image's stride-1 convolution on its wide grid.
#[derive(Clone, Copy, Debug)]
pub(super) struct Grid {
    /// Input channels, image rows and columns.
    c: usize,
    h: usize,
    w: usize,
    /// Padding before the first row and column.
    pt: usize,
    pl: usize,
    /// The padded grid.
    hp: usize,
    wp: usize,
    kh: usize,
    kw: usize,
}

impl Grid {
    /// The forward's grid of `g`, when the direct kernel serves it: stride
    /// 1, no dilation, output channels in eights, padding no wider than the
    /// kernel (so the dx convolution is stride 1 too), taps few enough that
    /// a block's inputs stay in L1 (larger convolutions run near the GEMM's
    /// peak on im2col: 204 GFLOP/s for seed_multitask's 64 → 128).
    pub(super) fn forward_of(g: &Geom) -> Option<Grid> {
        let pb = (g.oh + g.kh - 1).checked_sub(g.h + g.pt)?;
        let pr = (g.ow + g.kw - 1).checked_sub(g.w + g.pl)?;
        let pads_fit = g.pt < g.kh && pb < g.kh && g.pl < g.kw && pr < g.kw;
        let fits = g.s == 1
            && g.d == 1
            && g.f.is_multiple_of(FB)
            && g.ckk() <= 320
            && !(g.kh == 1 && g.kw == 1)
            && pads_fit
            && par::avx512();
        fits.then_some(Grid {
            c: g.c,
            h: g.h,
            w: g.w,
            pt: g.pt,
            pl: g.pl,
            hp: g.h + g.pt + pb,
            wp: g.w + g.pl + pr,
            kh: g.kh,
            kw: g.kw,
        })
    }

    /// The grid of the dx convolution (of dy [f, oh, ow]), when the input
    /// channels come in eights too.
    pub(super) fn backward_of(&self, f: usize) -> Option<Grid> {
        let (oh, ow) = (self.oh(), self.ow());
        self.c.is_multiple_of(FB).then_some(Grid {
            c: f,
            h: oh,
            w: ow,
            pt: self.kh - 1 - self.pt,
            pl: self.kw - 1 - self.pl,
            hp: self.h + self.kh - 1,
            wp: self.w + self.kw - 1,
            kh: self.kh,
            kw: self.kw,
        })
    }

    pub(super) fn oh(&self) -> usize {
        self.hp + 1 - self.kh
    }
    pub(super) fn ow(&self) -> usize {
        self.wp + 1 - self.kw
    }
    /// The grid's row length: output row oy starts at oy·pitch.
    pub(super) fn pitch(&self) -> usize {
        self.wp
    }
    /// Grid positions computed, whole blocks.
    pub(super) fn q(&self) -> usize {
        (self.oh() * self.wp).div_ceil(QB) * QB
    }
    fn taps(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Floats of a padded input, with the slack the last block's reads reach
    /// (q − 1 + the last tap's offset < c·hp·wp + QB + kw).
    pub(super) fn padded_len(&self) -> usize {
        self.c * self.hp * self.wp + QB + self.wp
    }

    /// Each tap's offset on the grid, in (c, i, j) order.
    pub(super) fn offsets(&self) -> Vec<usize> {
        let mut v = Vec::with_capacity(self.taps());
        for c in 0..self.c {
            for i in 0..self.kh {
                for j in 0..self.kw {
                    v.push((c * self.hp + i) * self.wp + j);
                }
            }
        }
        v
    }

    /// `xp` ← the image `x` [c, h, w] with its zero padding and slack.
    pub(super) fn pad(&self, x: &[f32], xp: &mut [f32]) {
        let xp = &mut xp[..self.padded_len()];
        xp.fill(0.0);
        for (c, plane) in x.chunks_exact(self.h * self.w).enumerate() {
            for (y, row) in plane.chunks_exact(self.w).enumerate() {
                let at = (c * self.hp + self.pt + y) * self.wp + self.pl;
                copy_short(&mut xp[at..at + self.w], row);
            }
        }
    }

    /// `f(grid row, output row)` for every output row of the `no` planes
    /// in `y` [no, q] and `out` [no, oh, ow].
    fn rows(&self, y: &[f32], out: &mut [f32], mut f: impl FnMut(&[f32], &mut [f32])) {
        let (q, ow) = (self.q(), self.ow());
        for (plane, dst) in y.chunks_exact(q).zip(out.chunks_exact_mut(self.oh() * ow)) {
            for (oy, row) in dst.chunks_exact_mut(ow).enumerate() {
                f(&plane[oy * self.wp..][..ow], row);
            }
        }
    }

    /// `out` [no, oh, ow] ← the valid outputs of the grid's `y` [no, q].
    pub(super) fn take(&self, y: &[f32], out: &mut [f32]) {
        self.rows(y, out, |src, dst| copy_short(dst, src));
    }

    /// `out` [no, oh, ow] += the valid outputs of the grid's `y` [no, q].
    pub(super) fn add(&self, y: &[f32], out: &mut [f32]) {
        self.rows(y, out, |src, dst| {
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += s)
        });
    }

    /// `dyw` [f, q] ← `dy` [f, oh, ow] on the grid, zero in the junk columns
    /// and past the last row.
    pub(super) fn spread(&self, dy: &[f32], dyw: &mut [f32]) {
        let (q, ow) = (self.q(), self.ow());
        dyw.fill(0.0);
        for (src, plane) in dy.chunks_exact(self.oh() * ow).zip(dyw.chunks_exact_mut(q)) {
            for (oy, row) in src.chunks_exact(ow).enumerate() {
                copy_short(&mut plane[oy * self.wp..][..ow], row);
            }
        }
    }

    /// y [no, q] ← init + Σₜ wt[t·no + o] · xp[k + off[t]] at every grid
    /// position k, max(0, ·) when `relu`; init is `bias` or zero. `no` is a
    /// multiple of `FB`, `xp` a padded input, `off` [`Self::offsets`].
    pub(super) fn conv(
        &self,
        xp: &[f32],
        off: &[usize],
        wt: &[f32],
        bias: Option<&[f32]>,
        relu: bool,
        y: &mut [f32],
    ) {
        let q = self.q();
        let no = y.len() / q;
        assert!(
            no.is_multiple_of(FB) && wt.len() == off.len() * no && xp.len() >= self.padded_len(),
            "direct conv: buffers do not fit the grid"
        );
        // SAFETY: a grid exists only where the CPU has AVX-512 (`forward_of`).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            conv_512(xp, off, wt, bias, relu, y, q)
        }
    }

    /// dw [no, taps] += Σ over the images' pairs (xp, dyw [no, q]) of
    /// Σₖ dyw[o, k] · xp[k + off[t]]: each of a block's sums in 16 lanes
    /// over every image, then the lanes added. `no` a multiple of `OB`.
    pub(super) fn weight_grad(&self, pairs: &[(&[f32], &[f32])], off: &[usize], dw: &mut [f32]) {
        let (q, taps) = (self.q(), off.len());
        let no = dw.len() / taps;
        // The blocks read through raw pointers: every tap's reads must lie
        // inside the padded input.
        assert!(
            no.is_multiple_of(OB)
                && off.iter().all(|o| o + q <= self.padded_len())
                && pairs
                    .iter()
                    .all(|(xp, dyw)| xp.len() >= self.padded_len() && dyw.len() == no * q),
            "direct conv: gradient buffers do not fit the grid"
        );
        // SAFETY: a grid exists only where the CPU has AVX-512 (`forward_of`).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            weight_grad_512(pairs, off, dw, (q, self.oh() * self.wp))
        }
    }
}

/// [`Grid::conv`]'s blocks in AVX-512: a block's 24 accumulators are
/// registers, each tap one broadcast per channel and one load per vector.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn conv_512(
    xp: &[f32],
    off: &[usize],
    wt: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
    q: usize,
) {
    use std::arch::x86_64::*;
    let no = y.len() / q;
    for k0 in (0..q).step_by(QB) {
        for o0 in (0..no).step_by(FB) {
            let mut acc = [[_mm512_setzero_ps(); NV]; FB];
            if let Some(b) = bias {
                for (a, b) in acc.iter_mut().zip(&b[o0..o0 + FB]) {
                    *a = [_mm512_set1_ps(*b); NV];
                }
            }
            for (t, &o) in off.iter().enumerate() {
                let xs = &xp[k0 + o..k0 + o + QB];
                let ws = &wt[t * no + o0..t * no + o0 + FB];
                // SAFETY: the loads read inside `xs` (QB = NV·L values).
                let v: [__m512; NV] =
                    std::array::from_fn(|j| unsafe { _mm512_loadu_ps(xs.as_ptr().add(j * L)) });
                for (a, w) in acc.iter_mut().zip(ws) {
                    let w = _mm512_set1_ps(*w);
                    for (s, x) in a.iter_mut().zip(v) {
                        *s = _mm512_fmadd_ps(x, w, *s);
                    }
                }
            }
            let zero = _mm512_setzero_ps();
            for (i, a) in acc.iter().enumerate() {
                let dst = &mut y[(o0 + i) * q + k0..][..QB];
                for (j, s) in a.iter().enumerate() {
                    let s = if relu { _mm512_max_ps(*s, zero) } else { *s };
                    // SAFETY: the store writes inside `dst` (QB values).
                    unsafe { _mm512_storeu_ps(dst.as_mut_ptr().add(j * L), s) };
                }
            }
        }
    }
}

/// [`Grid::weight_grad`]'s blocks in AVX-512 (see [`conv_512`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn weight_grad_512(
    pairs: &[(&[f32], &[f32])],
    off: &[usize],
    dw: &mut [f32],
    (q, used): (usize, usize),
) {
    use std::arch::x86_64::*;
    let (taps, used) = (off.len(), used.div_ceil(L) * L);
    let no = dw.len() / taps;
    for o0 in (0..no).step_by(OB) {
        for t0 in (0..taps).step_by(TB) {
            // The last block's missing taps read offset 0; their sums are dropped.
            let mut offs = [0usize; TB];
            let tn = TB.min(taps - t0);
            offs[..tn].copy_from_slice(&off[t0..t0 + tn]);
            let mut acc = [[_mm512_setzero_ps(); TB]; OB];
            for (xp, dyw) in pairs {
                // Whole blocks of the grid inside both buffers (checked by the caller).
                let (xp, dyw) = (xp.as_ptr(), dyw.as_ptr());
                // Past the last output row dy is zero: whole vectors up to it.
                for k in (0..used).step_by(L) {
                    // SAFETY: k + L ≤ used ≤ q and every offset + q ≤ the padded
                    // length, so the loads read inside `xp` and `dyw` [no, q].
                    unsafe {
                        let x: [__m512; TB] =
                            std::array::from_fn(|j| _mm512_loadu_ps(xp.add(k + offs[j])));
                        for (i, a) in acc.iter_mut().enumerate() {
                            let d = _mm512_loadu_ps(dyw.add((o0 + i) * q + k));
                            for (s, x) in a.iter_mut().zip(x) {
                                *s = _mm512_fmadd_ps(d, x, *s);
                            }
                        }
                    }
                }
            }
            for (i, a) in acc.iter().enumerate() {
                for (j, s) in a.iter().enumerate().take(tn) {
                    let mut lanes = [0f32; L];
                    // SAFETY: `lanes` holds L values.
                    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), *s) };
                    dw[(o0 + i) * taps + t0 + j] += lanes.iter().sum::<f32>();
                }
            }
        }
    }
}

/// The forward's weights tap by tap: wt[t·f + o] = w[o, t] for w [f, taps].
pub(super) fn by_tap(w: &[f32], f: usize) -> Vec<f32> {
    let taps = w.len() / f;
    let mut wt = vec![0f32; w.len()];
    for (o, row) in w.chunks_exact(taps).enumerate() {
        for (t, v) in row.iter().enumerate() {
            wt[t * f + o] = *v;
        }
    }
    wt
}

/// The dx convolution's weights, tap by tap: for w [f, c, kh, kw], the
/// kernel flipped in both axes with f and c swapped, as [(f, i, j), c].
pub(super) fn flipped(w: &[f32], (f, c, kh, kw): (usize, usize, usize, usize)) -> Vec<f32> {
    let mut wt = vec![0f32; w.len()];
    for o in 0..f {
        for ci in 0..c {
            for i in 0..kh {
                for j in 0..kw {
                    let t = (o * kh + (kh - 1 - i)) * kw + (kw - 1 - j);
                    wt[t * c + ci] = w[((o * c + ci) * kh + i) * kw + j];
                }
            }
        }
    }
    wt
}

/// The gradient of a convolution's output, for [`backward`].
pub(super) enum Dy<'a> {
    /// As it is, [N, F, OH, OW].
    Full(&'a [f32]),
    /// A fused max pool's: the pooled outputs' gradient and each window's
    /// maximum (`MaxPool2d::forward_train_into`), spread to the maxima
    /// image by image.
    Pooled {
        gy: &'a [f32],
        arg: &'a [u16],
        pool: MaxPool2d,
    },
}

/// The backward of a direct convolution on `gr` from `dy` (relu already
/// applied): dx (when given), dW and db added to, for a batch of `b` images
/// and `f` output channels; on rayon's pool when `par`.
pub(super) fn backward(
    gr: &Grid,
    (x, w, dy): (&[f32], &[f32], Dy),
    (dx, dw, db): (Option<&mut [f32]>, &mut [f32], &mut [f32]),
    (b, f): (usize, usize),
    par: bool,
) {
    let (in_len, p) = (gr.c * gr.h * gr.w, gr.oh() * gr.ow());
    let (q, pl, off) = (gr.q(), gr.padded_len(), gr.offsets());
    // dx: dy padded by kh − 1 − pt (…) on a grid of its own, convolved with
    // the flipped kernel.
    let back = dx.is_some().then(|| {
        let bk = gr.backward_of(f).expect("the caller checked the dx grid");
        let wt = flipped(w, (f, gr.c, gr.kh, gr.kw));
        (bk, bk.offsets(), wt)
    });
    let (bpl, bq) = back
        .as_ref()
        .map_or((0, 0), |(bk, ..)| (bk.padded_len(), bk.q()));
    let per = b.div_ceil(8).max(1);
    let group = |gi: usize, pdw: &mut [f32], pdb: &mut [f32], mut dxg: Option<&mut [f32]>| {
        let count = per.min(b - gi * per);
        let spread_len = if matches!(dy, Dy::Pooled { .. }) {
            f * p
        } else {
            0
        };
        let lens = [count * pl, count * f * q, bpl, gr.c * bq, spread_len];
        scratch::with(lens, |[xps, dyws, dyp, dxw, spread]| {
            for k in 0..count {
                let bi = gi * per + k;
                let dyk: &[f32] = match &dy {
                    Dy::Full(dy) => &dy[bi * f * p..(bi + 1) * f * p],
                    Dy::Pooled { gy, arg, pool } => {
                        let n = gy.len() / b;
                        let (gy, arg) = (&gy[bi * n..(bi + 1) * n], &arg[bi * n..(bi + 1) * n]);
                        pool.backward_over(arg, (gr.oh(), gr.ow()), gy, spread);
                        spread
                    }
                };
                gr.pad(&x[bi * in_len..(bi + 1) * in_len], &mut xps[k * pl..]);
                gr.spread(dyk, &mut dyws[k * f * q..(k + 1) * f * q]);
                if let (Some((bk, boff, bwt)), Some(dxg)) = (&back, dxg.as_deref_mut()) {
                    bk.pad(dyk, dyp);
                    bk.conv(dyp, boff, bwt, None, false, dxw);
                    bk.add(dxw, &mut dxg[k * in_len..(k + 1) * in_len]);
                }
                // Compiled for AVX-512: at the baseline's 4 lanes these sums
                // were 4% of `shapes_mm`'s one-thread training step.
                par::widest(
                    #[inline(always)]
                    || {
                        for (d, plane) in pdb.iter_mut().zip(dyk.chunks_exact(p)) {
                            *d += par::lane_sum(plane);
                        }
                    },
                );
            }
            let pairs: Vec<(&[f32], &[f32])> = (0..count)
                .map(|k| {
                    (
                        &xps[k * pl..(k + 1) * pl],
                        &dyws[k * f * q..(k + 1) * f * q],
                    )
                })
                .collect();
            gr.weight_grad(&pairs, &off, pdw);
        })
    };
    super::conv::in_groups((b, per, in_len), par, dx, (dw, db), group);
}

#[cfg(test)]
mod tests {
    use super::Grid;
    use crate::kernels::im2col::geom;

    /// Which convolutions run direct (on a CPU with AVX-512; none without):
    /// the conv tests' direct cases do, the others take im2col.
    #[test]
    fn grids_serve_stride_one_convolutions_with_filters_in_eights() {
        let grid = |x: [usize; 4], w: [usize; 4], s, pad| {
            Grid::forward_of(&geom(&x, &w, s, 1, pad).unwrap())
        };
        if !crate::kernels::par::avx512() {
            assert!(grid([1, 3, 32, 32], [16, 3, 3, 3], 1, [1; 4]).is_none());
            return;
        }
        // shapes_mm's two convolutions; the second's dx runs on a grid too.
        let conv1 = grid([32, 3, 32, 32], [16, 3, 3, 3], 1, [1; 4]).unwrap();
        assert!(conv1.backward_of(16).is_none());
        assert_eq!((conv1.oh(), conv1.ow()), (32, 32));
        let conv2 = grid([32, 16, 16, 16], [32, 16, 3, 3], 1, [1; 4]).unwrap();
        let back = conv2.backward_of(32).unwrap();
        assert_eq!((back.oh(), back.ow()), (16, 16));
        assert!(grid([2, 8, 11, 37], [16, 8, 5, 5], 1, [2; 4]).is_some());
        // Strided, filters not in eights, pointwise, padding wider than the kernel, 64 → 128.
        assert!(grid([1, 3, 8, 8], [8, 3, 3, 3], 2, [0; 4]).is_none());
        assert!(grid([1, 3, 8, 8], [4, 3, 3, 3], 1, [1; 4]).is_none());
        assert!(grid([1, 8, 8, 8], [8, 8, 1, 1], 1, [0; 4]).is_none());
        assert!(grid([1, 3, 8, 8], [8, 3, 3, 3], 1, [3; 4]).is_none());
        assert!(grid([1, 64, 30, 30], [128, 64, 3, 3], 1, [0; 4]).is_none());
    }
}
