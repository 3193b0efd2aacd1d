//! Winograd F(2×2, 3×3) for stride-1, undilated 3×3 convolutions over many
//! channels (Lavin & Gray 2015, "Fast Algorithms for Convolutional Neural
//! Networks"; what oneDNN and cuDNN run for such layers).
//!
//! A 2×2 block of outputs comes from a 4×4 patch of the input:
//! Y = Aᵀ [Σ_c (G g Gᵀ) ⊙ (Bᵀ d B)] A. Per block and channel pair that is 16
//! multiply-adds where the plain convolution does 36: 2.25× fewer, and they
//! are 16 GEMMs, [F, C] · [C, tiles], one per position of the 4×4 patch.
//! `seed_multitask`'s 64 → 128 convolution took 92% of its training step on
//! im2col + GEMM, whose GEMMs ran near this machine's peak: the FLOPs
//! themselves were the cost.
//!
//! All three products of training run this way:
//! - forward: the convolution above;
//! - dx: the convolution of dy padded by 2 − pad with the kernel flipped and
//!   its channels swapped (still 3×3, stride 1);
//! - dW: Gᵀ [Σ_tiles (A dY Aᵀ) ⊙ (Bᵀ d B)] G, the same 16 GEMMs with the
//!   tiles as their inner dimension.
//!
//! Tiles go through in chunks, so a chunk's transformed inputs and products
//! stay in L2 between the transforms and the GEMMs. Every sum has a fixed
//! order: results do not depend on the thread count.

use super::gemm::{matmul, View};
use super::im2col::Geom;
use super::{par, scratch};

/// Positions of a transformed 4×4 patch.
const E: usize = 16;

/// Tiles a chunk, at most (whole tile rows, at least one): a chunk's padded
/// input rows, transformed inputs and products stay in the 2 MiB L2 with the
/// transformed kernel (64 → 128 channels: 0.1 + 0.3 + 0.6 + 0.5 MiB). Whole
/// padded images did not fit, and the transforms waited on memory.
const CHUNK: usize = 64;

/// One image's 3×3, stride-1 correlation over 2×2 tiles: `c` input planes
/// of `h` × `w`, read with `pt`, `pl` rows and columns of zeros before them,
/// into `f` output planes of `oh` × `ow`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tiles {
    c: usize,
    f: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    pt: usize,
    pl: usize,
}

impl Tiles {
    /// The forward's tiles, when Winograd serves `g`: 3×3, stride 1, no
    /// dilation, padding of at most 2 (so dx's is not negative), and more
    /// taps than the direct kernel takes (below that, and for few filters,
    /// the GEMMs' inner dimension is too short to pay for the transforms).
    pub(super) fn forward_of(g: &Geom) -> Option<Tiles> {
        let fits = g.kh == 3
            && g.kw == 3
            && g.s == 1
            && g.d == 1
            && g.pt <= 2
            && g.pl <= 2
            && g.c >= 32
            && g.f >= 32
            && g.oh >= 2
            && g.ow >= 2
            && par::avx512();
        fits.then_some(Tiles {
            c: g.c,
            f: g.f,
            h: g.h,
            w: g.w,
            oh: g.oh,
            ow: g.ow,
            pt: g.pt,
            pl: g.pl,
        })
    }

    /// The tiles of the dx convolution: dy's `f` planes, padded by 2 − pad,
    /// into the `c` input planes.
    pub(super) fn backward(&self) -> Tiles {
        Tiles {
            c: self.f,
            f: self.c,
            h: self.oh,
            w: self.ow,
            oh: self.h,
            ow: self.w,
            pt: 2 - self.pt,
            pl: 2 - self.pl,
        }
    }

    fn th(&self) -> usize {
        self.oh.div_ceil(2)
    }
    fn tw(&self) -> usize {
        self.ow.div_ceil(2)
    }
    /// A padded row's columns in one parity: the row is stored as its even
    /// columns, then its odd ones, so tile tx's patch columns 2tx … 2tx + 3
    /// are entry tx and tx + 1 of each half, and 16 neighbouring tiles read
    /// 16 consecutive values (zeros past the last tile: whole vectors).
    fn half(&self) -> usize {
        self.tw() + L
    }

