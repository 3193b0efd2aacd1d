//! MGDA-UB's weights: Sener & Koltun 2018, "Multi-Task Learning as
//! Multi-Objective Optimization". The common descent direction is the
//! min-norm point of the convex hull of the task gradients (Sec. 3.1, the
//! problem their Alg. 2 solves by Frank–Wolfe): w = argmin_{w ∈ Δ} wᵀ M w.
//! (The paper applies it to gradients w.r.t. the shared representation; the
//! caller decides which gradients the Gram matrix holds.)

use super::gram::Gram;
use super::simplex;

/// Min-norm weights w on the simplex; the caller uses alpha = w.
///
/// Degenerate inputs (all-zero or identical gradients, where every w is
/// optimal) give the uniform weights.
pub fn min_norm(gram: &Gram) -> Vec<f64> {
    let k = gram.k;
    let uniform = vec![1.0 / k as f64; k];
    let s = gram.max_diag();
    if k <= 1 || s <= 0.0 || !s.is_finite() {
        return uniform;
    }
    // The argmin is scale-invariant; normalising keeps the solver at O(1).
    let m = gram.scaled(1.0 / s);
    if k == 2 {
        // Closed form (Sener & Koltun, Alg. 1, the two-task line search): minimise ||γ g1 + (1−γ) g2||²,
        // γ = (g2 − g1)·g2 / ||g1 − g2||², clamped to [0, 1].
        let (a, b, c) = (m.at(0, 0), m.at(0, 1), m.at(1, 1));
        let denom = a + c - 2.0 * b;
        if denom <= 1e-12 * (a + c) {
            return uniform; // g1 ≈ g2: every γ gives the same point.
        }
        let gamma = ((c - b) / denom).clamp(0.0, 1.0);
        return vec![gamma, 1.0 - gamma];
    }
    // ∇ wᵀM'w = 2M'w.
    simplex::minimize(
        |w| m.mul(w).into_iter().map(|x| 2.0 * x).collect(),
        &uniform,
    )
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    /// Minimum of ||Σ w_i g_i|| over a 2-D grid on the 3-simplex, then local refinement.
    fn grid_min_norm3(g: &[Vec<f64>]) -> Vec<f64> {
        let f = |a: f64, b: f64| norm(&combine(&[a, b, 1.0 - a - b], g));
        let (mut best, mut bf) = ((1.0 / 3.0, 1.0 / 3.0), f64::INFINITY);
        let n = 500;
        for i in 0..=n {
            for j in 0..=(n - i) {
                let (a, b) = (i as f64 / n as f64, j as f64 / n as f64);
                if f(a, b) < bf {
                    (best, bf) = ((a, b), f(a, b));
                }
            }
        }
        let mut h = 1.0 / n as f64;
        for _ in 0..8 {
            let c = best;
            for i in -20..=20 {
                for j in -20..=20 {
                    let a = (c.0 + i as f64 * h / 10.0).clamp(0.0, 1.0);
                    let b = (c.1 + j as f64 * h / 10.0).clamp(0.0, 1.0 - a);
                    if f(a, b) < bf {
                        (best, bf) = ((a, b), f(a, b));
                    }
                }
            }
            h /= 10.0;
        }
        combine(&[best.0, best.1, 1.0 - best.0 - best.1], g)
    }

    #[test]
    fn two_tasks_by_hand() {
        // g1 = (1,0), g2 = (−1,1): γ = (g2−g1)·g2/||g1−g2||² = (2+1)/(4+1) = 0.6,
        // d = 0.6·(1,0) + 0.4·(−1,1) = (0.2, 0.4).
        let g = vec![vec![1.0, 0.0], vec![-1.0, 1.0]];
        let w = min_norm(&Gram::from_vectors(&g));
        assert_close(&w, &[0.6, 0.4], 1e-15);
        assert_close(&combine(&w, &g), &[0.2, 0.4], 1e-15);
        // Non-conflicting, g1 = (1,0), g2 = (1,2): (g2−g1)·g2 = 4 ≥ ||g1−g2||² = 4,
        // so γ = 1 and d = g1 (g1 is already in the cone's min-norm position).
        let g = vec![vec![1.0, 0.0], vec![1.0, 2.0]];
        assert_close(&min_norm(&Gram::from_vectors(&g)), &[1.0, 0.0], 1e-15);
        // Orthogonal (3,0), (0,4): γ = 16/25.
        let g = vec![vec![3.0, 0.0], vec![0.0, 4.0]];
        assert_close(&min_norm(&Gram::from_vectors(&g)), &[0.64, 0.36], 1e-15);
    }

    #[test]
    fn three_tasks_match_grid_and_kkt() {
        for g in [conflicting3(), agreeing3()] {
            let w = min_norm(&Gram::from_vectors(&g));
            assert!(w.iter().all(|&x| x >= 0.0));
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            let d = combine(&w, &g);
            assert_close(&d, &grid_min_norm3(&g), 1e-5);
            // KKT: the min-norm point satisfies d·g_i ≥ ||d||² for every i,
            // with equality on the support of w.
            let dd = dot(&d, &d);
            for (gi, wi) in g.iter().zip(&w) {
                assert!(dot(&d, gi) >= dd - 1e-9, "{} < {}", dot(&d, gi), dd);
                if *wi > 1e-6 {
                    assert!((dot(&d, gi) - dd).abs() < 1e-7);
                }
            }
        }
    }

    #[test]
    fn origin_in_hull_gives_zero_norm() {
        // g3 = −(g1 + g2): (1,1,1)/3 reaches the origin.
        let g = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![-1.0, -1.0]];
        let w = min_norm(&Gram::from_vectors(&g));
        assert!(norm(&combine(&w, &g)) < 1e-6);
        assert_close(&w, &[1.0 / 3.0; 3], 1e-5);
    }

    #[test]
    fn degenerate_inputs() {
        for k in 1..5 {
            let zero = Gram::from_vectors(&vec![vec![0.0; 3]; k]);
            assert_close(&min_norm(&zero), &vec![1.0 / k as f64; k], 0.0);
        }
        let same = Gram::from_vectors(&vec![vec![1.0, -2.0]; 2]);
        assert_close(&min_norm(&same), &[0.5, 0.5], 0.0);
        let same3 = Gram::from_vectors(&vec![vec![1.0, -2.0]; 3]);
        assert_finite(&min_norm(&same3));
        assert_eq!(min_norm(&Gram::from_vectors(&[vec![2.0, 1.0]])), vec![1.0]);
    }
}
