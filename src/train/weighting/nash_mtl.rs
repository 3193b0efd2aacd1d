//! Nash-MTL: Navon et al. 2022 (ICML), "Multi-Task Learning as a Bargaining
//! Game". The Nash bargaining solution's weights alpha ∈ R^k_+ satisfy
//! Gᵀ G alpha = 1/alpha elementwise (Eq. 5, Thm. 5.1), i.e.
//! alpha_i (M alpha)_i = 1. The authors' code reaches this condition through
//! a sequence of convex (cvxpy) problems; here we use that it is the
//! stationary point of the strictly convex f(a) = ½ aᵀ M a − Σ log a_i and
//! minimise f with damped Newton (f is self-concordant, so Newton converges
//! globally and quadratically near the solution).
//!
//! Note: the official implementation divides M by its Frobenius norm before
//! solving (and never scales back), so its alpha equals this one times
//! sqrt(||M||_F); it also clips the gradient norm (max_norm = 1). Callers that
//! want the official scale can pass `gram.scaled(1/||M||_F)`.

use super::gram::Gram;
use nalgebra::{DMatrix, DVector};

/// Ridge added to the unit-diagonal (normalised) M: guarantees a solution for singular M.
pub const RIDGE: f64 = 1e-8;
/// Newton stops when max_i |alpha_i (M alpha)_i − 1| falls below this.
pub const TOL: f64 = 1e-12;
const MAX_ITER: usize = 200;

/// The positive solution of M alpha = 1/alpha, warm-started from `init` (a previous solution).
///
/// The condition is invariant under rescaling each task (g_i → s_i g_i gives
/// alpha_i → alpha_i/s_i), so it is solved for the unit-diagonal
/// M' = D M D, D = diag(1/||g_i||), plus a ridge of 1e-8·I (a ~1e-8 relative
/// change for every task, whatever its gradient norm), and alpha = D alpha'.
/// A task with a zero gradient has no finite solution (alpha_i → ∞); it is
/// left out of the solve and given 1/sqrt(mean_j ||g_j||²) over the other
/// tasks, the weight of an orthogonal task of average norm. All-zero
/// gradients give ones.
pub fn solve(gram: &Gram, init: Option<&[f64]>) -> Vec<f64> {
    let k = gram.k;
    let s = gram.max_diag();
    if k == 0 || s <= 0.0 || !s.is_finite() {
        return vec![1.0; k];
    }
    let live: Vec<usize> = (0..k).filter(|&i| gram.at(i, i) > 1e-24 * s).collect();
    let norms: Vec<f64> = live.iter().map(|&i| gram.at(i, i).sqrt()).collect();
    let n = live.len();
    let sub = gram.subset(&live);
    let m = DMatrix::from_fn(n, n, |i, j| {
        sub.at(i, j) / (norms[i] * norms[j]) + if i == j { RIDGE } else { 0.0 }
    });
    // alpha' = alpha·||g|| (exactly 1 for orthogonal gradients, the cold start).
    let mut a = match init {
        Some(v) if v.len() == k && live.iter().all(|&i| v[i] > 0.0 && v[i].is_finite()) => {
            DVector::from_fn(n, |i, _| v[live[i]] * norms[i])
        }
        _ => DVector::from_element(n, 1.0),
    };
    newton(&m, &mut a);
    let fill = 1.0 / (norms.iter().map(|x| x * x).sum::<f64>() / n as f64).sqrt();
    let mut alpha = vec![fill; k];
    for (i, &t) in live.iter().enumerate() {
        alpha[t] = a[i] / norms[i];
    }
    alpha
}

