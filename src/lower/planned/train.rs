//! The planned executor for training: the forward of the inference schedule
//! (keeping what the backward reads), then the backward as a second static
//! schedule over the same arena, no autograd graph and no candle tensor per
//! step. Each head's loss is computed here with its gradient in one pass
//! ([`PlannedTrain::head_loss`], `kernels::loss`) and comes out as a scalar
//! leaf variable; the auxiliary losses' operands come out as leaves too and
//! their losses stay on candle. The weighting builds its total from these
//! leaves, candle's backward of that small graph gives each loss's
//! coefficient and each operand's gradient, and the planned backward
//! carries them to the weights. The optimizer then runs as on the candle
//! path, so every weighting that is a weighted sum of the losses (fixed,
//! DWA, uncertainty, FAMO, RLW) is unchanged.
//!
//! Time in the schedule: forward step k at k, the losses at n, the backward
//! of step k at 2n − k. A value the backward of step j reads lives until
//! 2n − j; the gradient of a value lives from the backward of its last reader
//! (or the losses) to the backward of its producer. One assignment
//! ([`super::memory::assign`]) places values, scratch and gradients.

use super::backward::Back;
use super::memory::{assign, Interval};
use super::run::{self, Saved};
use super::schedule::{read_slots, Loc, PKind, PStep, Schedule, Unplanned};
use super::{pack, Packed};
use crate::ir::ops::activation::Act;
use crate::ir::ops::norm;
use crate::ir::{Ew, LossKind};
use crate::kernels::{host, loss};
use crate::lower::{Forward, Params, Program, RunError};
use crate::pipeline::Mode;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::HashMap;

/// A training program's planned forward and backward.
pub struct PlannedTrain {
    schedule: Schedule,
    /// Per buffer: the buffer of its gradient.
    grad: Vec<Option<usize>>,
    /// Gradient buffers to zero at a time of the backward (first written then).
    zero_at: HashMap<usize, Vec<usize>>,
    arena: Vec<f32>,
    saved: Vec<Saved>,
    packed: Vec<Packed>,
    /// The weights' gradients by key, summed over the steps that read them.
    pgrads: HashMap<String, Vec<f32>>,
    /// The last forward's inputs, which the backward reads.
    inputs: Vec<(usize, Tensor)>,
    /// When set: seconds per program step, forward and backward added
    /// (`mtl bench --profile`).
    pub times: Option<Vec<f64>>,
    /// Whether a forward's saved states await their backward: the backward
    /// consumes them (an LSTM's gates become their gradient in place).
    pending: bool,
    /// The heads' losses of the last forward (buffers kept across steps).
    fused: Vec<Fused>,
    /// The forward's and the backward's.
    handovers: [crate::kernels::par::Handover; 2],
}

/// A head's loss computed by [`PlannedTrain::head_loss`]: the head's value
/// slot, the loss as the leaf the weighting reads (`None` until computed
/// for this forward), and dLoss/dvalue.
struct Fused {
    slot: usize,
    loss: Option<Var>,
    grad: Vec<f32>,
}

/// Whether the planned backward knows `kind`.
fn has_backward(kind: &PKind) -> bool {
    match kind {
        PKind::Linear { .. }
        | PKind::MaxPool { .. }
        | PKind::GlobalPool { .. }
        | PKind::Narrow { .. }
        | PKind::Concat { .. }
        | PKind::Embedding { .. }
        | PKind::Upsample { .. }
        | PKind::Attention { .. }
        | PKind::LayerNorm { .. }
        | PKind::PositionAdd
        | PKind::MeanSteps { .. }
        | PKind::Select { .. }
        | PKind::Permute { .. }
        | PKind::BatchNorm { .. }
        | PKind::Dropout { .. } => true,
        PKind::Conv { mean, .. } => !mean,
        PKind::Act(a) => matches!(
            a,
            Act::Relu | Act::Gelu | Act::Sigmoid | Act::Tanh | Act::Silu
        ),
        PKind::Rnn { .. } => true,
        PKind::Elementwise(_) | PKind::Mixture { .. } | PKind::Gated { .. } | PKind::Weighted => {
            true
        }
        _ => false,
    }
}