    /// Tile rows a chunk.
    fn chunk_rows(&self) -> usize {
        (CHUNK / self.tw()).max(1)
    }
    /// A chunk's row stride in the transformed buffers: its tiles and 16
    /// lanes of slack, so every block of tiles loads and stores whole
    /// vectors (a tile row of 30 tiles is a block of 16 and one of 14;
    /// element loops for the 14 took a third of the step).
    fn cs(&self) -> usize {
        self.chunk_rows() * self.tw() + L
    }
    /// The chunks: (first tile row, tile rows).
    fn chunks(&self) -> impl Iterator<Item = (usize, usize)> {
        let (th, r) = (self.th(), self.chunk_rows());
        (0..th).step_by(r).map(move |ty0| (ty0, r.min(th - ty0)))
    }

    /// Scratch floats one image's convolution takes ([`Self::conv`]): a
    /// chunk's padded input rows, transformed inputs and products.
    fn scratch_len(&self) -> [usize; 3] {
        [
            self.c * (2 * self.chunk_rows() + 2) * 2 * self.half(),
            E * self.c * self.cs(),
            E * self.f * self.cs(),
        ]
    }

    /// The tiles `t0..t0 + n` (row-major) in blocks of at most 16 within a
    /// tile row: (tile row, first tile column, tiles, offset in the chunk).
    fn blocks(&self, t0: usize, n: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
        let tw = self.tw();
        let mut t = t0;
        std::iter::from_fn(move || {
            (t < t0 + n).then(|| {
                let (ty, tx) = (t / tw, t % tw);
                let len = L.min(tw - tx).min(t0 + n - t);
                let block = (ty, tx, len, t - t0);
                t += len;
                block
            })
        })
    }

    /// The convolution of one image: `x` [c, h, w] with the transformed
    /// kernel `u` ([`transform_kernel`], [16, f, c]) into `y` [f, oh, ow],
    /// `y` overwritten with bias and relu (`Out::Set`) or added to.
    pub(super) fn conv(&self, x: &[f32], u: &[f32], out: Out, y: &mut [f32]) {
        let (f, c, half) = (self.f, self.c, self.half());
        assert!(
            u.len() == E * f * c
                && x.len() == c * self.h * self.w
                && y.len() == f * self.oh * self.ow,
            "winograd: buffers do not fit the tiles"
        );
        let (cs, hc) = (self.cs(), 2 * self.chunk_rows() + 2);
        scratch::with(self.scratch_len(), |[xp, v, m]| {
            for (ty0, rows) in self.chunks() {
                let (t0, n) = (ty0 * self.tw(), rows * self.tw());
                let at = (2 * ty0, hc, half);
                split(x, (self.h, self.w), (self.pt, self.pl), at, xp);
                for (ty, tx, _, k) in self.blocks(t0, n) {
                    // SAFETY: Winograd runs only where the CPU has AVX-512
                    // (`forward_of`); the block's reads and writes lie inside
                    // `xp` and `v` (`input_block`).
                    unsafe { input_block(xp, (c, 2 * half, hc), (ty - ty0, tx), (v, cs), k) };
                }
                for e in 0..E {
                    let lhs = plane(u, e, (f, c), (c, 1));
                    let rhs = plane(v, e, (c, n), (cs, 1));
                    matmul(&mut m[e * f * cs..(e + 1) * f * cs], cs, false, lhs, rhs);
                }
                for (ty, tx, len, k) in self.blocks(t0, n) {
                    let x0 = 2 * tx;
                    let cols = (2 * len).min(self.ow - x0);
                    for o in 0..f {
                        let plane = &mut y[o * self.oh * self.ow..(o + 1) * self.oh * self.ow];
                        let rows = [2 * ty, 2 * ty + 1]
                            .map(|oy| (oy < self.oh).then_some(oy * self.ow + x0));
                        // SAFETY: AVX-512 as above; the stores write `cols`
                        // values from each row's start, inside its plane.
                        unsafe { output_block((m, cs), (f, o, k), plane, (rows, cols), out) };
                    }
                }
            }
        })
    }

