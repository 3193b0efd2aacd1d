//! The schedule: each step of an inference [`Program`] as one planned kernel
//! over arena buffers, the buffers' lifetimes, and their assignment. Built
//! from the program alone (no weights), so `--emit plan` can show it.

use super::layers::Geometry;
use super::memory::{assign, Assignment, Interval};
use crate::ir::ops::activation::Act;
use crate::ir::{Concat, Conv, Ew, GlobalPool, Op, Pool, PoolKind, RnnCell, Slice, Upsample};
use crate::lower::kernel::{ConvKernel, Kernel};
use crate::lower::Program;
use crate::pipeline::Mode;
use std::fmt;

/// Where a value lives while the schedule runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loc {
    /// A caller's input tensor (index into `Program::inputs`), read in place.
    Input(usize),
    /// An arena buffer.
    Buffer(usize),
}

/// What one planned step computes; sizes are per sample.
#[derive(Debug, Clone, PartialEq)]
pub enum PKind {
    /// x·Wᵀ + b over the last axis (`i` → `o`); the weights packed as Wᵀ.
    Linear {
        relu: bool,
        i: usize,
        o: usize,
    },
    /// Sibling dense layers as one GEMM.
    Merged {
        i: usize,
        o: usize,
    },
    /// im2col + GEMM; 1-D convolutions as 2-D ones of height 1.
    Conv {
        stride: usize,
        dilation: usize,
        pad: [usize; 4],
        relu: bool,
        mean: bool,
        /// A 2×2, stride-2 max pool after (inference).
        pool: bool,
        /// Input [C, H, W] and weight [F, C, KH, KW].
        x: [usize; 3],
        w: [usize; 4],
    },
    MaxPool {
        k: (usize, usize),
        s: (usize, usize),
        hw: (usize, usize),
    },
    /// Each channel's plane of `s` values to one value.
    GlobalPool {
        max: bool,
        s: usize,
    },
    Act(Act),
    /// `len` values from `start` of every `row`-long last-axis row.
    Narrow {
        row: usize,
        start: usize,
        len: usize,
    },
    /// Per operand, its block length; blocks interleave `outer` times per sample.
    Concat {
        blocks: Vec<usize>,
    },
    /// Rows of the table for token ids [T] → [T, dim].
    Embedding {
        dim: usize,
    },
    /// A whole recurrence with our fused kernel: the input projection of all
    /// steps as one GEMM, then the cell loop; directions side by side.
    Rnn {
        cell: RnnCell,
        units: usize,
        directions: usize,
        sequences: bool,
        t: usize,
        i: usize,
        /// Inference only: the program step of the embedding it reads, whose
        /// table is packed projected (E·W_ihᵀ + b per direction), the
        /// embedding step and the projection GEMM gone ([`fold_tables`]).
        table: Option<usize>,
    },
    Upsample {
        scale: usize,
        hw: (usize, usize),
    },
    /// Operands of one shape, folded left (`Mean` divides at the end).
    Elementwise(Ew),
    /// Multi-head attention of a query [Tq, Dq] (`tq` = 1: a vector) over a
    /// context [Tk, Dc]; `masks` of the step: (queries, keys).
    Attention {
        geo: Geometry,
        /// No output projection (a `pretrained` encoder's layout).
        hf: bool,
    },
    /// Over the last axis of `d` values.
    LayerNorm {
        eps: f64,
        d: usize,
    },
    /// The position table added to every sample.
    PositionAdd,
    /// Mean over the steps of [T, D] (real steps only under a mask).
    MeanSteps {
        t: usize,
        d: usize,
    },
    /// Per-sample axes `axes` of dims `dims`.
    Permute {
        dims: Vec<usize>,
        axes: Vec<usize>,
    },
    /// Index `i` of an axis of `n` between `outer` and `inner` blocks.
    Select {
        n: usize,
        i: usize,
        inner: usize,
    },
    /// g = σ([a, b]·Wᵀ + c); g·a + (1 − g)·b over `d` values.
    Gated {
        d: usize,
    },
    /// Σ wᵢ·xᵢ, the weights packed (fixed, or the softmax of the logits).
    Weighted,
    /// Σ softmax(gate·Wᵀ + b)ᵢ · expertᵢ over `experts` of `len` values.
    Mixture {
        experts: usize,
        gate: usize,
    },
    /// Training's batch norm over channels `c` of `s` values per sample,
    /// with the batch's statistics (which update the running ones).
    BatchNorm {
        eps: f64,
        momentum: f64,
        c: usize,
        s: usize,
    },
    /// Training's dropout: each value kept with probability `keep` and
    /// scaled by 1/keep, under a mask drawn before the forward runs.
    Dropout {
        keep: f32,
    },
}

