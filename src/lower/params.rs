//! Parameters by checkpoint key (`NAME.PARAM`, PyTorch layouts): Keras-style
//! initialization, safetensors load with shape checks, atomic save.

use super::Program;
use crate::ir::Init;
use candle_core::{Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub struct Params {
    pub vars: BTreeMap<String, Var>,
    /// Keys the optimizer updates (running statistics are not among them).
    pub trainable: Vec<String>,
    /// What the forward reads instead of `vars`: detached views of the
    /// variables the optimizer does not update, and under mixed precision
    /// the casts of all, made once per forward ([`Params::cast_to`]).
    pub cast: BTreeMap<String, Tensor>,
}

fn normal(rng: &mut StdRng) -> f32 {
    // Box-Muller.
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// An [rows, cols] matrix with orthonormal columns (rows ≥ cols) or rows.
fn orthogonal(rows: usize, cols: usize, rng: &mut StdRng) -> Vec<f32> {
    let (n, m) = if rows >= cols {
        (rows, cols)
    } else {
        (cols, rows)
    };
    // m vectors of length n, Gram-Schmidt.
    let mut vs: Vec<Vec<f32>> = Vec::with_capacity(m);
    while vs.len() < m {
        let mut v: Vec<f32> = (0..n).map(|_| normal(rng)).collect();
        for u in &vs {
            let d: f32 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= d * b);
        }
        let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        if norm > 1e-4 {
            v.iter_mut().for_each(|a| *a /= norm);
            vs.push(v);
        }
    }
    let mut out = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[r * cols + c] = if rows >= cols { vs[c][r] } else { vs[r][c] };
        }
    }
    out
}

fn init_values(init: Init, shape: &[usize], rng: &mut StdRng) -> Vec<f32> {
    let n: usize = shape.iter().product();
    match init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Const(v) => vec![v; n],
        Init::GlorotUniform { fan_in, fan_out } => {
            let limit = (6.0 / (fan_in + fan_out).max(1) as f32).sqrt();
            (0..n).map(|_| rng.random_range(-limit..limit)).collect()
        }
        Init::Uniform005 => (0..n).map(|_| rng.random_range(-0.05f32..0.05)).collect(),
        Init::LstmBias { units } => (0..n)
            .map(|i| {
                if (units..2 * units).contains(&i) {
                    1.0
                } else {
                    0.0
                }
            })
            .collect(),
        Init::Orthogonal => {
            // [G·H, H]: orthonormal per gate block, as Keras's orthogonal (H, G·H) kernel transposed.
            let cols = shape.get(1).copied().unwrap_or(1);
            orthogonal(shape[0], cols, rng)
        }
    }
}

/// Fresh parameters with Keras's default initializers.
pub fn init_params(p: &Program, seed: u64, device: &Device) -> candle_core::Result<Params> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut vars = BTreeMap::new();
    let mut trainable = vec![];
    let inert = p.inert_params();
    for (key, t) in &p.param_specs {
        let v = init_values(t.init, &t.shape, &mut rng);
        vars.insert(
            key.clone(),
            Var::from_tensor(&Tensor::from_vec(v, t.shape.as_slice(), device)?)?,
        );
        if t.trainable && !p.is_frozen(key) && !inert.contains(key) {
            trainable.push(key.clone());
        }
    }
    // The forward reads what the optimizer does not update (frozen layers,
    // running statistics) through detached views of the same storage: no
    // gradient is tracked into them, so backward stops at the first trained
    // layer (a frozen encoder costs its forward only).
    let trained: std::collections::HashSet<&String> = trainable.iter().collect();
    let cast = vars
        .iter()
        .filter(|(k, _)| !trained.contains(k))
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    Ok(Params {
        vars,
        trainable,
        cast,
    })
}

impl Params {
    pub fn get(&self, key: &str) -> candle_core::Result<&Tensor> {
        self.cast
            .get(key)
            .or_else(|| self.vars.get(key).map(|v| v.as_tensor()))
            .ok_or_else(|| candle_core::Error::Msg(format!("no parameter `{key}`")))
    }

    /// The same variables, read as `dtype` by the forward: the casts are
    /// tracked ops, so backward carries the gradients to the f32 variables.
    pub fn cast_to(&self, dtype: candle_core::DType) -> candle_core::Result<Params> {
        let trained: std::collections::HashSet<&String> = self.trainable.iter().collect();
        let cast = self
            .vars
            .iter()
            .map(|(k, v)| {
                let t = if trained.contains(k) {
                    v.as_tensor().clone()
                } else {
                    v.as_tensor().detach()
                };
                Ok((k.clone(), t.to_dtype(dtype)?))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Params {
            vars: self.vars.clone(),
            trainable: self.trainable.clone(),
            cast,
        })
    }

    pub fn trainable_vars(&self) -> Vec<Var> {
        self.trainable
            .iter()
            .filter_map(|k| self.vars.get(k).cloned())
            .collect()
    }

    /// Loads every parameter from a safetensors file; a missing or misshapen
    /// tensor is an error naming it with both shapes. Extra tensors are ignored.
    pub fn load(&mut self, path: &Path, device: &Device) -> Result<(), String> {
        self.load_except(path, device, |_| false).map(|_| ())
    }

    /// [`Params::load`], where a tensor `may_lack` accepts may be absent
    /// from the file: it keeps its value, and its key is returned (a
    /// pretrained encoder's weights, for the caller to read from the
    /// checkpoint).
    pub fn load_except(
        &mut self,
        path: &Path,
        device: &Device,
        may_lack: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, String> {
        let tensors = candle_core::safetensors::load(path, device)
            .map_err(|e| format!("cannot read weights {}: {e}", path.display()))?;
        let (mut errs, mut absent) = (vec![], vec![]);
        for (key, var) in &self.vars {
            match tensors.get(key) {
                None if may_lack(key) => absent.push(key.clone()),
                None => errs.push(format!(
                    "weights file {} has no tensor `{key}` (expected shape {:?})",
                    path.display(),
                    var.dims()
                )),
                Some(t) if t.dims() != var.dims() => errs.push(format!(
                    "tensor `{key}` in {} has shape {:?}, but the model expects {:?}",
                    path.display(),
                    t.dims(),
                    var.dims()
                )),
                Some(t) => {
                    let t = t
                        .to_dtype(candle_core::DType::F32)
                        .and_then(|t| var.set(&t));
                    if let Err(e) = t {
                        errs.push(format!("tensor `{key}`: {e}"));
                    }
                }
            }
        }
        if errs.is_empty() {
            Ok(absent)
        } else {
            Err(errs.join("\n"))
        }
    }

    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Writes all parameters to `path` atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        save_atomic(&self.tensors(), path)
    }
}

/// Saves tensors as safetensors through a temporary file and a rename.
pub fn save_atomic(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<(), String> {
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(tensors, &tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| format!("cannot move {} to {}: {e}", tmp.display(), path.display()))
}
