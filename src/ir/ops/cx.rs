//! What a shape rule sees: the node, its operands' types, the symbolic-dim
//! unifier, and helpers that word diagnostics one way for every op.

use super::R;
use crate::diagnostics::{Diagnostic, Span};
use crate::ir::{shape_str, Dim, Graph, Init, Op, ParamTensor, Type};
use petgraph::stable_graph::NodeIndex;
use std::collections::HashMap;

/// Symbolic dims unified so far: name → what it stands for.
#[derive(Default)]
pub struct Unifier {
    subst: HashMap<String, Dim>,
}

impl Unifier {
    pub fn resolve(&self, d: &Dim) -> Dim {
        let mut d = d.clone();
        for _ in 0..64 {
            match &d {
                Dim::Sym(s) => match self.subst.get(s) {
                    Some(n) => d = n.clone(),
                    None => break,
                },
                Dim::Fixed(_) => break,
            }
        }
        d
    }
    pub fn unify(&mut self, a: &Dim, b: &Dim) -> bool {
        let (a, b) = (self.resolve(a), self.resolve(b));
        match (&a, &b) {
            (Dim::Fixed(x), Dim::Fixed(y)) => x == y,
            (Dim::Sym(x), Dim::Sym(y)) if x == y => true,
            (Dim::Sym(x), _) => {
                self.subst.insert(x.clone(), b);
                true
            }
            (_, Dim::Sym(y)) => {
                self.subst.insert(y.clone(), a);
                true
            }
        }
    }
}

/// A shape rule's result: the output type and the parameter tensors.
#[derive(Debug)]
pub struct Typed {
    pub ty: Type,
    pub params: Vec<ParamTensor>,
}

impl Typed {
    pub fn new(ty: Type) -> Self {
        Typed { ty, params: vec![] }
    }
    /// Declares a trainable parameter tensor.
    pub fn param(self, name: &str, shape: Vec<usize>, init: Init) -> Self {
        self.tensor(name, shape, init, true)
    }
    /// Declares a parameter tensor that the optimizer does not update.
    pub fn state(self, name: &str, shape: Vec<usize>, init: Init) -> Self {
        self.tensor(name, shape, init, false)
    }
    fn tensor(mut self, name: &str, shape: Vec<usize>, init: Init, trainable: bool) -> Self {
        self.params.push(ParamTensor {
            name: name.into(),
            shape,
            trainable,
            init,
        });
        self
    }
}

pub fn glorot(fan_in: usize, fan_out: usize) -> Init {
    Init::GlorotUniform { fan_in, fan_out }
}

pub struct Cx<'a> {
    pub g: &'a Graph,
    pub n: NodeIndex,
    pub ops: &'a [NodeIndex],
    /// Operand types, symbolic dims resolved.
    pub tys: &'a [Type],
    pub u: &'a mut Unifier,
    /// Warnings a rule emits besides its result.
    pub warnings: &'a mut Vec<Diagnostic>,
}

impl Cx<'_> {
    /// The first operand's type.
    pub fn x(&self) -> &Type {
        &self.tys[0]
    }
    pub fn s(&self) -> &[Dim] {
        &self.tys[0].shape
    }
    pub fn span(&self) -> Span {
        self.g.g[self.n].span
    }
    pub fn op(&self) -> &Op {
        &self.g.g[self.n].op
    }
    pub fn kind(&self) -> String {
        self.op().kind_name()
    }
    pub fn operand_span(&self, i: usize) -> Span {
        self.g.g[self.ops[i]].span
    }

    /// Describes operand `i`: "this is conv2d `c1.0` of shape [16, 8, 8]".
    pub fn describe(&self, i: usize) -> String {
        let o = self.ops[i];
        format!(
            "this is {} `{}` of shape {}",
            article(&self.g.g[o].op),
            self.g.g[o].name,
            shape_str(&self.tys[i])
        )
    }

    /// Labels the first operand with its description.
    pub fn at_input(&self, d: Diagnostic) -> Diagnostic {
        d.label(self.operand_span(0), self.describe(0))
    }

    /// Labels every operand: "operand 2 is dense `t.1` of shape [8]".
    pub fn at_operands(&self, d: Diagnostic) -> Diagnostic {
        operand_labels(self.g, self.ops, self.tys, d)
    }

    /// The first operand's rank is in `lo..=hi`, or an error saying `what` is expected.
    pub fn need_rank(&self, lo: usize, hi: usize, what: &str) -> R<()> {
        let (x, kind) = (self.x(), self.kind());
        let rank = x.rank();
        if (lo..=hi).contains(&rank) {
            return Ok(());
        }
        let help = self
            .op()
            .rules()
            .rank_help(rank)
            .unwrap_or("check the layers before this one");
        Err(self
            .at_input(
                Diagnostic::error(
                    "mtl::rank",
                    format!(
                        "`{kind}` expects {what}, found a value of rank {rank} {}",
                        shape_str(x)
                    ),
                )
                .label(self.span(), format!("`{kind}` applied here")),
            )
            .help(help))
    }

    /// A dimension that weights depend on must be fixed.
    pub fn fixed(&self, d: &Dim, what: &str) -> R<usize> {
        d.fixed().ok_or_else(|| {
            Diagnostic::error(
                "mtl::symbolic-dim",
                format!("{what} must be a fixed size, not the symbolic `{d}`"),
            )
            .label(self.span(), "needs a fixed size here")
            .help("weights need fixed sizes: declare this dimension as a number")
        })
    }
}

/// Labels each of `ops` (typed `tys`): "operand 2 is dense `t.1` of shape [8]".
pub fn operand_labels(g: &Graph, ops: &[NodeIndex], tys: &[Type], d: Diagnostic) -> Diagnostic {
    ops.iter().zip(tys).enumerate().fold(d, |d, (i, (o, t))| {
        d.label(
            g.g[*o].span,
            format!(
                "operand {} is {} `{}` of shape {}",
                i + 1,
                article(&g.g[*o].op),
                g.g[*o].name,
                shape_str(t)
            ),
        )
    })
}

/// How a node is named in diagnostics.
pub fn article(op: &Op) -> String {
    match op {
        Op::Input(_) => "the input".into(),
        o => o.kind_name(),
    }
}

/// A spatial dim mapped through `f`; a symbolic one gets a prime.
pub fn map_dim(d: &Dim, f: impl FnOnce(usize) -> usize) -> Dim {
    match d {
        Dim::Fixed(len) => Dim::Fixed(f(*len)),
        Dim::Sym(v) => Dim::Sym(format!("{v}'")),
    }
}