    /// `du` [16, f, c] += Σ over the tiles of (A dY Aᵀ) ⊙ (Bᵀ d B) for one
    /// image `x` [c, h, w] and its output's gradient `dy` [f, oh, ow]: the
    /// kernel's gradient before [`kernel_grad`].
    pub(super) fn weight_grad(&self, x: &[f32], dy: &[f32], du: &mut [f32]) {
        let (f, c, tw, half) = (self.f, self.c, self.tw(), self.half());
        assert!(
            du.len() == E * f * c
                && x.len() == c * self.h * self.w
                && dy.len() == f * self.oh * self.ow,
            "winograd: gradient buffers do not fit the tiles"
        );
        let [xp_len, v_len, dm_len] = self.scratch_len();
        let (cs, hc, dy_half) = (self.cs(), 2 * self.chunk_rows() + 2, tw + L);
        let dy_len = f * (hc - 2) * 2 * dy_half;
        scratch::with([xp_len, v_len, dm_len, dy_len], |[xp, v, dm, dyp]| {
            for (ty0, rows) in self.chunks() {
                let (t0, n) = (ty0 * tw, rows * tw);
                split(
                    x,
                    (self.h, self.w),
                    (self.pt, self.pl),
                    (2 * ty0, hc, half),
                    xp,
                );
                // dy split by parity too, zero past its last row and column.
                split(
                    dy,
                    (self.oh, self.ow),
                    (0, 0),
                    (2 * ty0, hc - 2, dy_half),
                    dyp,
                );
                for (ty, tx, _, k) in self.blocks(t0, n) {
                    // SAFETY: as in `conv`; `grad_block` reads inside `dyp`
                    // and writes inside `dm`.
                    unsafe {
                        input_block(xp, (c, 2 * half, hc), (ty - ty0, tx), (v, cs), k);
                        grad_block(dyp, (f, 2 * dy_half, hc - 2), (ty - ty0, tx), (dm, cs), k);
                    }
                }
                for e in 0..E {
                    let lhs = plane(dm, e, (f, n), (cs, 1));
                    let rhs = plane(v, e, (n, c), (1, cs));
                    matmul(&mut du[e * f * c..(e + 1) * f * c], c, true, lhs, rhs);
                }
            }
        })
    }
}

/// Plane `e` of the 16 in `data` as a [rows, cols] view with strides
/// (rs, cs).
fn plane(
    data: &[f32],
    e: usize,
    (rows, cols): (usize, usize),
    (rs, cs): (usize, usize),
) -> View<'_> {
    let len = data.len() / E;
    View {
        data: &data[e * len..(e + 1) * len],
        rows,
        cols,
        rs,
        cs,
    }
}

/// Lanes of one vector: a block of 16 tiles.
const L: usize = 16;

/// `v` [16, c, cs] at chunk offset `k` ← Bᵀ d B of the 4×4 patches of the
/// 16 tiles from (ty, tx) in each of the `c` parity-split planes of `xp`
/// (rows `wp` long, `hp` of them), as (Bᵀ (d B)): each patch row's column
/// transform, then the rows combined.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn input_block(
    xp: &[f32],
    (c, wp, hp): (usize, usize, usize),
    (ty, tx): (usize, usize),
    (v, cs): (&mut [f32], usize),
    k: usize,
) {
    use std::arch::x86_64::*;
    let half = wp / 2;
    assert!(
        (2 * ty + 4) <= hp
            && tx + 1 + L <= half
            && c * hp * wp <= xp.len()
            && ((E - 1) * c + c - 1) * cs + k + L <= v.len(),
        "winograd: a block outside its buffers"
    );
    let (xp, v) = (xp.as_ptr(), v.as_mut_ptr());
    for ci in 0..c {
        // SAFETY (all loads and stores): inside the buffers, checked above.
        unsafe {
            let rows = xp.add(ci * hp * wp + 2 * ty * wp + tx);
            let t: [[__m512; 4]; 4] = std::array::from_fn(|i| {
                let (ev, od) = (rows.add(i * wp), rows.add(i * wp + half));
                let (d0, d1) = (_mm512_loadu_ps(ev), _mm512_loadu_ps(od));
                let (d2, d3) = (_mm512_loadu_ps(ev.add(1)), _mm512_loadu_ps(od.add(1)));
                [
                    _mm512_sub_ps(d0, d2),
                    _mm512_add_ps(d1, d2),
                    _mm512_sub_ps(d2, d1),
                    _mm512_sub_ps(d1, d3),
                ]
            });
            let [t0, t1, t2, t3] = t;
            let patch = [
                std::array::from_fn(|j| _mm512_sub_ps(t0[j], t2[j])),
                std::array::from_fn(|j| _mm512_add_ps(t1[j], t2[j])),
                std::array::from_fn(|j| _mm512_sub_ps(t2[j], t1[j])),
                std::array::from_fn(|j| _mm512_sub_ps(t1[j], t3[j])),
            ];
            store_patch(v, (c, ci, cs, k), patch);
        }
    }
}

