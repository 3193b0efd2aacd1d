//! Running a schedule: each step's kernel on slices of the arena.

use super::layers;
use super::memory::Interval;
use super::schedule::{read_slots, Loc, PKind, PStep, Schedule};
use super::{Packed, Planned};
use crate::ir::ops::activation::Act;
use crate::ir::{Ew, RnnCell};
use crate::kernels::cpu_ops::{GlobalPool, MaxPool2d, Upsample2d};
use crate::kernels::math::exp_fast;
use crate::kernels::projected::Projected;
use crate::kernels::{conv::Conv2dIm2col, gru::GruSeq, host, linear, lstm::LstmSeq};
use crate::lower::{Forward, Program, RunError};
use candle_core::{DType, Tensor};

/// An operand of a step: a caller's f32 tensor, its token ids, or the arena.
pub(super) enum Input<'a> {
    F32(host::HostView<'a>),
    Ids(Vec<u32>),
}

/// What a training forward keeps for the backward, per planned step.
#[derive(Debug, Default)]
pub(super) struct Saved {
    /// A max pool's first-maximum offsets.
    pub arg: Vec<u16>,
    /// Per direction of a recurrence: (hidden states, activations, cell
    /// states: an LSTM's only).
    pub rnn: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)>,
    /// A dropout's mask: 0 or 1/keep per value, drawn before the forward.
    pub mask: Vec<f32>,
    /// An attention's Q, K and V by heads, probabilities and merged heads.
    pub attn: Vec<Vec<f32>>,
    /// A batch norm's per-channel batch mean and biased variance.
    pub stats: (Vec<f32>, Vec<f32>),
    /// A direct convolution's padded images (`Conv2dIm2col::grids_len`).
    pub grids: Vec<f32>,
}

/// The batch size and each input's data, by index into `Program::inputs`.
pub(super) fn hold<'a>(
    prog: &Program,
    inputs: &'a [(usize, Tensor)],
) -> Result<(usize, Vec<Option<Input<'a>>>), RunError> {
    let input_err = |e: candle_core::Error| RunError::Input(e.to_string());
    let batch = match inputs.first() {
        Some((_, t)) => t.dim(0).map_err(input_err)?,
        None => 0,
    };
    let mut held: Vec<Option<Input>> = Vec::with_capacity(prog.inputs.len());
    for (_, slot, _) in &prog.inputs {
        let t = inputs
            .iter()
            .find(|(s, _)| s == slot)
            .map(|(_, t)| t)
            .ok_or_else(|| RunError::Input(format!("no tensor for input value {slot}")))?;
        held.push(Some(match t.dtype() {
            DType::F32 => Input::F32(host::host(t).map_err(input_err)?),
            _ => Input::Ids(
                t.flatten_all()
                    .and_then(|t| t.to_dtype(DType::U32)?.to_vec1::<u32>())
                    .map_err(input_err)?,
            ),
        }));
    }
    Ok((batch, held))
}

/// The arena grown to `batch` samples of `schedule`, viewed for one run.
pub(super) fn arena_for<'a>(
    schedule: &'a Schedule,
    arena: &'a mut Vec<f32>,
    batch: usize,
) -> Arena<'a> {
    let need = schedule.arena_per_sample() * batch;
    if arena.len() < need {
        arena.resize(need, 0.0);
    }
    Arena {
        base: arena.as_mut_ptr(),
        offsets: &schedule.assignment.offsets,
        bufs: &schedule.bufs,
        batch,
    }
}

/// Runs every step of `schedule` (training: keeping `saved`).
#[allow(clippy::too_many_arguments)]
pub(super) fn run_steps(
    schedule: &Schedule,
    packed: &[Packed],
    arena: &Arena,
    (held, batch): (&[Option<Input>], usize),
    prog: &Program,
    mut saved: Option<&mut [Saved]>,
    mut times: Option<&mut Vec<f64>>,
) -> Result<(), RunError> {
    for (n, (ps, packed)) in schedule.steps.iter().zip(packed).enumerate() {
        let st = &prog.steps[ps.step];
        let started = times.is_some().then(std::time::Instant::now);
        let keep = saved.as_deref_mut().map(|s| &mut s[n]);
        step(ps, packed, arena, (held, batch), keep).map_err(|message| RunError::Step {
            node: st.name.clone(),
            message,
        })?;
        if let (Some(t), Some(s)) = (times.as_deref_mut(), started) {
            t.resize(prog.steps.len().max(t.len()), 0.0);
            t[ps.step] += s.elapsed().as_secs_f64();
        }
    }
    Ok(())
}

