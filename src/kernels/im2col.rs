//! The geometry of an im2col convolution: sizes, blocks of output rows,
//! and the im2col / col2im copies between an image and its columns (general,
//! shifted for stride-1 `same` convolutions, strided for unpadded ones).

use super::gemm::View;
use super::lanes::copy_short;
use candle_core::Result;
use std::ops::Range;

/// Sizes of one convolution.
#[derive(Clone, Copy)]
pub(super) struct Geom {
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) f: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
    pub(super) s: usize,
    pub(super) d: usize,
    /// Padding before the first row and column.
    pub(super) pt: usize,
    pub(super) pl: usize,
}

impl Geom {
    pub(super) fn ckk(&self) -> usize {
        self.c * self.kh * self.kw
    }
    pub(super) fn p(&self) -> usize {
        self.oh * self.ow
    }

    /// For kernel column `j`: the output columns `lo..hi` whose input column
    /// `ox·s + j·d − pl` lies inside the image.
    pub(super) fn cols_inside(&self, j: usize) -> (usize, usize) {
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
    pub(super) fn row_inside(&self, oy: usize, i: usize) -> Option<usize> {
        (oy * self.s + i * self.d)
            .checked_sub(self.pt)
            .filter(|y| *y < self.h)
    }

    /// cols[(c·kh + i)·kw + j][oy·ow + ox] = x[c, oy·s + i·d − pt, ox·s + j·d − pl]
    /// (zero outside the image), for the output rows `r`: `cols` is
    /// [ckk, r.len()·ow] with rows `ld` apart, and oy counts from `r.start`.
    pub(super) fn im2col_rows(&self, x: &[f32], cols: &mut [f32], r: Range<usize>, ld: usize) {
        if self.shifted() {
            return self.im2col_shifted(x, cols, r, ld);
        }
        let n = r.len() * self.ow;
        if self.strided_inside() {
            return self.im2col_strided(x, cols, r, ld);
        }
        // Per kernel column, once: its two divisions per (c, i, j) were the
        // hottest instructions of a stride-4 patch convolution's im2col.
        let inside: Vec<(usize, usize)> = (0..self.kw).map(|j| self.cols_inside(j)).collect();
        for c in 0..self.c {
            for i in 0..self.kh {
                for (j, &(lo, hi)) in inside.iter().enumerate() {
                    let row = &mut cols[((c * self.kh + i) * self.kw + j) * ld..][..n];
                    for oy in r.clone() {
                        let at = (oy - r.start) * self.ow;
                        let dst = &mut row[at..at + self.ow];
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
                            // One bounds check a row: a check per value, or
                            // `step_by`'s division per row, made a stride-4
                            // patch convolution's im2col 18% of `captions`
                            // inference (rows of 4).
                            let src = &x[base..=base + (hi - lo - 1) * self.s];
                            for (k, v) in dst[lo..hi].iter_mut().enumerate() {
                                // SAFETY: k·s ≤ (hi − lo − 1)·s < src.len().
                                *v = unsafe { *src.get_unchecked(k * self.s) };
                            }
                        }
                    }
                }
            }
        }
    }

    /// `im2col_rows` of an unpadded strided convolution (a ViT's patches):
    /// every tap inside the image, so each (c, i, j) row is one tight
    /// strided gather with no per-row fills or checks. Rows of 4 outputs
    /// (`captions`' 4×4/4 patches) spent most of their time in that
    /// per-row logic.
    pub(super) fn im2col_strided(&self, x: &[f32], cols: &mut [f32], r: Range<usize>, ld: usize) {
        let (s, d, w, ow) = (self.s, self.d, self.w, self.ow);
        let n = r.len() * ow;
        if n == 0 {
            return;
        }
        // The largest index read: the last tap of the last output.
        let last = ((self.c - 1) * self.h + (r.end - 1) * s + (self.kh - 1) * d) * w
            + (ow - 1) * s
            + (self.kw - 1) * d;
        assert!(last < x.len(), "conv im2col: input of {} values", x.len());
        for c in 0..self.c {
            for i in 0..self.kh {
                for j in 0..self.kw {
                    let row = &mut cols[((c * self.kh + i) * self.kw + j) * ld..][..n];
                    let base = (c * self.h + i * d) * w + j * d;
                    for (oy, out) in r.clone().zip(row.chunks_exact_mut(ow)) {
                        let at = base + oy * s * w;
                        for (ox, v) in out.iter_mut().enumerate() {
                            // SAFETY: at + ox·s ≤ `last` < x.len() (checked above).
                            *v = unsafe { *x.get_unchecked(at + ox * s) };
                        }
                    }
                }
            }
        }
    }

