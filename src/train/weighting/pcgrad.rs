//! PCGrad: Yu et al. 2020, "Gradient Surgery for Multi-Task Learning",
//! Algorithm 1, as implemented by LibMTL's `PCGrad`: every task gradient is
//! projected onto the normal plane of each gradient it conflicts with (in a
//! random order), and the projected gradients are summed.

use super::gram::Gram;
use rand::seq::SliceRandom;

/// Added to ||g_j||² in the projection, as LibMTL does (keeps zero gradients finite).
pub const EPS: f64 = 1e-8;

/// Coefficients alpha with Σ_i g_i^PC = Σ_j alpha_j g_j.
///
/// `order[i]` is the sequence of tasks that task i is projected against (a
/// permutation of 0..k including i itself, as in LibMTL; projecting against
/// itself is a no-op unless earlier projections turned g_i^PC against g_i).
pub fn coefficients(gram: &Gram, order: &[Vec<usize>]) -> Vec<f64> {
    let k = gram.k;
    assert_eq!(order.len(), k, "pcgrad: one order per task");
    let mut alpha = vec![0.0; k];
    for (i, ord) in order.iter().enumerate() {
        // g_i^PC = Σ_j c_j g_j, so g_i^PC·g_j = (M c)_j.
        let mut c = vec![0.0; k];
        c[i] = 1.0;
        for &j in ord {
            let d: f64 = (0..k).map(|l| c[l] * gram.at(l, j)).sum();
            if d < 0.0 {
                // Alg. 1 line 6: g_i^PC ← g_i^PC − (g_i^PC·g_j)/||g_j||² g_j.
                c[j] -= d / (gram.at(j, j) + EPS);
            }
        }
        for (a, ci) in alpha.iter_mut().zip(c) {
            *a += ci;
        }
    }
    alpha
}

/// One independent random permutation of 0..k per task (LibMTL shuffles per task).
pub fn random_order(k: usize, rng: &mut impl rand::Rng) -> Vec<Vec<usize>> {
    (0..k)
        .map(|_| {
            let mut p: Vec<usize> = (0..k).collect();
            p.shuffle(rng);
            p
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use rand::SeedableRng;

    /// Alg. 1 on explicit vectors.
    fn reference(g: &[Vec<f64>], order: &[Vec<usize>]) -> Vec<f64> {
        let mut total = vec![0.0; g[0].len()];
        for (i, ord) in order.iter().enumerate() {
            let mut pc = g[i].clone();
            for &j in ord {
                let d = dot(&pc, &g[j]);
                if d < 0.0 {
                    pc = axpy(&pc, -d / (dot(&g[j], &g[j]) + 1e-8), &g[j]);
                }
            }
            total = axpy(&total, 1.0, &pc);
        }
        total
    }

    #[test]
    fn hand_worked_2d() {
        // g1 = (1,0), g2 = (−1,1): g1·g2 = −1, ||g1||² = 1, ||g2||² = 2.
        // g1^PC = g1 − (−1/2) g2 = (0.5, 0.5);  g2^PC = g2 − (−1/1) g1 = (0, 1).
        // Sum = (0.5, 1.5) = 2·g1 + 1.5·g2, so alpha = (2, 1.5) (up to the 1e-8 eps).
        let g = vec![vec![1.0, 0.0], vec![-1.0, 1.0]];
        let order = vec![vec![0, 1], vec![1, 0]];
        let alpha = coefficients(&Gram::from_vectors(&g), &order);
        assert_close(&alpha, &[2.0, 1.5], 1e-8);
        assert_close(&combine(&alpha, &g), &[0.5, 1.5], 1e-8);
    }

    #[test]
    fn matches_vector_reference_for_random_orders() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for g in [conflicting3(), agreeing3()] {
            let gram = Gram::from_vectors(&g);
            for _ in 0..20 {
                let order = random_order(3, &mut rng);
                let alpha = coefficients(&gram, &order);
                assert_close(&combine(&alpha, &g), &reference(&g, &order), 1e-12);
            }
        }
    }

    #[test]
    fn no_conflict_means_plain_sum() {
        let g = agreeing3();
        let order = vec![vec![0, 1, 2], vec![2, 1, 0], vec![1, 0, 2]];
        assert_eq!(coefficients(&Gram::from_vectors(&g), &order), vec![1.0; 3]);
    }

    #[test]
    fn random_order_is_permutation_per_task() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let order = random_order(5, &mut rng);
        assert_eq!(order.len(), 5);
        for p in order {
            let mut s = p.clone();
            s.sort();
            assert_eq!(s, vec![0, 1, 2, 3, 4]);
        }
    }

    #[test]
    fn degenerate_inputs() {
        let zero = Gram::from_vectors(&[vec![0.0; 3], vec![0.0; 3]]);
        let a = coefficients(&zero, &[vec![0, 1], vec![1, 0]]);
        assert_finite(&a);
        // A zero gradient never conflicts; the other task is untouched.
        let g = vec![vec![0.0, 0.0], vec![-1.0, 2.0]];
        let a = coefficients(&Gram::from_vectors(&g), &[vec![1, 0], vec![0, 1]]);
        assert_eq!(a, vec![1.0, 1.0]);
        // One task present.
        let one = Gram::from_vectors(&[vec![3.0, -4.0]]);
        assert_eq!(coefficients(&one, &[vec![0]]), vec![1.0]);
    }
}