/// The value of `slot` after a run, copied out of the arena.
pub(super) fn value(
    schedule: &Schedule,
    arena: &Arena,
    (held, batch): (&[Option<Input>], usize),
    prog: &Program,
    slot: usize,
) -> Result<Tensor, RunError> {
    let fail = |message: String| RunError::Step {
        node: format!("value {slot}"),
        message,
    };
    let dims = slot_dims(prog, slot).ok_or_else(|| fail("no fixed size".into()))?;
    let mut shape = vec![batch];
    shape.extend(dims);
    let data: &[f32] = match schedule.loc[slot] {
        // SAFETY: the steps have run; nothing writes the arena meanwhile.
        Some(Loc::Buffer(b)) => unsafe { arena.get(b) },
        Some(Loc::Input(k)) => match &held[k] {
            Some(Input::F32(v)) => v,
            _ => &[],
        },
        None => &[],
    };
    Tensor::from_slice(data, shape, &candle_core::Device::Cpu).map_err(|e| fail(e.to_string()))
}

pub(super) fn forward(
    pl: &mut Planned,
    prog: &Program,
    inputs: &[(usize, Tensor)],
    times: Option<&mut Vec<f64>>,
) -> Result<Forward, RunError> {
    let mut handover = pl.handover;
    let fwd = handover.run(|| forward_here(pl, prog, inputs, times));
    pl.handover = handover;
    fwd
}

fn forward_here(
    pl: &mut Planned,
    prog: &Program,
    inputs: &[(usize, Tensor)],
    times: Option<&mut Vec<f64>>,
) -> Result<Forward, RunError> {
    let (batch, held) = hold(prog, inputs)?;
    let arena = arena_for(&pl.schedule, &mut pl.arena, batch);
    let run = (held.as_slice(), batch);
    run_steps(&pl.schedule, &pl.packed, &arena, run, prog, None, times)?;
    let mut values: Vec<Option<Tensor>> = vec![None; prog.n_values];
    for slot in read_slots(prog) {
        values[slot] = Some(value(&pl.schedule, &arena, run, prog, slot)?);
    }
    Ok(Forward {
        values,
        leaves: vec![],
    })
}

fn slot_dims(prog: &Program, slot: usize) -> Option<Vec<usize>> {
    match prog.steps.iter().find(|s| s.out == slot) {
        Some(st) => st.ty.dims(),
        None => prog
            .inputs
            .iter()
            .find(|(_, s, _)| *s == slot)
            .and_then(|(_, _, ty)| ty.dims()),
    }
}

/// The arena during one run: buffer `b` is `bufs[b].size × batch` floats at
/// `offsets[b] × batch`.
pub(super) struct Arena<'a> {
    base: *mut f32,
    offsets: &'a [usize],
    bufs: &'a [Interval],
    batch: usize,
}

impl Arena<'_> {
    /// # Safety
    /// No mutable slice of a buffer live at the same step may exist: the
    /// assignment keeps buffers live at one step apart, and a step writes
    /// only its output and its scratch, which it does not read.
    pub(super) unsafe fn get(&self, b: usize) -> &[f32] {
        std::slice::from_raw_parts(
            self.base.add(self.offsets[b] * self.batch),
            self.bufs[b].size * self.batch,
        )
    }
    /// # Safety
    /// As for [`Arena::get`]: `b` is the step's output or scratch.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn get_mut(&self, b: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(
            self.base.add(self.offsets[b] * self.batch),
            self.bufs[b].size * self.batch,
        )
    }
}

