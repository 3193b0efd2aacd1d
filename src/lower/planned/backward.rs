//! The backward of one planned step: its kernel's gradient from the
//! gradient of its output, added to its operands' gradient buffers, and its
//! weights' gradients added to their entries by key. The order of the steps
//! and the buffers' lifetimes are [`super::train`]'s.

use super::layers;
use super::run::{self, Arena, Input, Saved};
use super::schedule::{Loc, PKind, PStep};
use super::Packed;
use crate::ir::ops::activation::Act;
use crate::ir::ops::{dense, embedding, fusion, mixture, norm, position_embedding};
use crate::ir::{Ew, Op, RnnCell};
use crate::kernels::cpu_ops::{relu_mask, GlobalPool, MaxPool2d, Upsample2d};
use crate::kernels::layer_norm::LayerNormTrain;
use crate::kernels::{conv::Conv2dIm2col, gelu, gru::GruSeq, host, linear, lstm::LstmSeq};
use crate::lower::Params;
use candle_core::Tensor;
use std::collections::HashMap;

/// The backward of one step.
pub(super) struct Back<'a> {
    pub(super) ps: &'a PStep,
    pub(super) arena: &'a Arena<'a>,
    pub(super) held: (&'a [Option<Input<'a>>], usize),
    pub(super) grad: &'a [Option<usize>],
    /// The gradient buffer of the step's output.
    pub(super) gy: usize,
}

