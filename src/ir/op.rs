//! The closed set of operations, with their attributes.

use serde::Serialize;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    Valid,
    Same,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Act {
    Relu,
    Gelu,
    Silu,
    Tanh,
    Sigmoid,
    Softmax,
    LeakyRelu(f64),
    Identity,
}

impl Act {
    pub fn name(self) -> &'static str {
        match self {
            Act::Relu => "relu",
            Act::Gelu => "gelu",
            Act::Silu => "silu",
            Act::Tanh => "tanh",
            Act::Sigmoid => "sigmoid",
            Act::Softmax => "softmax",
            Act::LeakyRelu(_) => "leaky_relu",
            Act::Identity => "identity",
        }
    }
    /// f(f(x)) = f(x).
    pub fn idempotent(self) -> bool {
        matches!(self, Act::Relu | Act::Identity)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    Max,
    Avg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RnnCell {
    Lstm,
    Gru,
}

impl RnnCell {
    /// Gates per cell: LSTM i,f,g,o; GRU r,z,n.
    pub fn gates(self) -> usize {
        match self {
            RnnCell::Lstm => 4,
            RnnCell::Gru => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ew {
    Add,
    Mul,
    Max,
    Min,
    Mean,
}

impl Ew {
    pub fn name(self) -> &'static str {
        match self {
            Ew::Add => "add",
            Ew::Mul => "mul",
            Ew::Max => "max",
            Ew::Min => "min",
            Ew::Mean => "mean",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    Image,
    Tokens { vocab: usize },
    F32,
}

/// One operation. Spatial attributes have one entry per spatial axis.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Input {
        name: String,
        kind: InputKind,
    },
    Dense {
        units: usize,
    },
    Conv {
        filters: usize,
        kernel: Vec<usize>,
        stride: Vec<usize>,
        padding: Padding,
        dilation: Vec<usize>,
        groups: usize,
    },
    ConvTranspose2d {
        filters: usize,
        kernel: usize,
        stride: usize,
        padding: Padding,
    },
    Upsample {
        scale: usize,
    },
    Pool {
        kind: PoolKind,
        size: Vec<usize>,
        stride: Vec<usize>,
    },
    GlobalPool {
        kind: PoolKind,
    },
    Flatten,
    /// Per-sample target shape; one entry may be -1.
    Reshape {
        shape: Vec<i64>,
    },
    /// Per-sample axes numbered from 1, as Keras's Permute.
    Permute {
        axes: Vec<usize>,
    },
    Embedding {
        dim: usize,
        vocab: usize,
    },
    Rnn {
        cell: RnnCell,
        units: usize,
        return_sequences: bool,
        bidirectional: bool,
        /// Input projection computed for all timesteps in one GEMM (set by a pass).
        hoisted: bool,
    },
    Dropout {
        rate: f64,
    },
    BatchNorm {
        eps: f64,
        momentum: f64,
    },
    LayerNorm {
        eps: f64,
    },
    Act(Act),
    Concat {
        axis: i64,
    },
    Elementwise(Ew),
    Weighted {
        fixed: Option<Vec<f64>>,
    },
    Gated,
    /// Inference: sibling dense layers on one operand as one GEMM; outputs
    /// concatenated on the last axis in `parts` order (parameters, units).
    MergedDense {
        parts: Vec<(super::ParamId, usize)>,
    },
    /// A slice of the last axis.
    Slice {
        start: usize,
        len: usize,
    },
}

impl Op {
    /// The op's name as written in `.mtl` source.
    pub fn kind_name(&self) -> String {
        match self {
            Op::Input { .. } => "input".into(),
            Op::Dense { .. } => "dense".into(),
            Op::Conv { kernel, .. } => format!("conv{}d", kernel.len()),
            Op::ConvTranspose2d { .. } => "conv_transpose2d".into(),
            Op::Upsample { .. } => "upsample".into(),
            Op::Pool { kind, .. } => format!("{}_pool", pool_name(*kind)),
            Op::GlobalPool { kind } => format!("global_{}_pool", pool_name(*kind)),
            Op::Flatten => "flatten".into(),
            Op::Reshape { .. } => "reshape".into(),
            Op::Permute { .. } => "permute".into(),
            Op::Embedding { .. } => "embedding".into(),
            Op::Rnn { cell, .. } => match cell {
                RnnCell::Lstm => "lstm".into(),
                RnnCell::Gru => "gru".into(),
            },
            Op::Dropout { .. } => "dropout".into(),
            Op::BatchNorm { .. } => "batch_norm".into(),
            Op::LayerNorm { .. } => "layer_norm".into(),
            Op::Act(a) => a.name().into(),
            Op::Concat { .. } => "concat".into(),
            Op::Elementwise(e) => e.name().into(),
            Op::Weighted { .. } => "weighted".into(),
            Op::Gated => "gated".into(),
            Op::MergedDense { .. } => "merged_dense".into(),
            Op::Slice { .. } => "slice".into(),
        }
    }

    /// Whether two nodes with this op and equal operands compute equal values.
    pub fn is_pure(&self, training: bool) -> bool {
        match self {
            Op::Dropout { .. } => false,
            Op::BatchNorm { .. } => !training,
            Op::Input { .. } => false,
            _ => true,
        }
    }

    /// Attributes as `key=value` text for the IR printer.
    pub fn attrs(&self) -> String {
        fn list(v: &[usize]) -> String {
            let s: Vec<String> = v.iter().map(|x| x.to_string()).collect();
            if s.len() > 1 && s.iter().all(|x| x == &s[0]) {
                s[0].clone()
            } else {
                format!("[{}]", s.join(", "))
            }
        }
        match self {
            Op::Input { name, kind } => match kind {
                InputKind::Tokens { vocab } => format!("name={name}, vocab={vocab}"),
                InputKind::Image => format!("name={name}, image"),
                InputKind::F32 => format!("name={name}"),
            },
            Op::Dense { units } => format!("units={units}"),
            Op::Conv {
                filters,
                kernel,
                stride,
                padding,
                dilation,
                groups,
            } => format!(
                "filters={filters}, kernel={}, stride={}, padding={}, dilation={}, groups={groups}",
                list(kernel),
                list(stride),
                padding_name(*padding),
                list(dilation)
            ),
            Op::ConvTranspose2d {
                filters,
                kernel,
                stride,
                padding,
            } => format!(
                "filters={filters}, kernel={kernel}, stride={stride}, padding={}",
                padding_name(*padding)
            ),
            Op::Upsample { scale } => format!("scale={scale}"),
            Op::Pool { size, stride, .. } => {
                format!("size={}, stride={}", list(size), list(stride))
            }
            Op::Reshape { shape } => format!("shape={shape:?}"),
            Op::Permute { axes } => format!("axes={axes:?}"),
            Op::Embedding { dim, vocab } => format!("dim={dim}, vocab={vocab}"),
            Op::Rnn {
                units,
                return_sequences,
                bidirectional,
                hoisted,
                ..
            } => format!(
                "units={units}, return_sequences={return_sequences}, bidirectional={bidirectional}, hoisted={hoisted}"
            ),
            Op::Dropout { rate } => format!("rate={rate}"),
            Op::BatchNorm { eps, momentum } => format!("eps={eps}, momentum={momentum}"),
            Op::LayerNorm { eps } => format!("eps={eps}"),
            Op::Act(Act::LeakyRelu(a)) => format!("alpha={a}"),
            Op::Concat { axis } => format!("axis={axis}"),
            Op::Weighted { fixed: Some(w) } => format!("weights={w:?}"),
            Op::Weighted { fixed: None } => "learned".into(),
            Op::MergedDense { parts } => format!("units={:?}", parts.iter().map(|p| p.1).collect::<Vec<_>>()),
            Op::Slice { start, len } => format!("start={start}, len={len}"),
            _ => String::new(),
        }
    }
}

fn pool_name(k: PoolKind) -> &'static str {
    match k {
        PoolKind::Max => "max",
        PoolKind::Avg => "avg",
    }
}

fn padding_name(p: Padding) -> &'static str {
    match p {
        Padding::Valid => "valid",
        Padding::Same => "same",
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.attrs();
        if a.is_empty() {
            write!(f, "{}", self.kind_name())
        } else {
            write!(f, "{}({a})", self.kind_name())
        }
    }
}
