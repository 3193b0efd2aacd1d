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
//! - dW[f, tap] = Σₖ dy[f, k] · xp[k + tap] over the valid outputs k, with
//!   dy transposed to [k, f] so that 16 output channels fill a vector: a
//!   block's accumulators are whole sums (no adding across lanes), each tap
//!   one broadcast of x per output. The earlier form, positions in the lanes
//!   and dy spread onto the grid, read 10 vectors per 24 multiply-adds and
//!   added every sum's 16 lanes at the end.
//!
//! The blocks run only where AVX-512 does (`par::widest`); elsewhere the
//! im2col path runs. Every sum has a fixed order, so results do not depend
//! on the thread count.

use super::cpu_ops::MaxPool2d;
use super::gemm::transpose_into;
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
    /// Each float is written once: zeroing the whole grid, then copying
    /// the rows in, was 7% of `seed_multitask_small`'s training samples in
    /// `perf` (its grids are mostly image).
    pub(super) fn pad(&self, x: &[f32], xp: &mut [f32]) {
        const ZEROS: [f32; 64] = [0.0; 64];
        // A row's right padding and the next row's left, as one copy: a
        // `fill` of two floats is a call to `memset`.
        let zero = |d: &mut [f32]| match ZEROS.get(..d.len()) {
            Some(z) => copy_short(d, z),
            None => d.fill(0.0),
        };
        let xp = &mut xp[..self.padded_len()];
        let (body, slack) = xp.split_at_mut(self.c * self.hp * self.wp);
        let (w, gap) = (self.w, self.wp - self.w);
        for (dst, plane) in body
            .chunks_exact_mut(self.hp * self.wp)
            .zip(x.chunks_exact(self.h * w))
        {
            let mut at = self.pt * self.wp + self.pl;
            dst[..at].fill(0.0);
            for (y, row) in plane.chunks_exact(w).enumerate() {
                copy_short(&mut dst[at..at + w], row);
                at += w;
                if y + 1 < self.h {
                    zero(&mut dst[at..at + gap]);
                    at += gap;
                }
            }
            dst[at..].fill(0.0);
        }
        slack.fill(0.0);
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

    /// dw [no, taps] += Σ over the images' pairs (xp, dyt) of
    /// Σ_{oy, ox} dyt[oy·ow + ox, o] · xp[oy·wp + ox + off[t]], where `dyt`
    /// [oh·ow, no] is an image's output gradient transposed: the output
    /// channels lie in the vector lanes, so a block's sums never need adding
    /// across lanes, and the junk columns of the grid are skipped.
    pub(super) fn weight_grad(&self, pairs: &[(&[f32], &[f32])], dw: &mut [f32]) {
        let (oh, ow, wp, taps) = (self.oh(), self.ow(), self.wp, self.taps());
        let no = dw.len() / taps;
        // The blocks read through raw pointers: the last output's last tap
        // lies inside the padded input, each dyt holds oh·ow rows.
        assert!(
            dw.len() == no * taps
                && pairs.iter().all(|(xp, dyt)| {
                    xp.len() >= self.c * self.hp * wp && dyt.len() >= oh * ow * no
                }),
            "direct conv: gradient buffers do not fit the grid"
        );
        // Taps by kernel row: a row of kw taps reads kw neighbouring floats.
        let rows: Vec<usize> = (0..self.c * self.kh)
            .map(|ci| (ci / self.kh * self.hp + ci % self.kh) * wp)
            .collect();
        let one = no <= L;
        let geo = (no, oh, ow, wp);
        // SAFETY: a grid exists only where the CPU has AVX-512 (`forward_of`).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            // Few rows (one or two input channels) take short blocks: the
            // missing rows of a block cost as much as present ones.
            match (self.kw, one, rows.len()) {
                (3, true, ..=3) => weight_grad_512::<3, 3, 1>(pairs, &rows, dw, geo),
                (3, true, _) => weight_grad_512::<3, 9, 1>(pairs, &rows, dw, geo),
                (3, false, ..=2) => weight_grad_512::<3, 2, 2>(pairs, &rows, dw, geo),
                (3, false, _) => weight_grad_512::<3, 4, 2>(pairs, &rows, dw, geo),
                (_, true, _) => weight_grad_512::<1, 28, 1>(pairs, &self.offsets(), dw, geo),
                (_, false, _) => weight_grad_512::<1, 14, 2>(pairs, &self.offsets(), dw, geo),
            }
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

/// [`Grid::weight_grad`]'s blocks in AVX-512: `R` rows of `KW`
/// neighbouring taps (`rows` their offsets; `KW` = 1: each tap a row of its
/// own) × `OV` vectors of 16 output channels, R·KW·OV accumulators in
/// registers; per output position one load of dyt per vector and one
/// broadcast of x per tap.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn weight_grad_512<const KW: usize, const R: usize, const OV: usize>(
    pairs: &[(&[f32], &[f32])],
    rows: &[usize],
    dw: &mut [f32],
    (no, oh, ow, wp): (usize, usize, usize, usize),
) {
    use std::arch::x86_64::*;
    let taps = rows.len() * KW;
    for o0 in (0..no).step_by(L * OV) {
        // Lanes past the last channel read nothing and are dropped.
        let lanes: [usize; OV] = std::array::from_fn(|v| no.saturating_sub(o0 + v * L).min(L));
        let masks: [__mmask16; OV] = lanes.map(|n| ((1u32 << n) - 1) as __mmask16);
        for r0 in (0..rows.len()).step_by(R) {
            // The last block's missing rows read row 0; their sums are dropped.
            let rn = R.min(rows.len() - r0);
            let mut roff = [0usize; R];
            roff[..rn].copy_from_slice(&rows[r0..r0 + rn]);
            let mut acc = [[[_mm512_setzero_ps(); OV]; KW]; R];
            for (xp, dyt) in pairs {
                let (xp, dyt) = (xp.as_ptr(), dyt.as_ptr());
                for oy in 0..oh {
                    // SAFETY (all reads): the caller checked that every tap of
                    // every output lies in `xp` and that `dyt` holds oh·ow
                    // rows of `no` channels; masked lanes read nothing.
                    unsafe {
                        let xr: [*const f32; R] = roff.map(|o| xp.add(oy * wp + o));
                        let dr = dyt.add(oy * ow * no + o0);
                        for ox in 0..ow {
                            let d: [__m512; OV] = std::array::from_fn(|v| {
                                _mm512_maskz_loadu_ps(masks[v], dr.add(ox * no + v * L))
                            });
                            for (a, x) in acc.iter_mut().zip(xr) {
                                for (j, a) in a.iter_mut().enumerate() {
                                    let x = _mm512_set1_ps(*x.add(ox + j));
                                    for (s, d) in a.iter_mut().zip(d) {
                                        *s = _mm512_fmadd_ps(x, d, *s);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            for (r, a) in acc.iter().enumerate().take(rn) {
                for (j, a) in a.iter().enumerate() {
                    let t = (r0 + r) * KW + j;
                    for (v, s) in a.iter().enumerate() {
                        let mut sums = [0f32; L];
                        // SAFETY: `sums` holds L values.
                        unsafe { _mm512_storeu_ps(sums.as_mut_ptr(), *s) };
                        for (l, s) in sums.iter().enumerate().take(lanes[v]) {
                            dw[(o0 + v * L + l) * taps + t] += s;
                        }
                    }
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
    /// Through a fused relu: `dy` where the output `y` is positive, masked
    /// image by image while in cache (a pass over the whole batch first
    /// read and wrote it all once more).
    Relu { dy: &'a [f32], y: &'a [f32] },
    /// A fused max pool's: the pooled outputs' gradient and each window's
    /// maximum (`MaxPool2d::forward_train_into`), spread to the maxima
    /// image by image while in cache.
    Pooled {
        gy: &'a [f32],
        arg: &'a [u16],
        pool: MaxPool2d,
    },
}

/// The backward of a direct convolution on `gr` from `dy` (relu already
/// applied): dx (when given), dW and db added to, for a batch of `b` images
/// and `f` output channels; on rayon's pool when `par`. `padded`: the
/// images' grids as the forward padded them ([`Grid::padded_len`] each),
/// read instead of padding `x` again.
///
/// Per image, dy goes into each layout a product reads: transposed,
/// [oh·ow, f], for dW; padded on the dx grid for dx. A pooled dy is first
/// spread from the pooled gradient, and db summed over the pooled gradient
/// (each window's value lands at one place). Scattering the pooled values
/// straight into both layouts, one at a time after zeroing them, took
/// longer than the dW products it fed.
pub(super) fn backward(
    gr: &Grid,
    (x, w, dy): (&[f32], &[f32], Dy),
    (dx, dw, db): (Option<&mut [f32]>, &mut [f32], &mut [f32]),
    (b, f): (usize, usize),
    (padded, par): (Option<&[f32]>, bool),
) {
    let (in_len, p, pl) = (gr.c * gr.h * gr.w, gr.oh() * gr.ow(), gr.padded_len());
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
        let spread_len = if matches!(dy, Dy::Pooled { .. } | Dy::Relu { .. }) {
            f * p
        } else {
            0
        };
        let kept = padded.map(|p| &p[gi * per * pl..][..count * pl]);
        let pads = if kept.is_some() { 0 } else { count * pl };
        let lens = [pads, count * p * f, bpl, gr.c * bq, spread_len];
        scratch::with(lens, |[xps, dyts, dyp, dxw, spread]| {
            for k in 0..count {
                let bi = gi * per + k;
                if kept.is_none() {
                    gr.pad(&x[bi * in_len..(bi + 1) * in_len], &mut xps[k * pl..]);
                }
                let dyt = &mut dyts[k * p * f..(k + 1) * p * f];
                let (dyk, sums): (&[f32], &[f32]) = match &dy {
                    Dy::Full(dy) => {
                        let dyk = &dy[bi * f * p..(bi + 1) * f * p];
                        (dyk, dyk)
                    }
                    Dy::Relu { dy, y } => {
                        let (dyk, yk) = (&dy[bi * f * p..][..f * p], &y[bi * f * p..][..f * p]);
                        par::widest(
                            #[inline(always)]
                            || {
                                for ((s, d), y) in spread.iter_mut().zip(dyk).zip(yk) {
                                    *s = if *y > 0.0 { *d } else { 0.0 };
                                }
                            },
                        );
                        (&spread[..], &spread[..])
                    }
                    Dy::Pooled { gy, arg, pool } => {
                        let n = gy.len() / b;
                        let (gy, arg) = (&gy[bi * n..(bi + 1) * n], &arg[bi * n..(bi + 1) * n]);
                        pool.backward_over(arg, (gr.oh(), gr.ow()), gy, spread);
                        (spread, gy)
                    }
                };
                transpose_into(dyk, f, p, dyt);
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
                        let planes = sums.chunks_exact(sums.len() / f);
                        for (d, plane) in pdb.iter_mut().zip(planes) {
                            *d += par::lane_sum(plane);
                        }
                    },
                );
            }
            let xps = kept.unwrap_or(xps);
            let pairs: Vec<(&[f32], &[f32])> = (0..count)
                .map(|k| {
                    (
                        &xps[k * pl..(k + 1) * pl],
                        &dyts[k * p * f..(k + 1) * p * f],
                    )
                })
                .collect();
            gr.weight_grad(&pairs, pdw);
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

    /// A padded grid over a buffer of NaNs equals the zero-filled one with
    /// the rows copied in: every padding float is written.
    #[test]
    fn pad_writes_every_float_of_the_grid() {
        if !crate::kernels::par::avx512() {
            return;
        }
        for (c, k, pad, h, w) in [
            (3, 3, [1; 4], 5, 7),
            (2, 3, [0; 4], 6, 4),
            (4, 5, [2, 1, 0, 2], 3, 9),
            (1, 2, [0, 1, 1, 0], 4, 4),
        ] {
            let g = geom(&[1, c, h, w], &[8, c, k, k], 1, 1, pad).unwrap();
            let gr = Grid::forward_of(&g).expect("a direct grid");
            let x: Vec<f32> = (0..c * h * w).map(|i| i as f32 + 1.0).collect();
            let mut got = vec![f32::NAN; gr.padded_len() + 3];
            gr.pad(&x, &mut got);
            let mut want = vec![0f32; gr.padded_len()];
            for ci in 0..c {
                for y in 0..h {
                    let at = (ci * gr.hp + gr.pt + y) * gr.wp + gr.pl;
                    want[at..at + w].copy_from_slice(&x[(ci * h + y) * w..][..w]);
                }
            }
            assert_eq!(
                &got[..want.len()],
                &want[..],
                "{c}×{h}×{w}, {k}×{k}, {pad:?}"
            );
            assert!(
                got[want.len()..].iter().all(|v| v.is_nan()),
                "wrote past the grid"
            );
        }
    }

    /// dW's blocks against a plain f64 sum over the valid outputs, for every
    /// block shape: 3-wide kernels with 1–3 and 16 channels (short and full
    /// row blocks), 5- and 2-wide ones (a tap per row), 8 to 64 filters (a
    /// half vector, one, one and a half, two and a half, two pairs), uneven
    /// padding, two images.
    #[test]
    fn weight_grad_equals_the_plain_sum() {
        if !crate::kernels::par::avx512() {
            return;
        }
        let rand = |n: usize| -> Vec<f32> {
            let t = candle_core::Tensor::randn(0f32, 1.0, n, &candle_core::Device::Cpu);
            t.and_then(|t| t.to_vec1()).unwrap()
        };
        for (c, f, k, pad, h, w) in [
            (1, 8, 3, [0; 4], 9, 11),
            (2, 16, 3, [1; 4], 7, 20),
            (3, 24, 3, [1, 0, 2, 1], 10, 9),
            (16, 40, 3, [1; 4], 6, 6),
            (3, 64, 3, [1; 4], 5, 17),
            (2, 16, 5, [2; 4], 8, 8),
            (8, 24, 2, [0, 1, 1, 0], 6, 9),
        ] {
            let g = geom(&[2, c, h, w], &[f, c, k, k], 1, 1, pad).unwrap();
            let gr = Grid::forward_of(&g).expect("a direct grid");
            let (oh, ow, p) = (gr.oh(), gr.ow(), gr.oh() * gr.ow());
            let (x, dy) = (rand(2 * c * h * w), rand(2 * f * p));
            let pl = gr.padded_len();
            let (mut xps, mut dyts) = (vec![0f32; 2 * pl], vec![0f32; 2 * p * f]);
            for i in 0..2 {
                gr.pad(&x[i * c * h * w..(i + 1) * c * h * w], &mut xps[i * pl..]);
                let dyt = &mut dyts[i * p * f..(i + 1) * p * f];
                super::transpose_into(&dy[i * f * p..(i + 1) * f * p], f, p, dyt);
            }
            let pairs: Vec<(&[f32], &[f32])> = (0..2)
                .map(|i| {
                    (
                        &xps[i * pl..(i + 1) * pl],
                        &dyts[i * p * f..(i + 1) * p * f],
                    )
                })
                .collect();
            let mut dw = vec![0f32; f * c * k * k];
            gr.weight_grad(&pairs, &mut dw);
            let off = gr.offsets();
            for o in 0..f {
                for (t, of) in off.iter().enumerate() {
                    let mut want = 0f64;
                    for i in 0..2 {
                        for (oy, ox) in (0..oh).flat_map(|y| (0..ow).map(move |x| (y, x))) {
                            let d = dy[(i * f + o) * p + oy * ow + ox] as f64;
                            let xv = xps[i * pl + oy * gr.pitch() + ox + of] as f64;
                            want += d * xv;
                        }
                    }
                    let got = dw[o * off.len() + t] as f64;
                    assert!(
                        (got - want).abs() < 1e-4,
                        "{c} → {f}, {k}×{k}: dW[{o}, {t}] = {got}, want {want}"
                    );
                }
            }
        }
    }
}