/// Position e = 4i + j of a transformed 4×4 `patch` of 16 tiles into row
/// `ch` of plane e of `dst` [16, n, cs], from column `k`.
///
/// # Safety
/// AVX-512, and every row's 16 values inside `dst` (the callers check).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_patch(
    dst: *mut f32,
    (n, ch, cs, k): (usize, usize, usize, usize),
    patch: [[std::arch::x86_64::__m512; 4]; 4],
) {
    for (i, row) in patch.into_iter().enumerate() {
        for (j, val) in row.into_iter().enumerate() {
            // SAFETY: inside `dst`, as the caller checked.
            unsafe {
                std::arch::x86_64::_mm512_storeu_ps(dst.add(((4 * i + j) * n + ch) * cs + k), val)
            };
        }
    }
}

/// `dm` [16, f, cs] at chunk offset `k` ← A dY Aᵀ of the 2×2 output
/// gradients of the 16 tiles from (ty, tx), in each of the `f` parity-split
/// planes of `dyp` (rows `wp` long, `hp` of them).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn grad_block(
    dyp: &[f32],
    (f, wp, hp): (usize, usize, usize),
    (ty, tx): (usize, usize),
    (dm, cs): (&mut [f32], usize),
    k: usize,
) {
    use std::arch::x86_64::*;
    let half = wp / 2;
    assert!(
        (2 * ty + 2) <= hp
            && tx + L <= half
            && f * hp * wp <= dyp.len()
            && ((E - 1) * f + f - 1) * cs + k + L <= dm.len(),
        "winograd: a gradient block outside its buffers"
    );
    let (dyp, dm) = (dyp.as_ptr(), dm.as_mut_ptr());
    for o in 0..f {
        // SAFETY (all loads and stores): inside the buffers, checked above.
        unsafe {
            let rows = dyp.add(o * hp * wp + 2 * ty * wp + tx);
            let q: [[__m512; 2]; 2] = std::array::from_fn(|a| {
                let row = rows.add(a * wp);
                [_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(half))]
            });
            // A q: rows q0, q0 + q1, q0 − q1, −q1; then each row (a, b) · Aᵀ
            // = (a, a + b, a − b, −b).
            let zero = _mm512_setzero_ps();
            let r = [
                q[0],
                [
                    _mm512_add_ps(q[0][0], q[1][0]),
                    _mm512_add_ps(q[0][1], q[1][1]),
                ],
                [
                    _mm512_sub_ps(q[0][0], q[1][0]),
                    _mm512_sub_ps(q[0][1], q[1][1]),
                ],
                [_mm512_sub_ps(zero, q[1][0]), _mm512_sub_ps(zero, q[1][1])],
            ];
            let patch = r.map(|[a, b]| {
                [
                    a,
                    _mm512_add_ps(a, b),
                    _mm512_sub_ps(a, b),
                    _mm512_sub_ps(zero, b),
                ]
            });
            store_patch(dm, (f, o, cs, k), patch);
        }
    }
}

