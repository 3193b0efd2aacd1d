//! CLIP's contrastive objective (Radford et al. 2021, Fig. 3): the symmetric
//! InfoNCE between two batches of vectors, where sample i of `a` matches
//! sample i of `b` and every other sample of the batch is a negative.

use candle_core::{DType, Result, Tensor, D};

/// CLIP's cap on the learned inverse temperature, e^s ≤ 100.
pub const MAX_SCALE: f64 = 100.0;

/// Mean over rows of −log softmax(logits)[i, i].
fn diagonal_nll(logits: &Tensor) -> Result<Tensor> {
    let n = logits.dim(0)?;
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let eye = Tensor::eye(n, DType::F32, logits.device())?;
    (logp * eye)?.sum_all()?.neg()? / n as f64
}

/// ½(CE(s·âb̂ᵀ, I) + CE(s·b̂âᵀ, I)) for `a`, `b` of shape [B, D], with â, b̂
/// L2-normalised rows and `log_scale` the log of s (a scalar tensor, CLIP's
/// `logit_scale`), s clamped at [`MAX_SCALE`].
pub fn contrastive(a: &Tensor, b: &Tensor, log_scale: &Tensor) -> Result<Tensor> {
    let unit = |x: &Tensor| -> Result<Tensor> {
        let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
        x.broadcast_div(&norm)
    };
    let (a, b) = (unit(a)?, unit(b)?);
    let scale = log_scale.exp()?.minimum(MAX_SCALE)?;
    let logits = a.matmul(&b.t()?)?.broadcast_mul(&scale)?;
    (diagonal_nll(&logits)? + diagonal_nll(&logits.t()?)?)? * 0.5
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The same loss in f64 with plain loops: log-sum-exp per row and column.
    fn reference(a: &[Vec<f64>], b: &[Vec<f64>], scale: f64) -> f64 {
        let unit = |v: &Vec<f64>| {
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.iter().map(|x| x / n).collect::<Vec<_>>()
        };
        let (a, b): (Vec<_>, Vec<_>) = (a.iter().map(unit).collect(), b.iter().map(unit).collect());
        let n = a.len();
        let s =
            |i: usize, j: usize| scale * a[i].iter().zip(&b[j]).map(|(x, y)| x * y).sum::<f64>();
        let mut total = 0.0;
        for i in 0..n {
            let rows: f64 = (0..n).map(|j| s(i, j).exp()).sum();
            let cols: f64 = (0..n).map(|j| s(j, i).exp()).sum();
            total += (rows.ln() - s(i, i)) + (cols.ln() - s(i, i));
        }
        total / (2.0 * n as f64)
    }

    fn data() -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
        let a = vec![
            vec![0.3, -1.2, 0.5],
            vec![1.1, 0.4, -0.2],
            vec![-0.7, 0.9, 1.3],
            vec![0.2, 0.1, -0.9],
        ];
        let b = vec![
            vec![0.5, -0.8, 0.1],
            vec![-0.3, 1.0, 0.6],
            vec![-0.2, 0.7, 1.1],
            vec![0.9, 0.2, -0.4],
        ];
        (a, b)
    }

    fn tensor(x: &[Vec<f64>]) -> Tensor {
        let flat: Vec<f32> = x.iter().flatten().map(|v| *v as f32).collect();
        Tensor::from_vec(flat, (x.len(), x[0].len()), &Device::Cpu).unwrap()
    }

    #[test]
    fn matches_an_independent_computation() {
        let (a, b) = data();
        for t in [0.07f64, 0.5, 1.0] {
            let s = Tensor::new((1.0 / t).ln() as f32, &Device::Cpu).unwrap();
            let got = contrastive(&tensor(&a), &tensor(&b), &s).unwrap();
            let got = got.to_scalar::<f32>().unwrap() as f64;
            let want = reference(&a, &b, 1.0 / t);
            assert!(
                (got - want).abs() < 1e-4 * want.max(1.0),
                "t={t}: {got} vs {want}"
            );
        }
        // The cap: a temperature of 0.001 computes as s = 100.
        let s = Tensor::new(1000f32.ln(), &Device::Cpu).unwrap();
        let got = contrastive(&tensor(&a), &tensor(&b), &s).unwrap();
        let want = reference(&a, &b, MAX_SCALE);
        assert!((got.to_scalar::<f32>().unwrap() as f64 - want).abs() < 1e-3 * want);
    }

    /// Autograd against central differences of the f64 reference, for both
    /// inputs and the learned log-scale.
    #[test]
    fn gradients_match_finite_differences() {
        let (a, b) = data();
        let log_s = (1.0f64 / 0.5).ln();
        let va = Var::from_tensor(&tensor(&a)).unwrap();
        let vb = Var::from_tensor(&tensor(&b)).unwrap();
        let vs = Var::new(log_s as f32, &Device::Cpu).unwrap();
        let loss = contrastive(va.as_tensor(), vb.as_tensor(), vs.as_tensor()).unwrap();
        let g = loss.backward().unwrap();
        let h = 1e-5;
        let ga: Vec<Vec<f32>> = g.get(va.as_tensor()).unwrap().to_vec2().unwrap();
        let gb: Vec<Vec<f32>> = g.get(vb.as_tensor()).unwrap().to_vec2().unwrap();
        for (which, grad) in [(0, &ga), (1, &gb)] {
            for i in 0..a.len() {
                for j in 0..a[0].len() {
                    let (mut ap, mut am, mut bp, mut bm) =
                        (a.clone(), a.clone(), b.clone(), b.clone());
                    if which == 0 {
                        ap[i][j] += h;
                        am[i][j] -= h;
                    } else {
                        bp[i][j] += h;
                        bm[i][j] -= h;
                    }
                    let fd = (reference(&ap, &bp, log_s.exp()) - reference(&am, &bm, log_s.exp()))
                        / (2.0 * h);
                    let got = grad[i][j] as f64;
                    assert!(
                        (got - fd).abs() < 1e-3,
                        "d/d{}[{i}][{j}]: {got} vs {fd}",
                        ["a", "b"][which]
                    );
                }
            }
        }
        let gs = g.get(vs.as_tensor()).unwrap().to_scalar::<f32>().unwrap() as f64;
        let fd = (reference(&a, &b, (log_s + h).exp()) - reference(&a, &b, (log_s - h).exp()))
            / (2.0 * h);
        assert!((gs - fd).abs() < 1e-3, "d/ds: {gs} vs {fd}");
    }
}
