//! A bounds-checked front to the `gemm` crate for our CPU kernels:
//! `dst = (read_dst ? dst : 0) + lhs · rhs` over strided f32 matrices.

/// A strided [rows, cols] view: element (r, c) at `r * rs + c * cs`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

fn fits(len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    rows == 0 || cols == 0 || (rows - 1) * rs + (cols - 1) * cs < len
}

/// `lhs` [m, k] · `rhs` [k, n] into `dst` [m, n] (row stride `dst_rs`,
/// column stride 1), added to its contents when `read_dst`.
pub fn matmul(dst: &mut [f32], dst_rs: usize, read_dst: bool, lhs: View, rhs: View) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(k, rhs.rows, "gemm: inner sizes differ");
    assert!(fits(dst.len(), m, n, dst_rs, 1), "gemm: dst out of bounds");
    assert!(
        fits(lhs.data.len(), m, k, lhs.rs, lhs.cs),
        "gemm: lhs out of bounds"
    );
    assert!(
        fits(rhs.data.len(), k, n, rhs.rs, rhs.cs),
        "gemm: rhs out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    let out = Out(dst.as_mut_ptr());
    let macs = m * n * k;
    if macs >= CRATE_PARALLEL {
        let par = gemm::Parallelism::Rayon(rayon::current_num_threads());
        // SAFETY: the views and dst were checked above.
        return unsafe { product(out, dst_rs, read_dst, lhs, rhs, par) };
    }
    match Cut::of(m, n, k) {
        // SAFETY: the views and dst were checked above; the parts cover
        // disjoint ranges inside them.
        Some(cut) => unsafe { cut.run(out, dst_rs, read_dst, lhs, rhs) },
        None => unsafe { product(out, dst_rs, read_dst, lhs, rhs, gemm::Parallelism::None) },
    }
}

/// Products of this many multiply-adds and more: the gemm crate splits them
/// over rayon's pool itself.
const CRATE_PARALLEL: usize = 1 << 24;
/// Smaller products of at least this many are cut into parts that run on
/// rayon's pool ([`Cut`]): the gemm crate runs them on one thread, so
/// `shapes_mm`'s dense layer (32 × 2048 × 64) and LSTM projections (512 ×
/// 32 × 128) did too (the dense layer's backward: 0.37 ms at one thread,
/// 0.35 ms at two).
const SPLIT_MACS: usize = 1 << 20;
/// Multiply-adds a part has at least, so that handing it to the pool (a few
/// µs) stays small next to it.
const PART_MACS: usize = 1 << 19;

/// `dst` as a pointer the parts share: each writes its own elements.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: the parts of a product write disjoint elements (see `Cut::run`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// `n` floats on (a method, so closures capture the whole `Out`).
    fn add(self, n: usize) -> Out {
        Out(self.0.wrapping_add(n))
    }
}

/// How a product is cut: along the output's columns or rows (each part a
/// whole product of its own elements), or along the inner size (each part
/// a partial sum, added in part order). The sizes alone decide, so the
/// results do not depend on the thread count.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cut {
    Cols(usize),
    Rows(usize),
    Depth(usize),
}

impl Cut {
    /// The cut of an [m, k] · [k, n] product, or none below [`SPLIT_MACS`]
    /// or where no axis is long enough for two parts. Column parts are
    /// whole vectors of 16 (the gemm crate's kernels run along the
    /// output's rows, here its contiguous columns).
    fn of(m: usize, n: usize, k: usize) -> Option<Cut> {
        let macs = m * n * k;
        if macs < SPLIT_MACS {
            return None;
        }
        let parts = (macs / PART_MACS).clamp(2, 8);
        let size = |len: usize, align: usize, least: usize| {
            (len.div_ceil(parts).div_ceil(align) * align).max(least)
        };
        let cut = if n >= 128 {
            Cut::Cols(size(n, 16, 64))
        } else if m >= 128 {
            Cut::Rows(size(m, 8, 32))
        } else if k >= 256 {
            Cut::Depth(size(k, 16, 128))
        } else {
            return None;
        };
        (cut.parts(m, n, k) > 1).then_some(cut)
    }

    fn parts(self, m: usize, n: usize, k: usize) -> usize {
        match self {
            Cut::Cols(c) => n.div_ceil(c),
            Cut::Rows(r) => m.div_ceil(r),
            Cut::Depth(d) => k.div_ceil(d),
        }
    }

