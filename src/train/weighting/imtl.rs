//! IMTL-G: Liu et al. 2021 (ICLR), "Towards Impartial Multi-task Learning",
//! Sec. 3.2 and Alg. 1 (gradient balance), as in LibMTL's `IMTL` (gradient
//! part only; IMTL-L's loss scaling is separate). The combined gradient
//! g = Σ alpha_i g_i is chosen with Σ alpha_i = 1 such that its projections
//! onto every unit gradient u_i = g_i/||g_i|| are equal (Eq. 5–7), giving
//! alpha_{2..k} = g_1 Uᵀ (D Uᵀ)⁻¹ with D = [g_1 − g_j]_j, U = [u_1 − u_j]_j.

use super::gram::Gram;
use nalgebra::{DMatrix, DVector};

/// Coefficients alpha (Σ alpha_i = 1) equalising g·u_i over all tasks.
///
/// Every product comes from the Gram matrix: u_i·g_j = M_ij/||g_i||. A
/// singular D Uᵀ (e.g. identical gradients) is handled with an SVD
/// pseudo-inverse (singular values below 1e-12·max treated as zero). A zero
/// gradient gets u_i = 0 instead of LibMTL's NaN; all-zero gradients give the
/// uniform weights 1/k.
pub fn coefficients(gram: &Gram) -> Vec<f64> {
    let k = gram.k;
    let s = gram.max_diag();
    if k <= 1 || s <= 0.0 || !s.is_finite() {
        return vec![1.0 / k as f64; k];
    }
    // 1/||g_i||, with gradients negligible against the largest treated as zero.
    let inv_n: Vec<f64> = (0..k)
        .map(|i| {
            let d = gram.at(i, i);
            if d > 1e-24 * s {
                1.0 / d.sqrt()
            } else {
                0.0
            }
        })
        .collect();
    let n = k - 1;
    // r_b = g_1·(u_1 − u_{b+1}),  A_ab = (g_1 − g_{a+1})·(u_1 − u_{b+1}) = (D Uᵀ)_ab.
    let g_dot_u = |i: usize, j: usize| gram.at(i, j) * inv_n[j]; // g_i·u_j
    let r = DVector::from_fn(n, |b, _| g_dot_u(0, 0) - g_dot_u(0, b + 1));
    let a = DMatrix::from_fn(n, n, |a, b| {
        g_dot_u(0, 0) - g_dot_u(0, b + 1) - g_dot_u(a + 1, 0) + g_dot_u(a + 1, b + 1)
    });
    // alpha_rest (a row vector) = r A⁻¹  ⇔  Aᵀ alpha_restᵀ = rᵀ.
    let svd = a.transpose().svd(true, true);
    let max_sv = svd.singular_values.max();
    let rest = if max_sv > 0.0 {
        svd.solve(&r, 1e-12 * max_sv)
            .unwrap_or_else(|_| DVector::zeros(n))
    } else {
        DVector::zeros(n)
    };
    let mut alpha = Vec::with_capacity(k);
    alpha.push(1.0 - rest.sum());
    alpha.extend(rest.iter());
    alpha
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    /// Checks Σ alpha = 1 and equal projections g·u_i on explicit vectors.
    fn check_impartial(g: &[Vec<f64>]) {
        let alpha = coefficients(&Gram::from_vectors(g));
        assert!((alpha.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let d = combine(&alpha, g);
        let proj: Vec<f64> = g.iter().map(|gi| dot(&d, gi) / norm(gi)).collect();
        for p in &proj {
            assert!((p - proj[0]).abs() < 1e-10, "{proj:?}");
        }
        assert!(proj[0] > 0.0);
    }

    #[test]
    fn hand_computed_two_tasks() {
        // g1 = (1,0), g2 = (0,2): u1 = (1,0), u2 = (0,1); D = g1−g2 = (1,−2),
        // U = u1−u2 = (1,−1); D·U = 3, g1·U = 1 → alpha2 = 1/3, alpha1 = 2/3,
        // g = (2/3, 2/3) with g·u1 = g·u2 = 2/3.
        let g = vec![vec![1.0, 0.0], vec![0.0, 2.0]];
        let alpha = coefficients(&Gram::from_vectors(&g));
        assert_close(&alpha, &[2.0 / 3.0, 1.0 / 3.0], 1e-15);
        // Conflicting g1 = (2,0), g2 = (−1,1): D = (3,−1), U = (1+1/√2, −1/√2),
        // D·U = 3 + 2√2, g1·U = 2 + √2 → alpha2 = 2 − √2, alpha1 = √2 − 1.
        let g = vec![vec![2.0, 0.0], vec![-1.0, 1.0]];
        let r2 = 2f64.sqrt();
        assert_close(
            &coefficients(&Gram::from_vectors(&g)),
            &[r2 - 1.0, 2.0 - r2],
            1e-14,
        );
    }

    #[test]
    fn equal_projections_on_all_tasks() {
        check_impartial(&conflicting3());
        check_impartial(&agreeing3());
        check_impartial(&[vec![1.0, 0.0, 0.5], vec![-0.7, 1.0, 0.2]]);
    }

    #[test]
    fn degenerate_inputs() {
        for k in 1..4 {
            let zero = Gram::from_vectors(&vec![vec![0.0; 3]; k]);
            assert_close(&coefficients(&zero), &vec![1.0 / k as f64; k], 0.0);
        }
        // Identical gradients: D Uᵀ = 0, the pseudo-inverse gives alpha = (1, 0).
        let same = coefficients(&Gram::from_vectors(&vec![vec![1.0, 2.0]; 2]));
        assert_close(&same, &[1.0, 0.0], 0.0);
        // Parallel with different norms, 3 tasks (rank-deficient D Uᵀ): finite, sums to 1.
        let par = vec![vec![1.0, 1.0], vec![2.0, 2.0], vec![0.5, -1.0]];
        let a = coefficients(&Gram::from_vectors(&par));
        assert_finite(&a);
        assert!((a.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // One zero gradient among others.
        let a = coefficients(&Gram::from_vectors(&[vec![0.0, 0.0], vec![1.0, 3.0]]));
        assert_finite(&a);
        assert_eq!(
            coefficients(&Gram::from_vectors(&[vec![5.0, 1.0]])),
            vec![1.0]
        );
    }
}
