//! Optimizers (Keras 3 update rules): Adam, AdamW, SGD with momentum and
//! Nesterov; decoupled weight decay; global-norm clipping; LR schedules.

use super::config::{OptimizerConfig, OptimizerKind, Schedule};
use crate::kernels::adam::AdamStep;
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
    /// Adam's moments stacked [m; v] for the fused step ([`AdamStep`]): the
    /// form its output leaves them in, so no step copies them.
    mv: HashMap<String, Tensor>,
}

impl Optimizer {
    pub fn new(cfg: OptimizerConfig) -> Self {
        Optimizer {
            cfg,
            step: 0,
            m: HashMap::new(),
            v: HashMap::new(),
            mv: HashMap::new(),
        }
    }

    /// One update of every var that has a gradient (`gs` aligned with
    /// `vars`), the gradients first scaled to a global norm of at most `clip`.
    pub fn apply(
        &mut self,
        vars: &[(String, Var)],
        gs: Vec<Option<Tensor>>,
        lr: f64,
        clip: Option<f64>,
    ) -> Result<()> {
        // The global norm is only needed for clipping: no pass over the
        // gradients without it.
        let scale = match clip {
            Some(c) => {
                let norm = global_norm(&gs)?;
                if norm > c {
                    c / norm
                } else {
                    1.0
                }
            }
            None => 1.0,
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
                    let alpha = lr * (1.0 - c.beta2.powi(t)).sqrt() / (1.0 - c.beta1.powi(t));
                    let fused = !crate::kernels::native(w)
                        && w.dtype() == candle_core::DType::F32
                        && !w.device().is_metal();
                    if fused {
                        let consts = [c.beta1, 1.0 - c.beta1, c.beta2, 1.0 - c.beta2, alpha, c.eps];
                        let mv = match self.mv.remove(key) {
                            Some(mv) => mv,
                            None => {
                                let zero = || g.zeros_like();
                                let m = self.m.remove(key).map_or_else(zero, Ok)?;
                                let v = self.v.remove(key).map_or_else(zero, Ok)?;
                                Tensor::stack(&[m, v], 0)?
                            }
                        };
                        let op = AdamStep(consts.map(|x| x as f32));
                        let out = w
                            .contiguous()?
                            .apply_op3_no_bwd(&g.contiguous()?, &mv, &op)?;
                        var.set(&out.get(0)?)?;
                        self.mv.insert(key.clone(), out.narrow(0, 1, 2)?);
                        continue;
                    }
                    let update = if crate::kernels::native(w) {
                        adam_host
                    } else {
                        adam_tensor
                    };
                    let (m, v) = update(
                        var,
                        &g,
                        self.m.get(key),
                        self.v.get(key),
                        [c.beta1, c.beta2, alpha, c.eps],
                    )?;
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
        Ok(())
    }

    /// Optimizer state as tensors, for checkpoints.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (k, mv) in &self.mv {
            if let (Ok(m), Ok(v)) = (mv.get(0), mv.get(1)) {
                out.insert(format!("m.{k}"), m);
                out.insert(format!("v.{k}"), v);
            }
        }
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
        self.mv.clear();
        for (k, t) in state {
            if let Some(key) = k.strip_prefix("m.") {
                self.m.insert(key.to_string(), t);
            } else if let Some(key) = k.strip_prefix("v.") {
                self.v.insert(key.to_string(), t);
            }
        }
    }
}

/// √Σ g² over every gradient (f64 sums on the CPU).
fn global_norm(gs: &[Option<Tensor>]) -> Result<f64> {
    let mut sq = 0f64;
    for g in gs.iter().flatten() {
        sq += if crate::kernels::native(g) {
            let v = g.flatten_all()?.to_vec1::<f32>()?;
            v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>()
        } else {
            g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64
        };
    }
    Ok(sq.sqrt())
}