/// Damped Newton on f(a) = ½ aᵀ M a − Σ log a_i, keeping a > 0.
fn newton(m: &DMatrix<f64>, a: &mut DVector<f64>) {
    let k = a.len();
    let f = |a: &DVector<f64>| 0.5 * a.dot(&(m * a)) - a.iter().map(|x| x.ln()).sum::<f64>();
    for _ in 0..MAX_ITER {
        let ma = m * &*a;
        if (0..k)
            .map(|i| (a[i] * ma[i] - 1.0).abs())
            .fold(0.0, f64::max)
            <= TOL
        {
            break;
        }
        let grad = DVector::from_fn(k, |i, _| ma[i] - 1.0 / a[i]);
        let mut hess = m.clone();
        for i in 0..k {
            hess[(i, i)] += 1.0 / (a[i] * a[i]);
        }
        // The Hessian is positive definite (M ⪰ 0 plus a positive diagonal).
        let dir = match hess.cholesky() {
            Some(ch) => -ch.solve(&grad),
            None => DVector::from_fn(k, |i, _| -grad[i] * a[i] * a[i]),
        };
        let decrement_sq = -grad.dot(&dir);
        if decrement_sq.is_nan() || decrement_sq <= 0.0 {
            break;
        }
        // Stay inside a > 0: at most 99% of the way to the boundary.
        let mut t = (0..k)
            .filter(|&i| dir[i] < 0.0)
            .map(|i| -0.99 * a[i] / dir[i])
            .fold(1.0, f64::min);
        // Damped phase (Boyd & Vandenberghe §9.6): Armijo backtracking. Once
        // the Newton decrement is below 1/4, the full step provably decreases a
        // self-concordant f; skipping the test there avoids rounding noise.
        if decrement_sq >= 0.0625 {
            let fa = f(a);
            while t > 1e-12 && f(&(&*a + &dir * t)) > fa - 0.25 * t * decrement_sq {
                t *= 0.5;
            }
        }
        *a += &dir * t;
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    /// alpha_i (Gᵀ G alpha)_i computed on explicit vectors.
    fn products(g: &[Vec<f64>], alpha: &[f64]) -> Vec<f64> {
        let d = combine(alpha, g);
        g.iter().zip(alpha).map(|(gi, a)| a * dot(gi, &d)).collect()
    }

    #[test]
    fn orthogonal_by_hand() {
        // M = diag(9, 0.25): alpha_i² M_ii = 1 → alpha = (1/3, 2).
        let g = vec![vec![3.0, 0.0], vec![0.0, 0.5]];
        assert_close(
            &solve(&Gram::from_vectors(&g), None),
            &[1.0 / 3.0, 2.0],
            1e-7,
        );
    }

    #[test]
    fn satisfies_bargaining_condition() {
        let cases = vec![
            conflicting3(),
            agreeing3(),
            vec![vec![1.0, 0.0, 0.5], vec![-0.7, 1.0, 0.2]],
            vec![vec![100.0, 1.0], vec![0.01, 0.02]], // very different scales
        ];
        for g in cases {
            let alpha = solve(&Gram::from_vectors(&g), None);
            assert!(alpha.iter().all(|&a| a > 0.0));
            assert_close(&products(&g, &alpha), &vec![1.0; g.len()], 1e-6);
        }
    }

    #[test]
    fn warm_start_converges_to_same_point() {
        let g = conflicting3();
        let gram = Gram::from_vectors(&g);
        let cold = solve(&gram, Some(&[1e-3, 50.0, 2.0]));
        let warm = solve(&gram, Some(&cold));
        assert_close(&warm, &solve(&gram, None), 1e-9);
        assert_close(&cold, &warm, 1e-9);
        // An invalid warm start is ignored.
        assert_close(&solve(&gram, Some(&[-1.0, 0.0, 1.0])), &warm, 1e-9);
    }

    #[test]
    fn degenerate_inputs() {
        let zero = Gram::from_vectors(&vec![vec![0.0; 3]; 3]);
        assert_eq!(solve(&zero, None), vec![1.0; 3]);
        // Identical gradients (singular M): the ridge keeps it finite and
        // symmetric; with M = ones·||g||², alpha_i = 1/(||g||√k).
        let same = solve(&Gram::from_vectors(&vec![vec![1.0, 2.0]; 2]), None);
        assert_close(&same, &[1.0 / 10f64.sqrt(); 2], 1e-6);
        // One zero gradient: left out; the other task gets 1/||g||, the zero
        // one 1/sqrt(mean of the other squared norms) (here the same).
        let a = solve(&Gram::from_vectors(&[vec![0.0, 0.0], vec![1.0, 3.0]]), None);
        assert_close(&a, &[1.0 / 10f64.sqrt(); 2], 1e-7);
        // One task: alpha = 1/||g||.
        assert_close(
            &solve(&Gram::from_vectors(&[vec![3.0, 4.0]]), None),
            &[0.2],
            1e-7,
        );
    }
}
