//! Random Loss Weighting: Lin et al. 2022 (TMLR), "Reasonable Effectiveness of
//! Random Weighting: A Litmus Test for Multi-Task Learning", as LibMTL's
//! `RLW`: every step the loss weights are softmax(λ) with λ ~ N(0, I)
//! (the paper's default normal-softmax sampling distribution, Sec. 3).

/// One standard normal sample by the Box–Muller transform.
fn standard_normal(rng: &mut impl rand::Rng) -> f64 {
    // u1 ∈ (0, 1] keeps the log finite.
    let u1 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Fresh random weights softmax(λ), λ ~ N(0, I_k): positive, summing to 1.
pub fn weights(k: usize, rng: &mut impl rand::Rng) -> Vec<f64> {
    let lambda: Vec<f64> = (0..k).map(|_| standard_normal(rng)).collect();
    let max = lambda.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = lambda.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|x| x / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn weights_are_a_distribution() {
        let mut rng = StdRng::seed_from_u64(0);
        for k in 1..8 {
            let w = weights(k, &mut rng);
            assert_eq!(w.len(), k);
            assert!(w.iter().all(|&x| x > 0.0 && x.is_finite()));
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        assert_eq!(weights(1, &mut rng), vec![1.0]);
        assert!(weights(0, &mut rng).is_empty());
    }

    #[test]
    fn deterministic_for_a_seed() {
        let a = weights(4, &mut StdRng::seed_from_u64(42));
        let b = weights(4, &mut StdRng::seed_from_u64(42));
        assert_eq!(a, b);
        assert_ne!(a, weights(4, &mut StdRng::seed_from_u64(43)));
    }

    #[test]
    fn box_muller_is_standard_normal() {
        let mut rng = StdRng::seed_from_u64(7);
        let n = 200_000;
        let x: Vec<f64> = (0..n).map(|_| standard_normal(&mut rng)).collect();
        let mean = x.iter().sum::<f64>() / n as f64;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        let within1 = x.iter().filter(|v| v.abs() < 1.0).count() as f64 / n as f64;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.02, "{var}");
        assert!((within1 - 0.6827).abs() < 0.01, "{within1}");
    }
}
