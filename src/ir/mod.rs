//! The graph IR: a petgraph `StableDiGraph` of typed ops; edges carry operand slots.

mod heads;
mod op;
pub mod ops;
mod print;
pub mod shape;
mod verify;

pub use op::*;
pub use print::{print_dot, print_ir};
pub use verify::verify;

use crate::diagnostics::Span;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use serde::Serialize;
use std::fmt;

/// A per-sample dimension: a number, or a name unified by shape inference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(usize),
    Sym(String),
}

impl Dim {
    pub fn fixed(&self) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(*n),
            Dim::Sym(_) => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => write!(f, "{s}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    I64,
}

/// The type of one sample's tensor (the batch dimension is implicit).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Type {
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl Type {
    pub fn f32(shape: Vec<Dim>) -> Self {
        Type {
            dtype: DType::F32,
            shape,
        }
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// All dims fixed: the concrete per-sample shape.
    pub fn dims(&self) -> Option<Vec<usize>> {
        self.shape.iter().map(Dim::fixed).collect()
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        let dt = match self.dtype {
            DType::F32 => "f32",
            DType::I64 => "i64",
        };
        write!(f, "{dt}[{}]", dims.join(", "))
    }
}

/// Shape of a value as users read it in diagnostics: `[64, 62, 62]`.
pub fn shape_str(t: &Type) -> String {
    let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ParamId(pub usize);

/// How a parameter tensor starts (Keras 3 defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// Glorot uniform over (fan_in, fan_out).
    GlorotUniform {
        fan_in: usize,
        fan_out: usize,
    },
    /// Orthogonal blocks of size `units` (recurrent kernels, per gate).
    Orthogonal,
    Zeros,
    Ones,
    /// Uniform(-0.05, 0.05), Keras's embedding default.
    Uniform005,
    /// LSTM bias: zeros but ones for the forget gate (Keras `unit_forget_bias`).
    LstmBias {
        units: usize,
    },
    /// Every element this value.
    Const(f32),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub trainable: bool,
    pub init: Init,
}

/// One layer's weights: every use of a `shared` layer points at the same set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamSet {
    /// Checkpoint prefix: keys are `prefix.tensor`.
    pub prefix: String,
    pub span: Span,
    /// Filled by shape inference (shapes depend on operand types).
    pub tensors: Vec<ParamTensor>,
}

impl ParamSet {
    pub fn count(&self, trainable: bool) -> usize {
        self.tensors
            .iter()
            .filter(|t| t.trainable == trainable)
            .map(|t| t.shape.iter().product::<usize>())
            .sum()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub op: Op,
    /// Stable, unique: the `as` name or one derived from the item and position.
    pub name: String,
    pub span: Span,
    pub ty: Option<Type>,
    pub param: Option<ParamId>,
    /// Inference: a batch norm (parameters, epsilon) folded into this conv or dense.
    pub folded_bn: Option<(ParamId, f64)>,
    /// The padding mask this value carries: the token input whose id-0
    /// positions are padding along the value's first axis (set by shape inference).
    pub mask: Option<NodeIndex>,
}

impl Node {
    /// Every parameter set this node reads.
    pub fn param_ids(&self) -> Vec<ParamId> {
        let mut v: Vec<ParamId> = self.param.into_iter().collect();
        v.extend(self.folded_bn.map(|(p, _)| p));
        if let Op::MergedDense(MergedDense { parts }) = &self.op {
            v.extend(parts.iter().map(|(p, _)| *p));
        }
        v
    }
}

/// An edge from operand to user; `slot` is the operand's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    pub slot: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    CrossEntropy,
    BinaryCrossEntropy,
    Mse,
    Mae,
    Huber,
}

impl LossKind {
    pub const NAMES: &'static [&'static str] = &[
        "cross_entropy",
        "binary_cross_entropy",
        "mse",
        "mae",
        "huber",
    ];
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "cross_entropy" => LossKind::CrossEntropy,
            "binary_cross_entropy" => LossKind::BinaryCrossEntropy,
            "mse" => LossKind::Mse,
            "mae" => LossKind::Mae,
            "huber" => LossKind::Huber,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
    pub fn is_classification(self) -> bool {
        matches!(self, LossKind::CrossEntropy | LossKind::BinaryCrossEntropy)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Accuracy,
    TopK(usize),
    F1,
    Auc,
    Mae,
    Rmse,
    Iou,
}

impl Metric {
    pub const NAMES: &'static [&'static str] =
        &["accuracy", "top_k", "f1", "auc", "mae", "rmse", "iou"];
    pub fn name(self) -> String {
        match self {
            Metric::Accuracy => "accuracy".into(),
            Metric::TopK(k) => format!("top_{k}"),
            Metric::F1 => "f1".into(),
            Metric::Auc => "auc".into(),
            Metric::Mae => "mae".into(),
            Metric::Rmse => "rmse".into(),
            Metric::Iou => "iou".into(),
        }
    }
    /// Whether a higher value is better (for early stopping).
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Metric::Mae | Metric::Rmse)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub name: String,
    pub node: NodeIndex,
    pub loss: LossKind,
    pub weight: f64,
    pub metrics: Vec<Metric>,
    pub metric_spans: Vec<Span>,
    /// Data column / tensor holding the label.
    pub label: String,
    pub span: Span,
    /// Derived by shape inference from the head's value and loss.
    pub label_type: Option<Type>,
}