fn step(
    ps: &PStep,
    packed: &Packed,
    arena: &Arena,
    (held, batch): (&[Option<Input>], usize),
    keep: Option<&mut Saved>,
) -> Result<(), String> {
    let arg = |i: usize| -> Result<&[f32], String> {
        match ps.args.get(i) {
            // SAFETY: operands are buffers live at this step other than its
            // output and scratch (see `Arena::get`).
            Some(Loc::Buffer(b)) => Ok(unsafe { arena.get(*b) }),
            Some(Loc::Input(k)) => match &held[*k] {
                Some(Input::F32(v)) => Ok(v),
                _ => Err("an f32 operand holds token ids".into()),
            },
            None => Err(format!("no operand {i}")),
        }
    };
    // SAFETY: the step's output, written only here.
    let out = unsafe { arena.get_mut(ps.out) };
    let temp = |i: usize| -> &mut [f32] {
        // SAFETY: scratch of this step alone.
        unsafe { arena.get_mut(ps.temps[i]) }
    };
    // Token ids are read by the embedding arm itself (and by a recurrence
    // reading a projected table).
    let x = match ps.kind {
        PKind::Embedding { .. } | PKind::Rnn { table: Some(_), .. } => &[][..],
        _ => arg(0)?,
    };
    let bad = || format!("weights packed for another kernel than {}", ps.kind);
    match (&ps.kind, packed) {
        (PKind::Linear { relu, i, o }, Packed::Gemm { wt, b }) => {
            linear::forward_into(out, x, wt, b, (x.len() / i, *i, *o), *relu)
        }
        (PKind::Merged { i, o }, Packed::Gemm { wt, b }) => {
            linear::forward_into(out, x, wt, b, (x.len() / i, *i, *o), false)
        }
        (
            PKind::Conv {
                stride,
                dilation,
                pad,
                relu,
                mean,
                pool,
                x: xd,
                w: wd,
            },
            Packed::Conv { w, b },
        ) => {
            let op = Conv2dIm2col {
                stride: *stride,
                dilation: *dilation,
                pad: *pad,
                relu: *relu,
                mean: *mean,
                pool: *pool,
            };
            let (w, b) = (w.view()?, b.view()?);
            let xd = [batch, xd[0], xd[1], xd[2]];
            match (keep, ps.side) {
                // Training: the fused pool's maxima and the padded images,
                // for the backward.
                (Some(saved), None) if !*mean && (*pool || *relu) => {
                    let arg = if *pool {
                        saved.arg.resize(out.len(), 0);
                        Some(&mut saved.arg[..])
                    } else {
                        None
                    };
                    let grids = op.grids_len(&xd, wd).map_err(|e| e.to_string())?;
                    saved.grids.resize(grids, 0.0);
                    let keep = (arg, Some(&mut saved.grids[..]));
                    op.forward_train_into((x, &xd), (&w, wd), &b, out, keep)
                }
                (None, Some(side)) => {
                    // SAFETY: the folded pool's buffer, written only here.
                    let means = unsafe { arena.get_mut(side) };
                    op.forward_with_means(x, &xd, &w, wd, &b, out, means)
                }
                // Training folds no pool (its backward reads the output).
                (Some(_), Some(_)) => return Err("plane means in a training step".into()),
                _ => op.forward_into(x, &xd, &w, wd, &b, out),
            }
            .map_err(|e| e.to_string())?
        }
        (PKind::MaxPool { k, s, hw }, _) => match keep {
            Some(saved) => {
                saved.arg.resize(out.len(), 0);
                MaxPool2d::new(*k, *s, true).forward_train_into(x, *hw, out, &mut saved.arg)
            }
            None => MaxPool2d::new(*k, *s, false).forward_into(x, *hw, out),
        },
        (PKind::GlobalPool { max, s }, _) => GlobalPool { max: *max }.forward_into(x, *s, out),
        (PKind::Upsample { scale, hw }, _) => {
            Upsample2d { scale: *scale }.forward_into(x, *hw, out)
        }
        (PKind::Act(a), _) => act(*a, x, out),
        (PKind::Narrow { row, start, len }, _) => {
            for (o, r) in out.chunks_mut(*len).zip(x.chunks(*row)) {
                o.copy_from_slice(&r[*start..start + len]);
            }
        }
        (PKind::Concat { blocks }, _) => {
            let whole: usize = blocks.iter().sum();
            let srcs = (0..blocks.len()).map(arg).collect::<Result<Vec<_>, _>>()?;
            for (r, o) in out.chunks_mut(whole).enumerate() {
                let mut at = 0;
                for (src, n) in srcs.iter().zip(blocks) {
                    o[at..at + n].copy_from_slice(&src[r * n..(r + 1) * n]);
                    at += n;
                }
            }
        }
        (PKind::Embedding { dim }, Packed::Table(table)) => {
            let ids = token_ids(ps, held)?;
            let table = table.view()?;
            for (o, id) in out.chunks_mut(*dim).zip(ids) {
                let row = table
                    .get(*id as usize * dim..(*id as usize + 1) * dim)
                    .ok_or_else(|| format!("token id {id} outside the table"))?;
                o.copy_from_slice(row);
            }
        }
        (
            PKind::Rnn {
                cell,
                units,
                directions,
                sequences,
                t,
                i,
                table,
            },
            Packed::Rnn(dirs),
        ) => {
            let (h, g) = (*units, if *cell == RnnCell::Lstm { 4 } else { 3 });
            let apart = !*sequences || *directions > 1;
            let valid = valid_steps(ps, held)?;
            let ids = table.map(|_| token_ids(ps, held)).transpose()?;
            // Every direction's table has the embedding's rows.
            let vocab = dirs.first().map_or(0, |w| w.w_ih_t.len() / (g * h));
            if let Some(id) = ids.into_iter().flatten().find(|id| **id as usize >= vocab) {
                return Err(format!("token id {id} outside the table"));
            }
            let mut keep = keep;
            for (d, w) in dirs.iter().enumerate() {
                let xw = match ids {
                    Some(ids) => Projected::Table {
                        table: &w.w_ih_t,
                        ids,
                    },
                    None => {
                        let xw = temp(0);
                        let dims = (batch * t, *i, g * h);
                        linear::forward_into(xw, x, &w.w_ih_t, &w.b_ih, dims, false);
                        Projected::Rows(xw)
                    }
                };
                let placing = (d, h, *directions, *sequences);
                if let Some(saved) = keep.as_deref_mut() {
                    let Projected::Rows(xw) = xw else {
                        return Err("a projected table in training".into());
                    };
                    // Training: every step's states kept for the backward
                    // (a GRU's activations are r, z, n and hw_n: 4H a step).
                    saved.rnn.resize_with(dirs.len(), Default::default);
                    let (hs, acts, cs) = &mut saved.rnn[d];
                    hs.resize(batch * t * h, 0.0);
                    acts.resize(batch * t * 4 * h, 0.0);
                    let bt = (batch, *t);
                    if *cell == RnnCell::Lstm {
                        cs.resize(batch * t * h, 0.0);
                        let op = LstmSeq::new(h, d == 1, true).with_valid(valid.clone());
                        op.forward_saved_into(xw, &w.w_hh_t, bt, hs, acts, cs);
                    } else {
                        GruSeq::new(h, d == 1, true).forward_into(
                            Projected::Rows(xw),
                            &w.w_hh_t,
                            &w.b_hh,
                            bt,
                            hs,
                            acts,
                        );
                    }
                    place(hs, out, placing);
                    continue;
                }
                let acts = if *cell == RnnCell::Gru {
                    temp(if apart { 2 } else { 1 })
                } else {
                    &mut []
                };
                let run = (*cell, h, d == 1, (batch, *t));
                if !apart {
                    recur(run, xw, w, &valid, out, acts);
                    continue;
                }
                let hs = temp(1);
                recur(run, xw, w, &valid, hs, acts);
                place(hs, out, placing);
            }
        }
        (PKind::Elementwise(e), _) => {
            out.copy_from_slice(x);
            for k in 1..ps.args.len() {
                let y = arg(k)?;
                let pairs = out.iter_mut().zip(y);
                match e {
                    Ew::Add | Ew::Mean => pairs.for_each(|(a, b)| *a += b),
                    Ew::Mul => pairs.for_each(|(a, b)| *a *= b),
                    Ew::Max => pairs.for_each(|(a, b)| *a = a.max(*b)),
                    Ew::Min => pairs.for_each(|(a, b)| *a = a.min(*b)),
                }
            }
            if *e == Ew::Mean {
                let n = ps.args.len() as f32;
                out.iter_mut().for_each(|a| *a /= n);
            }
        }
        (PKind::Attention { geo: g, hf }, Packed::Attention { q, k, v, out: wo }) => {
            let ids = |i: usize| match ps.masks.get(i).copied().flatten().map(|k| &held[k]) {
                Some(Some(Input::Ids(v))) => Some(v.as_slice()),
                _ => None,
            };
            // Attention: one operand, its mask on queries (not in Hugging
            // Face's layout) and keys; attend: query and context masks.
            let (context, masks) = match ps.args.len() {
                1 => (x, (ids(0).filter(|_| !hf), ids(0))),
                _ => (arg(1)?, (ids(0), ids(1))),
            };
            let mut ts: Vec<&mut [f32]> = (0..ps.temps.len()).map(temp).collect();
            let w = (proj(q), proj(k), proj(v), wo.as_ref().map(proj));
            let keep = keep.map(|s| &mut s.attn);
            layers::attention(g, w, (x, context), masks, batch, (&mut ts, keep), out)?
        }
        (PKind::BatchNorm { eps, c, s, .. }, Packed::Norm { w, b }) => {
            let saved = keep.ok_or("batch statistics outside training")?;
            let op = crate::kernels::batch_norm::BatchNormTrain {
                eps: *eps,
                stats: Default::default(),
            };
            saved.stats = op.forward_into(x, (x.len() / (c * s).max(1), *c, *s), (w, b), out);
        }
        (PKind::Dropout { .. }, _) => {
            let mask = keep.map(|s| &s.mask[..]).unwrap_or_default();
            if mask.len() != out.len() {
                return Err("a dropout without its mask".into());
            }
            for ((o, v), m) in out.iter_mut().zip(x).zip(mask) {
                *o = v * m;
            }
        }
        (PKind::LayerNorm { eps, .. }, Packed::Norm { w, b }) => {
            layers::layer_norm(x, (w, b), *eps, out)
        }
        (PKind::PositionAdd, Packed::Table(table)) => {
            let table = table.view()?;
            let table: &[f32] = &table;
            if x.len() != batch * table.len() {
                return Err(format!("a position table of {} values", table.len()));
            }
            for (o, r) in out.chunks_mut(table.len()).zip(x.chunks(table.len())) {
                o.iter_mut()
                    .zip(r)
                    .zip(table)
                    .for_each(|((o, v), p)| *o = v + p);
            }
        }
        (PKind::MeanSteps { t, d }, _) => {
            let ids = match ps.masks.first().copied().flatten().map(|k| &held[k]) {
                Some(Some(Input::Ids(v))) => Some(v.as_slice()),
                _ => None,
            };
            layers::mean_steps(x, (*t, *d), ids, out)
        }
        (PKind::Permute { dims, axes }, _) => layers::permute(x, dims, axes, out),
        (PKind::Select { n, i, inner }, _) => {
            for (o, r) in out.chunks_mut(*inner).zip(x.chunks(n * inner)) {
                o.copy_from_slice(&r[i * inner..(i + 1) * inner]);
            }
        }
        (PKind::Gated { d }, Packed::Gemm { wt, b }) => {
            let (cat, g) = (temp(0), temp(1));
            layers::gated((x, arg(1)?), (wt, b), *d, (cat, g), out)
        }
        (PKind::Weighted, Packed::Weights(w)) => {
            for (k, wk) in w.iter().enumerate() {
                let y = arg(k)?;
                if k == 0 {
                    out.iter_mut().zip(y).for_each(|(o, v)| *o = v * wk);
                } else {
                    out.iter_mut().zip(y).for_each(|(o, v)| *o += v * wk);
                }
            }
        }
        (PKind::Mixture { experts, .. }, Packed::Gemm { wt, b }) => {
            let ex = (0..*experts).map(arg).collect::<Result<Vec<_>, _>>()?;
            layers::mixture(&ex, arg(*experts)?, (wt, b), temp(0), out)
        }
        _ => return Err(bad()),
    }
    Ok(())
}

