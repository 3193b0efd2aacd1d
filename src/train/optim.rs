//! Optimizers (Keras 3 update rules): Adam, AdamW, SGD with momentum and
//! Nesterov; decoupled weight decay; global-norm clipping; LR schedules.

use crate::ir::{OptimizerConfig, OptimizerKind, Schedule};
use candle_core::{backprop::GradStore, Result, Tensor, Var};
use std::collections::HashMap;

/// The gradients of `vars` in a backward pass, aligned with `vars`.
pub fn grads_for(vars: &[(String, Var)], grads: &GradStore) -> Vec<Option<Tensor>> {
    vars.iter()
        .map(|(_, v)| grads.get(v.as_tensor()).cloned())
        .collect()
}

pub struct Optimizer {
    pub cfg: OptimizerConfig,
    pub step: usize,
    /// First and second moments (Adam) or velocity (SGD), by parameter key.
    pub m: HashMap<String, Tensor>,
    pub v: HashMap<String, Tensor>,
}

impl Optimizer {
    pub fn new(cfg: OptimizerConfig) -> Self {
        Optimizer {
            cfg,
            step: 0,
            m: HashMap::new(),
            v: HashMap::new(),
        }
    }

    /// One update of every var that has a gradient (`gs` aligned with
    /// `vars`); returns the global grad norm.
    pub fn apply(
        &mut self,
        vars: &[(String, Var)],
        gs: Vec<Option<Tensor>>,
        lr: f64,
        clip: Option<f64>,
    ) -> Result<f64> {
        let mut sq = 0f64;
        for g in gs.iter().flatten() {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        let norm = sq.sqrt();
        let scale = match clip {
            Some(c) if norm > c => c / norm,
            _ => 1.0,
        };
        self.step += 1;
        let t = self.step as i32;
        let c = self.cfg.clone();
        for ((key, var), g) in vars.iter().zip(gs) {
            let Some(g) = g else { continue };
            let g = if scale != 1.0 { (g * scale)? } else { g };
            let w = var.as_tensor();
            // Decoupled decay for every optimizer, as Keras 3 does when `weight_decay` is set.
            if c.weight_decay > 0.0 {
                var.set(&(w - (w * (c.weight_decay * lr))?)?)?;
            }
            let w = var.as_tensor();
            match c.kind {
                OptimizerKind::Adam | OptimizerKind::AdamW => {
                    let m = self.m.get(key).cloned().unwrap_or(g.zeros_like()?);
                    let v = self.v.get(key).cloned().unwrap_or(g.zeros_like()?);
                    let m = ((m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
                    let v = ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                    let alpha = lr * (1.0 - c.beta2.powi(t)).sqrt() / (1.0 - c.beta1.powi(t));
                    var.set(&(w - ((&m * alpha)? / (v.sqrt()? + c.eps)?)?)?)?;
                    self.m.insert(key.clone(), m);
                    self.v.insert(key.clone(), v);
                }
                OptimizerKind::Sgd => {
                    if c.momentum > 0.0 {
                        let m = self.m.get(key).cloned().unwrap_or(g.zeros_like()?);
                        let m = ((m * c.momentum)? - (&g * lr)?)?;
                        let upd = if c.nesterov {
                            ((&m * c.momentum)? - (&g * lr)?)?
                        } else {
                            m.clone()
                        };
                        var.set(&(w + upd)?)?;
                        self.m.insert(key.clone(), m);
                    } else {
                        var.set(&(w - (&g * lr)?)?)?;
                    }
                }
            }
        }
        Ok(norm)
    }

    /// Optimizer state as tensors, for checkpoints.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (k, t) in &self.m {
            out.insert(format!("m.{k}"), t.clone());
        }
        for (k, t) in &self.v {
            out.insert(format!("v.{k}"), t.clone());
        }
        out
    }

    pub fn restore(&mut self, state: HashMap<String, Tensor>, step: usize) {
        self.step = step;
        for (k, t) in state {
            if let Some(key) = k.strip_prefix("m.") {
                self.m.insert(key.to_string(), t);
            } else if let Some(key) = k.strip_prefix("v.") {
                self.v.insert(key.to_string(), t);
            }
        }
    }
}

/// Learning rate at `epoch` (0-based) of `epochs`.
pub fn lr_at(s: &Schedule, base: f64, epoch: usize, epochs: usize) -> f64 {
    match s {
        Schedule::Constant => base,
        Schedule::Step { every, gamma } => base * gamma.powi((epoch / every.max(&1)) as i32),
        Schedule::Cosine { warmup } => {
            if epoch < *warmup {
                base * (epoch + 1) as f64 / (*warmup as f64)
            } else {
                let span = (epochs.saturating_sub(*warmup)).max(1) as f64;
                let p = (epoch - warmup) as f64 / span;
                base * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        }
    }
}
