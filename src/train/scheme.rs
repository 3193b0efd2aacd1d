//! The loss weighting in force: turns one forward pass's head losses into
//! parameter gradients and records the coefficients each head got.
//!
//! Loss-based schemes (fixed, DWA, uncertainty, FAMO, RLW) weight the losses
//! and take one backward. GradNorm and the gradient methods take one backward
//! per head; the gradient methods work on a forward cut at the shared
//! boundary ([`super::combine`]). A head's `weight` scales its loss first.

use super::combine::{self, MethodState};
use super::config::Weighting;
use super::gradnorm::{last_shared_layer, GradNorm};
use super::optim::grads_for;
use super::weighting::{famo::Famo, rlw};
use crate::distributed::{all_reduce_grads, Part};
use crate::lower::{Cut, Forward, Program, Sharing};
use candle_core::{DType, Device, Result, Tensor, Var};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

/// What a scheme keeps across steps, saved in `state.json` for `--resume`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SchemeState {
    #[serde(default)]
    pub gradnorm: Option<GradNorm>,
    #[serde(default)]
    pub famo: Option<Famo>,
    #[serde(default)]
    pub method: MethodState,
}

/// One step's losses as a scheme takes them.
#[derive(Clone, Copy)]
pub struct StepLosses<'a> {
    pub heads: &'a [Tensor],
    /// Their values, read once by the training loop.
    pub values: &'a [f64],
    /// Whether each head has a label in the batch.
    pub present: &'a [bool],
    /// The auxiliary losses' weighted sum, and its value.
    pub aux: Option<&'a Tensor>,
    pub aux_value: f64,
}

pub struct Scheme {
    pub method: Weighting,
    /// The heads' `weight`s from the model file.
    file_weights: Vec<f64>,
    /// Fixed or DWA weights of the current epoch.
    epoch_weights: Vec<f64>,
    /// Uncertainty weighting's learned log-variances (optimized with the model).
    pub log_vars: Vec<(String, Var)>,
    pub state: SchemeState,
    sharing: Sharing,
    /// Per trainable var: two or more heads share it.
    shared: Vec<bool>,
    /// Σ and count of each head's coefficient this epoch (steps where it had labels).
    sums: Vec<(f64, usize)>,
}

impl Scheme {
    /// `trainable`: the keys of the vars the optimizer updates, in order.
    pub fn new(
        method: Weighting,
        prog: &Program,
        trainable: &[String],
        dev: &Device,
    ) -> std::result::Result<Self, String> {
        let heads: Vec<&str> = prog.heads.iter().map(|(h, _)| h.name.as_str()).collect();
        let mut state = SchemeState::default();
        if method == Weighting::Gradnorm {
            let shared = last_shared_layer(prog, trainable).ok_or("`weighting: gradnorm` needs a layer with weights that every head depends on; this model has none (use fixed, uncertainty or dwa)")?;
            state.gradnorm = Some(GradNorm::new(heads.len(), shared));
        }
        if let Weighting::Famo { lr, gamma } = method {
            state.famo = Some(Famo::new(heads.len(), lr, gamma));
        }
        let log_vars = if method == Weighting::Uncertainty {
            heads
                .iter()
                .map(|h| {
                    Var::zeros((), DType::F32, dev).map(|v| (format!("loss_weighting.{h}"), v))
                })
                .collect::<Result<_>>()
                .map_err(|e| e.to_string())?
        } else {
            vec![]
        };
        let sharing = prog.sharing();
        let shared = sharing.shared_flags(trainable);
        let file_weights: Vec<f64> = prog.heads.iter().map(|(h, _)| h.weight).collect();
        Ok(Scheme {
            method,
            epoch_weights: file_weights.clone(),
            file_weights,
            log_vars,
            state,
            sharing,
            shared,
            sums: vec![(0.0, 0); heads.len()],
        })
    }