/// Direction `d`'s hidden states [B, T, H] in a recurrence's output: all
/// steps (`sequences`) or the last one read, side by side with the other
/// direction's.
pub(super) fn place(
    hs: &[f32],
    out: &mut [f32],
    (d, h, directions, sequences): (usize, usize, usize, bool),
) {
    let width = directions * h;
    if sequences {
        for (o, r) in out.chunks_mut(width).zip(hs.chunks(h)) {
            o[d * h..(d + 1) * h].copy_from_slice(r);
        }
    } else {
        let t = hs.len() / (h * (out.len() / width)).max(1);
        let last = if d == 1 { 0 } else { t - 1 };
        for (bi, o) in out.chunks_mut(width).enumerate() {
            o[d * h..(d + 1) * h].copy_from_slice(&hs[(bi * t + last) * h..][..h]);
        }
    }
}

/// The token ids of a step's first operand, an input.
fn token_ids<'a>(ps: &PStep, held: &'a [Option<Input>]) -> Result<&'a [u32], String> {
    let Some(Loc::Input(k)) = ps.args.first() else {
        return Err("token ids that are not an input".into());
    };
    match &held[*k] {
        Some(Input::Ids(ids)) => Ok(ids),
        _ => Err("token ids given as f32 values".into()),
    }
}