/// Aᵀ m A of output plane `o`'s products of the 16 tiles at chunk offset
/// `k` in `m` [16, f, cs], into the plane: `cols` outputs from each of the
/// two rows' starts (`None`: past the last row), interleaved (tile l's
/// outputs at 2l and 2l + 1).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn output_block(
    (m, cs): (&[f32], usize),
    (f, o, k): (usize, usize, usize),
    plane: &mut [f32],
    (rows, cols): ([Option<usize>; 2], usize),
    out: Out,
) {
    use std::arch::x86_64::*;
    assert!(
        ((E - 1) * f + o) * cs + k + L <= m.len()
            && cols <= 2 * L
            && rows.iter().flatten().all(|r| r + cols <= plane.len()),
        "winograd: an output block outside its buffers"
    );
    // SAFETY (all loads and stores): inside the buffers, checked above; the
    // masked ones touch only the first `cols` values of a row.
    unsafe {
        let mm: [__m512; E] =
            std::array::from_fn(|e| _mm512_loadu_ps(m.as_ptr().add((e * f + o) * cs + k)));
        // Aᵀ m: rows m0 + m1 + m2 and m1 − m2 − m3 (of 4 vectors each).
        let s: [[__m512; 4]; 2] = std::array::from_fn(|a| {
            std::array::from_fn(|j| {
                let (m0, m1, m2, m3) = (mm[j], mm[4 + j], mm[8 + j], mm[12 + j]);
                if a == 0 {
                    _mm512_add_ps(_mm512_add_ps(m0, m1), m2)
                } else {
                    _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3)
                }
            })
        });
        let lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi_idx =
            _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        let masks = [mask(cols.min(L)), mask(cols.saturating_sub(L))];
        let (bias, relu) = match out {
            Out::Set { bias, relu } => (Some(_mm512_set1_ps(bias.map_or(0.0, |b| b[o]))), relu),
            Out::Add => (None, false),
        };
        for (row, [s0, s1, s2, s3]) in rows.into_iter().zip(s) {
            let Some(at) = row else { continue };
            let y0 = _mm512_add_ps(_mm512_add_ps(s0, s1), s2);
            let y1 = _mm512_sub_ps(_mm512_sub_ps(s1, s2), s3);
            let halves = [
                _mm512_permutex2var_ps(y0, lo_idx, y1),
                _mm512_permutex2var_ps(y0, hi_idx, y1),
            ];
            for (h, (val, mk)) in halves.into_iter().zip(masks).enumerate() {
                let dst = plane.as_mut_ptr().add(at + h * L);
                let val = match bias {
                    Some(b) => {
                        let z = _mm512_add_ps(val, b);
                        if relu {
                            _mm512_max_ps(z, _mm512_setzero_ps())
                        } else {
                            z
                        }
                    }
                    None => _mm512_add_ps(val, _mm512_maskz_loadu_ps(mk, dst)),
                };
                _mm512_mask_storeu_ps(dst, mk, val);
            }
        }
    }
}

// Elsewhere Winograd never runs (`Tiles::forward_of` asks for AVX-512).
#[cfg(not(target_arch = "x86_64"))]
fn input_block(
    _: &[f32],
    _: (usize, usize, usize),
    _: (usize, usize),
    _: (&mut [f32], usize),
    _: usize,
) {
    unreachable!("Winograd runs only on AVX-512")
}
#[cfg(not(target_arch = "x86_64"))]
fn grad_block(
    _: &[f32],
    _: (usize, usize, usize),
    _: (usize, usize),
    _: (&mut [f32], usize),
    _: usize,
) {
    unreachable!("Winograd runs only on AVX-512")
}
#[cfg(not(target_arch = "x86_64"))]
fn output_block(
    _: (&[f32], usize),
    _: (usize, usize, usize),
    _: &mut [f32],
    _: ([Option<usize>; 2], usize),
    _: Out,
) {
    unreachable!("Winograd runs only on AVX-512")
}

/// `a[k]`, `b[k]` ← `src[2k]`, `src[2k + 1]` for every pair of `src`
/// (`a` and `b` at least half as long), 16 pairs a step on AVX-512. The
/// split's time is mostly its first reads of the image and of dy, which
/// the vector code does not shorten: split and this stayed about 12% of
/// `seed_multitask`'s step either way.
fn deinterleave(src: &[f32], a: &mut [f32], b: &mut [f32]) {
    let pairs = src.len() / 2;
    assert!(
        a.len() >= pairs && b.len() >= pairs,
        "winograd: short halves"
    );
    #[cfg(target_arch = "x86_64")]
    if super::par::avx512() {
        // SAFETY: the CPU has AVX-512 (checked); `deinterleave_512` reads
        // and writes inside the slices.
        return unsafe { deinterleave_512(src, a, b) };
    }
    for k in 0..pairs {
        a[k] = src[2 * k];
        b[k] = src[2 * k + 1];
    }
}