impl Back<'_> {
    fn value(&self, i: usize) -> Result<&[f32], String> {
        match self.ps.args.get(i) {
            // SAFETY: a value live at this step's backward (see `kept`).
            Some(Loc::Buffer(b)) => Ok(unsafe { self.arena.get(*b) }),
            Some(Loc::Input(k)) => match &self.held.0[*k] {
                Some(Input::F32(v)) => Ok(v),
                _ => Err("an f32 operand holds token ids".into()),
            },
            None => Err(format!("no operand {i}")),
        }
    }

    /// The token ids of input `k`, whose zeros pad an operand.
    fn ids(&self, k: Option<usize>) -> Result<Option<&[u32]>, String> {
        match k.map(|k| &self.held.0[k]) {
            None => Ok(None),
            Some(Some(Input::Ids(v))) => Ok(Some(v)),
            Some(_) => Err("a padding mask of f32 values".into()),
        }
    }

    fn out(&self) -> &[f32] {
        // SAFETY: the output, kept for this backward where it reads it.
        unsafe { self.arena.get(self.ps.out) }
    }

    /// The gradient buffer of operand `i`, if it needs one.
    #[allow(clippy::mut_from_ref)]
    fn dx(&self, i: usize) -> Option<&mut [f32]> {
        match self.ps.args.get(i) {
            // SAFETY: the operand's gradient, written by this step only now.
            Some(Loc::Buffer(b)) => self.grad[*b].map(|g| unsafe { self.arena.get_mut(g) }),
            _ => None,
        }
    }

    pub(super) fn run(
        &self,
        st: &crate::lower::Step,
        packed: &Packed,
        params: &Params,
        saved: &mut Saved,
        pgrads: &mut HashMap<String, Vec<f32>>,
    ) -> Result<(), String> {
        let prefix = st.params.as_deref().unwrap_or("");
        let key = |name: &str| format!("{prefix}.{name}");
        let weight = |name: &str| -> Result<Tensor, String> {
            params.get(&key(name)).cloned().map_err(|e| e.to_string())
        };
        // A weight's gradient out of the map while a kernel adds to it.
        let mut take = |name: &str, len: usize| -> Vec<f32> {
            pgrads.remove(&key(name)).unwrap_or_else(|| vec![0.0; len])
        };
        let mut put = vec![];
        // SAFETY: the output's gradient, dead after this step.
        let gy = unsafe { self.arena.get_mut(self.gy) };
        let batch = self.held.1;
        let host_err = |e: candle_core::Error| e.to_string();
        match (&self.ps.kind, packed) {
            (PKind::Linear { relu, i, o }, _) => {
                if *relu {
                    relu_mask(gy, self.out());
                }
                let x = self.value(0)?;
                let w = weight(dense::WEIGHT)?;
                let w = host::host(&w).map_err(host_err)?;
                let (mut dw, mut db) = (take(dense::WEIGHT, o * i), take(dense::BIAS, *o));
                let dims = (x.len() / i, *i, *o);
                linear::backward_into(x, &w, gy, dims, self.dx(0), &mut dw, &mut db);
                put.extend([(dense::WEIGHT, dw), (dense::BIAS, db)]);
            }
            (
                PKind::Conv {
                    stride,
                    dilation,
                    pad,
                    relu,
                    pool,
                    x: xd,
                    w: wd,
                    ..
                },
                Packed::Conv { w, .. },
            ) => {
                // With a fused pool the output is pooled: where it is not
                // positive, neither was the relu's output at the maximum.
                if *relu && *pool {
                    relu_mask(gy, self.out());
                }
                let op = Conv2dIm2col {
                    stride: *stride,
                    dilation: *dilation,
                    pad: *pad,
                    relu: false,
                    mean: false,
                    pool: *pool,
                };
                let w = w.view()?;
                let (mut dw, mut db) = (take(dense::WEIGHT, w.len()), take(dense::BIAS, wd[0]));
                let (x, xd) = (self.value(0)?, [batch, xd[0], xd[1], xd[2]]);
                // The padded images the forward kept, if it ran direct.
                let kept = (!saved.grids.is_empty()).then_some(&saved.grids[..]);
                if *pool {
                    let dy = (&gy[..], &saved.arg[..]);
                    let x = ((x, &xd[..]), kept);
                    op.backward_pooled_into(x, (&w, wd), dy, self.dx(0), &mut dw, &mut db)
                } else if *relu {
                    let dy = (&mut gy[..], self.out());
                    let x = ((x, &xd[..]), kept);
                    op.backward_relu_into(x, (&w, wd), dy, self.dx(0), (&mut dw, &mut db))
                } else {
                    op.backward_into((x, &xd), (&w, wd), gy, self.dx(0), &mut dw, &mut db)
                }
                .map_err(host_err)?;
                put.extend([(dense::WEIGHT, dw), (dense::BIAS, db)]);
            }
            (PKind::MaxPool { k, s, hw }, _) => {
                if let Some(dx) = self.dx(0) {
                    MaxPool2d::new(*k, *s, true).backward_into(&saved.arg, *hw, gy, dx)
                }
            }
            (PKind::GlobalPool { max, s }, _) => {
                let x = if *max { self.value(0)? } else { &[] };
                if let Some(dx) = self.dx(0) {
                    GlobalPool { max: *max }.backward_into((x, self.out()), *s, gy, dx)
                }
            }
            (PKind::Act(a), _) => {
                if let Some(dx) = self.dx(0) {
                    act_grad(*a, (self.value(0)?, self.out()), gy, dx)
                }
            }
            (PKind::Narrow { row, start, len }, _) => {
                if let Some(dx) = self.dx(0) {
                    for (d, g) in dx.chunks_mut(*row).zip(gy.chunks(*len)) {
                        add(&mut d[*start..start + len], g);
                    }
                }
            }
            (PKind::Concat { blocks }, _) => {
                let whole: usize = blocks.iter().sum();
                let mut at = 0;
                for (k, n) in blocks.iter().enumerate() {
                    if let Some(dx) = self.dx(k) {
                        for (d, g) in dx.chunks_mut(*n).zip(gy.chunks(whole)) {
                            add(d, &g[at..at + n]);
                        }
                    }
                    at += n;
                }
            }
            (PKind::Embedding { dim }, Packed::Table(table)) => {
                let Some(Loc::Input(k)) = self.ps.args.first() else {
                    return Err("token ids that are not an input".into());
                };
                let Some(Input::Ids(ids)) = &self.held.0[*k] else {
                    return Err("an embedding of f32 values".into());
                };
                let mut dt = take(embedding::WEIGHT, table.len());
                for (g, id) in gy.chunks(*dim).zip(ids) {
                    let at = *id as usize * dim;
                    add(
                        dt.get_mut(at..at + dim)
                            .ok_or_else(|| format!("token id {id} outside the table"))?,
                        g,
                    );
                }
                put.push((embedding::WEIGHT, dt));
            }
            (
                PKind::Rnn {
                    cell,
                    units,
                    directions,
                    sequences,
                    t,
                    i,
                    ..
                },
                _,
            ) => {
                let Op::Rnn(r) = &st.op else {
                    return Err(format!("a recurrence kernel on `{}`", st.op));
                };
                let (h, t, x) = (*units, *t, self.value(0)?);
                let lstm = *cell == RnnCell::Lstm;
                let g = if lstm { 4 } else { 3 };
                let valid = run::valid_steps(self.ps, self.held.0)?;
                let mut dx = self.dx(0);
                for (d, names) in r.directions().iter().enumerate() {
                    let (hs, acts, cs) =
                        saved.rnn.get_mut(d).ok_or("the forward kept no states")?;
                    let dhs = unplace(gy, (d, h, *directions, *sequences), (batch, t));
                    let w_hh = weight(names.weight_hh)?;
                    let w_hh = host::host(&w_hh).map_err(host_err)?;
                    let mut dwhh = take(names.weight_hh, g * h * h);
                    // The input projections' gradient [B, T, g·H].
                    let gru_dxw;
                    let dxw: &[f32] = if lstm {
                        let op = LstmSeq::new(h, d == 1, true).with_valid(valid.clone());
                        // The saved activations become the gates' gradient.
                        op.backward_into(&w_hh, (batch, t), acts, (cs, hs), &dhs, &mut dwhh);
                        acts
                    } else {
                        let mut dbhh = take(names.bias_hh, 3 * h);
                        let mut dxw = vec![0f32; batch * t * 3 * h];
                        let op = GruSeq::new(h, d == 1, true);
                        let saved = (&acts[..], &hs[..]);
                        op.backward_into(
                            &w_hh,
                            (batch, t),
                            saved,
                            &dhs,
                            &mut dxw,
                            (&mut dwhh, &mut dbhh),
                        );
                        put.push((names.bias_hh, dbhh));
                        gru_dxw = dxw;
                        &gru_dxw
                    };
                    let w_ih = weight(names.weight_ih)?;
                    let w_ih = host::host(&w_ih).map_err(host_err)?;
                    let bias = if lstm { names.bias } else { names.bias_ih };
                    let (mut dwih, mut db) = (take(names.weight_ih, g * h * i), take(bias, g * h));
                    let dims = (batch * t, *i, g * h);
                    linear::backward_into(
                        x,
                        &w_ih,
                        dxw,
                        dims,
                        dx.as_deref_mut(),
                        &mut dwih,
                        &mut db,
                    );
                    put.extend([(names.weight_hh, dwhh), (names.weight_ih, dwih), (bias, db)]);
                }
            }
            (PKind::Upsample { scale, hw }, _) => {
                if let Some(dx) = self.dx(0) {
                    Upsample2d { scale: *scale }.backward_into(gy, *hw, dx)
                }
            }
            (PKind::Gated { d }, Packed::Gemm { wt, b }) => {
                let w = weight(fusion::WEIGHT)?;
                let w = host::host(&w).map_err(host_err)?;
                let (mut dw, mut db) = (take(fusion::WEIGHT, w.len()), take(fusion::BIAS, *d));
                let ab = (self.value(0)?, self.value(1)?);
                let grads = layers::gated_grads(ab, (wt, b, &w), *d, gy, (&mut dw, &mut db));
                for (k, g) in [grads.0, grads.1].iter().enumerate() {
                    if let Some(dx) = self.dx(k) {
                        add(dx, g);
                    }
                }
                put.extend([(fusion::WEIGHT, dw), (fusion::BIAS, db)]);
            }
            (PKind::Weighted, Packed::Weights(w)) => {
                let n = self.ps.args.len();
                for (k, wk) in w.iter().enumerate() {
                    if let Some(dx) = self.dx(k) {
                        dx.iter_mut().zip(gy.iter()).for_each(|(d, g)| *d += wk * g);
                    }
                }
                if let Op::Weighted(crate::ir::Weighted { fixed: None }) = &st.op {
                    // Learned weights (softmax of logits): dwₖ = Σ gy·xₖ.
                    let dwk = (0..n)
                        .map(|k| Ok(gy.iter().zip(self.value(k)?).map(|(g, x)| g * x).sum()))
                        .collect::<Result<Vec<f32>, String>>()?;
                    let dot: f32 = dwk.iter().zip(w).map(|(d, w)| d * w).sum();
                    let mut dl = take(fusion::LOGITS, n);
                    for ((l, d), w) in dl.iter_mut().zip(&dwk).zip(w) {
                        *l += w * (d - dot);
                    }
                    put.push((fusion::LOGITS, dl));
                }
            }
            (PKind::Elementwise(e @ (Ew::Max | Ew::Min)), _) => {
                let xs = (0..self.ps.args.len())
                    .map(|k| self.value(k))
                    .collect::<Result<Vec<_>, _>>()?;
                let grads = layers::extremum_grads(&xs, *e == Ew::Max, gy);
                for (k, g) in grads.iter().enumerate() {
                    if let Some(dx) = self.dx(k) {
                        add(dx, g);
                    }
                }
            }
            (PKind::Mixture { experts, gate }, Packed::Gemm { wt, b }) => {
                let ex = (0..*experts)
                    .map(|k| self.value(k))
                    .collect::<Result<Vec<_>, _>>()?;
                let gx = self.value(*experts)?;
                let p = layers::gate_probs(gx, (wt, b), *experts);
                let len = gy.len() / batch.max(1);
                for k in 0..*experts {
                    // expertₖ's share: pₖ·gy per sample.
                    let Some(dx) = self.dx(k) else { continue };
                    for (s, (d, g)) in dx.chunks_mut(len).zip(gy.chunks(len)).enumerate() {
                        let pk = p[s * experts + k];
                        d.iter_mut().zip(g).for_each(|(d, g)| *d += pk * g);
                    }
                }
                let dz = layers::mixture_gate_grad(&ex, &p, gy);
                let w = weight(mixture::WEIGHT)?;
                let w = host::host(&w).map_err(host_err)?;
                let (mut dw, mut db) = (
                    take(mixture::WEIGHT, w.len()),
                    take(mixture::BIAS, *experts),
                );
                let dims = (batch, *gate, *experts);
                linear::backward_into(gx, &w, &dz, dims, self.dx(*experts), &mut dw, &mut db);
                put.extend([(mixture::WEIGHT, dw), (mixture::BIAS, db)]);
            }
            (PKind::Elementwise(e), _) => {
                let n = self.ps.args.len();
                for k in 0..n {
                    let Some(dx) = self.dx(k) else { continue };
                    match e {
                        Ew::Add => add(dx, gy),
                        Ew::Mean => {
                            let s = 1.0 / n as f32;
                            dx.iter_mut().zip(gy.iter()).for_each(|(d, g)| *d += g * s)
                        }
                        _ => {
                            // The product of the other operands.
                            let mut p = gy.to_vec();
                            for j in (0..n).filter(|j| *j != k) {
                                p.iter_mut().zip(self.value(j)?).for_each(|(p, v)| *p *= v);
                            }
                            add(dx, &p);
                        }
                    }
                }
            }
            (PKind::BatchNorm { eps, c, s, .. }, _) => {
                let gamma = weight(norm::WEIGHT)?;
                let gamma = host::host(&gamma).map_err(host_err)?;
                let (mut dg, mut db) = (take(norm::WEIGHT, *c), take(norm::BIAS, *c));
                let x = self.value(0)?;
                let op = crate::kernels::batch_norm::BatchNormTrain {
                    eps: *eps,
                    stats: Default::default(),
                };
                let dims = (x.len() / (c * s).max(1), *c, *s);
                op.backward_into(x, dims, &gamma, gy, (self.dx(0), &mut dg, &mut db));
                put.extend([(norm::WEIGHT, dg), (norm::BIAS, db)]);
            }
            (PKind::Dropout { .. }, _) => {
                if let Some(dx) = self.dx(0) {
                    let pairs = dx.iter_mut().zip(gy.iter().zip(&saved.mask));
                    pairs.for_each(|(d, (g, m))| *d += g * m);
                }
            }
            (PKind::PositionAdd, Packed::Table(table)) => {
                let mut dt = take(position_embedding::WEIGHT, table.len());
                for g in gy.chunks(dt.len()) {
                    add(&mut dt, g);
                }
                if let Some(dx) = self.dx(0) {
                    add(dx, gy);
                }
                put.push((position_embedding::WEIGHT, dt));
            }
            (PKind::LayerNorm { eps, d }, _) => {
                let gamma = weight(norm::WEIGHT)?;
                let gamma = host::host(&gamma).map_err(host_err)?;
                let (mut dg, mut db) = (take(norm::WEIGHT, *d), take(norm::BIAS, *d));
                let (x, op) = (self.value(0)?, LayerNormTrain { eps: *eps });
                let mut scratch;
                let dx = match self.dx(0) {
                    Some(dx) => dx,
                    None => {
                        scratch = vec![0f32; x.len()];
                        &mut scratch[..]
                    }
                };
                op.backward_into(x, &gamma, gy, dx, (&mut dg, &mut db));
                put.extend([(norm::WEIGHT, dg), (norm::BIAS, db)]);
            }
            (PKind::MeanSteps { t, d }, _) => {
                let ids = self.ids(self.ps.masks.first().copied().flatten())?;
                if let Some(dx) = self.dx(0) {
                    layers::mean_steps_backward(gy, (*t, *d), ids, dx)
                }
            }
            (PKind::Permute { dims, axes }, _) => {
                if let Some(dx) = self.dx(0) {
                    // The inverse move: output axis i goes back to axes[i].
                    let moved: Vec<usize> = axes.iter().map(|a| dims[*a]).collect();
                    let mut back = vec![0; axes.len()];
                    for (i, a) in axes.iter().enumerate() {
                        back[*a] = i;
                    }
                    let mut g = vec![0f32; gy.len()];
                    layers::permute(gy, &moved, &back, &mut g);
                    add(dx, &g);
                }
            }
            (PKind::Select { n, i, inner }, _) => {
                if let Some(dx) = self.dx(0) {
                    for (d, g) in dx.chunks_mut(n * inner).zip(gy.chunks(*inner)) {
                        add(&mut d[i * inner..(i + 1) * inner], g);
                    }
                }
            }
            (PKind::Attention { geo: g, hf }, _) => {
                use crate::ir::ops::attention as n;
                let (tq, tk) = (g.tq, g.tk);
                let (hk, hv) = (g.heads * g.kd, g.heads * g.vd);
                // Self-attention reads one operand as query and context.
                let c = usize::from(self.ps.args.len() > 1);
                let (query, context) = (self.value(0)?, self.value(c)?);
                let [dq, dk, dv] = if *hf {
                    layers::attention_grads(g, None, (&mut [], &mut []), &saved.attn, batch, gy)?
                } else {
                    let wo = weight(n::OUT_WEIGHT)?;
                    let wo = host::host(&wo).map_err(host_err)?;
                    let (mut dw, mut db) = (
                        take(n::OUT_WEIGHT, wo.len()),
                        take(n::OUT_BIAS, wo.len() / hv),
                    );
                    let dwo = (&mut dw[..], &mut db[..]);
                    let r = layers::attention_grads(g, Some(&wo), dwo, &saved.attn, batch, gy)?;
                    put.extend([(n::OUT_WEIGHT, dw), (n::OUT_BIAS, db)]);
                    r
                };
                let (rq, rk) = (batch * tq, batch * tk);
                let projections = [
                    (
                        n::QUERY_WEIGHT,
                        n::QUERY_BIAS,
                        (query, 0),
                        dq,
                        (rq, query.len() / rq, hk),
                    ),
                    (
                        n::KEY_WEIGHT,
                        n::KEY_BIAS,
                        (context, c),
                        dk,
                        (rk, context.len() / rk, hk),
                    ),
                    (
                        n::VALUE_WEIGHT,
                        n::VALUE_BIAS,
                        (context, c),
                        dv,
                        (rk, context.len() / rk, hv),
                    ),
                ];
                for (wn, bn, (x, xi), dy, dims) in projections {
                    let w = weight(wn)?;
                    let w = host::host(&w).map_err(host_err)?;
                    let (mut dw, mut db) = (take(wn, w.len()), take(bn, dims.2));
                    linear::backward_into(x, &w, &dy, dims, self.dx(xi), &mut dw, &mut db);
                    put.extend([(wn, dw), (bn, db)]);
                }
            }
            (kind, _) => return Err(format!("no planned backward for {kind}")),
        }
        for (name, g) in put {
            pgrads.insert(key(name), g);
        }
        Ok(())
    }
}