/// The operands (by index; `None`: the output) whose values the backward of
/// a step reads.
fn kept(ps: &PStep) -> Vec<Option<usize>> {
    match &ps.kind {
        PKind::Linear { relu, .. } | PKind::Conv { relu, .. } => {
            let mut v = vec![Some(0)];
            if *relu {
                v.push(None);
            }
            v
        }
        PKind::GlobalPool { max: true, .. } => vec![Some(0), None],
        PKind::Act(Act::Gelu | Act::Silu) => vec![Some(0)],
        PKind::Act(_) => vec![None],
        PKind::Rnn { .. } => vec![Some(0)],
        PKind::Elementwise(Ew::Mul | Ew::Max | Ew::Min)
        | PKind::Attention { .. }
        | PKind::Mixture { .. }
        | PKind::Gated { .. }
        | PKind::Weighted => (0..ps.args.len()).map(Some).collect(),
        PKind::LayerNorm { .. } | PKind::BatchNorm { .. } => vec![Some(0)],
        _ => vec![],
    }
}

impl PlannedTrain {
    /// Plans the training `prog`, or says why it trains on the candle path.
    pub fn new(prog: &Program, params: &Params) -> Result<PlannedTrain, Unplanned> {
        if prog.mode != Mode::Train {
            return Err(Unplanned("an inference program".into()));
        }
        let on_cpu = params
            .vars
            .values()
            .next()
            .is_none_or(|v| crate::kernels::native_device(v.device()));
        if !on_cpu {
            return Err(Unplanned(
                "planned kernels run on the CPU with our kernels".into(),
            ));
        }
        let mut schedule = Schedule::build(prog)?;
        for ps in &schedule.steps {
            if !has_backward(&ps.kind) {
                let st = &prog.steps[ps.step];
                return Err(Unplanned(format!(
                    "step `{}` ({}): no planned backward",
                    st.name, st.kernel
                )));
            }
        }
        let n = prog.steps.len();
        let back = |k: usize| 2 * n - k;
        // Values the backward reads live until it has.
        for ps in &schedule.steps {
            for op in kept(ps) {
                let l = match op {
                    Some(i) => ps.args[i],
                    None => Loc::Buffer(ps.out),
                };
                if let Loc::Buffer(b) = l {
                    let last = &mut schedule.bufs[b].last;
                    *last = (*last).max(back(ps.step));
                }
            }
        }
        // Each value's gradient: from its last reader's backward to its producer's.
        let mut first_grad: HashMap<usize, usize> = HashMap::new();
        for ps in &schedule.steps {
            for a in &ps.args {
                if let Loc::Buffer(b) = a {
                    let f = first_grad.entry(*b).or_insert(usize::MAX);
                    *f = (*f).min(back(ps.step));
                }
            }
        }
        for slot in read_slots(prog) {
            if let Some(Loc::Buffer(b)) = schedule.loc[slot] {
                first_grad.insert(b, n);
            }
        }
        let mut grad = vec![None; schedule.bufs.len()];
        let mut zero_at: HashMap<usize, Vec<usize>> = HashMap::new();
        for ps in &schedule.steps {
            let Some(&first) = first_grad.get(&ps.out) else {
                continue;
            };
            let g = schedule.bufs.len();
            schedule.bufs.push(Interval {
                size: schedule.bufs[ps.out].size,
                first,
                last: back(ps.step),
            });
            grad[ps.out] = Some(g);
            zero_at.entry(first).or_default().push(g);
        }
        schedule.assignment = assign(&schedule.bufs);
        let saved = schedule.steps.iter().map(|_| Saved::default()).collect();
        Ok(PlannedTrain {
            schedule,
            grad,
            zero_at,
            arena: vec![],
            saved,
            packed: vec![],
            pgrads: HashMap::new(),
            inputs: vec![],
            times: None,
            pending: false,
            fused: vec![],
            handovers: Default::default(),
        })
    }

