//! Lowering: the optimized IR becomes an ordered list of steps, each a candle
//! call (or one of our kernels) over named parameters. Built once, run many times.

pub(crate) mod calls;
mod columns;
mod composite;
mod exec;
mod kernel;
mod legality;
mod params;
pub mod planned;
mod prune;
mod sharing;

pub use calls::fold_bn;
pub use exec::{head_output, Cut, Forward, RunError};
pub use kernel::{ConvKernel, FoldedBn, Kernel};
pub use legality::unsupported;
pub use params::{init_params, save_atomic, Params};
pub use sharing::{Group, Sharing};

use crate::diagnostics::Diagnostic;
use crate::ir::{
    ops::conv::same_padding, AuxKind, Dim, Graph, Head, InputKind, LossKind, Op, Padding, Type,
};
use crate::ir::{Conv, GlobalPool, Input, InputPolicy, MergedDense};
use crate::pipeline::Mode;
use crate::signature::{HeadSig, InputSig, Signature};
use petgraph::stable_graph::NodeIndex;
use std::collections::HashMap;
use std::fmt::Write;

/// Padding chosen at lowering time: (before, after) per spatial axis.
pub type Pads = Vec<(usize, usize)>;

#[derive(Debug, Clone)]
pub struct Step {
    /// The IR node's name.
    pub name: String,
    pub op: Op,
    /// What runs this step (the plan shows it).
    pub kernel: Kernel,
    /// Slots of operand values, and of the result.
    pub args: Vec<usize>,
    pub out: usize,
    /// Checkpoint prefix of the layer's parameters.
    pub params: Option<String>,
    /// Per operand, the slot of the token ids whose zeros pad it (its padding
    /// mask), for the ops that read masks.
    pub masks: Vec<Option<usize>>,
    pub ty: Type,
}

