//! Aligned-MTL: Senushkin et al. 2023 (CVPR), "Independent Component
//! Alignment for Multi-Task Learning", as LibMTL's `Aligned_MTL`. The gradient
//! matrix G = [g_1 … g_k] is replaced by the aligned Ĝ = G B whose columns are
//! orthogonal with equal norms σ_min (the smallest singular value of G), so
//! the linear system of gradients has condition number 1 (Sec. 4, Alg. 1).
//! With M = GᵀG = V Λ Vᵀ, B = sqrt(λ_min) V Λ^{-1/2} Vᵀ over the kept rank,
//! and the update Ĝ·w with task weights w = 1 is Σ_i (B·1)_i g_i.

use super::gram::Gram;
use nalgebra::DMatrix;

/// Row-major k×k alignment matrix B = sqrt(λ_min) V_r Λ_r^{-1/2} V_rᵀ (None if M = 0).
///
/// Eigenvalues ≤ max(λ)·k·f32::EPSILON are dropped, as LibMTL does with the
/// default (float32) dtype's eps; gradients are f32, so smaller ones are noise.
pub fn transform(gram: &Gram) -> Option<Vec<f64>> {
    let k = gram.k;
    if k == 0 {
        return None;
    }
    let eig = DMatrix::from_row_slice(k, k, &gram.m).symmetric_eigen();
    let max = eig.eigenvalues.iter().copied().fold(0.0, f64::max);
    if max <= 0.0 || !max.is_finite() {
        return None;
    }
    let tol = max * k as f64 * f32::EPSILON as f64;
    let kept: Vec<usize> = (0..k).filter(|&i| eig.eigenvalues[i] > tol).collect();
    let lambda_min = kept
        .iter()
        .map(|&i| eig.eigenvalues[i])
        .fold(f64::INFINITY, f64::min);
    let mut b = vec![0.0; k * k];
    for &r in &kept {
        let scale = (lambda_min / eig.eigenvalues[r]).sqrt();
        let v = eig.eigenvectors.column(r);
        for i in 0..k {
            for j in 0..k {
                b[i * k + j] += scale * v[i] * v[j];
            }
        }
    }
    Some(b)
}