/// [`deinterleave`] in steps of 16 pairs, the last one masked.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn deinterleave_512(src: &[f32], a: &mut [f32], b: &mut [f32]) {
    use std::arch::x86_64::*;
    let pairs = src.len() / 2;
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for k in (0..pairs).step_by(L) {
        let n = L.min(pairs - k);
        let (m_lo, m_hi, m_out) = (mask(2 * n), mask((2 * n).saturating_sub(L)), mask(n));
        // SAFETY: the masks touch src[2k .. 2k + 2n] and a, b[k .. k + n],
        // inside the slices (k + n ≤ pairs ≤ a.len(), b.len()).
        unsafe {
            let lo = _mm512_maskz_loadu_ps(m_lo, src.as_ptr().add(2 * k));
            let hi = _mm512_maskz_loadu_ps(m_hi, src.as_ptr().add(2 * k + L));
            _mm512_mask_storeu_ps(
                a.as_mut_ptr().add(k),
                m_out,
                _mm512_permutex2var_ps(lo, even, hi),
            );
            _mm512_mask_storeu_ps(
                b.as_mut_ptr().add(k),
                m_out,
                _mm512_permutex2var_ps(lo, odd, hi),
            );
        }
    }
}

/// The mask of the first `n` of 16 lanes.
#[cfg(target_arch = "x86_64")]
fn mask(n: usize) -> u16 {
    ((1u32 << n.min(L)) - 1) as u16
}

/// `dst` [planes, hp, 2·half] ← rows r0 … r0 + hp of the planes `x`
/// [planes, h, w] placed at (pt, pl) on zero planes of 2·half columns, each
/// row stored as its even columns, then its odd ones.
fn split(
    x: &[f32],
    (h, w): (usize, usize),
    (pt, pl): (usize, usize),
    (r0, hp, half): (usize, usize, usize),
    dst: &mut [f32],
) {
    let wp = 2 * half;
    let cols = w.min(wp.saturating_sub(pl));
    let planes = x.len() / (h * w);
    let dst = &mut dst[..planes * hp * wp];
    dst.fill(0.0);
    // Padded rows r0 + r with a source row r0 + r − pt inside 0..h.
    let (lo, hi) = (pt.saturating_sub(r0), (h + pt).saturating_sub(r0).min(hp));
    for (plane, out) in x.chunks_exact(h * w).zip(dst.chunks_exact_mut(hp * wp)) {
        for r in lo..hi {
            let src = &plane[(r0 + r - pt) * w..][..cols];
            let (even, odd) = out[r * wp..][..wp].split_at_mut(half);
            // Source column x goes to padded column x + pl: pairs of
            // source columns go to one entry of each half.
            let (first, fo, second, so) = if pl % 2 == 0 {
                (even, pl / 2, odd, pl / 2)
            } else {
                (odd, pl / 2, even, pl / 2 + 1)
            };
            if cols % 2 == 1 {
                first[fo + cols / 2] = src[cols - 1];
            }
            deinterleave(&src[..cols / 2 * 2], &mut first[fo..], &mut second[so..]);
        }
    }
}

/// How [`Tiles::conv`] writes its outputs.
#[derive(Clone, Copy)]
pub(super) enum Out<'a> {
    /// y = act(conv + bias).
    Set { bias: Option<&'a [f32]>, relu: bool },
    /// y += conv.
    Add,
}

/// G g Gᵀ of every 3×3 kernel of `w` [f, c, 3, 3], as [16, f, c]; with
/// `flip`, of the dx convolution's kernels instead: each rotated by 180°
/// with f and c swapped, as [16, c, f].
pub(super) fn transform_kernel(w: &[f32], (f, c): (usize, usize), flip: bool) -> Vec<f32> {
    let (rows, cols) = if flip { (c, f) } else { (f, c) };
    let mut u = vec![0f32; E * f * c];
    for o in 0..f {
        for ci in 0..c {
            let k = &w[(o * c + ci) * 9..][..9];
            let g: [[f32; 3]; 3] = std::array::from_fn(|i| {
                std::array::from_fn(|j| if flip { k[8 - 3 * i - j] } else { k[3 * i + j] })
            });
            // G g: rows g0, (g0 + g1 + g2)/2, (g0 − g1 + g2)/2, g2; then · Gᵀ.
            let r = [
                g[0],
                std::array::from_fn(|j| 0.5 * (g[0][j] + g[1][j] + g[2][j])),
                std::array::from_fn(|j| 0.5 * (g[0][j] - g[1][j] + g[2][j])),
                g[2],
            ];
            let (row, col) = if flip { (ci, o) } else { (o, ci) };
            for (i, t) in r.iter().enumerate() {
                let vals = [
                    t[0],
                    0.5 * (t[0] + t[1] + t[2]),
                    0.5 * (t[0] - t[1] + t[2]),
                    t[2],
                ];
                for (j, val) in vals.into_iter().enumerate() {
                    u[((4 * i + j) * rows + row) * cols + col] = val;
                }
            }
        }
    }
    u
}