/// An auxiliary loss over value slots.
#[derive(Debug, Clone)]
pub struct AuxStep {
    pub name: String,
    pub kind: AuxKind,
    pub weight: f64,
    pub slots: Vec<usize>,
    /// Checkpoint prefix of its parameters (a learned temperature).
    pub params: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Program {
    pub mode: Mode,
    pub steps: Vec<Step>,
    /// (input name, value slot, per-sample type).
    pub inputs: Vec<(String, usize, Type)>,
    /// How each input is declared (images are decoded from files).
    pub input_kinds: HashMap<String, InputKind>,
    /// What the data does when a sample lacks an input.
    pub input_policies: HashMap<String, InputPolicy>,
    /// Heads: (head, value slot).
    pub heads: Vec<(Head, usize)>,
    pub losses: Vec<AuxStep>,
    /// Parameter tensors: key → (shape, trainable, init).
    pub param_specs: Vec<(String, crate::ir::ParamTensor)>,
    pub n_values: usize,
    /// The dtype the forward computes in: f32, or bf16 for mixed precision
    /// (parameters stay f32 and are cast per step; see [`Program::with_precision`]).
    pub compute: candle_core::DType,
    /// Checkpoint prefixes whose weights get no gradient and no optimizer
    /// state (`trainable = false`, `train { freeze }`).
    pub frozen: Vec<String>,
}

/// Lowers a typed graph. `mode` picks differentiable forms (train) or fast
/// paths (infer); training fails, with located diagnostics, where an op has
/// no backward.
pub fn lower(g: &Graph, mode: Mode) -> Result<Program, Vec<Diagnostic>> {
    let mut d = legality::unsupported(g);
    if mode == Mode::Train {
        d.extend(legality::check(g));
    }
    if !d.is_empty() {
        return Err(d);
    }
    Ok(plan(g, mode))
}

fn plan(g: &Graph, mode: Mode) -> Program {
    let mut slot: HashMap<NodeIndex, usize> = HashMap::new();
    let mut steps = vec![];
    let mut inputs = vec![];
    let mut input_kinds = HashMap::new();
    let mut input_policies = HashMap::new();
    for n in g.topo_order() {
        let node = &g.g[n];
        let s = slot.len();
        slot.insert(n, s);
        let ty = node.ty.clone().unwrap_or_else(|| Type::f32(vec![]));
        if let Op::Input(Input { name, kind, policy }) = &node.op {
            input_kinds.insert(name.clone(), kind.clone());
            input_policies.insert(name.clone(), *policy);
            inputs.push((name.clone(), s, ty));
            continue;
        }
        let args: Vec<usize> = g.operands(n).iter().map(|o| slot[o]).collect();
        let in_ty = g.operands(n).first().and_then(|o| g.g[*o].ty.clone());
        let pads = match (&node.op, &in_ty) {
            (
                Op::Conv(Conv {
                    kernel,
                    stride,
                    padding: Padding::Same,
                    dilation,
                    ..
                }),
                Some(t),
            ) => (0..kernel.len())
                .map(|a| {
                    same_padding(
                        t.shape[a + 1].fixed().unwrap_or(1),
                        kernel[a],
                        stride[a],
                        dilation[a],
                    )
                })
                .collect(),
            _ => vec![],
        };
        let bn = node
            .folded_bn
            .map(|(p, eps)| (g.params[p.0].prefix.clone(), eps));
        let kernel = match &node.op {
            Op::Dense(_) => Kernel::Linear { relu: false, bn },
            Op::MergedDense(MergedDense { parts }) => Kernel::MergedLinear {
                parts: parts
                    .iter()
                    .map(|(p, u)| (g.params[p.0].prefix.clone(), *u))
                    .collect(),
            },
            Op::Conv(c) => {
                let uniform = |v: &[usize]| v.iter().all(|x| *x == v[0]);
                Kernel::Conv(ConvKernel {
                    im2col: c.groups == 1 && uniform(&c.stride) && uniform(&c.dilation),
                    rank: c.kernel.len(),
                    pads,
                    relu: false,
                    mean: false,
                    pool: false,
                    bn,
                })
            }
            // Padded steps keep the state: the per-step form, not the fused op.
            Op::Rnn(r) if g.operands(n).iter().any(|o| g.g[*o].mask.is_some()) => {
                Kernel::Op(match r.cell {
                    crate::ir::RnnCell::Lstm => "mtl.lstm(per-step, masked)",
                    crate::ir::RnnCell::Gru => "mtl.gru(per-step, masked)",
                })
            }
            op => Kernel::Op(calls::kernel_name(op, mode)),
        };
        steps.push(Step {
            name: node.name.clone(),
            kernel,
            op: node.op.clone(),
            args,
            out: s,
            params: node.param.map(|p| g.params[p.0].prefix.clone()),
            masks: g
                .operands(n)
                .iter()
                .map(|o| g.g[*o].mask.filter(|_| node.op.rules().reads_mask()))
                .map(|m| m.map(|m| slot[&m]))
                .collect(),
            ty,
        });
    }
    let kept: Vec<usize> = g
        .heads
        .iter()
        .map(|h| slot[&h.node])
        .chain(
            g.losses
                .iter()
                .flat_map(|l| l.operands.iter().map(|o| slot[o])),
        )
        .collect();
    fuse_relu(&mut steps, &kept);
    if mode == Mode::Infer {
        fuse_global_mean(&mut steps, &kept);
    }
    fuse_max_pool(&mut steps, &kept);
    let mut param_specs = vec![];
    let mut used: Vec<usize> =
        g.g.node_weights()
            .flat_map(|n| n.param_ids().into_iter().map(|p| p.0))
            .chain(g.losses.iter().filter_map(|l| l.param.map(|p| p.0)))
            .collect();
    used.sort_unstable();
    used.dedup();
    for p in used {
        let set = &g.params[p];
        for t in &set.tensors {
            param_specs.push((format!("{}.{}", set.prefix, t.name), t.clone()));
        }
    }
    param_specs.sort_by(|a, b| a.0.cmp(&b.0));
    Program {
        mode,
        steps,
        inputs,
        input_kinds,
        input_policies,
        heads: g.heads.iter().map(|h| (h.clone(), slot[&h.node])).collect(),
        losses: g
            .losses
            .iter()
            .map(|l| AuxStep {
                name: l.name.clone(),
                kind: l.kind,
                weight: l.weight,
                slots: l.operands.iter().map(|o| slot[o]).collect(),
                params: l.param.map(|p| g.params[p.0].prefix.clone()),
            })
            .collect(),
        param_specs,
        n_values: slot.len(),
        compute: candle_core::DType::F32,
        frozen: g.frozen.clone(),
    }
}

/// Folds a relu into the dense or conv step that feeds it alone: the kernel
/// applies max(0, ·) after the bias and masks the gradient by the output, so
/// the activation costs no pass of its own, forward or backward. `kept`
/// slots (heads, loss operands) are observed and never fused away.
fn fuse_relu(steps: &mut Vec<Step>, kept: &[usize]) {
    fuse_into(steps, kept, |st, next| {
        next.op == Op::Act(crate::ir::Act::Relu) && st.kernel.fuse_relu()
    });
}

/// Folds a global average pool into the 2-D conv that alone feeds it, for
/// inference: each image's plane means are taken while its outputs are in
/// cache, so the conv's full output is never written out (on
/// `models/seed_multimodal.mtl` that was 31 MB per batch, then read again).
fn fuse_global_mean(steps: &mut Vec<Step>, kept: &[usize]) {
    let avg = Op::GlobalPool(GlobalPool {
        kind: crate::ir::PoolKind::Avg,
        axis: None,
    });
    fuse_into(steps, kept, |st, next| {
        next.op == avg && st.kernel.fuse_mean()
    });
}

/// Folds a 2×2, stride-2 max pool into the 2-D conv that alone feeds it:
/// each image's outputs are pooled while in cache, so the full-size output
/// is never written out and read again (the pools after `shapes_mm`'s
/// convolutions took 13% of its inference step). In training the planned
/// executor saves the pool's maxima and runs the pair's backward as one;
/// the candle path pools after the convolution, for autograd.
fn fuse_max_pool(steps: &mut Vec<Step>, kept: &[usize]) {
    // `max_pool(2)` holds one size for both axes, `max_pool(2, 2)` two.
    let two = |v: &[usize]| matches!(v, [2] | [2, 2]);
    fuse_into(steps, kept, |st, next| {
        let Op::Pool(p) = &next.op else {
            return false;
        };
        p.kind == crate::ir::PoolKind::Max
            && two(&p.size)
            && two(&p.stride)
            && st.kernel.fuse_max_pool()
    });
}

/// Merges step j into step i where j is i's only user, i's output is not
/// `kept`, and `merge(i, j)` accepts (and updates i); i then writes j's output.
fn fuse_into(steps: &mut Vec<Step>, kept: &[usize], merge: impl Fn(&mut Step, &Step) -> bool) {
    let mut users: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, st) in steps.iter().enumerate() {
        for a in &st.args {
            users.entry(*a).or_default().push(i);
        }
    }
    let mut gone = vec![false; steps.len()];
    for i in 0..steps.len() {
        if kept.contains(&steps[i].out) {
            continue;
        }
        let Some(&[j]) = users.get(&steps[i].out).map(Vec::as_slice) else {
            continue;
        };
        if steps[j].args.len() != 1 {
            continue;
        }
        let next = steps[j].clone();
        if merge(&mut steps[i], &next) {
            steps[i].out = next.out;
            steps[i].ty = next.ty;
            gone[j] = true;
        }
    }
    let mut k = 0;
    steps.retain(|_| {
        k += 1;
        !gone[k - 1]
    });
}