    /// Where the training forward is split: only for the gradient methods.
    pub fn cut(&self) -> Option<Cut<'_>> {
        self.method.is_gradient_method().then(|| self.sharing.cut())
    }

    /// Starts an epoch: DWA's weights (Liu et al. 2019, Eq. 4, T = 2) from
    /// the mean training losses of the last two epochs, `history`.
    pub fn start_epoch(&mut self, history: &[Vec<f64>]) {
        self.sums.iter_mut().for_each(|s| *s = (0.0, 0));
        if self.method != Weighting::Dwa {
            return;
        }
        let k = self.file_weights.len();
        self.epoch_weights = match history {
            [.., b, a] => {
                let e: Vec<f64> = a
                    .iter()
                    .zip(b)
                    .map(|(a, b)| (a / b.max(1e-12) / 2.0).exp())
                    .collect();
                let s: f64 = e.iter().sum();
                e.iter().map(|x| k as f64 * x / s).collect()
            }
            _ => vec![1.0; k],
        };
    }

    /// The gradients of one step (aligned with `vars`, the model's trainable
    /// vars followed by `log_vars`) and the weighted total loss.
    ///
    /// On a batch split over ranks (`part`), `step.heads` are this rank's
    /// shares of the batch losses (they add up over ranks), `values` and
    /// `present` are already the whole batch's, and the gradients returned
    /// are summed over ranks.
    pub fn gradients(
        &mut self,
        fwd: &Forward,
        step: &StepLosses,
        vars: &[(String, Var)],
        (lr, rng): (f64, &mut StdRng),
        part: &Part,
        mut backprop: Option<Backprop>,
    ) -> Result<(Vec<Option<Tensor>>, f64)> {
        let comm = part.comm.map(|c| &**c);
        let StepLosses {
            heads: losses,
            values,
            present,
            aux,
            aux_value,
        } = *step;
        let k = losses.len();
        let scaled: Vec<Tensor> = losses
            .iter()
            .zip(&self.file_weights)
            .map(|(l, w)| if *w == 1.0 { Ok(l.clone()) } else { l * *w })
            .collect::<Result<_>>()?;
        if backprop.is_some() && (self.method.is_gradient_method() || self.state.gradnorm.is_some())
        {
            candle_core::bail!("the planned executor trains weightings that sum the losses only")
        }
        if self.method.is_gradient_method() {
            let n = vars.len() - self.log_vars.len();
            let p = combine::Params {
                vars: &vars[..n],
                shared: &self.shared,
            };
            let (grads, alpha) = combine::step(
                self.method,
                &mut self.state.method,
                fwd,
                &scaled,
                present,
                aux,
                &p,
                rng,
                comm,
            )?;
            self.record(&alpha, present);
            let total = alpha.iter().zip(values).zip(&self.file_weights);
            let total: f64 = total.map(|((a, v), w)| a * v * w).sum::<f64>() + aux_value;
            return Ok((grads, total));
        }
        if let Some(gn) = self.state.gradnorm.as_mut() {
            let grads = gn.step(losses, values, aux, vars, (lr, comm))?;
            let coef = gn.weights.clone();
            self.record(&coef, present);
            let total = coef.iter().zip(values).map(|(c, v)| c * v).sum::<f64>() + aux_value;
            return Ok((grads, total));
        }
        let present_values: Vec<Option<f64>> = values
            .iter()
            .zip(&self.file_weights)
            .zip(present)
            .map(|((v, w), p)| p.then_some(v * w))
            .collect();
        // Coefficient on each (file-weighted) loss, or the uncertainty total.
        let coef: Vec<f64> = match self.method {
            Weighting::Uncertainty => {
                let mut total = Tensor::zeros((), DType::F32, losses[0].device())?;
                let mut coef = vec![];
                for (l, (_, s)) in losses.iter().zip(&self.log_vars) {
                    // Kendall et al. 2018, Eq. 10 as commonly implemented: L·e^{−s} + s.
                    let precision = s.as_tensor().neg()?.exp()?;
                    coef.push(precision.to_scalar::<f32>()? as f64);
                    // The regularizer once over all ranks, not once per rank.
                    let s = (s.as_tensor() * part.share())?;
                    total = (total + ((l * precision)? + s)?)?;
                }
                self.record(&coef, present);
                let total = match aux {
                    Some(a) => (total + a)?,
                    None => total,
                };
                let value = coef.iter().zip(values).map(|(c, v)| c * v).sum::<f64>()
                    + self
                        .log_vars
                        .iter()
                        .map(|(_, s)| s.as_tensor().to_scalar::<f32>().map(f64::from))
                        .sum::<Result<f64>>()?
                    + aux_value;
                let grads = all_reduce_grads(comm, backward(&total, vars, fwd, backprop.take())?)?;
                return Ok((grads, value));
            }
            Weighting::Famo { lr, gamma } => {
                let famo = self
                    .state
                    .famo
                    .get_or_insert_with(|| Famo::new(k, lr, gamma));
                // The losses after the last update: FAMO's δ (Alg. 1, line 6),
                // measured on this batch rather than by a second forward pass.
                if famo.pending.is_some() {
                    famo.update(&present_values);
                }
                famo.coefficients(&present_values)
                    .iter()
                    .zip(&self.file_weights)
                    .map(|(c, w)| c * w)
                    .collect()
            }
            Weighting::Rlw => {
                let idx: Vec<usize> = (0..k).filter(|&i| present[i]).collect();
                let w = rlw::weights(idx.len(), rng);
                let mut coef = vec![0.0; k];
                for (&i, w) in idx.iter().zip(w) {
                    coef[i] = w * self.file_weights[i];
                }
                coef
            }
            _ => self.epoch_weights.clone(),
        };
        self.record(&coef, present);
        let mut total = Tensor::zeros((), DType::F32, losses[0].device())?;
        for (l, c) in losses.iter().zip(&coef) {
            if *c != 0.0 {
                total = (total + (l * *c)?)?;
            }
        }
        if let Some(a) = aux {
            total = (total + a)?;
        }
        let value = coef.iter().zip(values).map(|(c, v)| c * v).sum::<f64>() + aux_value;
        let grads = all_reduce_grads(comm, backward(&total, vars, fwd, backprop.take())?)?;
        Ok((grads, value))
    }

    /// Continues from a checkpoint's state (the learned log-variances come
    /// back with the optimizer's tensors).
    pub fn restore(&mut self, saved: SchemeState) {
        if self.state.gradnorm.is_some() && saved.gradnorm.is_some() {
            self.state.gradnorm = saved.gradnorm;
        }
        if self.state.famo.is_some() && saved.famo.is_some() {
            self.state.famo = saved.famo;
        }
        self.state.method = saved.method;
    }

    fn record(&mut self, coef: &[f64], present: &[bool]) {
        for ((s, c), p) in self.sums.iter_mut().zip(coef).zip(present) {
            if *p {
                s.0 += c;
                s.1 += 1;
            }
        }
    }

    /// Each head's mean coefficient this epoch (the weight in force).
    pub fn in_force(&self) -> Vec<f64> {
        self.sums
            .iter()
            .zip(&self.epoch_weights)
            .map(|((s, n), w)| if *n > 0 { s / *n as f64 } else { *w })
            .collect()
    }
}

/// The planned training executor of a step, with its program and weights:
/// its forward's leaves get their gradients from the losses' backward, and
/// it carries them to the weights.
pub type Backprop<'a> = (
    &'a mut crate::lower::planned::PlannedTrain,
    &'a crate::lower::Program,
    &'a crate::lower::Params,
);

/// The gradients of `total` for `vars`: candle's backward, continued through
/// the planned executor's when the forward was planned.
fn backward(
    total: &Tensor,
    vars: &[(String, Var)],
    fwd: &Forward,
    backprop: Option<Backprop>,
) -> Result<Vec<Option<Tensor>>> {
    let store = total.backward()?;
    let mut grads = grads_for(vars, &store);
    if let Some((exec, prog, params)) = backprop {
        exec.backward(prog, params, (fwd, &store), vars, &mut grads)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    }
    Ok(grads)
}