/// dw [f, c, 3, 3] += Gᵀ du G of every kernel's summed product `du` [16, f, c]
/// ([`Tiles::weight_grad`]).
pub(super) fn kernel_grad(du: &[f32], (f, c): (usize, usize), dw: &mut [f32]) {
    for o in 0..f {
        for ci in 0..c {
            let d: [[f32; 4]; 4] = std::array::from_fn(|i| {
                std::array::from_fn(|j| du[((4 * i + j) * f + o) * c + ci])
            });
            // Gᵀ d: rows d0 + (d1 + d2)/2, (d1 − d2)/2, (d1 + d2)/2 + d3; then · G.
            let r = [
                std::array::from_fn::<f32, 4, _>(|j| d[0][j] + 0.5 * (d[1][j] + d[2][j])),
                std::array::from_fn(|j| 0.5 * (d[1][j] - d[2][j])),
                std::array::from_fn(|j| 0.5 * (d[1][j] + d[2][j]) + d[3][j]),
            ];
            let k = &mut dw[(o * c + ci) * 9..][..9];
            for (i, t) in r.iter().enumerate() {
                k[3 * i] += t[0] + 0.5 * (t[1] + t[2]);
                k[3 * i + 1] += 0.5 * (t[1] - t[2]);
                k[3 * i + 2] += 0.5 * (t[1] + t[2]) + t[3];
            }
        }
    }
}

/// The backward of a Winograd convolution on `t` from `dy` (relu already
/// applied): dx (when given), dW and db added to, for a batch of `b` images;
/// on rayon's pool when `par`. Each group of images sums its kernel
/// gradient in the transformed domain and transforms it back once.
pub(super) fn backward(
    t: &Tiles,
    (x, w, dy): (&[f32], &[f32], &[f32]),
    (dx, dw, db): (Option<&mut [f32]>, &mut [f32], &mut [f32]),
    b: usize,
    par: bool,
) {
    let (f, c) = (t.f, t.c);
    let (in_len, p) = (c * t.h * t.w, t.oh * t.ow);
    let u_dx = dx.is_some().then(|| transform_kernel(w, (f, c), true));
    let back = t.backward();
    let per = b.div_ceil(8).max(1);
    let group = |gi: usize, pdw: &mut [f32], pdb: &mut [f32], mut dxg: Option<&mut [f32]>| {
        let count = per.min(b - gi * per);
        scratch::with([E * f * c], |[du]| {
            du.fill(0.0);
            for k in 0..count {
                let bi = gi * per + k;
                let (xb, dyb) = (&x[bi * in_len..][..in_len], &dy[bi * f * p..][..f * p]);
                if let (Some(u), Some(dxg)) = (&u_dx, dxg.as_deref_mut()) {
                    back.conv(dyb, u, Out::Add, &mut dxg[k * in_len..(k + 1) * in_len]);
                }
                t.weight_grad(xb, dyb, du);
                for (d, plane) in pdb.iter_mut().zip(dyb.chunks_exact(p)) {
                    *d += par::lane_sum(plane);
                }
            }
            kernel_grad(du, (f, c), pdw);
        })
    };
    super::conv::in_groups((b, per, in_len), par, dx, (dw, db), group);
}

#[cfg(test)]
mod tests {
    use super::{kernel_grad, transform_kernel, Out, Tiles, E};
    use crate::kernels::im2col::geom;

