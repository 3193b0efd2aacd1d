//! Minimisation of a smooth convex function over the probability simplex
//! Δ = {w : w_i ≥ 0, Σ w_i = 1}, for the small problems (k ≤ ~32) of MGDA and
//! CAGrad. Method: FISTA (Beck & Teboulle 2009) with backtracking on the
//! Lipschitz estimate and adaptive momentum restart (O'Donoghue & Candès
//! 2015), using the exact Euclidean projection of Duchi et al. 2008. Callers
//! should normalise their objective to O(1) scale (the methods divide the Gram
//! matrix by its largest diagonal entry); the step test uses gradients only.

/// Stopping tolerance on the ∞-norm of one projected-gradient step.
pub const TOL: f64 = 1e-10;
/// Iteration cap; reached only on very flat, ill-conditioned problems.
pub const MAX_ITER: usize = 20_000;

/// Euclidean projection onto the probability simplex (Duchi et al. 2008, Fig. 1).
pub fn project(v: &[f64]) -> Vec<f64> {
    let mut u = v.to_vec();
    u.sort_by(|a, b| b.total_cmp(a));
    // θ = (Σ_{r≤ρ} u_r − 1)/ρ with ρ the largest j such that u_j > (Σ_{r≤j} u_r − 1)/j;
    // the condition holds on a prefix of j, so the last hit is the answer.
    let (mut cumsum, mut theta) = (0.0, 0.0);
    for (j, &uj) in u.iter().enumerate() {
        cumsum += uj;
        let t = (cumsum - 1.0) / (j + 1) as f64;
        if uj > t {
            theta = t;
        }
    }
    v.iter().map(|&x| (x - theta).max(0.0)).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimises a smooth convex function over the simplex from `x0`, given its gradient.
pub fn minimize(grad: impl Fn(&[f64]) -> Vec<f64>, x0: &[f64]) -> Vec<f64> {
    let mut x = project(x0);
    if x.len() <= 1 {
        return x;
    }
    let mut y = x.clone();
    let mut t = 1.0_f64;
    let mut l = 1.0_f64; // Lipschitz estimate of ∇f, adapted both ways.
    for _ in 0..MAX_ITER {
        let gy = grad(&y);
        if gy.iter().any(|v| !v.is_finite()) {
            break; // Non-finite input: stop rather than spin to MAX_ITER.
        }
        // Try a longer step first: the local curvature may be smaller than
        // the largest one seen so far (CAGrad's sqrt term varies a lot).
        l = (l * 0.5).max(1e-12);
        let x_new = loop {
            let step: Vec<f64> = y.iter().zip(&gy).map(|(yi, gi)| yi - gi / l).collect();
            let cand = project(&step);
            let d: Vec<f64> = cand.iter().zip(&y).map(|(c, yi)| c - yi).collect();
            // Accept when the secant curvature (∇f(y+d) − ∇f(y))·d is at most
            // L·||d||² (exact descent-lemma test for a quadratic). Unlike the
            // test on f values it does not drown in rounding near the optimum.
            let gc = grad(&cand);
            let curv: f64 = gc
                .iter()
                .zip(&gy)
                .zip(&d)
                .map(|((a, b), di)| (a - b) * di)
                .sum();
            if curv <= l * dot(&d, &d) * (1.0 + 1e-12) || l > 1e300 {
                break cand;
            }
            l *= 2.0;
        };
        let moved = x_new
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        // Restart the momentum when it points against the gradient step.
        let restart: f64 = (0..x.len())
            .map(|i| (y[i] - x_new[i]) * (x_new[i] - x[i]))
            .sum();
        if restart > 0.0 {
            t = 1.0;
            y = x_new.clone();
        } else {
            let t_new = 0.5 * (1.0 + (1.0 + 4.0 * t * t).sqrt());
            let beta = (t - 1.0) / t_new;
            y = (0..x.len())
                .map(|i| x_new[i] + beta * (x_new[i] - x[i]))
                .collect();
            t = t_new;
        }
        x = x_new;
        if moved <= TOL {
            break;
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_examples() {
        assert_eq!(project(&[0.2, 0.3, 0.5]), vec![0.2, 0.3, 0.5]);
        assert_eq!(project(&[2.0, 0.0]), vec![1.0, 0.0]);
        // (1, 1, 1)/3 is the projection of any constant vector.
        for p in project(&[5.0, 5.0, 5.0]) {
            assert!((p - 1.0 / 3.0).abs() < 1e-15);
        }
        // v = (0.5, 0.4, −1): θ = (0.9 − 1)/2 = −0.05 → (0.55, 0.45, 0).
        let p = project(&[0.5, 0.4, -1.0]);
        assert!((p[0] - 0.55).abs() < 1e-15 && (p[1] - 0.45).abs() < 1e-15 && p[2] == 0.0);
        assert!(project(&[]).is_empty());
    }

    #[test]
    fn projection_is_closest_point() {
        // Compare with a fine grid search over the 2-simplex.
        let v = [0.9, -0.3, 0.7];
        let p = project(&v);
        let dist = |w: &[f64]| -> f64 { w.iter().zip(&v).map(|(a, b)| (a - b).powi(2)).sum() };
        let n = 400;
        for i in 0..=n {
            for j in 0..=(n - i) {
                let w = [
                    i as f64 / n as f64,
                    j as f64 / n as f64,
                    (n - i - j) as f64 / n as f64,
                ];
                assert!(dist(&p) <= dist(&w) + 1e-12);
            }
        }
    }

    #[test]
    fn minimizes_quadratic_with_interior_and_boundary_solutions() {
        // f(w) = ||w − c||²: the minimiser over Δ is project(c).
        for c in [[0.1, 0.5, 0.4], [1.5, -0.2, 0.3], [-1.0, -1.0, 4.0]] {
            let g = |w: &[f64]| {
                w.iter()
                    .zip(&c)
                    .map(|(a, b)| 2.0 * (a - b))
                    .collect::<Vec<_>>()
            };
            let w = minimize(g, &[1.0 / 3.0; 3]);
            for (a, b) in w.iter().zip(project(&c)) {
                assert!((a - b).abs() < 1e-8, "{w:?} vs {c:?}");
            }
        }
    }

    #[test]
    fn single_coordinate() {
        assert_eq!(minimize(|_| vec![0.0], &[3.0]), vec![1.0]);
    }
}