impl Program {
    /// Whether the parameter `key` is frozen: it lies under a frozen prefix.
    pub fn is_frozen(&self, key: &str) -> bool {
        self.frozen.iter().any(|f| crate::ir::under(key, f))
    }

    /// Biases whose gradient is zero in exact arithmetic: a dense or
    /// convolution read only by a training batch norm, which subtracts each
    /// channel's batch mean and so removes any per-channel constant. In
    /// floats their gradient is rounding noise, which Adam normalizes into
    /// steps of the learning rate's size: a random walk that depends on the
    /// summation order (threads, ranks). Training keeps them at their
    /// initial value instead; they stay in checkpoints and parameter counts.
    pub fn inert_params(&self) -> Vec<String> {
        if self.mode != Mode::Train {
            return vec![];
        }
        let read_by_head = |slot: usize| {
            self.heads.iter().any(|(_, s)| *s == slot)
                || self.losses.iter().any(|l| l.slots.contains(&slot))
        };
        let mut out = vec![];
        for st in &self.steps {
            let Some(prefix) = st.params.as_deref() else {
                continue;
            };
            // Channels on axis 1, where batch norm takes its statistics.
            let channels_first = match &st.op {
                Op::Dense(_) => st.ty.rank() == 1,
                Op::Conv(_) => true,
                _ => false,
            };
            let readers: Vec<&Step> = self
                .steps
                .iter()
                .filter(|r| r.args.contains(&st.out))
                .collect();
            let key = format!("{prefix}.{}", crate::ir::ops::dense::BIAS);
            if channels_first
                && !read_by_head(st.out)
                && matches!(readers.as_slice(), [r] if matches!(r.op, Op::BatchNorm(_)) && r.args[0] == st.out)
                && self.param_specs.iter().any(|(k, _)| *k == key)
            {
                out.push(key);
            }
        }
        out
    }

