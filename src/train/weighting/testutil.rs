//! Plain vector arithmetic shared by the tests: the references are computed
//! on explicit gradient vectors, never through `Gram`.

/// Dot product.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Euclidean norm.
pub fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// Σ alpha_i g_i.
pub fn combine(alpha: &[f64], g: &[Vec<f64>]) -> Vec<f64> {
    let mut out = vec![0.0; g[0].len()];
    for (a, gi) in alpha.iter().zip(g) {
        for (o, x) in out.iter_mut().zip(gi) {
            *o += a * x;
        }
    }
    out
}

/// a + s·b.
pub fn axpy(a: &[f64], s: f64, b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + s * y).collect()
}

/// Asserts |a_i − b_i| ≤ tol for every i.
pub fn assert_close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol, "{a:?} vs {b:?} (tol {tol})");
    }
}

/// Asserts every entry is finite.
pub fn assert_finite(a: &[f64]) {
    assert!(a.iter().all(|x| x.is_finite()), "non-finite: {a:?}");
}

/// Conflicting gradients (some pairwise cosines negative), 3 tasks in 4-D.
pub fn conflicting3() -> Vec<Vec<f64>> {
    vec![
        vec![1.0, 0.5, -0.2, 0.3],
        vec![-0.8, 0.9, 0.1, -0.4],
        vec![0.3, -1.2, 0.6, 0.2],
    ]
}

/// Non-conflicting gradients (all pairwise cosines positive), 3 tasks in 4-D.
pub fn agreeing3() -> Vec<Vec<f64>> {
    vec![
        vec![1.0, 0.2, 0.1, 0.0],
        vec![0.6, 0.9, 0.0, 0.3],
        vec![0.4, 0.1, 2.0, 0.5],
    ]
}
