//! FAMO: Liu et al. 2023 (NeurIPS), "FAMO: Fast Adaptive Multitask
//! Optimization", following the authors' `FAMO` class (min_losses = 0). The
//! model minimises Σ z_i log(L_i)/c with z = softmax(ξ) (Sec. 3), which
//! balances the tasks' log-loss decrease rates at O(1) cost per step; after
//! the step, ξ moves along the measured decrease of the log losses with Adam
//! and weight decay γ (the paper's regulariser on ξ; Alg. 1).

/// Added to every loss before the log, as the authors' code does.
pub const EPS: f64 = 1e-8;
/// The authors' defaults: logit learning rate β and weight decay γ.
pub const DEFAULT_LR: f64 = 0.025;
/// See [`DEFAULT_LR`].
pub const DEFAULT_GAMMA: f64 = 0.01;
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

/// FAMO's state: the task logits ξ and their torch-style Adam moments.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Famo {
    /// Task logits ξ (z = softmax(ξ)).
    pub logits: Vec<f64>,
    /// Adam first moment.
    pub adam_m: Vec<f64>,
    /// Adam second moment.
    pub adam_v: Vec<f64>,
    /// Adam step count.
    pub adam_t: u64,
    /// Logit learning rate β.
    pub lr: f64,
    /// Weight decay γ (L2, added to the gradient as torch.optim.Adam does).
    pub gamma: f64,
    /// losses of the step whose coefficients were handed out last, per task (None = task absent)
    pub pending: Option<Vec<Option<f64>>>,
}

/// Softmax of `logits` restricted to the tasks with `on[i]`; 0 elsewhere.
fn masked_softmax(logits: &[f64], on: &[bool]) -> Vec<f64> {
    let max = (0..logits.len())
        .filter(|&i| on[i])
        .map(|i| logits[i])
        .fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = (0..logits.len())
        .map(|i| if on[i] { (logits[i] - max).exp() } else { 0.0 })
        .collect();
    let sum: f64 = e.iter().sum();
    e.iter()
        .map(|x| if sum > 0.0 { x / sum } else { 0.0 })
        .collect()
}

/// log(L + 1e-8), with negative losses clamped to 0 (FAMO assumes L ≥ min_loss = 0).
fn log_loss(l: f64) -> f64 {
    (l.max(0.0) + EPS).ln()
}

impl Famo {
    /// Fresh state: zero logits (uniform z) and zero Adam moments.
    pub fn new(k: usize, lr: f64, gamma: f64) -> Famo {
        Famo {
            logits: vec![0.0; k],
            adam_m: vec![0.0; k],
            adam_v: vec![0.0; k],
            adam_t: 0,
            lr,
            gamma,
            pending: None,
        }
    }

    /// Coefficients on each task's loss gradient for this step. `losses[i] = None` means task i has no label in the batch: its coefficient is 0 and the others are computed over the present tasks only (softmax restricted to them). Remembers the losses in `pending`.
    ///
    /// ∇ Σ z_i log(D_i)/c = Σ z_i/(c D_i) ∇L_i with D_i = L_i + 1e-8 and
    /// c = Σ z_i/D_i treated as a constant (detached in the authors' code), so
    /// the coefficients are z_i/(c D_i) and sum to 1.
    pub fn coefficients(&mut self, losses: &[Option<f64>]) -> Vec<f64> {
        assert_eq!(losses.len(), self.logits.len(), "famo: one loss per task");
        let on: Vec<bool> = losses.iter().map(Option::is_some).collect();
        let z = masked_softmax(&self.logits, &on);
        let inv_d: Vec<f64> = losses
            .iter()
            .map(|l| l.map_or(0.0, |l| 1.0 / (l.max(0.0) + EPS)))
            .collect();
        let c: f64 = z.iter().zip(&inv_d).map(|(z, d)| z * d).sum();
        self.pending = Some(losses.to_vec());
        z.iter()
            .zip(&inv_d)
            .map(|(z, d)| if c > 0.0 { z * d / c } else { 0.0 })
            .collect()
    }