impl fmt::Display for PKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PKind::Linear { relu, .. } => {
                write!(f, "gemm+bias{}", if *relu { "+relu" } else { "" })
            }
            PKind::Merged { .. } => f.write_str("merged gemm+bias"),
            PKind::Conv {
                relu, mean, pool, ..
            } => write!(
                f,
                "im2col+gemm{}{}{}",
                if *relu { "+relu" } else { "" },
                if *mean { "+mean" } else { "" },
                if *pool { "+max_pool" } else { "" }
            ),
            PKind::MaxPool { .. } => f.write_str("max_pool"),
            PKind::GlobalPool { max, .. } => {
                f.write_str(if *max { "global_max" } else { "global_mean" })
            }
            PKind::Act(a) => f.write_str(a.name()),
            PKind::Narrow { .. } => f.write_str("narrow(copy)"),
            PKind::Concat { .. } => f.write_str("concat(copy)"),
            PKind::Embedding { .. } => f.write_str("gather"),
            PKind::Rnn { cell, table, .. } => write!(
                f,
                "{}({} + fused recurrence)",
                match cell {
                    RnnCell::Lstm => "lstm",
                    RnnCell::Gru => "gru",
                },
                match table {
                    None => "projection gemm",
                    Some(_) => "projected table",
                }
            ),
            PKind::Upsample { .. } => f.write_str("upsample"),
            PKind::Elementwise(e) => write!(f, "{e:?}"),
            PKind::Attention { .. } => f.write_str("attention(gemm projections + fused sdpa)"),
            PKind::LayerNorm { .. } => f.write_str("layer_norm"),
            PKind::PositionAdd => f.write_str("add(position table)"),
            PKind::MeanSteps { .. } => f.write_str("mean(steps)"),
            PKind::Permute { .. } => f.write_str("permute(copy)"),
            PKind::Select { .. } => f.write_str("select(copy)"),
            PKind::Gated { .. } => f.write_str("gated"),
            PKind::Weighted => f.write_str("weighted_sum"),
            PKind::Mixture { .. } => f.write_str("mixture"),
            PKind::Dropout { .. } => f.write_str("dropout(mask)"),
            PKind::BatchNorm { .. } => f.write_str("batch_norm(batch statistics)"),
        }
    }
}

/// One step of the schedule.
#[derive(Debug, Clone)]
pub struct PStep {
    /// Index of the program step it runs.
    pub step: usize,
    pub kind: PKind,
    pub args: Vec<Loc>,
    pub out: usize,
    /// Scratch buffers live during this step only.
    pub temps: Vec<usize>,
    /// Per operand, the input (index into `Program::inputs`) of the token
    /// ids whose zeros pad it.
    pub masks: Vec<Option<usize>>,
    /// A second output: a convolution's plane means, the buffer of a global
    /// average pool folded in ([`fold_means`]).
    pub side: Option<usize>,
}

/// The whole plan of an inference program.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub steps: Vec<PStep>,
    /// Every buffer's per-sample size and lifetime.
    pub bufs: Vec<Interval>,
    pub assignment: Assignment,
    /// Per value slot, where it lives (`None`: not computed).
    pub loc: Vec<Option<Loc>>,
}

/// Why a program runs on the candle path instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplanned(pub String);

impl fmt::Display for Unplanned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Schedule {
    /// Plans an inference `prog`, or says which step has no planned kernel.
    pub fn of(prog: &Program) -> Result<Schedule, Unplanned> {
        if prog.mode != Mode::Infer {
            return Err(Unplanned("a training program (see `PlannedTrain`)".into()));
        }
        Schedule::build(prog)
    }

