//! The closed set of operations. Each variant's payload is the op's own
//! struct from [`super::ops`], which owns its rules; this file only lists the
//! variants and dispatches to them.

use super::ops::Rules;
use serde::Serialize;
use std::fmt;

pub use super::ops::activation::{Act, Dropout};
pub use super::ops::attention::{Attend, Attention};
pub use super::ops::conv::{Conv, ConvTranspose2d, Padding, Upsample};
pub use super::ops::dense::{Dense, MergedDense, Slice};
pub use super::ops::embedding::Embedding;
pub use super::ops::fusion::{Concat, Ew, Gated, Weighted};
pub use super::ops::hf::HfOp;
pub use super::ops::input::{Input, InputKind, InputPolicy};
pub use super::ops::mixture::Mixture;
pub use super::ops::norm::{BatchNorm, LayerNorm};
pub use super::ops::pool::{GlobalPool, Pool, PoolKind};
pub use super::ops::position_embedding::PositionEmbedding;
pub use super::ops::reshape::{Flatten, Permute, Reshape, Select};
pub use super::ops::residual::Residual;
pub use super::ops::rnn::{Rnn, RnnCell};

/// One operation. Spatial attributes have one entry per spatial axis.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Input(Input),
    Dense(Dense),
    Conv(Conv),
    ConvTranspose2d(ConvTranspose2d),
    Upsample(Upsample),
    Pool(Pool),
    GlobalPool(GlobalPool),
    Flatten(Flatten),
    Reshape(Reshape),
    Permute(Permute),
    Embedding(Embedding),
    Rnn(Rnn),
    Dropout(Dropout),
    BatchNorm(BatchNorm),
    LayerNorm(LayerNorm),
    Act(Act),
    Concat(Concat),
    Elementwise(Ew),
    Weighted(Weighted),
    Gated(Gated),
    MergedDense(MergedDense),
    Slice(Slice),
    PositionEmbedding(PositionEmbedding),
    Attention(Attention),
    Residual(Residual),
    Mixture(Mixture),
    Attend(Attend),
    Select(Select),
    /// Parts of a `pretrained` encoder.
    Hf(HfOp),
}

impl Op {
    /// The op's rules: the one exhaustive match every dispatcher goes through.
    pub fn rules(&self) -> &dyn Rules {
        match self {
            Op::Input(o) => o,
            Op::Dense(o) => o,
            Op::Conv(o) => o,
            Op::ConvTranspose2d(o) => o,
            Op::Upsample(o) => o,
            Op::Pool(o) => o,
            Op::GlobalPool(o) => o,
            Op::Flatten(o) => o,
            Op::Reshape(o) => o,
            Op::Permute(o) => o,
            Op::Embedding(o) => o,
            Op::Rnn(o) => o,
            Op::Dropout(o) => o,
            Op::BatchNorm(o) => o,
            Op::LayerNorm(o) => o,
            Op::Act(o) => o,
            Op::Concat(o) => o,
            Op::Elementwise(o) => o,
            Op::Weighted(o) => o,
            Op::Gated(o) => o,
            Op::MergedDense(o) => o,
            Op::Slice(o) => o,
            Op::PositionEmbedding(o) => o,
            Op::Attention(o) => o,
            Op::Residual(o) => o,
            Op::Mixture(o) => o,
            Op::Attend(o) => o,
            Op::Select(o) => o,
            Op::Hf(o) => o,
        }
    }

    /// The op's name as written in `.mtl` source.
    pub fn kind_name(&self) -> String {
        self.rules().kind_name().into_owned()
    }

    /// Attributes as `key=value` text for the IR printer.
    pub fn attrs(&self) -> String {
        self.rules().attrs()
    }

    /// Whether two nodes with this op and equal operands compute equal values.
    pub fn is_pure(&self, training: bool) -> bool {
        self.rules().is_pure(training)
    }

    /// Names of the parameter tensors this op declares.
    pub fn params(&self) -> &'static [&'static str] {
        self.rules().params()
    }

    /// Whether the op owns weights (and so a checkpoint prefix).
    pub fn has_params(&self) -> bool {
        !self.params().is_empty()
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

/// Integers as IR attribute text: `3` when all equal, else `[3, 5]`.
pub(crate) fn list(v: &[usize]) -> String {
    let s: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    if s.len() > 1 && s.iter().all(|x| x == &s[0]) {
        s[0].clone()
    } else {
        format!("[{}]", s.join(", "))
    }
}