    /// Updates the logits with the losses measured after the step (`new_losses`, same convention); only tasks present in both contribute to δ (δ_i = 0 otherwise). Clears `pending`.
    ///
    /// δ_i = log(L_i + 1e-8) − log(L'_i + 1e-8); the logit gradient is
    /// d = J_softmax(ξ)ᵀ δ = z ⊙ (δ − zᵀδ), with the softmax restricted to the
    /// tasks present in both steps (the full softmax when all are present), so
    /// an absent task's logit only feels the weight decay. Then one torch Adam
    /// step on ξ with gradient d + γ ξ. Without `pending` this does nothing.
    pub fn update(&mut self, new_losses: &[Option<f64>]) {
        let Some(prev) = self.pending.take() else {
            return;
        };
        let k = self.logits.len();
        assert_eq!(new_losses.len(), k, "famo: one loss per task");
        let both: Vec<bool> = (0..k)
            .map(|i| prev[i].is_some() && new_losses[i].is_some())
            .collect();
        let delta: Vec<f64> = (0..k)
            .map(|i| match (prev[i], new_losses[i]) {
                (Some(a), Some(b)) => log_loss(a) - log_loss(b),
                _ => 0.0,
            })
            .collect();
        let z = masked_softmax(&self.logits, &both);
        let zd: f64 = z.iter().zip(&delta).map(|(z, d)| z * d).sum();
        // torch.optim.Adam (L2 weight decay, bias-corrected moments).
        self.adam_t += 1;
        let t = self.adam_t as f64;
        let (bc1, bc2) = (1.0 - BETA1.powf(t), 1.0 - BETA2.powf(t));
        for i in 0..k {
            let g = z[i] * (delta[i] - zd) + self.gamma * self.logits[i];
            self.adam_m[i] = BETA1 * self.adam_m[i] + (1.0 - BETA1) * g;
            self.adam_v[i] = BETA2 * self.adam_v[i] + (1.0 - BETA2) * g * g;
            let denom = (self.adam_v[i] / bc2).sqrt() + ADAM_EPS;
            self.logits[i] -= self.lr * (self.adam_m[i] / bc1) / denom;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn hand_computed_coefficients() {
        // z = softmax(0,0) = (½,½); L = (1, 4): c = ½/1 + ½/4 = 0.625,
        // coefficients (½/0.625, (½/4)/0.625) = (0.8, 0.2).
        let mut f = Famo::new(2, DEFAULT_LR, DEFAULT_GAMMA);
        let a = f.coefficients(&[Some(1.0), Some(4.0)]);
        assert_close(&a, &[0.8, 0.2], 1e-8);
        assert_eq!(f.pending, Some(vec![Some(1.0), Some(4.0)]));
        // Non-uniform logits ξ = (ln 3, 0): z = (¾, ¼); L = (2, 0.5):
        // z/D = (3/8, 1/2), c = 7/8 → (3/7, 4/7).
        f.logits = vec![3f64.ln(), 0.0];
        let a = f.coefficients(&[Some(2.0), Some(0.5)]);
        assert_close(&a, &[3.0 / 7.0, 4.0 / 7.0], 1e-8);
    }

    /// One torch Adam step written out with the textbook bias-corrected formulas.
    fn adam_ref(x: f64, g: f64, m: f64, v: f64, t: i32, lr: f64, wd: f64) -> (f64, f64, f64) {
        let g = g + wd * x;
        let m = 0.9 * m + 0.1 * g;
        let v = 0.999 * v + 0.001 * g * g;
        let m_hat = m / (1.0 - 0.9f64.powi(t));
        let v_hat = v / (1.0 - 0.999f64.powi(t));
        (x - lr * m_hat / (v_hat.sqrt() + 1e-8), m, v)
    }

    #[test]
    fn update_matches_reference_adam() {
        let mut f = Famo::new(2, DEFAULT_LR, DEFAULT_GAMMA);
        let mut x = [0.0f64, 0.0];
        let (mut m, mut v) = ([0.0; 2], [0.0; 2]);
        let steps = [((1.0, 4.0), (0.5, 4.0)), ((0.5, 4.0), (0.45, 3.0))];
        for (t, ((l1, l2), (n1, n2))) in steps.into_iter().enumerate() {
            f.coefficients(&[Some(l1), Some(l2)]);
            f.update(&[Some(n1), Some(n2)]);
            assert!(f.pending.is_none());
            // Reference: z = softmax(x), δ = Δ log losses, d = (diag z − z zᵀ) δ.
            let e = [x[0].exp(), x[1].exp()];
            let z = [e[0] / (e[0] + e[1]), e[1] / (e[0] + e[1])];
            let delta = [
                (l1 + 1e-8f64).ln() - (n1 + 1e-8f64).ln(),
                (l2 + 1e-8f64).ln() - (n2 + 1e-8f64).ln(),
            ];
            let d = [
                z[0] * delta[0] - z[0] * (z[0] * delta[0] + z[1] * delta[1]),
                z[1] * delta[1] - z[1] * (z[0] * delta[0] + z[1] * delta[1]),
            ];
            for i in 0..2 {
                (x[i], m[i], v[i]) = adam_ref(x[i], d[i], m[i], v[i], t as i32 + 1, 0.025, 0.01);
            }
            assert_close(&f.logits, &x, 1e-15);
        }
        // Step 1: d = (ln2/4, −ln2/4), so Adam moves ξ by ∓lr: task 1, which
        // improved, loses weight.
        assert!(x[0] < x[1]);
        assert_eq!(f.adam_t, 2);
    }

    #[test]
    fn missing_tasks() {
        let mut f = Famo::new(3, DEFAULT_LR, DEFAULT_GAMMA);
        let a = f.coefficients(&[Some(1.0), None, Some(4.0)]);
        assert_close(&a, &[0.8, 0.0, 0.2], 1e-8);
        // Task 1 absent before, task 2 after: only task 0 is in both, and a
        // softmax over one task has zero Jacobian, so every logit only feels
        // the weight decay (ξ = 0 → no move).
        f.update(&[Some(0.5), Some(1.0), None]);
        assert_finite(&f.logits);
        assert_eq!(f.logits, vec![0.0; 3]);
        // All absent: zero coefficients, no NaN.
        let a = f.coefficients(&[None, None, None]);
        assert_eq!(a, vec![0.0; 3]);
        f.update(&[None, None, None]);
        assert_finite(&f.logits);
        // A single present task gets coefficient 1; zero losses stay finite.
        assert_close(
            &f.coefficients(&[None, Some(0.0), None]),
            &[0.0, 1.0, 0.0],
            1e-12,
        );
        f.update(&[None, Some(0.0), None]);
        assert_finite(&f.logits);
        // Update without pending coefficients is a no-op.
        let before = f.clone();
        f.update(&[Some(1.0), Some(1.0), Some(1.0)]);
        assert_eq!(f, before);
    }

    #[test]
    fn single_task() {
        let mut f = Famo::new(1, DEFAULT_LR, DEFAULT_GAMMA);
        assert_close(&f.coefficients(&[Some(3.0)]), &[1.0], 1e-12);
        f.update(&[Some(2.0)]);
        assert_finite(&f.logits);
    }
}