    /// The forward schedule of `prog` in its mode (training keeps dropout,
    /// whose masks the training forward draws).
    pub(super) fn build(prog: &Program) -> Result<Schedule, Unplanned> {
        if prog.compute != candle_core::DType::F32 {
            return Err(Unplanned("planned kernels are f32".into()));
        }
        let mut dims: Vec<Option<Vec<usize>>> = vec![None; prog.n_values];
        let mut loc: Vec<Option<Loc>> = vec![None; prog.n_values];
        for (k, (name, slot, ty)) in prog.inputs.iter().enumerate() {
            dims[*slot] = Some(ty.dims().ok_or_else(|| {
                Unplanned(format!("input `{name}` has a size fixed only at run time"))
            })?);
            loc[*slot] = Some(Loc::Input(k));
        }
        let mut b = Builder {
            bufs: vec![],
            steps: vec![],
        };
        for (k, st) in prog.steps.iter().enumerate() {
            let why = |m: &str| Unplanned(format!("step `{}` ({}): {m}", st.name, st.kernel));
            let masks: Vec<Option<usize>> = st
                .masks
                .iter()
                .map(|m| match m.map(|m| loc[m]) {
                    None => Ok(None),
                    Some(Some(Loc::Input(k))) => Ok(Some(k)),
                    Some(_) => Err(why("a padding mask of computed values")),
                })
                .collect::<Result<_, _>>()?;
            let masked = masks.iter().any(Option::is_some);
            let out_dims = st
                .ty
                .dims()
                .ok_or_else(|| why("size fixed only at run time"))?;
            let args: Vec<Loc> = st
                .args
                .iter()
                .map(|a| loc[*a].ok_or_else(|| why("operand not planned")))
                .collect::<Result<_, _>>()?;
            let arg_dims: Vec<&Vec<usize>> = st
                .args
                .iter()
                .map(|a| dims[*a].as_ref().ok_or_else(|| why("operand size unknown")))
                .collect::<Result<_, _>>()?;
            let len: usize = out_dims.iter().product();
            if let (Op::Attention(a) | Op::Attend(crate::ir::Attend(a)), Mode::Train) =
                (&st.op, prog.mode)
            {
                if a.dropout > 0.0 {
                    return Err(why("dropout on attention probabilities"));
                }
            }
            let kind = match (&st.op, prog.mode) {
                // Training draws a mask (inference's dropout is a view).
                (Op::Dropout(d), Mode::Train) => Ok(Some(PKind::Dropout {
                    keep: 1.0 - d.rate as f32,
                })),
                // Training normalizes with the batch's statistics.
                (Op::BatchNorm(bn), Mode::Train) => match arg_dims[0].split_first() {
                    Some((c, rest)) => Ok(Some(PKind::BatchNorm {
                        eps: bn.eps,
                        momentum: bn.momentum,
                        c: *c,
                        s: rest.iter().product(),
                    })),
                    None => Err("a batch norm of scalars".into()),
                },
                _ => kind_of(st, &arg_dims, &out_dims),
            };
            let kind = match kind {
                Ok(Some(kind)) => kind,
                // A view: the result is the operand's buffer.
                Ok(None) => {
                    loc[st.out] = Some(args[0]);
                    dims[st.out] = Some(out_dims);
                    continue;
                }
                Err(m) => return Err(why(&m)),
            };
            let masks_ok = match &kind {
                PKind::Attention { .. } | PKind::MeanSteps { .. } => true,
                // One direction of an LSTM carries its state over padding.
                PKind::Rnn {
                    cell, directions, ..
                } => *cell == RnnCell::Lstm && *directions == 1,
                _ => false,
            };
            if masked && !masks_ok {
                return Err(why("reads a padding mask"));
            }
            if let PKind::Embedding { .. } = kind {
                if !matches!(args[0], Loc::Input(_)) {
                    return Err(why("token ids that are not an input"));
                }
            }
            let temps = match &kind {
                PKind::Rnn {
                    cell,
                    units,
                    t,
                    directions,
                    sequences,
                    ..
                } => {
                    let g = if *cell == RnnCell::Lstm { 4 } else { 3 };
                    let mut temps = vec![b.buffer(t * g * units, k)];
                    if !*sequences || *directions > 1 {
                        temps.push(b.buffer(t * units, k));
                    }
                    if *cell == RnnCell::Gru {
                        temps.push(b.buffer(t * 4 * units, k));
                    }
                    temps
                }
                PKind::Attention {
                    geo:
                        Geometry {
                            heads,
                            kd,
                            vd,
                            tq,
                            tk,
                            ..
                        },
                    ..
                } => {
                    let (hk, hv) = (heads * kd, heads * vd);
                    let sizes = [
                        tq * hk,
                        tk * hk,
                        tk * hv,
                        tq * hk,
                        tk * hk,
                        tk * hv,
                        tq * hv,
                        heads * tq * tk,
                        tq * hv,
                    ];
                    sizes.iter().map(|n| b.buffer(*n, k)).collect()
                }
                PKind::Gated { d } => vec![b.buffer(2 * d, k), b.buffer(*d, k)],
                PKind::Mixture { experts, .. } => vec![b.buffer(*experts, k)],
                _ => vec![],
            };
            let out = b.buffer(len, k);
            for a in &args {
                b.read(*a, k);
            }
            loc[st.out] = Some(Loc::Buffer(out));
            dims[st.out] = Some(out_dims);
            b.steps.push(PStep {
                step: k,
                kind,
                args,
                out,
                temps,
                masks,
                side: None,
            });
        }
        // Head values and auxiliary-loss operands are read after the last step.
        let end = prog.steps.len();
        for slot in read_slots(prog) {
            match loc.get(slot).copied().flatten() {
                Some(l) => b.read(l, end),
                None => return Err(Unplanned(format!("value {slot} is never computed"))),
            }
        }
        if prog.mode == Mode::Infer {
            fold_tables(prog, &mut b);
            fold_means(&mut b);
        }
        let assignment = assign(&b.bufs);
        Ok(Schedule {
            steps: b.steps,
            bufs: b.bufs,
            assignment,
            loc,
        })
    }