/// One Adam update as tensor operations (any device); returns the new moments.
fn adam_tensor(
    var: &Var,
    g: &Tensor,
    m: Option<&Tensor>,
    v: Option<&Tensor>,
    [beta1, beta2, alpha, eps]: [f64; 4],
) -> Result<(Tensor, Tensor)> {
    let m = m.cloned().unwrap_or(g.zeros_like()?);
    let v = v.cloned().unwrap_or(g.zeros_like()?);
    let m = ((m * beta1)? + (g * (1.0 - beta1))?)?;
    let v = ((v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
    let w = var.as_tensor();
    var.set(&(w - ((&m * alpha)? / (v.sqrt()? + eps)?)?)?)?;
    Ok((m, v))
}

/// One Adam update on the host in a single pass per parameter, in place:
/// the same f32 operations in the same order as the tensor form (so both
/// give identical weights), without its dozen allocating passes, and without
/// copies of the weights and moments (a copying form held five more copies
/// of the largest parameter, the embedding table, at the step's peak).
fn adam_host(
    var: &Var,
    g: &Tensor,
    m: Option<&Tensor>,
    v: Option<&Tensor>,
    [beta1, beta2, alpha, eps]: [f64; 4],
) -> Result<(Tensor, Tensor)> {
    // A moment that shares its storage with nothing else (restored ones may
    // be views), so updating it in place changes only it.
    let own = |t: Option<&Tensor>| -> Result<Tensor> {
        match t {
            Some(t) if t.is_contiguous() => Ok(t.clone()),
            Some(t) => t.contiguous(),
            None => g.zeros_like(),
        }
    };
    let (m, v) = (own(m)?, own(v)?);
    let gv = crate::kernels::host::host(g)?;
    let (b1, c1, b2, c2) = (
        beta1 as f32,
        (1.0 - beta1) as f32,
        beta2 as f32,
        (1.0 - beta2) as f32,
    );
    let (alpha, eps) = (alpha as f32, eps as f32);
    use crate::kernels::host::with_host_mut;
    with_host_mut(var.as_tensor(), |w| {
        with_host_mut(&m, |m| {
            with_host_mut(&v, |v| {
                if [w.len(), m.len(), v.len()] != [gv.len(); 3] {
                    candle_core::bail!("adam: a gradient of {} for {} weights", gv.len(), w.len())
                }
                // Compiled for the widest vector unit (16 lanes of sqrt and
                // divide on AVX-512, where the baseline's 4 made this loop 8–10%
                // of `shapes_mm`'s one-thread training step) and, for large
                // parameters, in parallel chunks: each element's operations
                // are unchanged, so are the bits.
                let update = |w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
                    crate::kernels::par::widest(
                        #[inline(always)]
                        || {
                            for (((w, g), m), v) in w.iter_mut().zip(g).zip(m).zip(v) {
                                *m = *m * b1 + g * c1;
                                *v = *v * b2 + g * g * c2;
                                *w -= (*m * alpha) / (v.sqrt() + eps);
                            }
                        },
                    )
                };
                const CHUNK: usize = 1 << 14;
                if w.len() >= crate::kernels::par::MIN_ELEMENTS {
                    use rayon::prelude::*;
                    w.par_chunks_mut(CHUNK)
                        .zip(gv.par_chunks(CHUNK))
                        .zip(m.par_chunks_mut(CHUNK))
                        .zip(v.par_chunks_mut(CHUNK))
                        .for_each(|(((w, g), m), v)| update(w, g, m, v));
                } else {
                    update(w, &gv, m, v);
                }
                Ok(())
            })
        })
    })?;
    Ok((m, v))
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The host update gives bit-identical weights and moments to the tensor
    /// form, on a small parameter and on one large enough for parallel chunks.
    #[test]
    fn host_adam_equals_tensor_adam() {
        for shape in [(7, 5), (3, 50_001)] {
            host_adam_equals_tensor_adam_at(shape);
        }
    }

    fn host_adam_equals_tensor_adam_at(shape: (usize, usize)) {
        let dev = Device::Cpu;
        let w0 = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let (a, b) = (
            Var::from_tensor(&w0).unwrap(),
            Var::from_tensor(&w0).unwrap(),
        );
        let (mut sa, mut sb) = ((None, None), (None, None));
        for step in 1..=4 {
            let g = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
            let alpha = 1e-3 * (1.0 - 0.999f64.powi(step)).sqrt() / (1.0 - 0.9f64.powi(step));
            let p = [0.9, 0.999, alpha, 1e-7];
            let ra = adam_host(&a, &g, sa.0.as_ref(), sa.1.as_ref(), p).unwrap();
            let rb = adam_tensor(&b, &g, sb.0.as_ref(), sb.1.as_ref(), p).unwrap();
            sa = (Some(ra.0), Some(ra.1));
            sb = (Some(rb.0), Some(rb.1));
        }
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        assert_eq!(bits(a.as_tensor()), bits(b.as_tensor()));
        assert_eq!(bits(sa.0.as_ref().unwrap()), bits(sb.0.as_ref().unwrap()));
        assert_eq!(bits(sa.1.as_ref().unwrap()), bits(sb.1.as_ref().unwrap()));
    }

    /// The fused step (the GPU's path, run here by candle's CPU through
    /// `--kernels candle`) gives the host form's weights bit for bit, and its
    /// state survives a checkpoint round trip.
    #[test]
    fn fused_adam_equals_host_adam_and_checkpoints() {
        let dev = Device::Cpu;
        let w0 = Tensor::randn(0f32, 1.0, (7, 5), &dev).unwrap();
        let grads: Vec<Tensor> = (0..6)
            .map(|_| Tensor::randn(0f32, 1.0, (7, 5), &dev).unwrap())
            .collect();
        let run = |portable: bool, resume_at: Option<usize>| {
            crate::kernels::set_portable(portable);
            let var = Var::from_tensor(&w0).unwrap();
            let vars = vec![("w".to_string(), var.clone())];
            let mut opt = Optimizer::new(crate::train::config::TrainConfig::default().optimizer);
            for (i, g) in grads.iter().enumerate() {
                if resume_at == Some(i) {
                    let (state, step) = (opt.state(), opt.step);
                    opt = Optimizer::new(crate::train::config::TrainConfig::default().optimizer);
                    opt.restore(state, step);
                }
                opt.apply(&vars, vec![Some(g.clone())], 1e-2, None).unwrap();
            }
            crate::kernels::set_portable(false);
            let bits = |t: &Tensor| -> Vec<u32> {
                let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                v.iter().map(|x| x.to_bits()).collect()
            };
            let state = opt.state();
            (
                bits(var.as_tensor()),
                bits(&state["m.w"]),
                bits(&state["v.w"]),
            )
        };
        let host = run(false, None);
        assert_eq!(run(true, None), host, "fused against host");
        assert_eq!(run(true, Some(3)), host, "fused, resumed from a checkpoint");
    }
}
