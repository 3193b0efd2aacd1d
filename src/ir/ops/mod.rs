//! The op table: one file per op family. Each op is a struct that owns
//!
//! - its callees (`CALLEES`): the name written in `.mtl`, the argument
//!   signature and the builder from bound arguments;
//! - its shape rule ([`Rules::infer`]), Keras 3 semantics, channels first,
//!   implicit batch;
//! - its parameter declarations: tensor names as constants (the lowering
//!   imports them, so a renamed key breaks the build, not a checkpoint), shapes
//!   and initializers returned by the shape rule;
//! - its unit tests.
//!
//! [`Op`](super::Op) stays a closed enum (passes pattern-match on it); its
//! `impl` dispatches every rule through [`Op::rules`](super::Op::rules).

pub(crate) mod cx;
mod sig;

pub mod activation;
pub mod attention;
pub mod conv;
pub mod dense;
pub mod embedding;
pub mod fusion;
pub mod hf;
pub mod input;
pub mod mixture;
pub mod norm;
pub mod pool;
pub mod position_embedding;
pub mod reshape;
pub mod residual;
pub mod rnn;

pub use cx::{Cx, Typed, Unifier};
pub use sig::{bind, bind_variadic, signature_help, Bound, Kind, ParamSpec, RawArg, Sig, Value};

use super::{Node, Op};
use crate::diagnostics::{Diagnostic, Span};
use std::borrow::Cow;

pub type R<T> = Result<T, Diagnostic>;

/// How many operands an op takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    /// A graph input.
    None,
    /// A layer.
    One,
    /// A fusion: two or more.
    Many,
}

/// Where an op's output gets its padding mask from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskFlow {
    /// None: the op changes or removes the sequence axis.
    Drop,
    /// The first operand's: a layer that keeps the sequence axis (the query of `attend`).
    First,
    /// Any operand's: element-wise fusions and `residual` (either side's survives).
    Any,
}

/// The rules one op owns. Defaults fit a weightless, pure, one-operand op.
pub trait Rules {
    /// The op's name as written in `.mtl` source.
    fn kind_name(&self) -> Cow<'static, str>;
    /// Attributes as `key=value` text for the IR printer.
    fn attrs(&self) -> String {
        String::new()
    }
    fn arity(&self) -> Arity {
        Arity::One
    }
    /// The output type and the parameter tensors, from the operand types.
    fn infer(&self, cx: &mut Cx) -> R<Typed>;
    /// Names of the parameter tensors the shape rule declares, in order;
    /// empty for an op without weights (and so without a checkpoint prefix).
    fn params(&self) -> &'static [&'static str] {
        &[]
    }
    /// Whether two nodes with this op and equal operands compute equal values.
    fn is_pure(&self, _training: bool) -> bool {
        true
    }
    /// Whether the op reads integer token ids (every other op rejects them).
    fn takes_tokens(&self) -> bool {
        false
    }
    /// Which padding mask the output carries.
    fn mask_flow(&self) -> MaskFlow {
        MaskFlow::Drop
    }
    /// Whether the op's kernel reads its operands' padding masks.
    fn reads_mask(&self) -> bool {
        false
    }
    /// A hint for an operand of the wrong rank.
    fn rank_help(&self, _rank: usize) -> Option<&'static str> {
        None
    }
}

/// What a builder sees of a call: its bound arguments and, for layers, the
/// node it is applied to.
pub struct Build<'a> {
    pub name: &'a str,
    pub span: Span,
    pub args: &'a Bound,
    pub input: Option<&'a Node>,
    /// Fusions: the number of operands.
    pub operands: usize,
}

/// One name callable in `.mtl`: its signature and how it becomes an op.
pub struct Callee {
    pub name: &'static str,
    pub sig: Sig,
    pub build: fn(&Build) -> R<Op>,
}

/// Every family's callees; the order is the one documentation lists them in.
const TABLE: &[&[Callee]] = &[
    dense::CALLEES,
    conv::CALLEES,
    pool::CALLEES,
    reshape::CALLEES,
    embedding::CALLEES,
    position_embedding::CALLEES,
    rnn::CALLEES,
    attention::CALLEES,
    norm::CALLEES,
    activation::CALLEES,
    fusion::CALLEES,
    mixture::CALLEES,
];

/// The callee named `name`, if any layer or fusion has that name.
pub fn callee(name: &str) -> Option<&'static Callee> {
    TABLE.iter().flat_map(|f| f.iter()).find(|c| c.name == name)
}

/// Names of every layer (one operand) or every fusion.
pub fn names(fusions: bool) -> Vec<&'static str> {
    TABLE
        .iter()
        .flat_map(|f| f.iter())
        .filter(|c| c.sig.is_fusion() == fusions)
        .map(|c| c.name)
        .collect()
}

/// Shape-rule test helpers: one op over inputs of given shapes.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::ir::{DType, Dim, Graph, InputKind, Node, Type};

    pub fn f32(dims: &[usize]) -> Type {
        Type::f32(dims.iter().map(|d| Dim::Fixed(*d)).collect())
    }

    pub fn tokens(len: usize) -> Type {
        Type {
            dtype: DType::I64,
            shape: vec![Dim::Fixed(len)],
        }
    }

    /// Runs `op`'s shape rule over fresh inputs of types `tys`.
    pub fn infer(op: Op, tys: &[Type]) -> R<Typed> {
        let mut g = Graph::new("t");
        let ins: Vec<_> = tys
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let kind = match t.dtype {
                    DType::I64 => InputKind::Tokens { vocab: 100 },
                    DType::F32 => InputKind::F32,
                };
                let name = format!("x{i}");
                g.add_node(
                    Node {
                        op: Op::Input(input::Input {
                            name: name.clone(),
                            kind,
                            policy: Default::default(),
                        }),
                        name,
                        span: Span::default(),
                        ty: Some(t.clone()),
                        param: None,
                        folded_bn: None,
                        mask: None,
                    },
                    &[],
                )
            })
            .collect();
        let n = g.add_node(
            Node {
                op,
                name: "y".into(),
                span: Span::default(),
                ty: None,
                param: None,
                folded_bn: None,
                mask: None,
            },
            &ins,
        );
        let mut u = Unifier::default();
        let mut warnings = vec![];
        let mut cx = Cx {
            g: &g,
            n,
            ops: &ins,
            tys,
            u: &mut u,
            warnings: &mut warnings,
        };
        let t = g.g[n].op.rules().infer(&mut cx)?;
        // The declared names and the rule's tensors agree, in order.
        let names: Vec<&str> = t.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            g.g[n].op.params(),
            "parameter names of {}",
            g.g[n].op
        );
        Ok(t)
    }

    /// (name, shape) of each parameter tensor.
    pub fn shapes(t: &Typed) -> Vec<(&str, Vec<usize>)> {
        t.params
            .iter()
            .map(|p| (p.name.as_str(), p.shape.clone()))
            .collect()
    }

    /// The error code of a failed rule.
    pub fn code(r: R<Typed>) -> String {
        match r {
            Ok(t) => format!("ok: {}", t.ty),
            Err(d) => d.code.to_string(),
        }
    }
}
