//! Runs a lowered program over a batch: one candle call (or own kernel) per step.

use super::kernels::{self, RnnWeights};
use super::{Params, Program};
use crate::ir::{DType as IrDType, Ew, Op, RnnCell};
use crate::pipeline::Mode;
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::HashMap;
use std::fmt;

#[derive(Debug, Clone)]
pub enum RunError {
    /// A user-supplied input tensor is missing or does not fit.
    Input(String),
    /// A failure inside a step, with the IR node's name.
    Step { node: String, message: String },
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Input(m) => write!(f, "{m}"),
            RunError::Step { node, message } => write!(f, "while computing `{node}`: {message}"),
        }
    }
}

impl std::error::Error for RunError {}

/// The values of one forward pass, by slot.
pub struct Forward {
    pub values: Vec<Option<Tensor>>,
}

impl Forward {
    pub fn get(&self, slot: usize) -> Option<&Tensor> {
        self.values.get(slot).and_then(Option::as_ref)
    }
}

impl Program {
    /// Checks and converts the inputs of a batch: f32 for images and numbers,
    /// u32 ids (in range) for tokens. Names the tensor on every error.
    pub fn prepare_inputs(
        &self,
        inputs: &HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Vec<(usize, Tensor)>, RunError> {
        let mut out = vec![];
        let mut batch = None;
        for (name, slot, ty) in &self.inputs {
            let t = inputs.get(name).ok_or_else(|| {
                RunError::Input(format!(
                    "no tensor `{name}` for input `{name}` (expected shape [N, {}])",
                    dims_text(ty)
                ))
            })?;
            let dims = t.dims();
            let ok = dims.len() == ty.rank() + 1
                && ty
                    .shape
                    .iter()
                    .zip(&dims[1..])
                    .all(|(d, a)| d.fixed().is_none_or(|f| f == *a));
            if !ok {
                return Err(RunError::Input(format!(
                    "tensor `{name}` has shape {dims:?}, but input `{name}` expects [N, {}]",
                    dims_text(ty)
                )));
            }
            if *batch.get_or_insert(dims[0]) != dims[0] {
                return Err(RunError::Input(format!(
                    "tensor `{name}` has {} samples, other inputs have {}",
                    dims[0],
                    batch.unwrap_or(0)
                )));
            }
            let t = t
                .to_device(device)
                .map_err(|e| RunError::Input(e.to_string()))?;
            let t = if ty.dtype == IrDType::I64 {
                let vocab = self.vocab(*slot);
                let ids = t
                    .to_dtype(DType::I64)
                    .and_then(|x| x.flatten_all())
                    .and_then(|x| x.to_vec1::<i64>())
                    .map_err(|e| RunError::Input(format!("tensor `{name}`: {e}")))?;
                if let Some(bad) = ids.iter().find(|&&i| i < 0 || i as usize >= vocab) {
                    return Err(RunError::Input(format!(
                        "tensor `{name}` holds token id {bad}, outside the vocabulary [0, {vocab})"
                    )));
                }
                t.to_dtype(DType::U32)
            } else {
                t.to_dtype(DType::F32)
            }
            .map_err(|e| RunError::Input(format!("tensor `{name}`: {e}")))?;
            if ty.dtype == IrDType::F32 {
                let bad = t
                    .flatten_all()
                    .and_then(|x| x.to_vec1::<f32>())
                    .map(|v| v.iter().any(|x| !x.is_finite()))
                    .unwrap_or(false);
                if bad {
                    return Err(RunError::Input(format!(
                        "tensor `{name}` holds NaN or infinite values"
                    )));
                }
            }
            out.push((*slot, t));
        }
        Ok(out)
    }

    fn vocab(&self, slot: usize) -> usize {
        self.steps
            .iter()
            .find_map(|s| match &s.op {
                Op::Embedding { vocab, .. } if s.args.first() == Some(&slot) => Some(*vocab),
                _ => None,
            })
            .unwrap_or(usize::MAX)
    }

    /// One forward pass. In training mode dropout draws from `rng` and batch
    /// norm updates its running statistics in `params`.
    pub fn forward(
        &self,
        params: &Params,
        inputs: Vec<(usize, Tensor)>,
        rng: &mut StdRng,
    ) -> Result<Forward, RunError> {
        self.forward_timed(params, inputs, rng, None)
    }

    /// `forward`, adding each step's wall time (seconds, by step index) to `times`.
    pub fn forward_timed(
        &self,
        params: &Params,
        inputs: Vec<(usize, Tensor)>,
        rng: &mut StdRng,
        mut times: Option<&mut Vec<f64>>,
    ) -> Result<Forward, RunError> {
        let train = self.mode == Mode::Train;
        let mut values: Vec<Option<Tensor>> = vec![None; self.n_values];
        for (slot, t) in inputs {
            values[slot] = Some(t);
        }
        for (k, st) in self.steps.iter().enumerate() {
            let started = times.is_some().then(std::time::Instant::now);
            let err = |e: candle_core::Error| RunError::Step {
                node: st.name.clone(),
                message: e.to_string(),
            };
            let args: Vec<&Tensor> = st
                .args
                .iter()
                .map(|a| values[*a].as_ref())
                .collect::<Option<_>>()
                .ok_or_else(|| RunError::Step {
                    node: st.name.clone(),
                    message: "operand not computed".into(),
                })?;
            let y = self.step(st, &args, params, train, rng).map_err(err)?;
            values[st.out] = Some(y);
            if let (Some(t), Some(s)) = (times.as_deref_mut(), started) {
                if t.len() < self.steps.len() {
                    t.resize(self.steps.len(), 0.0);
                }
                t[k] += s.elapsed().as_secs_f64();
            }
        }
        Ok(Forward { values })
    }

    fn step(
        &self,
        st: &super::Step,
        args: &[&Tensor],
        params: &Params,
        train: bool,
        rng: &mut StdRng,
    ) -> candle_core::Result<Tensor> {
        let p = |name: &str| -> candle_core::Result<&Tensor> {
            params.get(&format!("{}.{name}", st.params.as_deref().unwrap_or("")))
        };
        let x = args[0];
        match &st.op {
            Op::Input { .. } => Ok(x.clone()),
            Op::Dense { .. } | Op::Conv { .. } => {
                let (w, b) = match &st.bn {
                    Some((bn, eps)) => {
                        let q = |name: &str| params.get(&format!("{bn}.{name}"));
                        kernels::fold_bn(
                            p("weight")?,
                            p("bias")?,
                            q("weight")?,
                            q("bias")?,
                            q("running_mean")?,
                            q("running_var")?,
                            *eps,
                        )?
                    }
                    None => (p("weight")?.clone(), p("bias")?.clone()),
                };
                match st.op {
                    Op::Dense { .. } => kernels::dense_act(x, &w, &b, st.relu),
                    _ => kernels::conv(x, &w, &b, &st.op, &st.pads, (st.relu, st.mean)),
                }
            }
            Op::MergedDense { .. } => {
                let get =
                    |prefix: &str, name: &str| params.get(&format!("{prefix}.{name}")).cloned();
                let ws: Vec<Tensor> = st
                    .parts
                    .iter()
                    .map(|(pre, _)| get(pre, "weight"))
                    .collect::<candle_core::Result<_>>()?;
                let bs: Vec<Tensor> = st
                    .parts
                    .iter()
                    .map(|(pre, _)| get(pre, "bias"))
                    .collect::<candle_core::Result<_>>()?;
                kernels::dense(x, &Tensor::cat(&ws, 0)?, &Tensor::cat(&bs, 0)?)
            }
            Op::Slice { start, len } => x.narrow(x.rank() - 1, *start, *len),
            Op::ConvTranspose2d {
                kernel,
                stride,
                padding,
                ..
            } => kernels::conv_transpose2d(x, p("weight")?, p("bias")?, *kernel, *stride, *padding),
            Op::Upsample { scale } => {
                if x.rank() == 4 && x.device().is_cpu() {
                    x.contiguous()?
                        .apply_op1(super::cpu_ops::Upsample2d { scale: *scale })
                } else if x.rank() == 3 {
                    x.upsample_nearest1d(x.dim(2)? * scale)
                } else {
                    x.upsample_nearest2d(x.dim(2)? * scale, x.dim(3)? * scale)
                }
            }
            Op::Pool { kind, size, stride } => kernels::pool(x, *kind, size, stride, train),
            Op::GlobalPool { kind } => {
                let flat = x.flatten_from(2)?;
                let max = *kind == crate::ir::PoolKind::Max;
                if flat.device().is_cpu() && flat.dtype() == candle_core::DType::F32 {
                    flat.contiguous()?
                        .apply_op1(super::cpu_ops::GlobalPool { max })
                } else if max {
                    flat.max(2)
                } else {
                    flat.mean(2)
                }
            }
            Op::Flatten => x.flatten_from(1),
            Op::Reshape { .. } => {
                let mut shape = vec![x.dim(0)?];
                shape.extend(st.ty.dims().unwrap_or_default());
                x.reshape(shape)
            }
            Op::Permute { axes } => {
                let mut perm = vec![0];
                perm.extend(axes.iter().copied());
                x.permute(perm)
            }
            Op::Embedding { dim, .. } => {
                let (b, t) = x.dims2()?;
                p("weight")?
                    .index_select(&x.flatten_all()?, 0)?
                    .reshape((b, t, *dim))
            }
            Op::Rnn {
                cell,
                units,
                return_sequences,
                bidirectional,
                hoisted,
            } => {
                let dir = |suffix: &str, reverse: bool| -> candle_core::Result<Tensor> {
                    let (b_ih, b_hh) = match cell {
                        RnnCell::Lstm => (p(&format!("bias{suffix}"))?, None),
                        RnnCell::Gru => (
                            p(&format!("bias_ih{suffix}"))?,
                            Some(p(&format!("bias_hh{suffix}"))?),
                        ),
                    };
                    let w = RnnWeights {
                        w_ih: p(&format!("weight_ih{suffix}"))?,
                        w_hh: p(&format!("weight_hh{suffix}"))?,
                        b_ih,
                        b_hh,
                    };
                    // A hoisted LSTM or GRU runs as our fused op (CPU only).
                    let fused = *hoisted && x.device().is_cpu();
                    kernels::rnn(
                        x,
                        *cell,
                        *units,
                        &w,
                        *hoisted,
                        reverse,
                        *return_sequences,
                        fused,
                        train,
                    )
                };
                let fwd = dir("", false)?;
                if *bidirectional {
                    let bwd = dir("_reverse", true)?;
                    Tensor::cat(&[&fwd, &bwd], fwd.rank() - 1)
                } else {
                    Ok(fwd)
                }
            }
            Op::Dropout { rate } if train => {
                let n = x.elem_count();
                let keep = 1.0 - *rate as f32;
                let mask: Vec<f32> = (0..n)
                    .map(|_| {
                        if rng.random::<f32>() < keep {
                            1.0 / keep
                        } else {
                            0.0
                        }
                    })
                    .collect();
                x.mul(&Tensor::from_vec(mask, x.dims(), x.device())?)
            }
            Op::Dropout { .. } => Ok(x.clone()),
            Op::BatchNorm { eps, momentum } => {
                let (rm, rv) = (p("running_mean")?, p("running_var")?);
                let (y, stats) =
                    kernels::batch_norm(x, p("weight")?, p("bias")?, rm, rv, *eps, train)?;
                if let Some((m, v)) = stats {
                    let prefix = st.params.as_deref().unwrap_or("");
                    if let (Some(rmv), Some(rvv)) = (
                        params.vars.get(&format!("{prefix}.running_mean")),
                        params.vars.get(&format!("{prefix}.running_var")),
                    ) {
                        rmv.set(&((rm * *momentum)? + (m * (1.0 - momentum))?)?)?;
                        rvv.set(&((rv * *momentum)? + (v * (1.0 - momentum))?)?)?;
                    }
                }
                Ok(y)
            }
            Op::LayerNorm { eps } => kernels::layer_norm(x, p("weight")?, p("bias")?, *eps, train),
            Op::Act(a) => kernels::act(x, *a, train),
            Op::Concat { axis } => {
                let rank = x.rank() as i64;
                let a = if *axis < 0 { rank + axis } else { *axis };
                Tensor::cat(args, a as usize)
            }
            Op::Elementwise(e) => {
                let mut acc = x.clone();
                for y in &args[1..] {
                    acc = match e {
                        Ew::Add | Ew::Mean => acc.broadcast_add(y)?,
                        Ew::Mul => acc.broadcast_mul(y)?,
                        Ew::Max => acc.broadcast_maximum(y)?,
                        Ew::Min => acc.broadcast_minimum(y)?,
                    };
                }
                if *e == Ew::Mean {
                    acc = (acc / args.len() as f64)?;
                }
                Ok(acc)
            }
            Op::Weighted { fixed } => {
                let w: Vec<Tensor> = match fixed {
                    Some(ws) => ws
                        .iter()
                        .map(|w| Tensor::new(*w as f32, x.device()))
                        .collect::<candle_core::Result<_>>()?,
                    None => {
                        let sm = candle_nn::ops::softmax(p("logits")?, 0)?;
                        (0..args.len())
                            .map(|i| sm.get(i))
                            .collect::<candle_core::Result<_>>()?
                    }
                };
                let mut acc = args[0].broadcast_mul(&w[0])?;
                for (y, wi) in args[1..].iter().zip(&w[1..]) {
                    acc = acc.add(&y.broadcast_mul(wi)?)?;
                }
                Ok(acc)
            }
            Op::Gated => {
                let (a, b) = (args[0], args[1]);
                let g = candle_nn::ops::sigmoid(&kernels::dense(
                    &Tensor::cat(&[a, b], 1)?,
                    p("weight")?,
                    p("bias")?,
                )?)?;
                g.mul(a)? + (g.ones_like()? - &g)?.mul(b)?
            }
        }
    }
}

fn dims_text(ty: &crate::ir::Type) -> String {
    ty.shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A head's logits as predictions: softmax over the class axis for
/// cross-entropy, sigmoid for binary cross-entropy, raw otherwise.
pub fn head_output(loss: crate::ir::LossKind, logits: &Tensor) -> candle_core::Result<Tensor> {
    match loss {
        crate::ir::LossKind::CrossEntropy => candle_nn::ops::softmax(logits, 1),
        crate::ir::LossKind::BinaryCrossEntropy => candle_nn::ops::sigmoid(logits),
        _ => Ok(logits.clone()),
    }
}