/// One direction's recurrence into `hs` [B, T, H] (`acts`: a GRU's scratch;
/// `valid`: an LSTM's real steps, see [`valid_steps`]).
fn recur(
    (cell, h, reverse, bt): (RnnCell, usize, bool, (usize, usize)),
    xw: Projected,
    w: &super::RnnPacked,
    valid: &Option<Vec<f32>>,
    hs: &mut [f32],
    acts: &mut [f32],
) {
    match cell {
        RnnCell::Lstm => LstmSeq::new(h, reverse, false)
            .with_valid(valid.clone())
            .forward_into(xw, &w.w_hh_t, bt, hs),
        RnnCell::Gru => {
            GruSeq::new(h, reverse, false).forward_into(xw, &w.w_hh_t, &w.b_hh, bt, hs, acts)
        }
    }
}

/// A recurrence's real steps [B, T] (1, and 0 where the token ids that
/// mask its input are 0), or `None` when it reads no mask.
pub(super) fn valid_steps(ps: &PStep, held: &[Option<Input>]) -> Result<Option<Vec<f32>>, String> {
    match ps.masks.first().copied().flatten().map(|k| &held[k]) {
        None => Ok(None),
        Some(Some(Input::Ids(ids))) => Ok(Some(
            ids.iter()
                .map(|i| if *i == 0 { 0.0 } else { 1.0 })
                .collect(),
        )),
        Some(_) => Err("a padding mask of f32 values".into()),
    }
}