/// What an auxiliary loss computes from its two operands.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuxKind {
    /// A regression loss between the values (the second held fixed).
    Compare(LossKind),
    /// CLIP's symmetric InfoNCE over the batch between two [D] vectors; with
    /// `learned`, the log inverse temperature is the parameter
    /// `NAME.logit_scale` (starting at ln(1/temperature)).
    Contrastive { temperature: f64, learned: bool },
}

impl AuxKind {
    pub fn name(&self) -> &'static str {
        match self {
            AuxKind::Compare(k) => k.name(),
            AuxKind::Contrastive { .. } => "contrastive",
        }
    }
}

/// The learned temperature's tensor in a contrastive loss's parameter set.
pub const LOGIT_SCALE: &str = "logit_scale";

/// An auxiliary objective `loss NAME = FN(a, b) { weight: W }`.
#[derive(Debug, Clone, PartialEq)]
pub struct AuxLoss {
    pub name: String,
    pub kind: AuxKind,
    /// The learned temperature of a contrastive loss.
    pub param: Option<ParamId>,
    pub operands: Vec<NodeIndex>,
    pub weight: f64,
    pub span: Span,
}

/// A whole model: graph, weights, outputs and auxiliary losses.
#[derive(Debug, Clone)]
pub struct Graph {
    pub name: String,
    pub g: StableDiGraph<Node, Edge>,
    pub params: Vec<ParamSet>,
    pub inputs: Vec<NodeIndex>,
    pub heads: Vec<Head>,
    pub losses: Vec<AuxLoss>,
    /// For nodes made by applying a `shared` layer: where it was applied
    /// (the node's own span is the layer's definition). Diagnostics about a
    /// use point there.
    pub use_sites: std::collections::HashMap<NodeIndex, crate::diagnostics::Span>,
    /// Each `pretrained(...)` layer: where its weights come from.
    pub pretrained: Vec<PretrainedUse>,
    /// Checkpoint prefixes whose weights stay fixed in training
    /// (`trainable = false`).
    pub frozen: Vec<String>,
}

/// Whether checkpoint key (or prefix) `key` lies under layer prefix
/// `prefix`: it is the prefix, or continues it after a dot (`bert` covers
/// `bert.pooler.dense.weight`, not `bert2.x`).
pub fn under(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|r| r.is_empty() || r.starts_with('.'))
}

/// A `pretrained("DIR")` layer: its checkpoint prefix (`NAME`), the
/// directory, and the token input it reads (whose tokenizer is the
/// checkpoint's, when it has one).
#[derive(Debug, Clone, PartialEq)]
pub struct PretrainedUse {
    pub prefix: String,
    pub dir: std::path::PathBuf,
    pub span: Span,
    pub input: Option<String>,
    pub tokenizer: Option<std::path::PathBuf>,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Self {
        Graph {
            name: name.into(),
            g: StableDiGraph::new(),
            params: vec![],
            inputs: vec![],
            heads: vec![],
            losses: vec![],
            use_sites: Default::default(),
            pretrained: vec![],
            frozen: vec![],
        }
    }

    pub fn add_node(&mut self, node: Node, operands: &[NodeIndex]) -> NodeIndex {
        let n = self.g.add_node(node);
        for (slot, &o) in operands.iter().enumerate() {
            self.g.add_edge(o, n, Edge { slot });
        }
        n
    }

