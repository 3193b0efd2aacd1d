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
    let par = if m * n * k >= 1 << 24 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every index the kernel touches is inside the slices (checked
    // above); `dst` is borrowed mutably and does not alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            read_dst,
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
pub fn transposed(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; rows * cols];
    transpose_into(m, rows, cols, &mut t);
    t
}

/// [`transposed`] into `t` (at least `rows · cols` long).
pub fn transpose_into(m: &[f32], rows: usize, cols: usize, t: &mut [f32]) {
    assert!(
        m.len() >= rows * cols && t.len() >= rows * cols,
        "transpose: buffers shorter than {rows} × {cols}"
    );
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
            // (checked above).
            unsafe {
                block_16(
                    m[r0 * cols + c0..].as_ptr(),
                    cols,
                    t[c0 * rows + r0..].as_mut_ptr(),
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
                for c in from..(c0 + TILE).min(cols) {
                    t[c * rows + r] = row[c];
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
}
