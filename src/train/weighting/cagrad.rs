//! CAGrad: Liu et al. 2021, "Conflict-Averse Gradient Descent for Multi-task
//! Learning" (NeurIPS), following the authors' `cagrad(grads, alpha, rescale=1)`.
//! The update maximises the worst-case local improvement min_i g_i·d within a
//! ball of radius c·||g0|| around the average gradient g0 (Sec. 3.1); its
//! Lagrangian dual is the simplex problem below, and the primal update is
//! recovered as g0 + (c||g0|| / ||g_w||) g_w (Alg. 1), divided by 1 + c²
//! (rescale = 1).

use super::gram::Gram;
use super::simplex;

/// The paper's and official code's default conflict radius c (their `alpha`).
pub const DEFAULT_C: f64 = 0.4;

/// Coefficients alpha with update Σ alpha_i g_i = (g0 + λ g_w)/(1 + c²).
///
/// c_eff = c·||g0|| with ||g0||² = mean of all Gram entries; w = argmin over
/// the simplex of wᵀMb + c_eff·sqrt(wᵀMw + 1e-8), b = (1/k, …); λ =
/// c_eff/(||g_w|| + 1e-8). The official code also adds 1e-8 inside ||g0|| and
/// to c_eff; they are dropped here so the weights are invariant to the overall
/// gradient scale. If the gradients cancel (||g0|| = 0), λ = 0 and the
/// result is the mean weights 1/(k(1 + c²)), never NaN.
pub fn coefficients(gram: &Gram, c: f64) -> Vec<f64> {
    let k = gram.k;
    if k == 0 {
        return vec![];
    }
    let kf = k as f64;
    let rescale = 1.0 + c * c;
    let mean = vec![1.0 / kf; k];
    let s = gram.max_diag();
    // ||g0||² = bᵀMb; clamp the rounding error of cancelling gradients.
    let g0_sq = (gram.m.iter().sum::<f64>() / (kf * kf)).max(0.0);
    let c_eff = c * g0_sq.sqrt();
    if s <= 0.0 || c_eff <= 0.0 || !c_eff.is_finite() {
        return mean.iter().map(|b| b / rescale).collect();
    }
    // Solve the same problem divided by s (argmin unchanged): M' = M/s,
    // c' = c_eff/√s, and the 1e-8 under the sqrt becomes 1e-8/s.
    let m = gram.scaled(1.0 / s);
    let (c_s, eps_s) = (c_eff / s.sqrt(), 1e-8 / s);
    // ∇ [wᵀM'b + c'·sqrt(wᵀM'w + ε')] = M'b + c'·M'w / sqrt(wᵀM'w + ε').
    let mb = m.mul(&mean);
    let grad = |w: &[f64]| {
        let mw = m.mul(w);
        let r = (w.iter().zip(&mw).map(|(a, b)| a * b).sum::<f64>().max(0.0) + eps_s).sqrt();
        mb.iter().zip(&mw).map(|(a, b)| a + c_s * b / r).collect()
    };
    let w = simplex::minimize(grad, &mean);
    let gw_norm = gram.quad(&w, &w).max(0.0).sqrt();
    let lambda = c_eff / (gw_norm + 1e-8);
    (0..k)
        .map(|i| (mean[i] + lambda * w[i]) / rescale)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    /// The dual objective on explicit vectors.
    fn objective(w: &[f64], g: &[Vec<f64>], c_eff: f64) -> f64 {
        let g0 = combine(&vec![1.0 / g.len() as f64; g.len()], g);
        let gw = combine(w, g);
        dot(&gw, &g0) + c_eff * (dot(&gw, &gw) + 1e-8).sqrt()
    }

    /// Brute-force argmin of the objective: grid over the simplex, then
    /// repeated 10× finer local grids around the best point.
    fn grid_argmin(g: &[Vec<f64>], c_eff: f64) -> Vec<f64> {
        let k = g.len();
        let point = |a: f64, b: f64| {
            if k == 2 {
                vec![a, 1.0 - a]
            } else {
                vec![a, b, 1.0 - a - b]
            }
        };
        let f = |a: f64, b: f64| objective(&point(a, b), g, c_eff);
        let n: usize = if k == 2 { 100_000 } else { 600 };
        let (mut best, mut bf) = ((0.0, 0.0), f64::INFINITY);
        for i in 0..=n {
            for j in 0..=if k == 2 { 0 } else { n - i } {
                let (a, b) = (i as f64 / n as f64, j as f64 / n as f64);
                if f(a, b) < bf {
                    (best, bf) = ((a, b), f(a, b));
                }
            }
        }
        let mut h = 1.0 / n as f64;
        for _ in 0..6 {
            let c = best;
            let r: i32 = if k == 2 { 0 } else { 20 };
            for i in -20..=20 {
                for j in -r..=r {
                    let a = (c.0 + i as f64 * h / 10.0).clamp(0.0, 1.0);
                    let b = (c.1 + j as f64 * h / 10.0).clamp(0.0, 1.0 - a);
                    if f(a, b) < bf {
                        (best, bf) = ((a, b), f(a, b));
                    }
                }
            }
            h /= 10.0;
        }
        point(best.0, best.1)
    }

    /// The official update computed on vectors from the brute-force w.
    fn reference_update(g: &[Vec<f64>], c: f64) -> Vec<f64> {
        let k = g.len();
        let g0 = combine(&vec![1.0 / k as f64; k], g);
        let c_eff = c * norm(&g0);
        let w = grid_argmin(g, c_eff);
        let gw = combine(&w, g);
        let lambda = c_eff / (norm(&gw) + 1e-8);
        axpy(&g0, lambda, &gw)
            .iter()
            .map(|x| x / (1.0 + c * c))
            .collect()
    }

    #[test]
    fn two_tasks_match_brute_force() {
        let cases = [
            vec![vec![1.0, 0.0, 0.5], vec![-0.7, 1.0, 0.2]], // conflicting
            vec![vec![1.0, 0.3, 0.0], vec![0.5, 1.0, 0.2]],  // agreeing
            vec![vec![2.0, 0.0, 0.0], vec![-0.1, 0.1, 0.0]], // very different norms
        ];
        for g in cases {
            for c in [DEFAULT_C, 0.9] {
                let alpha = coefficients(&Gram::from_vectors(&g), c);
                assert_close(&combine(&alpha, &g), &reference_update(&g, c), 1e-4);
            }
        }
    }

    #[test]
    fn three_tasks_match_brute_force() {
        for g in [conflicting3(), agreeing3()] {
            let alpha = coefficients(&Gram::from_vectors(&g), DEFAULT_C);
            assert_close(&combine(&alpha, &g), &reference_update(&g, DEFAULT_C), 1e-4);
        }
    }

    #[test]
    fn update_stays_in_ball_and_improves_worst_task() {
        // Primal view (Eq. 2): d lies within c·||g0|| of g0 (before the
        // 1/(1+c²) rescale) and the worst-task improvement min_i g_i·d beats g0's.
        let g = conflicting3();
        let c = DEFAULT_C;
        let alpha = coefficients(&Gram::from_vectors(&g), c);
        let d: Vec<f64> = combine(&alpha, &g)
            .iter()
            .map(|x| x * (1.0 + c * c))
            .collect();
        let g0 = combine(&[1.0 / 3.0; 3], &g);
        assert!(norm(&axpy(&d, -1.0, &g0)) <= c * norm(&g0) + 1e-9);
        let worst = |v: &[f64]| g.iter().map(|gi| dot(gi, v)).fold(f64::INFINITY, f64::min);
        assert!(worst(&d) > worst(&g0));
    }

    #[test]
    fn degenerate_inputs() {
        let r = 1.0 / (1.0 + DEFAULT_C * DEFAULT_C);
        let zero = Gram::from_vectors(&vec![vec![0.0; 4]; 3]);
        assert_close(&coefficients(&zero, DEFAULT_C), &[r / 3.0; 3], 1e-15);
        // Gradients that cancel exactly: g0 = 0.
        let cancel = Gram::from_vectors(&[vec![1.0, 2.0], vec![-1.0, -2.0]]);
        assert_close(&coefficients(&cancel, DEFAULT_C), &[r / 2.0; 2], 1e-15);
        // One task: w = 1, λ = c||g||/(||g|| + 1e-8) ≈ c, alpha = (1 + c)/(1 + c²).
        let one = coefficients(&Gram::from_vectors(&[vec![3.0, 4.0]]), DEFAULT_C);
        assert_close(&one, &[(1.0 + DEFAULT_C) * r], 1e-8);
        assert!(coefficients(&Gram::new(0, vec![]), DEFAULT_C).is_empty());
    }
}