    /// Operands of `n` in slot order (petgraph lists edges newest first).
    pub fn operands(&self, n: NodeIndex) -> Vec<NodeIndex> {
        let mut es: Vec<(usize, NodeIndex)> = self
            .g
            .edges_directed(n, Direction::Incoming)
            .map(|e| (e.weight().slot, e.source()))
            .collect();
        es.sort_unstable();
        es.into_iter().map(|(_, s)| s).collect()
    }

    pub fn users(&self, n: NodeIndex) -> Vec<NodeIndex> {
        let mut us: Vec<NodeIndex> = self.g.neighbors_directed(n, Direction::Outgoing).collect();
        us.sort_unstable();
        us.dedup();
        us
    }

    /// Nodes in a deterministic topological order (ties broken by index).
    pub fn topo_order(&self) -> Vec<NodeIndex> {
        use std::cmp::Reverse;
        use std::collections::{BinaryHeap, HashMap};
        let mut indeg: HashMap<NodeIndex, usize> = HashMap::new();
        let mut heap = BinaryHeap::new();
        for n in self.g.node_indices() {
            let d = self.g.edges_directed(n, Direction::Incoming).count();
            indeg.insert(n, d);
            if d == 0 {
                heap.push(Reverse(n));
            }
        }
        let mut out = Vec::with_capacity(indeg.len());
        while let Some(Reverse(n)) = heap.pop() {
            out.push(n);
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let t = e.target();
                if let Some(d) = indeg.get_mut(&t) {
                    *d -= 1;
                    if *d == 0 {
                        heap.push(Reverse(t));
                    }
                }
            }
        }
        out
    }

    /// Every node a head or loss reads (the graph's outputs).
    pub fn roots(&self) -> Vec<NodeIndex> {
        let mut r: Vec<NodeIndex> = self.heads.iter().map(|h| h.node).collect();
        for l in &self.losses {
            r.extend(l.operands.iter().copied());
        }
        r
    }

    pub fn ty(&self, n: NodeIndex) -> Option<&Type> {
        self.g[n].ty.as_ref()
    }

    /// (total, trainable, non-trainable) over parameter sets still used by a node.
    pub fn param_counts(&self) -> (usize, usize, usize) {
        let mut used: Vec<ParamId> = self.g.node_weights().flat_map(Node::param_ids).collect();
        used.sort_unstable();
        used.dedup();
        let (mut tr, mut non) = (0, 0);
        for p in used {
            let set = &self.params[p.0];
            if self.is_frozen(&set.prefix) {
                non += set.count(true) + set.count(false);
            } else {
                tr += set.count(true);
                non += set.count(false);
            }
        }
        (tr + non, tr, non)
    }

    /// Whether the layer with checkpoint prefix `prefix` is frozen
    /// (`trainable = false` on it or on a `pretrained` encoder holding it).
    pub fn is_frozen(&self, prefix: &str) -> bool {
        self.frozen.iter().any(|f| under(prefix, f))
    }

    /// The tokenizer of the checkpoint a `pretrained` BERT reads its tokens
    /// with, when it has one: what `train` and `check --data` encode text by.
    pub fn pretrained_tokenizer(&self) -> Option<std::path::PathBuf> {
        self.pretrained
            .iter()
            .find(|u| u.input.is_some())
            .and_then(|u| u.tokenizer.clone())
    }

    /// How many nodes read each parameter set (one pass over the graph).
    pub fn param_users(&self) -> std::collections::HashMap<ParamId, usize> {
        let mut m = std::collections::HashMap::new();
        for n in self.g.node_weights() {
            for p in n.param_ids() {
                *m.entry(p).or_insert(0) += 1;
            }
        }
        m
    }

    /// Redirects every use of `from` (edges, heads, losses, inputs) to `to`.
    pub fn replace_all_uses(&mut self, from: NodeIndex, to: NodeIndex) {
        let outs: Vec<(petgraph::stable_graph::EdgeIndex, NodeIndex, Edge)> = self
            .g
            .edges_directed(from, Direction::Outgoing)
            .map(|e| (e.id(), e.target(), *e.weight()))
            .collect();
        for (id, target, w) in outs {
            self.g.remove_edge(id);
            self.g.add_edge(to, target, w);
        }
        for h in &mut self.heads {
            if h.node == from {
                h.node = to;
            }
        }
        for l in &mut self.losses {
            for o in &mut l.operands {
                if *o == from {
                    *o = to;
                }
            }
        }
    }
}