    /// Arena floats per sample.
    pub fn arena_per_sample(&self) -> usize {
        self.assignment.arena
    }

    /// The floats every value would take without reuse (what an executor
    /// keeping all values, as the candle path does, holds), per sample.
    pub fn unshared_per_sample(&self) -> usize {
        self.bufs.iter().map(|b| b.size).sum()
    }
}

struct Builder {
    bufs: Vec<Interval>,
    steps: Vec<PStep>,
}

impl Builder {
    fn buffer(&mut self, size: usize, at: usize) -> usize {
        self.bufs.push(Interval {
            size,
            first: at,
            last: at,
        });
        self.bufs.len() - 1
    }
    fn read(&mut self, l: Loc, at: usize) {
        if let Loc::Buffer(b) = l {
            self.bufs[b].last = self.bufs[b].last.max(at);
        }
    }
}

/// Projected tables at most this many floats (16 MiB), unless no larger
/// than the embedding's own table.
const TABLE_FLOATS: usize = 4 << 20;

/// An inference recurrence that alone reads an embedding reads a projected
/// table instead: row v of E·W_ihᵀ + b is token v's input projection, so the
/// GEMM over all B·T tokens (`reviews`: 64 · 64 · 512 multiply-adds a
/// sample, a fifth of its inference) becomes a row lookup per step, paid
/// for once, when the weights are packed (vocab · dim · G). Where the table
/// would outgrow both the embedding's and [`TABLE_FLOATS`], the GEMM stays.
fn fold_tables(prog: &Program, b: &mut Builder) {
    let mut gone = vec![];
    for r in 0..b.steps.len() {
        let PKind::Rnn {
            cell,
            units,
            directions,
            ..
        } = b.steps[r].kind
        else {
            continue;
        };
        let Some(Loc::Buffer(x)) = b.steps[r].args.first().copied() else {
            continue;
        };
        let Some(e) = b.steps.iter().position(|s| s.out == x) else {
            continue;
        };
        let (PKind::Embedding { dim }, Op::Embedding(op)) =
            (&b.steps[e].kind, &prog.steps[b.steps[e].step].op)
        else {
            continue;
        };
        let g = if cell == RnnCell::Lstm { 4 } else { 3 };
        let floats = op.vocab * g * units * directions;
        let readers = b.steps.iter().filter(|s| s.args.contains(&Loc::Buffer(x)));
        if readers.count() != 1
            || b.bufs[x].last != b.steps[r].step
            || floats > (op.vocab * dim).max(TABLE_FLOATS)
        {
            continue;
        }
        let (ids, at) = (b.steps[e].args[0], b.steps[e].step);
        let rnn = &mut b.steps[r];
        rnn.args[0] = ids;
        if let PKind::Rnn { table, .. } = &mut rnn.kind {
            *table = Some(at);
        }
        // Neither the embedded tokens nor their projections are computed.
        b.bufs[x].size = 0;
        b.bufs[rnn.temps[0]].size = 0;
        gone.push(e);
    }
    drop_steps(&mut b.steps, &gone);
}