    /// Output rows per block (forward and backward): im2col columns of about 32 KiB
    /// (L1) but at least 256 wide (for the GEMM), so a large convolution's
    /// columns (8 MiB an image in seed_multitask) never leave the cache
    /// before the GEMM reads them.
    pub(super) fn block_rows(&self) -> usize {
        if self.pointwise() {
            return self.oh.max(1);
        }
        (self.block_cols() / self.ow.max(1)).clamp(1, self.oh.max(1))
    }

    /// Output positions per block: see `block_rows`.
    pub(super) fn block_cols(&self) -> usize {
        (8192 / self.ckk().max(1)).max(256)
    }

    /// Images per GEMM, of a batch of `b`: a small image's columns are
    /// narrower than a block (16 positions for a 4×4 output, where `gemm`
    /// ran at a third of its speed at 256), so several images' columns go
    /// side by side, [ckk, m·p], under one GEMM. One when an image fills a
    /// block; a function of the sizes alone, never of the thread count.
    pub(super) fn images_per_block(&self, b: usize) -> usize {
        let m = (self.block_cols() / self.p().max(1)).clamp(1, b.max(1));
        if m < 2 {
            return 1;
        }
        // Groups of equal size: 32 images at 14 a group run as 11, 11, 10.
        b.div_ceil(b.div_ceil(m))
    }