    /// The product in parts on rayon's pool.
    ///
    /// # Safety
    /// `out` is valid for the [m, n] output at row stride `out_rs`, the
    /// views for their sizes (checked by [`matmul`]).
    unsafe fn run(self, out: Out, out_rs: usize, read: bool, lhs: View, rhs: View) {
        use rayon::prelude::*;
        let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
        let parts = self.parts(m, n, k);
        let serial = gemm::Parallelism::None;
        let Cut::Depth(d) = self else {
            (0..parts).into_par_iter().for_each(|i| {
                let (out, lhs, rhs) = match self {
                    Cut::Cols(c) => {
                        let (c0, cols) = (i * c, c.min(n - i * c));
                        let rhs = View {
                            data: &rhs.data[c0 * rhs.cs..],
                            cols,
                            ..rhs
                        };
                        (out.add(c0), lhs, rhs)
                    }
                    _ => {
                        let r = match self {
                            Cut::Rows(r) => r,
                            _ => unreachable!("depth parts are summed below"),
                        };
                        let (r0, rows) = (i * r, r.min(m - i * r));
                        let lhs = View {
                            data: &lhs.data[r0 * lhs.rs..],
                            rows,
                            ..lhs
                        };
                        (out.add(r0 * out_rs), lhs, rhs)
                    }
                };
                // SAFETY: the part's rows and columns lie inside the output
                // and views the caller vouched for; parts do not overlap.
                unsafe { product(out, out_rs, read, lhs, rhs, serial) }
            });
            return;
        };
        // Along k: the first part into dst, the others into partial sums
        // of their own, added to dst in part order.
        super::scratch::with([(parts - 1) * m * n], |[partials]| {
            let sums: Vec<Out> = std::iter::once(out)
                .chain(
                    partials
                        .chunks_exact_mut(m * n)
                        .map(|p| Out(p.as_mut_ptr())),
                )
                .collect();
            sums.par_iter().enumerate().for_each(|(i, sum)| {
                let (k0, depth) = (i * d, d.min(k - i * d));
                let lhs = View {
                    data: &lhs.data[k0 * lhs.cs..],
                    cols: depth,
                    ..lhs
                };
                let rhs = View {
                    data: &rhs.data[k0 * rhs.rs..],
                    rows: depth,
                    ..rhs
                };
                let (rs, read) = if i == 0 { (out_rs, read) } else { (n, false) };
                // SAFETY: part 0 writes dst, the others their own partial.
                unsafe { product(*sum, rs, read, lhs, rhs, serial) }
            });
            for p in partials.chunks_exact(m * n) {
                for (r, row) in p.chunks_exact(n).enumerate() {
                    // SAFETY: row r of dst lies inside it (checked by `matmul`),
                    // and no part writes it any more.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out.add(r * out_rs).0, n) };
                    dst.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                }
            }
        })
    }
}