    /// The plain correlation, for reference: y[o, oy, ox] = Σ w[o, c, i, j] ·
    /// x[c, oy + i − pt, ox + j − pl].
    fn naive(
        x: &[f32],
        w: &[f32],
        (c, h, wd, f): (usize, usize, usize, usize),
        pad: [usize; 4],
    ) -> (Vec<f32>, usize, usize) {
        let (oh, ow) = (h + pad[0] + pad[1] - 2, wd + pad[2] + pad[3] - 2);
        let mut y = vec![0f32; f * oh * ow];
        for o in 0..f {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = 0f64;
                    for ci in 0..c {
                        for i in 0..3 {
                            for j in 0..3 {
                                let (iy, ix) = (
                                    (oy + i) as isize - pad[0] as isize,
                                    (ox + j) as isize - pad[2] as isize,
                                );
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                    s += (w[((o * c + ci) * 3 + i) * 3 + j]
                                        * x[(ci * h + iy as usize) * wd + ix as usize])
                                        as f64;
                                }
                            }
                        }
                    }
                    y[(o * oh + oy) * ow + ox] = s as f32;
                }
            }
        }
        (y, oh, ow)
    }

    fn rand(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Forward, dx and dW against the plain correlation (and its adjoints,
    /// from a dot-product identity), on odd and even planes, several
    /// chunks of tiles, `same` and `valid` padding.
    #[test]
    fn winograd_equals_the_plain_convolution_and_its_gradients() {
        for (c, h, w, f, pad) in [
            (32, 9, 7, 32, [1; 4]),
            (32, 24, 20, 40, [0; 4]),
            (33, 5, 6, 32, [1, 1, 0, 0]),
            // Rows wide enough for whole vectors, and a masked tail.
            (32, 6, 75, 32, [1; 4]),
        ] {
            let x = rand(c * h * w, 1);
            let k = rand(f * c * 9, 2);
            let g = geom(&[1, c, h, w], &[f, c, 3, 3], 1, 1, pad).unwrap();
            let t = Tiles::forward_of(&g).expect("a Winograd geometry");
            let (want, oh, ow) = naive(&x, &k, (c, h, w, f), pad);
            let mut y = vec![7f32; f * oh * ow];
            t.conv(
                &x,
                &transform_kernel(&k, (f, c), false),
                Out::Set {
                    bias: None,
                    relu: false,
                },
                &mut y,
            );
            let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
            assert!(
                max_diff(&y, &want) < 1e-5 * scale,
                "forward {c}×{h}×{w} → {f}"
            );

            // dx: ⟨conv(x), dy⟩ = ⟨x, dx⟩ for every x, so dx[i] = ⟨conv(e_i), dy⟩;
            // checked on the whole: dx from the flipped kernel against the
            // naive adjoint (dy correlated with the rotated kernel).
            let dy = rand(f * oh * ow, 3);
            let mut dx = vec![0.5f32; c * h * w];
            t.backward()
                .conv(&dy, &transform_kernel(&k, (f, c), true), Out::Add, &mut dx);
            let mut adj = vec![0.5f32; c * h * w];
            for o in 0..f {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let d = dy[(o * oh + oy) * ow + ox];
                        for ci in 0..c {
                            for i in 0..3 {
                                for j in 0..3 {
                                    let (iy, ix) = (
                                        (oy + i) as isize - pad[0] as isize,
                                        (ox + j) as isize - pad[2] as isize,
                                    );
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w
                                    {
                                        adj[(ci * h + iy as usize) * w + ix as usize] +=
                                            d * k[((o * c + ci) * 3 + i) * 3 + j];
                                    }
                                }
                            }
                        }
                    }
                }
            }
            assert!(max_diff(&dx, &adj) < 1e-4, "dx {c}×{h}×{w} → {f}");

            // dW[o, c, i, j] = Σ dy[o, oy, ox] · x[c, oy + i − pt, ox + j − pl].
            let mut du = vec![0f32; E * f * c];
            t.weight_grad(&x, &dy, &mut du);
            let mut dw = vec![0.25f32; f * c * 9];
            kernel_grad(&du, (f, c), &mut dw);
            let mut want_dw = vec![0.25f32; f * c * 9];
            for o in 0..f {
                for ci in 0..c {
                    for i in 0..3 {
                        for j in 0..3 {
                            let mut s = 0f64;
                            for oy in 0..oh {
                                for ox in 0..ow {
                                    let (iy, ix) = (
                                        (oy + i) as isize - pad[0] as isize,
                                        (ox + j) as isize - pad[2] as isize,
                                    );
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w
                                    {
                                        s += (dy[(o * oh + oy) * ow + ox]
                                            * x[(ci * h + iy as usize) * w + ix as usize])
                                            as f64;
                                    }
                                }
                            }
                            want_dw[((o * c + ci) * 3 + i) * 3 + j] += s as f32;
                        }
                    }
                }
            }
            assert!(
                max_diff(&dw, &want_dw) < 1e-3,
                "dW {c}×{h}×{w} → {f}: {}",
                max_diff(&dw, &want_dw)
            );
        }
    }
}