/// An inference global average pool of a convolution's whole output is
/// taken by the convolution, each image's plane means while its outputs
/// are in cache, into the pool's buffer (live from the convolution on).
/// Where the pool was the output's only reader, lowering already fused it
/// (`ConvKernel::mean`); this is the case of other readers beside it
/// (`seed_multitask_small`'s segmentation head, `shapes`' mask and pool).
fn fold_means(b: &mut Builder) {
    let mut gone = vec![];
    for a in 0..b.steps.len() {
        let PKind::GlobalPool { max: false, s } = b.steps[a].kind else {
            continue;
        };
        let Some(Loc::Buffer(x)) = b.steps[a].args.first().copied() else {
            continue;
        };
        let Some(c) = b.steps.iter().position(|st| st.out == x) else {
            continue;
        };
        let PKind::Conv {
            mean: false,
            pool: false,
            w,
            ..
        } = b.steps[c].kind
        else {
            continue;
        };
        // The pool's planes are the convolution's output planes.
        if b.steps[c].side.is_some() || b.bufs[x].size != w[0] * s {
            continue;
        }
        let out = b.steps[a].out;
        b.bufs[out].first = b.steps[c].step;
        b.steps[c].side = Some(out);
        gone.push(a);
    }
    drop_steps(&mut b.steps, &gone);
}

/// Removes the steps at indices `gone`, folded into others.
fn drop_steps(steps: &mut Vec<PStep>, gone: &[usize]) {
    let mut k = 0;
    steps.retain(|_| {
        k += 1;
        !gone.contains(&(k - 1))
    });
}

/// The slots read after the forward: head values and auxiliary-loss operands.
pub(super) fn read_slots(prog: &Program) -> Vec<usize> {
    let mut v: Vec<usize> = prog.heads.iter().map(|(_, s)| *s).collect();
    v.extend(prog.losses.iter().flat_map(|l| l.slots.iter().copied()));
    v.sort_unstable();
    v.dedup();
    v
}