    /// The training forward: the heads' values (for [`Self::head_loss`]
    /// and the metrics) and the auxiliary losses' operands as leaf
    /// variables (in `values` and `leaves`), for candle's losses.
    /// Dropout draws from `rng` as the candle path does: a value at a time,
    /// the steps in program order.
    pub fn forward(
        &mut self,
        prog: &Program,
        params: &Params,
        inputs: Vec<(usize, Tensor)>,
        rng: &mut StdRng,
    ) -> Result<Forward, RunError> {
        let mut handover = self.handovers[0];
        let fwd = handover.run(|| self.forward_here(prog, params, inputs, rng));
        self.handovers[0] = handover;
        fwd
    }

    fn forward_here(
        &mut self,
        prog: &Program,
        params: &Params,
        inputs: Vec<(usize, Tensor)>,
        rng: &mut StdRng,
    ) -> Result<Forward, RunError> {
        // The last step's packing goes before this one's is made.
        self.packed.clear();
        self.packed = self
            .schedule
            .steps
            .iter()
            .map(|ps| {
                let st = &prog.steps[ps.step];
                pack(st, &ps.kind, params).map_err(|e| RunError::Step {
                    node: st.name.clone(),
                    message: e.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        self.inputs = inputs;
        let (batch, held) = run::hold(prog, &self.inputs)?;
        for (ps, saved) in self.schedule.steps.iter().zip(&mut self.saved) {
            if let PKind::Dropout { keep } = ps.kind {
                let n = self.schedule.bufs[ps.out].size * batch;
                saved.mask.clear();
                saved.mask.extend((0..n).map(|_| {
                    if rng.random::<f32>() < keep {
                        1.0 / keep
                    } else {
                        0.0
                    }
                }));
            }
        }
        let arena = run::arena_for(&self.schedule, &mut self.arena, batch);
        let at = (held.as_slice(), batch);
        let saved = Some(self.saved.as_mut_slice());
        let times = self.times.as_mut();
        run::run_steps(&self.schedule, &self.packed, &arena, at, prog, saved, times)?;
        update_running_stats(&self.schedule, &self.saved, prog, params)?;
        self.pending = true;
        self.fused.iter_mut().for_each(|f| f.loss = None);
        let mut values: Vec<Option<Tensor>> = vec![None; prog.n_values];
        let mut leaves = vec![];
        for slot in read_slots(prog) {
            let t = run::value(&self.schedule, &arena, at, prog, slot)?;
            // The heads' losses are ours (`head_loss`); only the auxiliary
            // losses, on candle, need their operands as leaves.
            if !prog.losses.iter().any(|l| l.slots.contains(&slot)) {
                values[slot] = Some(t);
                continue;
            }
            let leaf = Var::from_tensor(&t).map_err(|e| RunError::Step {
                node: format!("value {slot}"),
                message: e.to_string(),
            })?;
            values[slot] = Some(leaf.as_tensor().clone());
            leaves.push((slot, leaf));
        }
        Ok(Forward { values, leaves })
    }

    /// Head `slot`'s loss in the last forward `fwd`, with its gradient kept
    /// for the backward: the loss as a scalar leaf (for the weighting's
    /// total, whose backward gives the coefficient the gradient is scaled
    /// by) and the number of labels present. `label` and `sample` as
    /// `train::loss::head_loss` takes them; `present_only`: divided by the
    /// labels present rather than by all.
    pub fn head_loss(
        &mut self,
        fwd: &Forward,
        slot: usize,
        kind: LossKind,
        (label, sample): (&Tensor, Option<&Tensor>),
        present_only: bool,
    ) -> Result<(Tensor, f32), RunError> {
        let fail = |message: String| RunError::Step {
            node: format!("the loss of value {slot}"),
            message,
        };
        let candle = |e: candle_core::Error| fail(e.to_string());
        let logits = fwd.get(slot).ok_or_else(|| fail("not computed".into()))?;
        let flat = label.flatten_all().map_err(candle)?;
        let kind = match kind {
            LossKind::CrossEntropy => loss::Kind::CrossEntropy,
            LossKind::BinaryCrossEntropy => loss::Kind::BinaryCrossEntropy,
            LossKind::Mse => loss::Kind::Mse,
            LossKind::Mae => loss::Kind::Mae,
            LossKind::Huber => loss::Kind::Huber,
        };
        let labels = if kind == loss::Kind::CrossEntropy {
            let ids = flat.to_dtype(DType::I64).and_then(|c| c.to_vec1::<i64>());
            loss::Labels::Classes(ids.map_err(candle)?)
        } else {
            let t = flat.to_dtype(DType::F32).and_then(|t| t.to_vec1::<f32>());
            loss::Labels::Targets(t.map_err(candle)?)
        };
        let sample = sample
            .map(|s| s.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>())
            .transpose()
            .map_err(candle)?;
        let at = match self.fused.iter().position(|f| f.slot == slot) {
            Some(i) => i,
            None => {
                self.fused.push(Fused {
                    slot,
                    loss: None,
                    grad: vec![],
                });
                self.fused.len() - 1
            }
        };
        let f = &mut self.fused[at];
        let x = host::host(logits).map_err(candle)?;
        let r = loss::head(
            kind,
            (&x, logits.dims()),
            &labels,
            sample.as_deref(),
            present_only,
            &mut f.grad,
        )
        .map_err(fail)?;
        let leaf = Var::new(r.loss, logits.device()).map_err(candle)?;
        let value = leaf.as_tensor().clone();
        f.loss = Some(leaf);
        Ok((value, r.present))
    }

    /// The backward of the last forward from the losses' gradients in
    /// `store` (of `fwd`'s leaves): each weight's gradient added to its
    /// entry in `grads` (aligned with `vars`). Once per forward.
    pub fn backward(
        &mut self,
        prog: &Program,
        params: &Params,
        (fwd, store): (&Forward, &GradStore),
        vars: &[(String, Var)],
        grads: &mut [Option<Tensor>],
    ) -> Result<(), RunError> {
        let mut handover = self.handovers[1];
        let done = handover.run(|| self.backward_here(prog, params, (fwd, store), vars, grads));
        self.handovers[1] = handover;
        done
    }

    fn backward_here(
        &mut self,
        prog: &Program,
        params: &Params,
        (fwd, store): (&Forward, &GradStore),
        vars: &[(String, Var)],
        grads: &mut [Option<Tensor>],
    ) -> Result<(), RunError> {
        let err = |node: &str| {
            let node = node.to_string();
            move |message: String| RunError::Step { node, message }
        };
        if !std::mem::take(&mut self.pending) {
            return Err(err("backward")("a second backward of one forward".into()));
        }
        let n = prog.steps.len();
        let (batch, held) = run::hold(prog, &self.inputs)?;
        let arena = run::arena_for(&self.schedule, &mut self.arena, batch);
        self.pgrads.clear();
        let zero = |t: usize| {
            for g in self.zero_at.get(&t).into_iter().flatten() {
                // SAFETY: a gradient buffer first written at time `t`.
                let g = unsafe { arena.get_mut(*g) };
                // Bound by memory: both cores on a large one.
                let big = g.len() >= crate::kernels::par::MIN_ELEMENTS;
                crate::kernels::par::chunks_mut(g, 1 << 15, big, |_, g| g.fill(0.0));
            }
        };
        zero(n);
        // Values a loss's gradient reaches. Steps off every such path are
        // skipped, so that their weights get no gradient (`None`), as from
        // candle's autograd: Adam would move a weight on a zero gradient
        // (its moments decay), and not on none (a head with no labels in
        // the batch, the detached side of an auxiliary loss).
        let mut reached = vec![false; self.schedule.bufs.len()];
        for (slot, leaf) in &fwd.leaves {
            let (Some(Loc::Buffer(b)), Some(g)) =
                (self.schedule.loc[*slot], store.get(leaf.as_tensor()))
            else {
                continue;
            };
            let Some(gb) = self.grad[b] else { continue };
            reached[b] = true;
            let g = host::host(g).map_err(|e| err("losses")(e.to_string()))?;
            // SAFETY: the gradient of a value read after the forward.
            let dst = unsafe { arena.get_mut(gb) };
            dst.iter_mut().zip(g.iter()).for_each(|(d, v)| *d += v);
        }
        for f in &mut self.fused {
            let Some(c) = f
                .loss
                .take()
                .and_then(|l| store.get(l.as_tensor()).cloned())
            else {
                continue;
            };
            let Some(Loc::Buffer(b)) = self.schedule.loc[f.slot] else {
                continue;
            };
            let Some(gb) = self.grad[b] else { continue };
            reached[b] = true;
            let c = c
                .to_scalar::<f32>()
                .map_err(|e| err("losses")(e.to_string()))?;
            // SAFETY: the gradient of a value read after the forward.
            let dst = unsafe { arena.get_mut(gb) };
            dst.iter_mut().zip(&f.grad).for_each(|(d, g)| *d += c * g);
        }
        let steps = self
            .schedule
            .steps
            .iter()
            .zip(&self.packed)
            .zip(&mut self.saved);
        for ((ps, packed), saved) in steps.rev() {
            zero(2 * n - ps.step);
            let Some(gy) = self.grad[ps.out].filter(|_| reached[ps.out]) else {
                continue;
            };
            for a in &ps.args {
                if let Loc::Buffer(b) = a {
                    reached[*b] = true;
                }
            }
            let st = &prog.steps[ps.step];
            let step = Back {
                ps,
                arena: &arena,
                held: (&held, batch),
                grad: &self.grad,
                gy,
            };
            let started = std::time::Instant::now();
            step.run(st, packed, params, saved, &mut self.pgrads)
                .map_err(err(&st.name))?;
            if let Some(t) = self.times.as_mut() {
                t.resize(n.max(t.len()), 0.0);
                t[ps.step] += started.elapsed().as_secs_f64();
            }
        }
        for ((key, var), g) in vars.iter().zip(grads.iter_mut()) {
            // Handed over, not copied: the gradients exist once.
            let Some(pg) = self.pgrads.remove(key) else {
                continue;
            };
            let t = Tensor::from_vec(pg, var.shape(), var.device())
                .map_err(|e| err(key)(e.to_string()))?;
            *g = Some(match g.take() {
                Some(prev) => (prev + t).map_err(|e| err(key)(e.to_string()))?,
                None => t,
            });
        }
        // The packed weights are stale once the optimizer steps: freed now,
        // they do not add to the heap while it runs.
        self.packed.clear();
        Ok(())
    }
}

/// Each batch norm's running statistics moved toward the batch's, as
/// the candle path moves them: run·momentum + batch·(1 − momentum).
fn update_running_stats(
    schedule: &Schedule,
    saved: &[Saved],
    prog: &Program,
    params: &Params,
) -> Result<(), RunError> {
    for (ps, saved) in schedule.steps.iter().zip(saved) {
        let PKind::BatchNorm { momentum, c, .. } = ps.kind else {
            continue;
        };
        let st = &prog.steps[ps.step];
        let fail = |e: candle_core::Error| RunError::Step {
            node: st.name.clone(),
            message: e.to_string(),
        };
        let prefix = st.params.as_deref().unwrap_or("");
        let (mean, var) = &saved.stats;
        for (name, batch) in [(norm::RUNNING_MEAN, mean), (norm::RUNNING_VAR, var)] {
            let Some(run) = params.vars.get(&format!("{prefix}.{name}")) else {
                continue;
            };
            let batch = Tensor::from_slice(batch, c, run.device())
                .and_then(|b| b.to_dtype(run.dtype()))
                .map_err(fail)?;
            let moved = (run.as_tensor() * momentum)
                .and_then(|r| r + (batch * (1.0 - momentum))?)
                .map_err(fail)?;
            run.set(&moved).map_err(fail)?;
        }
    }
    Ok(())
}