    /// The columns of images `x` (each `in_len` values, `x.len() / in_len`
    /// of them) side by side into `cols` ([ckk, m·p]).
    pub(super) fn group_columns<'a>(
        &self,
        x: &[f32],
        in_len: usize,
        cols: &'a mut [f32],
    ) -> View<'a> {
        let (p, m) = (self.p(), x.len() / in_len);
        let n = m * p;
        let cols = &mut cols[..self.ckk() * n];
        for (k, xk) in x.chunks_exact(in_len).enumerate() {
            self.im2col_rows(xk, &mut cols[k * p..], 0..self.oh, n);
        }
        View {
            data: cols,
            rows: self.ckk(),
            cols: n,
            rs: n,
            cs: 1,
        }
    }

    /// An unpadded strided convolution with every tap inside the image and
    /// undilated kernel rows (a ViT's patches): its columns can be gathered
    /// transposed, each kernel row one contiguous run of `kw` inputs.
    pub(super) fn patches(&self) -> bool {
        self.d == 1 && self.strided_inside()
    }

    /// Strided and unpadded, with every tap of every output inside the image.
    fn strided_inside(&self) -> bool {
        let inside_h = (self.oh.max(1) - 1) * self.s + (self.kh - 1) * self.d < self.h;
        let inside_w = (self.ow.max(1) - 1) * self.s + (self.kw - 1) * self.d < self.w;
        self.s > 1 && self.pt == 0 && self.pl == 0 && inside_h && inside_w
    }

    /// The columns of a [`Self::patches`] convolution's images `x`, gathered
    /// transposed: [m·p, ckk] in `cols`, a row per output position in which
    /// each (c, i) kernel row is `kw` consecutive inputs. The plain gather
    /// read one input `s` apart at a time (4×4/4 patches: 12% of `captions`'
    /// inference on one thread); here each run of `kw` is one short vector
    /// move. The GEMM takes the rows as its left side (as a transposed right
    /// side it ran 1.5× slower).
    pub(super) fn group_patches<'a>(
        &self,
        x: &[f32],
        in_len: usize,
        cols: &'a mut [f32],
    ) -> View<'a> {
        let (p, ckk, kw) = (self.p(), self.ckk(), self.kw);
        let n = x.len() / in_len * p;
        let cols = &mut cols[..ckk * n];
        let runs = match kw {
            2 => runs::<2>,
            3 => runs::<3>,
            4 => runs::<4>,
            8 => runs::<8>,
            16 => runs::<16>,
            _ => runs_of_any,
        };
        let row_len = self.ow * ckk;
        for (xk, ck) in x.chunks_exact(in_len).zip(cols.chunks_exact_mut(p * ckk)) {
            for (oy, dst) in ck.chunks_exact_mut(row_len).enumerate() {
                for c in 0..self.c {
                    for i in 0..self.kh {
                        let src = &xk[(c * self.h + oy * self.s + i) * self.w..][..self.w];
                        let tap = (c * self.kh + i) * kw;
                        runs(src, self.s, &mut dst[tap..], (ckk, kw));
                    }
                }
            }
        }
        View {
            data: cols,
            rows: n,
            cols: ckk,
            rs: ckk,
            cs: 1,
        }
    }

    /// The blocks of output rows, each with its width in output positions
    /// and its first position.
    pub(super) fn blocks(&self) -> impl Iterator<Item = (Range<usize>, usize, usize)> + '_ {
        let block = self.block_rows();
        (0..self.oh).step_by(block).map(move |r0| {
            let r = r0..(r0 + block).min(self.oh);
            (r.clone(), r.len() * self.ow, r0 * self.ow)
        })
    }

    /// The adjoint of `im2col_rows`: dx[c, y, x] += dcols[k][p] inside the
    /// image, for the output rows `r` (`dcols` [ckk, r.len()·ow], rows `ld`
    /// apart). `dcols` is
    /// scratch: the shifted case zeroes its entries outside the image.
    pub(super) fn col2im_rows(
        &self,
        dcols: &mut [f32],
        dx: &mut [f32],
        r: Range<usize>,
        ld: usize,
    ) {
        if self.shifted() {
            return self.col2im_shifted(dcols, dx, r, ld);
        }
        let n = r.len() * self.ow;
        let inside: Vec<(usize, usize)> = (0..self.kw).map(|j| self.cols_inside(j)).collect();
        for c in 0..self.c {
            for i in 0..self.kh {
                for (j, &(lo, hi)) in inside.iter().enumerate() {
                    let row = &dcols[((c * self.kh + i) * self.kw + j) * ld..][..n];
                    for oy in r.clone() {
                        let Some(y) = self.row_inside(oy, i).filter(|_| lo < hi) else {
                            continue;
                        };
                        let base = (c * self.h + y) * self.w + lo * self.s + j * self.d - self.pl;
                        let at = (oy - r.start) * self.ow;
                        let src = &row[at + lo..at + hi];
                        if self.s == 1 {
                            dx[base..base + (hi - lo)]
                                .iter_mut()
                                .zip(src)
                                .for_each(|(d, v)| *d += v);
                        } else {
                            let dst = &mut dx[base..=base + (hi - lo - 1) * self.s];
                            for (k, v) in src.iter().enumerate() {
                                // SAFETY: k·s ≤ (hi − lo − 1)·s < dst.len().
                                unsafe { *dst.get_unchecked_mut(k * self.s) += v };
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `dst[ox·ld..][..K] = src[ox·s..][..K]` for each output column `ox`
/// (`dst` holds one row of output positions, `ld` apart): the run length a
/// constant, so each run is one move.
fn runs<const K: usize>(src: &[f32], s: usize, dst: &mut [f32], (ld, _): (usize, usize)) {
    for (ox, d) in dst.chunks_mut(ld).enumerate() {
        let run = src[ox * s..].first_chunk::<K>();
        if let (Some(d), Some(run)) = (d.first_chunk_mut::<K>(), run) {
            *d = *run;
        }
    }
}

/// [`runs`] of a run length that is not a constant.
fn runs_of_any(src: &[f32], s: usize, dst: &mut [f32], (ld, k): (usize, usize)) {
    for (ox, d) in dst.chunks_mut(ld).enumerate() {
        copy_short(&mut d[..k], &src[ox * s..]);
    }
}

/// Stride 1 with output rows as wide as input rows (`same` padding, any
/// dilation): then each im2col row is its input plane shifted by one
/// constant, `(i·d − pt)·w + j·d − pl`, so it is one contiguous copy (or
/// add, for col2im) with the few entries that wrapped across a row edge
/// zeroed. Row by row, a 3×3 `same` convolution on 16–32-wide planes made
/// thousands of short `memcpy` calls per image: im2col and col2im were 15%
/// of a shapes_mm training step.
impl Geom {
    pub(super) fn shifted(&self) -> bool {
        self.s == 1 && self.ow == self.w
    }

    /// A 1×1, stride-1, unpadded convolution: its columns are the image
    /// itself ([c, h·w]), so no im2col or col2im runs at all.
    pub(super) fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.s == 1 && self.oh == self.h && self.ow == self.w
    }

    /// The columns of output positions `t0..t0 + n` of image `x`: `cols`
    /// filled by im2col, or a view of `x` itself for a pointwise convolution.
    pub(super) fn columns<'a>(
        &self,
        x: &'a [f32],
        cols: &'a mut [f32],
        (r, n, t0): (Range<usize>, usize, usize),
    ) -> View<'a> {
        let ckk = self.ckk();
        if self.pointwise() {
            return View {
                data: &x[t0..],
                rows: ckk,
                cols: n,
                rs: self.p(),
                cs: 1,
            };
        }
        let cols = &mut cols[..ckk * n];
        self.im2col_rows(x, cols, r, n);
        View {
            data: cols,
            rows: ckk,
            cols: n,
            rs: n,
            cs: 1,
        }
    }

    /// Scratch floats for one block's columns (none when pointwise).
    pub(super) fn cols_len(&self) -> usize {
        if self.pointwise() {
            0
        } else {
            self.ckk() * self.block_rows() * self.ow
        }
    }

    /// For kernel tap (i, j): the output rows whose input row is inside the
    /// image, the output columns likewise, and the constant shift.
    pub(super) fn tap(
        &self,
        i: usize,
        j: usize,
    ) -> (std::ops::Range<usize>, (usize, usize), isize) {
        let (id, jd) = (i * self.d, j * self.d);
        let oy0 = self.pt.saturating_sub(id);
        let oy1 = (self.h + self.pt).saturating_sub(id).min(self.oh);
        let shift =
            (id as isize - self.pt as isize) * self.w as isize + jd as isize - self.pl as isize;
        (oy0..oy1.max(oy0), self.cols_inside(j), shift)
    }

    /// The output positions `t` of rows `rows` whose `t + shift` is inside
    /// the plane (those outside are outside columns, zeroed or skipped).
    pub(super) fn span(
        &self,
        rows: &std::ops::Range<usize>,
        shift: isize,
    ) -> std::ops::Range<usize> {
        let hw = (self.h * self.w) as isize;
        let lo = (rows.start * self.ow) as isize;
        let hi = (rows.end * self.ow) as isize;
        let (a, b) = (lo.max(-shift), hi.min(hw - shift));
        if a >= b {
            0..0
        } else {
            a as usize..b as usize
        }
    }

    pub(super) fn im2col_shifted(&self, x: &[f32], cols: &mut [f32], r: Range<usize>, ld: usize) {
        let (hw, ow) = (self.h * self.w, self.ow);
        let (n, t0) = (r.len() * ow, r.start * ow);
        for c in 0..self.c {
            let plane = &x[c * hw..(c + 1) * hw];
            for i in 0..self.kh {
                for j in 0..self.kw {
                    let row = &mut cols[((c * self.kh + i) * self.kw + j) * ld..][..n];
                    let (rows, (lo, hi), shift) = self.tap(i, j);
                    let rows =
                        rows.start.max(r.start)..rows.end.min(r.end).max(rows.start.max(r.start));
                    let span = self.span(&rows, shift);
                    if span.is_empty() || lo >= hi {
                        row.fill(0.0);
                        continue;
                    }
                    let src = (span.start as isize + shift) as usize;
                    let (a, b) = (span.start - t0, span.end - t0);
                    row[..a].fill(0.0);
                    row[b..].fill(0.0);
                    row[a..b].copy_from_slice(&plane[src..src + span.len()]);
                    zero_edges(row, ow, rows.start - r.start..rows.end - r.start, (lo, hi));
                }
            }
        }
    }

    pub(super) fn col2im_shifted(
        &self,
        dcols: &mut [f32],
        dx: &mut [f32],
        r: Range<usize>,
        ld: usize,
    ) {
        let (hw, ow) = (self.h * self.w, self.ow);
        let (n, t0) = (r.len() * ow, r.start * ow);
        for c in 0..self.c {
            let plane = &mut dx[c * hw..(c + 1) * hw];
            for i in 0..self.kh {
                for j in 0..self.kw {
                    let row = &mut dcols[((c * self.kh + i) * self.kw + j) * ld..][..n];
                    let (rows, (lo, hi), shift) = self.tap(i, j);
                    let rows = self.within(rows, &r);
                    let span = self.span(&rows, shift);
                    if span.is_empty() || lo >= hi {
                        continue;
                    }
                    zero_edges(row, ow, rows.start - r.start..rows.end - r.start, (lo, hi));
                    let dst = (span.start as isize + shift) as usize;
                    plane[dst..dst + span.len()]
                        .iter_mut()
                        .zip(&row[span.start - t0..span.end - t0])
                        .for_each(|(d, v)| *d += v);
                }
            }
        }
    }

    /// Rows `a` that are also in `b` (empty, not reversed, when none are).
    pub(super) fn within(&self, a: Range<usize>, b: &Range<usize>) -> Range<usize> {
        let start = a.start.max(b.start);
        start..a.end.min(b.end).max(start)
    }
}

/// Zeroes the columns `..lo` and `hi..` of rows `rows` of `row` (row-major,
/// `ow` wide): one strided pass per column. A padded tap leaves a column or
/// two outside the image in every row, and a `fill` per row was a `memset`
/// call each, the largest part of im2col on 8–16-wide planes.
fn zero_edges(row: &mut [f32], ow: usize, rows: Range<usize>, (lo, hi): (usize, usize)) {
    if rows.is_empty() {
        return;
    }
    let part = &mut row[rows.start * ow..rows.end * ow];
    for k in (0..lo).chain(hi..ow) {
        part[k..].iter_mut().step_by(ow).for_each(|v| *v = 0.0);
    }
}

pub(super) fn geom(x: &[usize], w: &[usize], s: usize, d: usize, pad: [usize; 4]) -> Result<Geom> {
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
