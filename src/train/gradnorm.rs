//! GradNorm (Chen et al. 2018): task weights learned so that each task's
//! gradient norm at the last layer shared by all heads tracks its relative
//! training rate. Costs one backward pass per head per step.

use super::optim::grads_for;
use crate::distributed::{all_reduce_grads, Collective};
use crate::lower::Program;
use candle_core::{Result, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The asymmetry α of the paper (1.5 in its experiments).
const ALPHA: f64 = 1.5;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GradNorm {
    /// Current task weights; they sum to the number of heads.
    pub weights: Vec<f64>,
    /// Each head's loss at the first step, L_i(0).
    pub initial: Option<Vec<f64>>,
    /// Parameter keys of the last layer shared by every head.
    pub shared: Vec<String>,
}

/// Trainable parameter keys of the last step (in program order) that every head depends on.
pub fn last_shared_layer(prog: &Program, trainable: &[String]) -> Option<Vec<String>> {
    let mut common: Option<BTreeSet<usize>> = None;
    for (_, slot) in &prog.heads {
        let seen = prog.ancestors(&[*slot]);
        common = Some(match common {
            None => seen,
            Some(c) => c.intersection(&seen).copied().collect(),
        });
    }
    let common = common?;
    // Step indices are in program order: the last one every head reaches.
    common.iter().rev().find_map(|&i| {
        let prefix = format!("{}.", prog.steps[i].params.as_ref()?);
        let keys: Vec<String> = trainable
            .iter()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        (!keys.is_empty()).then_some(keys)
    })
}

impl GradNorm {
    pub fn new(heads: usize, shared: Vec<String>) -> Self {
        GradNorm {
            weights: vec![1.0; heads],
            initial: None,
            shared,
        }
    }

    /// Gradients of Σ wᵢ·Lᵢ + aux for `vars`, then one update of the weights
    /// (learning rate `lr`), renormalized to sum to the number of heads.
    ///
    /// `values`: the losses' values (over every rank's rows); with `comm`,
    /// each backward's gradients are summed over ranks before their norms.
    pub fn step(
        &mut self,
        losses: &[Tensor],
        values: &[f64],
        aux: Option<&Tensor>,
        vars: &[(String, Var)],
        (lr, comm): (f64, Option<&dyn Collective>),
    ) -> Result<Vec<Option<Tensor>>> {
        let k = losses.len();
        let mut combined: Vec<Option<Tensor>> = match aux {
            Some(a) => all_reduce_grads(comm, grads_for(vars, &a.backward()?))?,
            None => vec![None; vars.len()],
        };
        let mut norms = vec![0f64; k];
        for (i, l) in losses.iter().enumerate() {
            let g = all_reduce_grads(comm, grads_for(vars, &l.backward()?))?;
            let mut sq = 0f64;
            for ((key, _), gi) in vars.iter().zip(&g) {
                if let (true, Some(t)) = (self.shared.contains(key), gi) {
                    sq += t.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
                }
            }
            norms[i] = sq.sqrt();
            for (c, gi) in combined.iter_mut().zip(g) {
                if let Some(gi) = gi {
                    let w = (gi * self.weights[i])?;
                    *c = Some(match c.take() {
                        Some(prev) => (prev + w)?,
                        None => w,
                    });
                }
            }
        }
        let initial = self
            .initial
            .get_or_insert_with(|| values.iter().map(|v| v.max(1e-8)).collect())
            .clone();
        let g: Vec<f64> = norms
            .iter()
            .zip(&self.weights)
            .map(|(n, w)| n * w)
            .collect();
        let g_mean = g.iter().sum::<f64>() / k as f64;
        let rates: Vec<f64> = values.iter().zip(&initial).map(|(l, l0)| l / l0).collect();
        let rate_mean = (rates.iter().sum::<f64>() / k as f64).max(1e-12);
        for i in 0..k {
            let target = g_mean * (rates[i] / rate_mean).powf(ALPHA);
            // d|Gᵢ − target|/dwᵢ with the target held constant.
            let grad = (g[i] - target).signum() * norms[i];
            self.weights[i] = (self.weights[i] - lr * grad).max(1e-3);
        }
        let sum: f64 = self.weights.iter().sum();
        for w in &mut self.weights {
            *w *= k as f64 / sum;
        }
        Ok(combined)
    }
}