/// Coefficients alpha = B·1 (task weights w = ones); all-zero gradients give ones.
///
/// Ones is the natural limit: for orthogonal equal-norm gradients B = I. The
/// shared update is zero either way, and ones leaves any use of alpha as loss
/// weights neutral.
pub fn coefficients(gram: &Gram) -> Vec<f64> {
    let k = gram.k;
    match transform(gram) {
        Some(b) => (0..k).map(|i| b[i * k..(i + 1) * k].iter().sum()).collect(),
        None => vec![1.0; k],
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    /// Ĝ = G B on explicit vectors: column j is Σ_i B_ij g_i.
    fn aligned(g: &[Vec<f64>], b: &[f64]) -> Vec<Vec<f64>> {
        let k = g.len();
        (0..k)
            .map(|j| combine(&(0..k).map(|i| b[i * k + j]).collect::<Vec<_>>(), g))
            .collect()
    }

    /// Smallest eigenvalue of a symmetric 2×2 or 3×3 matrix in closed form
    /// (3×3: Smith 1961, trigonometric solution), independent of nalgebra.
    fn smallest_eigenvalue(m: &Gram) -> f64 {
        let a = |i, j| m.at(i, j);
        if m.k == 2 {
            let (h, d) = (0.5 * (a(0, 0) + a(1, 1)), 0.5 * (a(0, 0) - a(1, 1)));
            return h - (d * d + a(0, 1) * a(0, 1)).sqrt();
        }
        let q = (a(0, 0) + a(1, 1) + a(2, 2)) / 3.0;
        let p1 = a(0, 1).powi(2) + a(0, 2).powi(2) + a(1, 2).powi(2);
        let p2 = (a(0, 0) - q).powi(2) + (a(1, 1) - q).powi(2) + (a(2, 2) - q).powi(2) + 2.0 * p1;
        let p = (p2 / 6.0).sqrt();
        let b = |i, j| (a(i, j) - if i == j { q } else { 0.0 }) / p;
        let det = b(0, 0) * (b(1, 1) * b(2, 2) - b(1, 2) * b(2, 1))
            - b(0, 1) * (b(1, 0) * b(2, 2) - b(1, 2) * b(2, 0))
            + b(0, 2) * (b(1, 0) * b(2, 1) - b(1, 1) * b(2, 0));
        let phi = (0.5 * det).clamp(-1.0, 1.0).acos() / 3.0;
        q + 2.0 * p * (phi + 2.0 * std::f64::consts::PI / 3.0).cos()
    }

    #[test]
    fn aligned_columns_are_orthogonal_with_norm_sigma_min() {
        let cases = vec![
            conflicting3(),
            agreeing3(),
            vec![vec![1.0, 0.0, 0.5], vec![-0.7, 1.0, 0.2]],
            vec![vec![3.0, 1.0], vec![1.0, 2.0]],
        ];
        for g in cases {
            let gram = Gram::from_vectors(&g);
            let b = transform(&gram).unwrap();
            let gh = aligned(&g, &b);
            let s2 = smallest_eigenvalue(&gram);
            for i in 0..g.len() {
                for j in 0..g.len() {
                    let want = if i == j { s2 } else { 0.0 };
                    assert!((dot(&gh[i], &gh[j]) - want).abs() < 1e-9, "{i} {j}");
                }
            }
            // alpha = B·1, and the update is the sum of the aligned columns.
            let alpha = coefficients(&gram);
            let k = g.len();
            let row_sums: Vec<f64> = (0..k).map(|i| (0..k).map(|j| b[i * k + j]).sum()).collect();
            assert_close(&alpha, &row_sums, 1e-15);
            let sum_cols = gh
                .iter()
                .fold(vec![0.0; g[0].len()], |acc, c| axpy(&acc, 1.0, c));
            assert_close(&combine(&alpha, &g), &sum_cols, 1e-12);
        }
    }

    #[test]
    fn hand_computed_orthogonal_case() {
        // g1 = (3,0), g2 = (0,1): M = diag(9, 1), σ_min = 1, B = diag(1/3, 1),
        // so both aligned columns are unit vectors: alpha = (1/3, 1).
        let g = vec![vec![3.0, 0.0], vec![0.0, 1.0]];
        assert_close(
            &coefficients(&Gram::from_vectors(&g)),
            &[1.0 / 3.0, 1.0],
            1e-12,
        );
    }

    #[test]
    fn rank_deficient_keeps_only_the_range() {
        // g3 = g1 + g2 in 2-D: rank 2; Ĝᵀ Ĝ = λ_min·P with P the projector on the kept space.
        let g = vec![vec![1.0, 0.0], vec![-0.5, 1.0], vec![0.5, 1.0]];
        let gram = Gram::from_vectors(&g);
        let b = transform(&gram).unwrap();
        let gh = aligned(&g, &b);
        let k = 3;
        // B is symmetric and B M B = λ_min P, so (Ĝᵀ Ĝ)² = λ_min (Ĝᵀ Ĝ).
        let gtg: Vec<f64> = (0..9).map(|n| dot(&gh[n / 3], &gh[n % 3])).collect();
        let lam = (0..k).map(|i| gtg[i * k + i]).sum::<f64>() / 2.0; // trace = rank·λ_min
        for i in 0..k {
            for j in 0..k {
                let sq: f64 = (0..k).map(|l| gtg[i * k + l] * gtg[l * k + j]).sum();
                assert!((sq - lam * gtg[i * k + j]).abs() < 1e-9);
            }
        }
        assert!(lam > 0.1);
        assert_finite(&coefficients(&gram));
    }

    #[test]
    fn degenerate_inputs() {
        let zero = Gram::from_vectors(&vec![vec![0.0; 3]; 3]);
        assert_eq!(coefficients(&zero), vec![1.0; 3]);
        assert!(transform(&zero).is_none());
        // Identical gradients: rank 1, B = v vᵀ with v = (1,1)/√2 → alpha = (1, 1).
        let same = coefficients(&Gram::from_vectors(&vec![vec![1.0, 2.0]; 2]));
        assert_close(&same, &[1.0, 1.0], 1e-12);
        // One task: B = [1].
        assert_close(
            &coefficients(&Gram::from_vectors(&[vec![3.0, 4.0]])),
            &[1.0],
            1e-12,
        );
        assert!(coefficients(&Gram::new(0, vec![])).is_empty());
    }
}
