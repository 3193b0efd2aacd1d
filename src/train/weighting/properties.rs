//! Randomised checks across methods: k up to 32 tasks, gradient scales from
//! 1e-6 to 1e6, k > d (singular Gram) included. Each method must stay finite
//! and meet its defining optimality condition on explicit vectors.

use super::testutil::*;
use super::*;
use rand::{Rng, SeedableRng};

/// Random gradients with a shared component (so cosines range from conflicting to aligned).
fn random_gradients(rng: &mut impl Rng) -> Vec<Vec<f64>> {
    let k = rng.random_range(2..33usize);
    let d = rng.random_range(1..48usize);
    let scale = 10f64.powf(rng.random_range(-6.0..6.0));
    let corr = rng.random_range(0.0..2.0);
    let shared: Vec<f64> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
    (0..k)
        .map(|_| {
            let v = shared
                .iter()
                .map(|s| rng.random_range(-1.0..1.0) + corr * s);
            v.map(|x| scale * x).collect()
        })
        .collect()
}

#[test]
fn random_problems_meet_optimality_conditions() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for _ in 0..60 {
        let g = random_gradients(&mut rng);
        let (k, d) = (g.len(), g[0].len());
        let gram = Gram::from_vectors(&g);
        let s2 = gram.max_diag();

        // MGDA: d·g_i ≥ ||d||² for the min-norm point d.
        let w = mgda::min_norm(&gram);
        let dv = combine(&w, &g);
        for gi in &g {
            assert!(dot(&dv, gi) >= dot(&dv, &dv) - 1e-8 * s2);
        }

        // CAGrad: KKT of the dual at w recovered from alpha = (1/k + λw)/(1 + c²).
        let c = cagrad::DEFAULT_C;
        let a = cagrad::coefficients(&gram, c);
        assert_finite(&a);
        let g0 = combine(&vec![1.0 / k as f64; k], &g);
        let lw: Vec<f64> = a
            .iter()
            .map(|x| x * (1.0 + c * c) - 1.0 / k as f64)
            .collect();
        let lambda: f64 = lw.iter().sum();
        if lambda > 0.0 {
            let w: Vec<f64> = lw.iter().map(|x| x / lambda).collect();
            let gw = combine(&w, &g);
            let r = (dot(&gw, &gw) + 1e-8).sqrt();
            let grad: Vec<f64> = g
                .iter()
                .map(|gi| dot(gi, &g0) + c * norm(&g0) * dot(gi, &gw) / r)
                .collect();
            let mu: f64 = grad.iter().zip(&w).map(|(x, y)| x * y).sum();
            for (gr, wi) in grad.iter().zip(&w) {
                assert!(*gr >= mu - 1e-8 * s2);
                assert!(*wi < 1e-6 || (gr - mu).abs() < 1e-6 * s2);
            }
        }

        // Nash-MTL and IMTL need linearly independent gradients for their conditions.
        let a = nash_mtl::solve(&gram, None);
        assert!(a.iter().all(|x| x.is_finite() && *x > 0.0));
        let b = imtl::coefficients(&gram);
        assert_finite(&b);
        if k <= d {
            let dn = combine(&a, &g);
            for (gi, ai) in g.iter().zip(&a) {
                assert!((ai * dot(gi, &dn) - 1.0).abs() < 1e-5);
            }
            let di = combine(&b, &g);
            let p0 = dot(&di, &g[0]) / norm(&g[0]);
            for gi in &g {
                assert!((dot(&di, gi) / norm(gi) - p0).abs() < 1e-8 * p0.abs());
            }
        }
        assert_finite(&aligned_mtl::coefficients(&gram));
    }
}