/// `out` (row stride `out_rs`) ← (`read` ? out : 0) + lhs · rhs on the gemm crate.
///
/// # Safety
/// `out` is valid for [lhs.rows, rhs.cols] at row stride `out_rs` and
/// overlaps neither view; the views are valid for their sizes.
unsafe fn product(
    out: Out,
    out_rs: usize,
    read: bool,
    lhs: View,
    rhs: View,
    par: gemm::Parallelism,
) {
    unsafe {
        gemm::gemm(
            lhs.rows,
            rhs.cols,
            lhs.cols,
            out.0,
            1,
            out_rs as isize,
            read,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// `m` [rows, cols] (row-major) transposed into a new row-major [cols, rows].
/// Our kernels copy weights out this way once per call: as a row-major
/// right-hand side gemm ran 1.5–1.75× faster than on a transposed view.
/// The new buffer is not zeroed first: every float is written once (zeroing
/// `shapes_mm`'s 2048 × 64 dense weight, packed every training step, was a
/// quarter of the main thread's `memset`).
pub fn transposed(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert!(
        m.len() >= rows * cols,
        "transpose: a matrix shorter than {rows} × {cols}"
    );
    let mut t = Vec::with_capacity(rows * cols);
    // SAFETY: `t` has room for rows · cols floats, and `transpose_to`
    // writes each of them (through the pointer, never reading) before the
    // length covers them.
    unsafe {
        transpose_to(m, rows, cols, t.as_mut_ptr());
        t.set_len(rows * cols);
    }
    t
}

/// [`transposed`] into `t` (at least `rows · cols` long).
pub fn transpose_into(m: &[f32], rows: usize, cols: usize, t: &mut [f32]) {
    assert!(
        m.len() >= rows * cols && t.len() >= rows * cols,
        "transpose: buffers shorter than {rows} × {cols}"
    );
    // SAFETY: `t` holds rows · cols floats (checked above).
    unsafe { transpose_to(m, rows, cols, t.as_mut_ptr()) }
}

/// `t[c · rows + r] = m[r · cols + c]` for every r, c, each written once.
///
/// # Safety
/// `m` holds rows · cols floats; `t` is valid for writing as many.
unsafe fn transpose_to(m: &[f32], rows: usize, cols: usize, t: *mut f32) {
    // Whole 16 × 16 blocks in AVX-512 registers, the edges as below: the
    // tiled scalar loop took 112 µs for `shapes_mm`'s 64 × 2048 dense
    // weight, which the planned training step packs every step.
    let (r16, c16) = if super::par::avx512() {
        (rows / 16 * 16, cols / 16 * 16)
    } else {
        (0, 0)
    };
    #[cfg(target_arch = "x86_64")]
    for r0 in (0..r16).step_by(16) {
        for c0 in (0..c16).step_by(16) {
            // SAFETY: AVX-512 is there (checked above); the block's rows
            // r0..r0 + 16 and columns c0..c0 + 16 lie inside both buffers
            // (the caller's promise).
            unsafe {
                block_16(
                    m[r0 * cols + c0..].as_ptr(),
                    cols,
                    t.add(c0 * rows + r0),
                    rows,
                )
            };
        }
    }
    // In 32 × 32 tiles: a plain loop writes with a stride of `rows` floats
    // and measured 9% of a `reviews` inference step.
    const TILE: usize = 32;
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                let row = &m[r * cols..(r + 1) * cols];
                let from = if r < r16 { c0.max(c16) } else { c0 };
                let end = (c0 + TILE).min(cols);
                for (c, v) in row.iter().enumerate().take(end).skip(from) {
                    // SAFETY: c · rows + r < rows · cols (the caller's promise).
                    unsafe { t.add(c * rows + r).write(*v) };
                }
            }
        }
    }
}