    /// Freezes the layers under `freeze` and thaws those under `unfreeze`
    /// (which wins: a second fine-tuning run undoes the first's freezing).
    pub fn set_frozen(&mut self, freeze: &[String], unfreeze: &[String]) {
        self.frozen.extend(freeze.iter().cloned());
        let thawed = |f: &String| unfreeze.iter().any(|u| crate::ir::under(f, u));
        self.frozen.retain(|f| !thawed(f));
        self.frozen.sort();
        self.frozen.dedup();
    }

    /// The inputs and heads as data and serving see them.
    pub fn signature(&self) -> Signature {
        let embedded = |slot: usize| {
            self.steps
                .iter()
                .any(|s| matches!(s.op, Op::Embedding { .. }) && s.args.first() == Some(&slot))
        };
        let inputs = self
            .inputs
            .iter()
            .map(|(name, slot, ty)| InputSig {
                name: name.clone(),
                kind: self
                    .input_kinds
                    .get(name)
                    .cloned()
                    .unwrap_or(InputKind::F32),
                ty: ty.clone(),
                embedded: embedded(*slot),
                policy: self.input_policies.get(name).copied().unwrap_or_default(),
            })
            .collect();
        let heads = self
            .heads
            .iter()
            .map(|(h, slot)| HeadSig {
                name: h.name.clone(),
                loss: h.loss,
                label: h.label.clone(),
                label_type: h.label_type.clone(),
                // The logits' first axis.
                classes: match h.loss {
                    LossKind::CrossEntropy => self
                        .steps
                        .iter()
                        .find(|s| s.out == *slot)
                        .and_then(|s| s.ty.shape.first().and_then(Dim::fixed))
                        .unwrap_or(0),
                    _ => 0,
                },
            })
            .collect();
        Signature { inputs, heads }
    }

    /// The kernels for `device`: our CPU convolution gives way to candle's
    /// elsewhere (the plan of a GPU run says so). Dense layers pick their GEMM
    /// by device inside one kernel.
    pub fn for_device(mut self, device: &candle_core::Device) -> Self {
        if crate::kernels::native_device(device) {
            return self;
        }
        for st in &mut self.steps {
            if let Kernel::Conv(c) = &mut st.kernel {
                c.im2col = false;
            }
        }
        self
    }

    /// Mixed precision: the forward computes in `dtype` (bf16), reading f32
    /// parameters through casts made once per forward (the gradients reach
    /// the f32 masters through them), with heads and auxiliary-loss inputs
    /// cast back to f32 so every loss and metric is computed in f32. Batch
    /// norm statistics are computed and kept in f32.
    pub fn with_precision(mut self, dtype: candle_core::DType) -> Self {
        self.compute = dtype;
        self
    }

    /// The plan as deterministic text: one line per step.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "plan ({})",
            if self.mode == Mode::Train {
                "train"
            } else {
                "infer"
            }
        );
        for (name, slot, ty) in &self.inputs {
            let _ = writeln!(s, "  v{slot} = input `{name}` : {ty}");
        }
        let shapes: HashMap<&str, &Vec<usize>> = self
            .param_specs
            .iter()
            .map(|(k, t)| (k.as_str(), &t.shape))
            .collect();
        for st in &self.steps {
            let out = st.out;
            // An operand with a padding mask shows the token ids it comes from.
            let args: Vec<String> = st
                .args
                .iter()
                .zip(&st.masks)
                .map(|(a, m)| match m {
                    Some(m) => format!("v{a} mask v{m}"),
                    None => format!("v{a}"),
                })
                .collect();
            let _ = write!(
                s,
                "  v{out} = {} ({}) : {}  # {}",
                st.kernel,
                args.join(", "),
                st.ty,
                st.name
            );
            let prefixes: Vec<&str> = st
                .params
                .iter()
                .map(String::as_str)
                .chain(st.kernel.extra_prefixes())
                .collect();
            for p in prefixes {
                let keys: Vec<String> = self
                    .param_specs
                    .iter()
                    .filter(|(k, _)| crate::ir::under(k, p))
                    .map(|(k, _)| format!("{k}{:?}", shapes[k.as_str()]))
                    .collect();
                let _ = write!(s, "  [{}]", keys.join(", "));
            }
            s.push('\n');
        }
        for (h, slot) in &self.heads {
            let _ = writeln!(s, "  head {} = v{slot} ({})", h.name, h.loss.name());
        }
        for l in &self.losses {
            let a: Vec<String> = l.slots.iter().map(|x| format!("v{x}")).collect();
            let _ = writeln!(
                s,
                "  loss {} = {}({}) * {}",
                l.name,
                l.kind.name(),
                a.join(", "),
                l.weight
            );
        }
        s
    }
}