/// The planned kernel of a step, `None` for a view, or why there is none.
fn kind_of(
    st: &crate::lower::Step,
    args: &[&Vec<usize>],
    out: &[usize],
) -> Result<Option<PKind>, String> {
    let x = args[0];
    let last = |d: &[usize]| d.last().copied().unwrap_or(1);
    Ok(Some(match (&st.kernel, &st.op) {
        (Kernel::Linear { relu, .. }, _) => PKind::Linear {
            relu: *relu,
            i: last(x),
            o: last(out),
        },
        (Kernel::MergedLinear { .. }, _) => PKind::Merged {
            i: last(x),
            o: last(out),
        },
        (Kernel::Conv(k), Op::Conv(c)) => conv_kind(k, c, x)?,
        (Kernel::Conv(_), _) => return Err("a convolution kernel on another op".into()),
        (_, Op::Slice(Slice { start, len })) => PKind::Narrow {
            row: last(x),
            start: *start,
            len: *len,
        },
        (
            _,
            Op::Pool(Pool {
                kind: PoolKind::Max,
                size,
                stride,
            }),
        ) => {
            let pair = |v: &[usize]| match v {
                [a] if x.len() == 2 => Ok((1, *a)),
                [a] => Ok((*a, *a)),
                [a, b] => Ok((*a, *b)),
                _ => Err("a pool of more than two axes".to_string()),
            };
            let hw = match x.as_slice() {
                [_, l] => (1, *l),
                [_, h, w] => (*h, *w),
                _ => return Err("a pool of more than two axes".into()),
            };
            let (k, s) = (pair(size)?, pair(stride)?);
            let op = crate::kernels::cpu_ops::MaxPool2d::new(k, s, false);
            if op.out_dims(hw.0, hw.1).is_none() {
                return Err("the window does not fit".into());
            }
            PKind::MaxPool { k, s, hw }
        }
        (_, Op::GlobalPool(GlobalPool { kind, axis: None })) => PKind::GlobalPool {
            max: *kind == PoolKind::Max,
            s: x[1..].iter().product(),
        },
        (_, Op::Flatten(_) | Op::Reshape(_) | Op::Dropout(_) | Op::Act(Act::Identity)) => {
            return Ok(None)
        }
        (_, Op::Act(a @ (Act::Relu | Act::Gelu | Act::Sigmoid | Act::Tanh | Act::Silu))) => {
            PKind::Act(*a)
        }
        (_, Op::Concat(Concat { axis })) => {
            let rank = x.len() as i64 + 1;
            let a = if *axis < 0 { rank + axis } else { *axis };
            if a < 1 || a >= rank {
                return Err("concatenation over the batch axis".into());
            }
            let a = a as usize - 1;
            PKind::Concat {
                blocks: args.iter().map(|d| d[a..].iter().product()).collect(),
            }
        }
        (_, Op::Embedding(e)) => PKind::Embedding { dim: e.dim },
        (_, Op::Rnn(r)) => match x.as_slice() {
            [t, i] => PKind::Rnn {
                cell: r.cell,
                units: r.units,
                directions: r.directions().len(),
                sequences: r.return_sequences,
                t: *t,
                i: *i,
                table: None,
            },
            _ => return Err("a recurrence over a non-sequence".into()),
        },
        (_, Op::Upsample(Upsample { scale })) => match x.as_slice() {
            [_, h, w] => PKind::Upsample {
                scale: *scale,
                hw: (*h, *w),
            },
            _ => return Err("1-D upsampling".into()),
        },
        (_, Op::Elementwise(e)) if args.iter().all(|a| a == &x) => PKind::Elementwise(*e),
        (_, Op::Residual(_)) if args.iter().all(|a| a == &x) => PKind::Elementwise(Ew::Add),
        (_, Op::Attention(a)) => match x.as_slice() {
            [t, _] => attention_kind(a, *t, *t),
            _ => return Err("attention over a non-sequence".into()),
        },
        (_, Op::Attend(crate::ir::Attend(a))) => {
            let tq = match x.as_slice() {
                [_] => 1,
                [t, _] => *t,
                _ => return Err("a query of rank above 2".into()),
            };
            match args[1].as_slice() {
                [tk, _] => attention_kind(a, tq, *tk),
                _ => return Err("a context that is not a sequence".into()),
            }
        }
        (_, Op::LayerNorm(n)) => PKind::LayerNorm {
            eps: n.eps,
            d: last(x),
        },
        (_, Op::PositionEmbedding(_)) => PKind::PositionAdd,
        (_, Op::GlobalPool(gp @ GlobalPool { axis: Some(_), .. })) => {
            match (gp.axis_index(x.len()), gp.kind, x.as_slice()) {
                (Some(0), PoolKind::Avg, [t, d]) => PKind::MeanSteps { t: *t, d: *d },
                _ => return Err("a pool over this axis".into()),
            }
        }
        (_, Op::Permute(p)) => PKind::Permute {
            dims: x.clone(),
            axes: p.axes.iter().map(|a| a - 1).collect(),
        },
        (_, Op::Select(sel)) => {
            let dims: Vec<crate::ir::Dim> = x.iter().map(|d| crate::ir::Dim::Fixed(*d)).collect();
            match sel.resolve(&dims) {
                Some((a, Some(i))) => PKind::Select {
                    n: x[a],
                    i,
                    inner: x[a + 1..].iter().product(),
                },
                _ => return Err("select out of range".into()),
            }
        }
        (_, Op::Gated(_)) if args.len() == 2 && args[1] == x => PKind::Gated {
            d: x.iter().product(),
        },
        (_, Op::Weighted(_)) if args.iter().all(|a| a == &x) => PKind::Weighted,
        (_, Op::Mixture(m)) if args[..m.experts].iter().all(|a| a == &x) => PKind::Mixture {
            experts: m.experts,
            gate: last(args[m.experts]),
        },
        (_, op) => return Err(format!("no planned kernel for `{op}`")),
    }))
}

