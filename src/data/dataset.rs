//! Tensor data sets: one tensor per input and per label, batch first;
//! `HEAD.mask` optional. Checked against the model before training.

use crate::ir::{DType as IrDType, Dim, LossKind};
use crate::lower::Program;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct Dataset {
    pub n: usize,
    pub tensors: HashMap<String, Tensor>,
}

impl Dataset {
    pub fn from_tensors(tensors: HashMap<String, Tensor>, source: &str) -> Result<Self, String> {
        let mut n = None;
        for (k, t) in &tensors {
            let len = t.dims().first().copied().ok_or_else(|| {
                format!("{source}: tensor `{k}` is a scalar; every tensor needs a batch axis")
            })?;
            match n {
                None => n = Some((len, k.clone())),
                Some((m, ref other)) if m != len => {
                    return Err(format!(
                        "{source}: tensor `{k}` has {len} samples but `{other}` has {m}"
                    ))
                }
                _ => {}
            }
        }
        Ok(Dataset {
            n: n.map_or(0, |x| x.0),
            tensors,
        })
    }

    pub fn load(path: &Path, device: &Device) -> Result<Self, String> {
        let t = candle_core::safetensors::load(path, device)
            .map_err(|e| format!("cannot read data {}: {e}", path.display()))?;
        Self::from_tensors(t, &path.display().to_string())
    }

    pub fn subset(&self, idx: &[usize]) -> candle_core::Result<Dataset> {
        let ids = Tensor::from_vec(
            idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            idx.len(),
            &self.device(),
        )?;
        let mut tensors = HashMap::new();
        for (k, t) in &self.tensors {
            tensors.insert(k.clone(), t.index_select(&ids, 0)?);
        }
        Ok(Dataset {
            n: idx.len(),
            tensors,
        })
    }

    fn device(&self) -> Device {
        self.tensors
            .values()
            .next()
            .map(|t| t.device().clone())
            .unwrap_or(Device::Cpu)
    }

    /// Checks that every input (and, with `labels`, every head's label) is
    /// present with the right shape; class ids must fit the head.
    pub fn check(&self, prog: &Program, labels: bool, source: &str) -> Result<(), String> {
        let mut errs = vec![];
        for (name, _, ty) in &prog.inputs {
            match self.tensors.get(name) {
                None => errs.push(format!(
                    "{source}: no tensor `{name}` for input `{name}` (expected [N, {}])",
                    dims(&ty.shape)
                )),
                Some(t) if !fits(t.dims(), &ty.shape) => errs.push(format!(
                    "{source}: tensor `{name}` has shape {:?}, input `{name}` expects [N, {}]",
                    t.dims(),
                    dims(&ty.shape)
                )),
                _ => {}
            }
        }
        if labels {
            for (h, slot) in &prog.heads {
                let Some(lt) = &h.label_type else { continue };
                let Some(t) = self.tensors.get(&h.label) else {
                    errs.push(format!("{source}: no tensor `{}` for the label of head `{}` (expected [N, {}]); add it, or a `{}.mask` of zeros", h.label, h.name, dims(&lt.shape), h.name));
                    continue;
                };
                let want = &lt.shape;
                // Class ids may come as [N] or [N, 1].
                let ok = fits(t.dims(), want)
                    || (lt.dtype == IrDType::I64
                        && want.is_empty()
                        && t.dims().len() == 2
                        && t.dims()[1] == 1);
                if !ok {
                    errs.push(format!(
                        "{source}: tensor `{}` has shape {:?}, head `{}` expects labels [N, {}]",
                        h.label,
                        t.dims(),
                        h.name,
                        dims(want)
                    ));
                    continue;
                }
                if h.loss == LossKind::CrossEntropy {
                    let k = prog
                        .steps
                        .iter()
                        .find(|s| s.out == *slot)
                        .and_then(|s| s.ty.shape.first().and_then(Dim::fixed))
                        .unwrap_or(0);
                    if let Ok(v) = t
                        .to_dtype(DType::F64)
                        .and_then(|t| t.flatten_all())
                        .and_then(|t| t.to_vec1::<f64>())
                    {
                        if let Some((i, bad)) = v.iter().enumerate().find(|(_, x)| {
                            x.is_finite() && (**x >= k as f64 || x.fract() != 0.0 || **x < -1.0)
                        }) {
                            errs.push(format!("{source}: tensor `{}` row {i} holds class {bad}, but head `{}` has {k} classes (0..{}; -1 or NaN = missing)", h.label, h.name, k.saturating_sub(1)));
                        }
                    }
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("\n"))
        }
    }
}

fn fits(actual: &[usize], per_sample: &[Dim]) -> bool {
    actual.len() == per_sample.len() + 1
        && per_sample
            .iter()
            .zip(&actual[1..])
            .all(|(d, a)| d.fixed().is_none_or(|f| f == *a))
}

fn dims(d: &[Dim]) -> String {
    d.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