/// One 16 × 16 block: rows at `src` (stride `src_rs`) to columns at `dst`
/// (stride `dst_rs`), in four rounds of shuffles (32-bit and 64-bit
/// interleaves, then two of 128-bit lanes).
///
/// # Safety
/// AVX-512F; 16 rows of 16 floats readable at `src` and writable at `dst`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_16(src: *const f32, src_rs: usize, dst: *mut f32, dst_rs: usize) {
    use std::arch::x86_64::*;
    let r: [__m512; 16] = std::array::from_fn(|i| unsafe { _mm512_loadu_ps(src.add(i * src_rs)) });
    // a[2i], a[2i+1]: rows 2i and 2i+1 interleaved, columns 4L, 4L+1 and
    // 4L+2, 4L+3 of each 128-bit lane L.
    let a: [__m512; 16] = std::array::from_fn(|k| {
        let (x, y) = (r[k / 2 * 2], r[k / 2 * 2 + 1]);
        if k % 2 == 0 {
            _mm512_unpacklo_ps(x, y)
        } else {
            _mm512_unpackhi_ps(x, y)
        }
    });
    // b[4i + c]: lane L holds column 4L + c of rows 4i..4i + 4.
    let b: [__m512; 16] = std::array::from_fn(|k| {
        let (i, c) = (k / 4, k % 4);
        let x = _mm512_castps_pd(a[4 * i + c / 2]);
        let y = _mm512_castps_pd(a[4 * i + 2 + c / 2]);
        _mm512_castpd_ps(if c % 2 == 0 {
            _mm512_unpacklo_pd(x, y)
        } else {
            _mm512_unpackhi_pd(x, y)
        })
    });
    for c in 0..4 {
        // Lanes 0 and 2 (p), 1 and 3 (q) of rows 0..8 and of rows 8..16.
        let p = _mm512_shuffle_f32x4::<0x88>(b[c], b[4 + c]);
        let q = _mm512_shuffle_f32x4::<0xDD>(b[c], b[4 + c]);
        let p2 = _mm512_shuffle_f32x4::<0x88>(b[8 + c], b[12 + c]);
        let q2 = _mm512_shuffle_f32x4::<0xDD>(b[8 + c], b[12 + c]);
        // Column 4L + c is lane L of each of the four row groups.
        let cols = [
            _mm512_shuffle_f32x4::<0x88>(p, p2),
            _mm512_shuffle_f32x4::<0x88>(q, q2),
            _mm512_shuffle_f32x4::<0xDD>(p, p2),
            _mm512_shuffle_f32x4::<0xDD>(q, q2),
        ];
        for (l, v) in cols.into_iter().enumerate() {
            unsafe { _mm512_storeu_ps(dst.add((4 * l + c) * dst_rs), v) };
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn transposed_moves_every_element() {
        for (rows, cols) in [
            (1, 1),
            (3, 70),
            (65, 33),
            (512, 64),
            (16, 16),
            (48, 40),
            (37, 64),
        ] {
            let m: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let t = super::transposed(&m, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(t[c * rows + r], m[r * cols + c]);
                }
            }
        }
    }

    /// The cuts at the shapes they were made for, and none for small
    /// products or products without a long axis.
    #[test]
    fn products_are_cut_along_their_longest_useful_axis() {
        use super::Cut;
        // shapes_mm's dense layer: forward (long inner size), dx, dW.
        assert_eq!(Cut::of(32, 64, 2048), Some(Cut::Depth(256)));
        assert_eq!(Cut::of(32, 2048, 64), Some(Cut::Cols(256)));
        assert_eq!(Cut::of(64, 2048, 32), Some(Cut::Cols(256)));
        // Its LSTM's input projection and its gradients.
        assert_eq!(Cut::of(512, 128, 32), Some(Cut::Cols(64)));
        assert_eq!(Cut::of(512, 32, 128), Some(Cut::Rows(128)));
        assert_eq!(Cut::of(128, 32, 512), Some(Cut::Rows(32)));
        assert_eq!(Cut::of(64, 64, 64), None);
        assert_eq!(Cut::of(100, 100, 100), None);
    }

    /// Every cut gives the plain sums (f64), with and without adding to
    /// dst, through strided views (a transposed left-hand side) and a
    /// dst row stride wider than its columns; part sizes that do not
    /// divide the axis leave a short last part.
    #[test]
    fn cut_products_equal_the_plain_sums() {
        use super::{matmul, Cut, View};
        for (m, k, n) in [
            (32, 2048, 64),
            (32, 70, 2000),
            (520, 40, 60),
            (40, 1000, 40),
        ] {
            let cut = Cut::of(m, n, k).expect("a cut product");
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1)
                .collect();
            // a stored transposed: element (r, c) at c·m + r.
            let at = super::transposed(&a, m, k);
            let lhs = View {
                data: &at,
                rows: m,
                cols: k,
                rs: 1,
                cs: m,
            };
            let rhs = View {
                data: &b,
                rows: k,
                cols: n,
                rs: n,
                cs: 1,
            };
            let what = format!("{cut:?} of {m}×{k}×{n}");
            super::plain::check(lhs, rhs, (1e-3, &what), |dst, rs, read| {
                matmul(dst, rs, read, lhs, rhs)
            });
        }
    }
}

/// The tests' reference for a product: the plain f64 sums.
#[cfg(test)]
pub(crate) mod plain {
    use super::View;

    /// Runs `product(dst, rs, read)` into a dst of 0.5s whose row stride
    /// is 3 wider than its columns, with and without adding to dst, and
    /// asserts each value is the plain sum of lhs · rhs (+ 0.5 when
    /// read) within `tol`, and the padding columns are untouched.
    pub(crate) fn check(
        lhs: View,
        rhs: View,
        (tol, what): (f64, &str),
        product: impl Fn(&mut [f32], usize, bool),
    ) {
        let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
        let at = |v: &View, r: usize, c: usize| v.data[r * v.rs + c * v.cs] as f64;
        let rs = n + 3;
        for read in [false, true] {
            let mut dst = vec![0.5f32; m * rs];
            product(&mut dst, rs, read);
            for r in 0..m {
                for c in 0..n {
                    let plain: f64 = (0..k).map(|i| at(&lhs, r, i) * at(&rhs, i, c)).sum::<f64>()
                        + if read { 0.5 } else { 0.0 };
                    let got = dst[r * rs + c] as f64;
                    assert!(
                        (got - plain).abs() < tol,
                        "{what}, read {read}: ({r}, {c}) = {got}, want {plain}"
                    );
                }
                assert!(dst[r * rs + n..(r + 1) * rs].iter().all(|v| *v == 0.5));
            }
        }
    }
}