fn add(d: &mut [f32], g: &[f32]) {
    d.iter_mut().zip(g).for_each(|(d, g)| *d += g);
}

/// An activation's gradient added to `dx`, from its input and output.
fn act_grad(a: Act, (x, y): (&[f32], &[f32]), g: &[f32], dx: &mut [f32]) {
    crate::kernels::par::widest(
        #[inline(always)]
        || act_grad_loop(a, (x, y), g, dx),
    )
}

#[inline(always)]
fn act_grad_loop(a: Act, (x, y): (&[f32], &[f32]), g: &[f32], dx: &mut [f32]) {
    let sig = |v: f32| 1.0 / (1.0 + crate::kernels::math::exp_fast(-v));
    match a {
        Act::Relu => dx
            .iter_mut()
            .zip(g.iter().zip(y))
            .for_each(|(d, (g, y))| *d += if *y > 0.0 { *g } else { 0.0 }),
        Act::Sigmoid => dx
            .iter_mut()
            .zip(g.iter().zip(y))
            .for_each(|(d, (g, y))| *d += g * y * (1.0 - y)),
        Act::Tanh => dx
            .iter_mut()
            .zip(g.iter().zip(y))
            .for_each(|(d, (g, y))| *d += g * (1.0 - y * y)),
        Act::Gelu => dx
            .iter_mut()
            .zip(g.iter().zip(x))
            .for_each(|(d, (g, x))| *d += g * gelu::gelu_grad(*x)),
        Act::Silu => dx.iter_mut().zip(g.iter().zip(x)).for_each(|(d, (g, x))| {
            let s = sig(*x);
            *d += g * (s + x * s * (1.0 - s))
        }),
        _ => add(dx, g),
    }
}

/// The hidden states' gradient [B, T, H] of direction `d` from the output's
/// (the inverse of [`run::place`]).
fn unplace(
    gy: &[f32],
    (d, h, directions, sequences): (usize, usize, usize, bool),
    (batch, t): (usize, usize),
) -> Vec<f32> {
    let width = directions * h;
    let mut dhs = vec![0f32; batch * t * h];
    if sequences {
        for (r, g) in dhs.chunks_mut(h).zip(gy.chunks(width)) {
            r.copy_from_slice(&g[d * h..(d + 1) * h]);
        }
    } else {
        let last = if d == 1 { 0 } else { t - 1 };
        for (bi, g) in gy.chunks(width).enumerate() {
            dhs[(bi * t + last) * h..][..h].copy_from_slice(&g[d * h..(d + 1) * h]);
        }
    }
    dhs
}