fn attention_kind(a: &crate::ir::Attention, tq: usize, tk: usize) -> PKind {
    PKind::Attention {
        geo: Geometry {
            heads: a.heads,
            kd: a.key_dim,
            vd: a.value_dim,
            tq,
            tk,
            causal: a.causal,
        },
        hf: a.hf,
    }
}

fn conv_kind(k: &ConvKernel, c: &Conv, x: &[usize]) -> Result<PKind, String> {
    if !k.im2col || c.groups != 1 {
        return Err("a grouped or strided-per-axis convolution".into());
    }
    let p = |a: usize| k.pads.get(a).copied().unwrap_or((0, 0));
    let (x3, w4, pad) = match (x, c.kernel.as_slice()) {
        ([ch, l], [kw]) if !k.mean && !k.pool => ([*ch, 1, *l], [c.filters, *ch, 1, *kw], {
            [0, 0, p(0).0, p(0).1]
        }),
        ([ch, h, w], [kh, kw]) => (
            [*ch, *h, *w],
            [c.filters, *ch, *kh, *kw],
            [p(0).0, p(0).1, p(1).0, p(1).1],
        ),
        _ => return Err("a convolution of this rank".into()),
    };
    Ok(PKind::Conv {
        stride: c.stride[0],
        dilation: c.dilation[0],
        pad,
        relu: k.relu,
        mean: k.mean,
        pool: k.pool,
        x: x3,
        w: w4,
    })
}

/// Which executor runs `prog`'s inference and, when planned, each step's
/// kernel, output buffer (offset and size per sample) and lifetime.
pub fn render(prog: &Program) -> String {
    use std::fmt::Write;
    let s = match Schedule::of(prog) {
        Err(why) => return format!("executor: candle ({why})\n"),
        Ok(s) => s,
    };
    let mut out = format!(
        "executor: planned (arena {} floats per sample; {} without reuse)\n",
        s.arena_per_sample(),
        s.unshared_per_sample()
    );
    let buf = |b: usize| {
        let iv = &s.bufs[b];
        format!(
            "b{b}@{}+{} live {}..={}",
            s.assignment.offsets[b], iv.size, iv.first, iv.last
        )
    };
    let loc = |l: &Loc| match l {
        Loc::Input(k) => format!("input {}", prog.inputs[*k].0),
        Loc::Buffer(b) => format!("b{b}"),
    };
    for ps in &s.steps {
        let st = &prog.steps[ps.step];
        let args: Vec<String> = ps.args.iter().map(loc).collect();
        let _ = write!(
            out,
            "  {} = {} ({})  # {}",
            buf(ps.out),
            ps.kind,
            args.join(", "),
            st.name
        );
        if !ps.temps.is_empty() {
            let t: Vec<String> = ps.temps.iter().map(|t| buf(*t)).collect();
            let _ = write!(out, "  scratch {}", t.join(", "));
        }
        if let Some(side) = ps.side {
            // The folded pool's node: the value that lives there.
            let node = prog
                .steps
                .iter()
                .find(|st| s.loc[st.out] == Some(Loc::Buffer(side)))
                .map_or("?", |st| st.name.as_str());
            let _ = write!(out, "  plane means {} as {node}", buf(side));
        }
        out.push('\n');
    }
    out
}
