//! Runs a lowered program over a batch: one candle call (or own kernel) per step.

use super::calls::{self, RnnWeights};
use super::kernel::{FoldedBn, Kernel};
use super::{Params, Program};
use crate::distributed::Part;
use crate::ir::ops::{conv, dense, embedding, fusion, mixture, norm, position_embedding};
use crate::ir::{Attend, DType as IrDType, Ew, Op, RnnCell};
use crate::ir::{
    Attention, BatchNorm, Concat, ConvTranspose2d, Dropout, Embedding, GlobalPool, LayerNorm,
    Mixture, Permute, Pool, Slice, Upsample, Weighted,
};
use crate::pipeline::Mode;
use candle_core::{DType, Device, Tensor, Var};
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

/// A failure of the mixed-precision casts around the steps.
fn run_err(e: candle_core::Error) -> RunError {
    RunError::Step {
        node: "(mixed-precision cast)".into(),
        message: e.to_string(),
    }
}

/// The values of one forward pass, by slot.
pub struct Forward {
    pub values: Vec<Option<Tensor>>,
    /// Under a [`Cut`]: each boundary slot and the detached leaf that the
    /// steps outside the shared region (and the losses) read instead.
    pub leaves: Vec<(usize, Var)>,
}

impl Forward {
    pub fn get(&self, slot: usize) -> Option<&Tensor> {
        self.values.get(slot).and_then(Option::as_ref)
    }

    /// The value a loss reads: the leaf of a cut slot, else the value.
    pub fn output(&self, slot: usize) -> Option<&Tensor> {
        match self.leaves.iter().find(|(s, _)| *s == slot) {
            Some((_, v)) => Some(v.as_tensor()),
            None => self.get(slot),
        }
    }
}

