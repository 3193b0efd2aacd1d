//! Small products whose right-hand side is reused by a few rows: a
//! recurrence's step, h·W_hhᵀ for 16–32 batch rows of 32–128 units. The
//! gemm crate packs both sides on every call, and for these sizes that cost
//! more than the multiply-adds: `shapes_mm`'s LSTM (16 steps of 32 rows ×
//! 32 × 128) took 14 µs a step. Here a block of 4 rows × 64 columns keeps
//! its 16 accumulators in AVX-512 registers while the inner size streams
//! through, reading both sides where they lie.

use super::gemm::{matmul, View};

/// Lanes of one vector.
const L: usize = 16;

/// [`matmul`] (`dst` = (`read` ? dst : 0) + lhs · rhs), by register blocks
/// where AVX-512 is there, both sides' rows are contiguous and the columns
/// come in whole vectors; by [`matmul`] otherwise. Each sum runs over the
/// inner size in order, added to dst's value last.
pub fn matmul_small(dst: &mut [f32], dst_rs: usize, read: bool, lhs: View, rhs: View) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    let fits = |len: usize, rows: usize, cols: usize, rs: usize| {
        rows == 0 || cols == 0 || (rows - 1) * rs + cols <= len
    };
    let blocks = super::par::avx512()
        && n.is_multiple_of(L)
        && lhs.cs == 1
        && rhs.cs == 1
        && k == rhs.rows
        && fits(dst.len(), m, n, dst_rs)
        && fits(lhs.data.len(), m, k, lhs.rs)
        && fits(rhs.data.len(), k, n, rhs.rs);
    if !blocks || m == 0 || n == 0 {
        return matmul(dst, dst_rs, read, lhs, rhs);
    }
    let (a, b, out) = (lhs.data.as_ptr(), rhs.data.as_ptr(), dst.as_mut_ptr());
    let ab = (a, lhs.rs, b, rhs.rs, k);
    for c0 in (0..n).step_by(4 * L) {
        let vectors = ((n - c0) / L).min(4);
        let mut r0 = 0;
        while r0 < m {
            let four = m - r0 >= 4;
            let at = (r0, c0, out, dst_rs, read);
            // SAFETY: AVX-512 is there; the block's rows r0.. and columns
            // c0.. lie inside dst and both sides (checked above).
            #[cfg(target_arch = "x86_64")]
            unsafe {
                match (four, vectors) {
                    (true, 4) => block::<4, 4>(at, ab),
                    (true, 3) => block::<4, 3>(at, ab),
                    (true, 2) => block::<4, 2>(at, ab),
                    (true, _) => block::<4, 1>(at, ab),
                    (false, 4) => block::<1, 4>(at, ab),
                    (false, 3) => block::<1, 3>(at, ab),
                    (false, 2) => block::<1, 2>(at, ab),
                    (false, _) => block::<1, 1>(at, ab),
                }
            }
            r0 += if four { 4 } else { 1 };
        }
    }
}

/// R rows × V vectors of the product at (r0, c0): R·V accumulators; per
/// inner index one load of each of the V right-hand vectors and one
/// broadcast of each row's left-hand value.
///
/// # Safety
/// AVX-512F; rows r0..r0 + R of `a` (stride `a_rs`, `k` values) and of
/// `out` (stride `out_rs`), and columns c0..c0 + V·16 of `b`'s `k` rows
/// (stride `b_rs`) and of `out`, are valid.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block<const R: usize, const V: usize>(
    (r0, c0, out, out_rs, read): (usize, usize, *mut f32, usize, bool),
    (a, a_rs, b, b_rs, k): (*const f32, usize, *const f32, usize, usize),
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    unsafe {
        for j in 0..k {
            let bj = b.add(j * b_rs + c0);
            let bv: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(bj.add(v * L)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.add((r0 + r) * a_rs + j));
                for (s, y) in acc.iter_mut().zip(bv) {
                    *s = _mm512_fmadd_ps(x, y, *s);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let row = out.add((r0 + r) * out_rs + c0);
            for (v, s) in acc.iter().enumerate() {
                let p = row.add(v * L);
                let s = if read {
                    _mm512_add_ps(_mm512_loadu_ps(p), *s)
                } else {
                    *s
                };
                _mm512_storeu_ps(p, s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matmul_small;
    use crate::kernels::gemm::View;

    /// Every block shape (4 and 1 rows; 4, 3, 2 and 1 vectors) and the
    /// fallback (columns not in sixteens) give the plain sums, over
    /// strided rows on both sides and in dst, with and without adding.
    #[test]
    fn small_products_equal_the_plain_sums() {
        for (m, k, n) in [
            (16, 32, 128),
            (7, 128, 32),
            (5, 9, 112),
            (3, 4, 16),
            (6, 5, 20),
        ] {
            let (a_rs, b_rs) = (k + 2, n + 5);
            let a: Vec<f32> = (0..m * a_rs)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
                .collect();
            let b: Vec<f32> = (0..k * b_rs)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1)
                .collect();
            let lhs = View {
                data: &a,
                rows: m,
                cols: k,
                rs: a_rs,
                cs: 1,
            };
            let rhs = View {
                data: &b,
                rows: k,
                cols: n,
                rs: b_rs,
                cs: 1,
            };
            let what = format!("{m}×{k}×{n}");
            crate::kernels::gemm::plain::check(lhs, rhs, (1e-4, &what), |dst, rs, read| {
                matmul_small(dst, rs, read, lhs, rhs)
            });
        }
    }
}