/// A packed projection as slices.
fn proj(p: &(Vec<f32>, Vec<f32>)) -> layers::Proj<'_> {
    (&p.0, &p.1)
}

fn act(a: Act, x: &[f32], out: &mut [f32]) {
    // One loop per activation (a function pointer would block inlining and
    // vectorization), split over the pool for large values.
    fn map(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32 + Sync + Send) {
        const CHUNK: usize = 1 << 14;
        let par = out.len() >= crate::kernels::par::MIN_ELEMENTS;
        crate::kernels::par::chunks_mut(out, CHUNK, par, |c, o| {
            crate::kernels::par::widest(
                #[inline(always)]
                || {
                    o.iter_mut()
                        .zip(&x[c * CHUNK..])
                        .for_each(|(o, v)| *o = f(*v))
                },
            )
        });
    }
    match a {
        Act::Relu => map(x, out, |v| v.max(0.0)),
        Act::Gelu => map(x, out, crate::kernels::gelu::gelu),
        Act::Sigmoid => map(x, out, |v| 1.0 / (1.0 + exp_fast(-v))),
        Act::Silu => map(x, out, |v| v / (1.0 + exp_fast(-v))),
        Act::Tanh => map(x, out, f32::tanh),
        _ => out.copy_from_slice(x),
    }
}