/// Where a training forward splits the graph (from [`super::Sharing`]): the
/// steps marked `outside` read each `boundary` value through a detached leaf,
/// so a head's backward stops at the shared representation and yields its
/// gradient there.
#[derive(Debug, Clone, Copy)]
pub struct Cut<'a> {
    pub boundary: &'a [usize],
    pub outside: &'a [bool],
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
                Op::Embedding(Embedding { vocab, .. }) if s.args.first() == Some(&slot) => {
                    Some(*vocab)
                }
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
        self.run(params, inputs, rng, None, None, None)
    }

    /// `forward` split at `cut` (training with per-task gradients).
    pub fn forward_cut(
        &self,
        params: &Params,
        inputs: Vec<(usize, Tensor)>,
        rng: &mut StdRng,
        cut: Cut,
    ) -> Result<Forward, RunError> {
        self.run(params, inputs, rng, None, Some(cut), None)
    }

    /// A training forward of this rank's `part` of a batch split over ranks
    /// (data-parallel training, [`crate::distributed`]); `cut` as in
    /// [`Program::forward_cut`].
    pub fn forward_part(
        &self,
        params: &Params,
        inputs: Vec<(usize, Tensor)>,
        rng: &mut StdRng,
        cut: Option<Cut>,
        part: &Part,
    ) -> Result<Forward, RunError> {
        self.run(params, inputs, rng, None, cut, Some(part))
    }

    /// `forward`, adding each step's wall time (seconds, by step index) to `times`.
    pub fn forward_timed(
        &self,
        params: &Params,
        inputs: Vec<(usize, Tensor)>,
        rng: &mut StdRng,
        times: Option<&mut Vec<f64>>,
    ) -> Result<Forward, RunError> {
        self.run(params, inputs, rng, times, None, None)
    }

    fn run(
        &self,
        params: &Params,
        inputs: Vec<(usize, Tensor)>,
        rng: &mut StdRng,
        mut times: Option<&mut Vec<f64>>,
        cut: Option<Cut>,
        part: Option<&Part>,
    ) -> Result<Forward, RunError> {
        let whole;
        let part = match part {
            Some(p) => p,
            None => {
                let rows = inputs
                    .first()
                    .map_or(Ok(0), |(_, t)| t.dim(0))
                    .map_err(run_err)?;
                whole = Part::of(rows, None);
                &whole
            }
        };
        let mut leaves: Vec<(usize, Var)> = vec![];
        let train = self.mode == Mode::Train;
        let mixed = self.compute != DType::F32;
        let cast_params;
        let params = if mixed {
            cast_params = params.cast_to(self.compute).map_err(run_err)?;
            &cast_params
        } else {
            params
        };
        let mut values: Vec<Option<Tensor>> = vec![None; self.n_values];
        for (slot, t) in inputs {
            let t = if mixed && t.dtype() == DType::F32 {
                t.to_dtype(self.compute).map_err(run_err)?
            } else {
                t
            };
            values[slot] = Some(t);
        }
        for (k, st) in self.steps.iter().enumerate() {
            let started = times.is_some().then(std::time::Instant::now);
            let err = |e: candle_core::Error| RunError::Step {
                node: st.name.clone(),
                message: e.to_string(),
            };
            let outside = cut.is_some_and(|c| c.outside.get(k).copied().unwrap_or(true));
            let args: Vec<&Tensor> = st
                .args
                .iter()
                .map(
                    |a| match leaves.iter().find(|(s, _)| s == a).filter(|_| outside) {
                        Some((_, v)) => Some(v.as_tensor()),
                        None => values[*a].as_ref(),
                    },
                )
                .collect::<Option<_>>()
                .ok_or_else(|| RunError::Step {
                    node: st.name.clone(),
                    message: "operand not computed".into(),
                })?;
            // Per operand: 1 at real positions, 0 at padding (token id 0), f32 [B, T].
            let valid = st
                .masks
                .iter()
                .map(|m| match m.and_then(|m| values[m].as_ref()) {
                    Some(ids) => ids
                        .ne(&ids.zeros_like()?)
                        .and_then(|m| m.to_dtype(self.compute))
                        .map(Some),
                    None => Ok(None),
                })
                .collect::<candle_core::Result<Vec<_>>>()
                .map_err(err)?;
            let y = self
                .step(st, &args, &valid, params, (train, rng, part))
                .map_err(err)?;
            if cut.is_some_and(|c| c.boundary.contains(&st.out)) {
                let leaf = Var::from_tensor(&y.detach()).map_err(err)?;
                leaves.push((st.out, leaf));
            }
            values[st.out] = Some(y);
            if let (Some(t), Some(s)) = (times.as_deref_mut(), started) {
                if t.len() < self.steps.len() {
                    t.resize(self.steps.len(), 0.0);
                }
                t[k] += s.elapsed().as_secs_f64();
            }
        }
        if mixed {
            // Losses and metrics read f32.
            let read = self.heads.iter().map(|(_, s)| *s);
            for slot in read.chain(self.losses.iter().flat_map(|l| l.slots.iter().copied())) {
                if let Some(v) = values[slot].as_mut() {
                    *v = v.to_dtype(DType::F32).map_err(run_err)?;
                }
            }
        }
        Ok(Forward { values, leaves })
    }

    fn step(
        &self,
        st: &super::Step,
        args: &[&Tensor],
        valid: &[Option<Tensor>],
        params: &Params,
        (train, rng, part): (bool, &mut StdRng, &Part),
    ) -> candle_core::Result<Tensor> {
        let p = |name: &str| -> candle_core::Result<&Tensor> {
            params.get(&format!("{}.{name}", st.params.as_deref().unwrap_or("")))
        };
        let x = args[0];
        let mask = |i: usize| valid.get(i).and_then(Option::as_ref);
        match &st.op {
            Op::Input(_) => Ok(x.clone()),
            Op::Dense(_) | Op::Conv(_) | Op::MergedDense(_) => self.linear_or_conv(st, x, params),
            Op::Slice(Slice { start, len }) => x.narrow(x.rank() - 1, *start, *len),
            Op::ConvTranspose2d(ConvTranspose2d {
                kernel,
                stride,
                padding,
                ..
            }) => {
                let (w, b) = (p(conv::WEIGHT)?, p(conv::BIAS)?);
                calls::conv_transpose2d(x, w, b, *kernel, *stride, *padding)
            }
            Op::Upsample(Upsample { scale }) => {
                if x.rank() == 4 && crate::kernels::native(x) {
                    x.contiguous()?
                        .apply_op1(crate::kernels::cpu_ops::Upsample2d { scale: *scale })
                } else if x.rank() == 3 {
                    x.upsample_nearest1d(x.dim(2)? * scale)
                } else {
                    x.upsample_nearest2d(x.dim(2)? * scale, x.dim(3)? * scale)
                }
            }
            Op::Pool(Pool { kind, size, stride }) => calls::pool(x, *kind, size, stride, train),
            Op::GlobalPool(gp @ GlobalPool { axis: Some(_), .. }) => {
                let Some(a) = gp.axis_index(x.rank() - 1) else {
                    candle_core::bail!("pool axis out of range")
                };
                let max = gp.kind == crate::ir::PoolKind::Max;
                calls::pool_axis(x, a + 1, max, mask(0))
            }
            Op::PositionEmbedding(_) => x.broadcast_add(p(position_embedding::WEIGHT)?),
            Op::Residual(_) => x.add(args[1]),
            Op::Select(s) => {
                let dims = per_sample_dims(x);
                match s.resolve(&dims) {
                    Some((a, Some(i))) => x.narrow(a + 1, i, 1)?.squeeze(a + 1),
                    _ => candle_core::bail!("select out of range"),
                }
            }
            Op::Mixture(Mixture { experts }) => calls::mixture(
                &args[..*experts],
                args[*experts],
                p(mixture::WEIGHT)?,
                p(mixture::BIAS)?,
            ),
            Op::Attention(a) => {
                // Hugging Face masks keys only; Keras masks query rows too.
                let masks = (mask(0).filter(|_| !a.hf), mask(0));
                self.attention(st, x, x, a, masks, params, (train, rng, part))
            }
            Op::Attend(Attend(a)) => {
                // A vector query is a sequence of one.
                let vector = x.rank() == 2;
                let q = if vector { x.unsqueeze(1)? } else { x.clone() };
                let qm = if vector { None } else { mask(0) };
                let y = self.attention(
                    st,
                    &q,
                    args[1],
                    a,
                    (qm, mask(1)),
                    params,
                    (train, rng, part),
                )?;
                if vector {
                    y.squeeze(1)
                } else {
                    Ok(y)
                }
            }
            Op::GlobalPool(GlobalPool { kind, axis: None }) => {
                let flat = x.flatten_from(2)?;
                let max = *kind == crate::ir::PoolKind::Max;
                if crate::kernels::native(&flat) {
                    flat.contiguous()?
                        .apply_op1(crate::kernels::cpu_ops::GlobalPool { max })
                } else if max {
                    flat.max(2)
                } else {
                    flat.mean(2)
                }
            }
            Op::Flatten(_) => x.flatten_from(1),
            Op::Reshape(_) => {
                let mut shape = vec![x.dim(0)?];
                shape.extend(st.ty.dims().unwrap_or_default());
                x.reshape(shape)
            }
            Op::Permute(Permute { axes }) => {
                let mut perm = vec![0];
                perm.extend(axes.iter().copied());
                x.permute(perm)
            }
            Op::Embedding(Embedding { dim, .. }) => {
                let (b, t) = x.dims2()?;
                p(embedding::WEIGHT)?
                    .index_select(&x.flatten_all()?, 0)?
                    .reshape((b, t, *dim))
            }
            Op::Rnn(r) => {
                let valid = mask(0);
                let dirs = r.directions();
                let outs = dirs
                    .iter()
                    .enumerate()
                    .map(|(d, names)| {
                        let w = match r.cell {
                            RnnCell::Lstm => RnnWeights {
                                w_ih: p(names.weight_ih)?,
                                w_hh: p(names.weight_hh)?,
                                b_ih: p(names.bias)?,
                                b_hh: None,
                            },
                            RnnCell::Gru => RnnWeights {
                                w_ih: p(names.weight_ih)?,
                                w_hh: p(names.weight_hh)?,
                                b_ih: p(names.bias_ih)?,
                                b_hh: Some(p(names.bias_hh)?),
                            },
                        };
                        let run = calls::RnnRun {
                            cell: r.cell,
                            units: r.units,
                            hoisted: r.hoisted,
                            reverse: d == 1,
                            sequences: r.return_sequences,
                            fused: r.hoisted
                                && valid.is_none()
                                && crate::kernels::sequence_op(x, r.units),
                            train,
                            valid,
                            zero_masked: r.bidirectional,
                        };
                        calls::rnn(x, &w, &run)
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                match outs.as_slice() {
                    [one] => Ok(one.clone()),
                    _ => Tensor::cat(&outs, outs[0].rank() - 1),
                }
            }
            Op::Dropout(Dropout { rate }) if train => {
                let per = x.elem_count() / x.dim(0)?.max(1);
                let keep = 1.0 - *rate as f32;
                let mask: Vec<f32> = part.keep(per, || {
                    if rng.random::<f32>() < keep {
                        1.0 / keep
                    } else {
                        0.0
                    }
                });
                x.mul(&Tensor::from_vec(mask, x.dims(), x.device())?.to_dtype(x.dtype())?)
            }
            Op::Dropout(_) => Ok(x.clone()),
            Op::BatchNorm(BatchNorm { eps, momentum }) => {
                let (rm, rv) = (p(norm::RUNNING_MEAN)?, p(norm::RUNNING_VAR)?);
                let (w, b) = (p(norm::WEIGHT)?, p(norm::BIAS)?);
                let (y, stats) = if train && part.split() {
                    let (y, stats) =
                        crate::distributed::batch_norm::batch_norm(x, w, b, *eps, part)?;
                    (y, Some(stats))
                } else {
                    calls::batch_norm(x, w, b, rm, rv, *eps, train)?
                };
                if let Some((m, v)) = stats {
                    let prefix = st.params.as_deref().unwrap_or("");
                    let var = |name: &str| params.vars.get(&format!("{prefix}.{name}"));
                    if let (Some(rmv), Some(rvv)) =
                        (var(norm::RUNNING_MEAN), var(norm::RUNNING_VAR))
                    {
                        // In the variables' own dtype (f32 under mixed precision).
                        let ema = |run: &Var, batch: Tensor| -> candle_core::Result<()> {
                            let batch = batch.to_dtype(run.dtype())?;
                            run.set(
                                &((run.as_tensor() * *momentum)? + (batch * (1.0 - momentum))?)?,
                            )
                        };
                        ema(rmv, m)?;
                        ema(rvv, v)?;
                    }
                }
                Ok(y)
            }
            Op::LayerNorm(LayerNorm { eps }) => {
                calls::layer_norm(x, p(norm::WEIGHT)?, p(norm::BIAS)?, *eps, train)
            }
            Op::Act(a) => calls::act(x, *a, train),
            Op::Concat(Concat { axis }) => {
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
            Op::Weighted(Weighted { fixed }) => {
                let w: Vec<Tensor> = match fixed {
                    Some(ws) => ws
                        .iter()
                        .map(|w| Tensor::new(*w as f32, x.device())?.to_dtype(x.dtype()))
                        .collect::<candle_core::Result<_>>()?,
                    None => {
                        let sm = candle_nn::ops::softmax(p(fusion::LOGITS)?, 0)?;
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
            Op::Hf(h) => hf_step(h, x, &p),
            Op::Gated(_) => {
                let (a, b) = (args[0], args[1]);
                let g = candle_nn::ops::sigmoid(&calls::dense(
                    &Tensor::cat(&[a, b], 1)?,
                    p(fusion::WEIGHT)?,
                    p(fusion::BIAS)?,
                )?)?;
                g.mul(a)? + (g.ones_like()? - &g)?.mul(b)?
            }
        }
    }
}

impl Program {
    /// Self- or cross-attention of `query` over `context`: (query, key) padding masks.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        st: &super::Step,
        query: &Tensor,
        context: &Tensor,
        a: &Attention,
        masks: (Option<&Tensor>, Option<&Tensor>),
        params: &Params,
        (train, rng, part): (bool, &mut StdRng, &Part),
    ) -> candle_core::Result<Tensor> {
        use crate::ir::ops::attention as n;
        let own = st.params.as_deref().unwrap_or("");
        let p = |name: &str| params.get(&format!("{own}.{name}"));
        let w = calls::AttentionWeights {
            q: (p(n::QUERY_WEIGHT)?, p(n::QUERY_BIAS)?),
            k: (p(n::KEY_WEIGHT)?, p(n::KEY_BIAS)?),
            v: (p(n::VALUE_WEIGHT)?, p(n::VALUE_BIAS)?),
            out: if a.hf {
                None
            } else {
                Some((p(n::OUT_WEIGHT)?, p(n::OUT_BIAS)?))
            },
        };
        let drop = if train && a.dropout > 0.0 {
            let (b, tq, tk) = (query.dim(0)?, query.dim(1)?, context.dim(1)?);
            let u: Vec<f32> = part.keep(a.heads * tq * tk, || rng.random::<f32>());
            debug_assert_eq!(u.len(), b * a.heads * tq * tk);
            Some((
                a.dropout,
                Tensor::from_vec(u, (b, a.heads, tq, tk), query.device())?,
            ))
        } else {
            None
        };
        let dims = (a.heads, a.key_dim, a.value_dim);
        calls::attention(query, context, &w, dims, masks, a.causal, drop, train)
    }

    /// The steps whose [`Kernel`] is a GEMM or a convolution, a batch norm
    /// folded into their weights where the plan says so.
    fn linear_or_conv(
        &self,
        st: &super::Step,
        x: &Tensor,
        params: &Params,
    ) -> candle_core::Result<Tensor> {
        let get = |prefix: &str, name: &str| params.get(&format!("{prefix}.{name}"));
        let weights = |bn: &FoldedBn| weights(st, params, bn);
        match (&st.kernel, &st.op) {
            (Kernel::Linear { relu, bn }, _) => {
                let (w, b) = weights(bn)?;
                calls::dense_act(x, &w, &b, *relu)
            }
            (Kernel::MergedLinear { parts }, _) => {
                let part = |name: &str| -> candle_core::Result<Vec<Tensor>> {
                    parts
                        .iter()
                        .map(|(pre, _)| get(pre, name).cloned())
                        .collect()
                };
                let (ws, bs) = (part(dense::WEIGHT)?, part(dense::BIAS)?);
                calls::dense(x, &Tensor::cat(&ws, 0)?, &Tensor::cat(&bs, 0)?)
            }
            (Kernel::Conv(k), Op::Conv(c)) => {
                let (w, b) = weights(&k.bn)?;
                let (native, train) = (
                    k.im2col && crate::kernels::native(x),
                    self.mode == Mode::Train,
                );
                // A fused max pool has no autograd backward: in training
                // (which the planned executor runs fused) and off our
                // kernels the pool runs after the convolution.
                let fold = k.pool && native && !train;
                let y = if native {
                    let geometry = (c.stride[0], c.dilation[0]);
                    calls::conv_im2col(x, (&w, &b), geometry, &k.pads, (k.relu, k.mean, fold))?
                } else if train
                    && c.groups == 1
                    && crate::kernels::gpu_path(x)
                    && super::columns::pays(x, &w)
                {
                    let geometry = (c.stride.as_slice(), c.dilation.as_slice());
                    super::columns::conv_columns(x, (&w, &b), geometry, &k.pads, (k.relu, k.mean))?
                } else {
                    let geometry = (c.stride.as_slice(), c.dilation.as_slice(), c.groups);
                    calls::conv_candle(x, (&w, &b), geometry, &k.pads, (k.relu, k.mean))?
                };
                if k.pool && !fold {
                    calls::pool(&y, crate::ir::PoolKind::Max, &[2, 2], &[2, 2], train)
                } else {
                    Ok(y)
                }
            }
            (k, _) => candle_core::bail!("kernel `{k}` does not run `{}`", st.op),
        }
    }
}

/// A dense or conv step's (weight, bias), with a batch norm folded in where
/// the plan says so.
pub(super) fn weights(
    st: &super::Step,
    params: &Params,
    bn: &FoldedBn,
) -> candle_core::Result<(Tensor, Tensor)> {
    let get = |prefix: &str, name: &str| params.get(&format!("{prefix}.{name}"));
    let own = st.params.as_deref().unwrap_or("");
    let (w, b) = (get(own, dense::WEIGHT)?, get(own, dense::BIAS)?);
    match bn {
        Some((pre, eps)) => calls::fold_bn(
            w,
            b,
            get(pre, norm::WEIGHT)?,
            get(pre, norm::BIAS)?,
            get(pre, norm::RUNNING_MEAN)?,
            get(pre, norm::RUNNING_VAR)?,
            *eps,
        ),
        None => Ok((w.clone(), b.clone())),
    }
}

/// The parts of a `pretrained` encoder, from candle's differentiable ops.
fn hf_step<'a>(
    h: &crate::ir::HfOp,
    x: &Tensor,
    p: &dyn Fn(&str) -> candle_core::Result<&'a Tensor>,
) -> candle_core::Result<Tensor> {
    use crate::ir::ops::hf;
    use crate::ir::HfOp;
    match h {
        HfOp::PositionRows { .. } => {
            let t = x.dim(1)?;
            x.broadcast_add(&p(hf::WEIGHT)?.narrow(0, 0, t)?)
        }
        HfOp::SegmentRow { .. } => x.broadcast_add(&p(hf::WEIGHT)?.narrow(0, 0, 1)?),
        HfOp::ClsAndPositions => {
            let (b, _, d) = x.dims3()?;
            let cls = p(hf::CLS_TOKEN)?.broadcast_as((b, 1, d))?;
            Tensor::cat(&[&cls.to_dtype(x.dtype())?, x], 1)?.broadcast_add(p(hf::POSITIONS)?)
        }
        HfOp::Normalize { mean, std } => {
            let c = mean.len();
            let m: Vec<f32> = mean.iter().map(|v| *v as f32).collect();
            let s: Vec<f32> = std.iter().map(|v| *v as f32).collect();
            let m = Tensor::from_vec(m, (1, c, 1, 1), x.device())?.to_dtype(x.dtype())?;
            let s = Tensor::from_vec(s, (1, c, 1, 1), x.device())?.to_dtype(x.dtype())?;
            x.broadcast_sub(&m)?.broadcast_div(&s)
        }
    }
}

/// The per-sample dims of a batch tensor, for rules that resolve axes at run time.
fn per_sample_dims(x: &Tensor) -> Vec<crate::ir::Dim> {
    x.dims()[1..]
        .iter()
        .map(|d| crate::ir::Dim::Fixed(*d))
        .collect()
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
