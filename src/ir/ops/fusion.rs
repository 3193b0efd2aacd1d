//! Fusions of two or more values: `concat`, element-wise `add`/`mul`/`max`/
//! `min`/`mean` (size-1 axes broadcast), `weighted` (fixed or learned
//! softmax weights) and `gated` (a learned sigmoid gate between two vectors).

use super::cx::glorot;
use super::sig::{empty, last_axis, opt, Kind};
use super::{Arity, Callee, Cx, MaskFlow, Rules, Sig, Typed, R};
use crate::diagnostics::Diagnostic;
use crate::ir::{Init, Op, Type};
use serde::Serialize;
use std::borrow::Cow;

/// Parameter names: learned `weighted` logits; the `gated` projection
/// `[d, 2d]` over the concatenated operands.
pub const LOGITS: &str = "logits";
pub const WEIGHT: &str = "weight";
pub const BIAS: &str = "bias";

macro_rules! elementwise {
    ($name:literal, $ew:expr) => {
        Callee {
            name: $name,
            sig: Sig::Fusion(&[]),
            build: |_| Ok(Op::Elementwise($ew)),
        }
    };
}

pub const CALLEES: &[Callee] = &[
    Callee {
        name: "concat",
        sig: Sig::Fusion(&[opt("axis", Kind::SignedInt, last_axis)]),
        build: |b| {
            Ok(Op::Concat(Concat {
                axis: b.args.signed("axis"),
            }))
        },
    },
    elementwise!("add", Ew::Add),
    elementwise!("mul", Ew::Mul),
    elementwise!("max", Ew::Max),
    elementwise!("min", Ew::Min),
    elementwise!("mean", Ew::Mean),
    Callee {
        name: "weighted",
        sig: Sig::Fusion(&[opt("weights", Kind::FloatList, empty)]),
        build: |b| {
            let w = b.args.floats("weights");
            if !w.is_empty() && w.len() != b.operands {
                return Err(Diagnostic::error(
                    "mtl::weights-count",
                    format!(
                        "`weighted` has {} values but {} weights",
                        b.operands,
                        w.len()
                    ),
                )
                .label(b.span, "here")
                .help("give one weight per value, or none to learn them"));
            }
            Ok(Op::Weighted(Weighted {
                fixed: (!w.is_empty()).then_some(w),
            }))
        },
    },
    Callee {
        name: "gated",
        sig: Sig::Fusion(&[]),
        build: |b| {
            if b.operands != 2 {
                return Err(
                    Diagnostic::error("mtl::arity", "`gated` fuses exactly two values")
                        .label(b.span, format!("{} values given", b.operands)),
                );
            }
            Ok(Op::Gated(Gated))
        },
    },
];

/// Operands of every fusion are labelled, and the help says how to make them agree.
fn fusion_error(cx: &Cx, msg: String, here: String, what: &str) -> Diagnostic {
    let ranks: Vec<usize> = cx.tys.iter().map(Type::rank).collect();
    let help = if ranks.iter().any(|r| *r > 1) && ranks.contains(&1) {
        format!("add `global_avg_pool` or `flatten` to the feature map before {what}, so that every operand is a vector")
    } else if ranks.iter().all(|r| *r == 1) {
        "project the operands to one size first, e.g. `-> dense(N)` on each".into()
    } else {
        "make the operands agree: pool, reshape or project them to one shape".into()
    };
    cx.at_operands(Diagnostic::error("mtl::fusion-shape", msg).label(cx.span(), here))
        .help(help)
}

/// Joins along `axis`, numbered as Keras does (1 is the first per-sample axis).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Concat {
    pub axis: i64,
}

impl Rules for Concat {
    fn kind_name(&self) -> Cow<'static, str> {
        "concat".into()
    }
    fn attrs(&self) -> String {
        format!("axis={}", self.axis)
    }
    fn arity(&self) -> Arity {
        Arity::Many
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        let axis = self.axis;
        let err = |cx: &Cx, msg: String| fusion_error(cx, msg, "concat here".into(), "concat");
        let rank = cx.x().rank();
        if cx.tys.iter().any(|t| t.rank() != rank) {
            return Err(err(cx, "`concat` operands have different ranks".into()));
        }
        // Keras counts the batch axis: axis 1 is the first per-sample axis.
        let a = if axis < 0 {
            rank as i64 + axis
        } else {
            axis - 1
        };
        if a < 0 || a >= rank as i64 {
            return Err(Diagnostic::error(
                "mtl::concat-axis",
                format!("axis {axis} is out of range for rank-{rank} values (the batch axis 0 cannot be joined)"),
            )
            .label(cx.span(), "here")
            .help(format!("use -1 for the last axis, or 1..={rank}")));
        }
        let a = a as usize;
        let mut out = cx.x().shape.clone();
        let mut total = 0usize;
        for t in cx.tys {
            for (i, d) in t.shape.iter().enumerate() {
                if i != a && !cx.u.unify(&out[i], d) {
                    return Err(err(
                        cx,
                        format!("`concat` along axis {axis} needs every other axis to agree"),
                    ));
                }
            }
            total += t.shape[a]
                .fixed()
                .ok_or_else(|| err(cx, "`concat` needs a fixed size along its axis".into()))?;
        }
        out[a] = crate::ir::Dim::Fixed(total);
        Ok(Typed::new(Type::f32(out)))
    }
}

/// The output shape of an element-wise fusion; `broadcast` lets size-1 axes stretch.
fn common_shape(cx: &mut Cx, broadcast: bool) -> R<Type> {
    let kind = cx.kind();
    let err = |cx: &Cx, msg: String| {
        fusion_error(cx, msg, format!("`{kind}` here"), &format!("`{kind}`"))
    };
    let rank = cx.x().rank();
    if cx.tys.iter().any(|t| t.rank() != rank) {
        return Err(err(cx, format!("`{kind}` operands have different ranks")));
    }
    let one = crate::ir::Dim::Fixed(1);
    let mut out = cx.x().shape.clone();
    for t in &cx.tys[1..] {
        for (i, d) in t.shape.iter().enumerate() {
            let (a, b) = (cx.u.resolve(&out[i]), cx.u.resolve(d));
            if broadcast && b == one {
                continue;
            }
            if broadcast && a == one {
                out[i] = b;
                continue;
            }
            if !cx.u.unify(&a, &b) {
                let msg = if broadcast {
                    format!("`{kind}` needs operands of equal shapes (size-1 axes broadcast)")
                } else {
                    format!("`{kind}` needs operands of equal shapes")
                };
                return Err(err(cx, msg));
            }
        }
    }
    Ok(Type::f32(out))
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

impl Rules for Ew {
    fn mask_flow(&self) -> MaskFlow {
        MaskFlow::Any
    }
    fn kind_name(&self) -> Cow<'static, str> {
        self.name().into()
    }
    fn arity(&self) -> Arity {
        Arity::Many
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        Ok(Typed::new(common_shape(cx, true)?))
    }
}

/// A weighted sum: fixed weights, or learned ones (softmax over logits).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Weighted {
    pub fixed: Option<Vec<f64>>,
}

impl Rules for Weighted {
    fn kind_name(&self) -> Cow<'static, str> {
        "weighted".into()
    }
    fn attrs(&self) -> String {
        match &self.fixed {
            Some(w) => format!("weights={w:?}"),
            None => "learned".into(),
        }
    }
    fn arity(&self) -> Arity {
        Arity::Many
    }
    fn params(&self) -> &'static [&'static str] {
        match self.fixed {
            Some(_) => &[],
            None => &[LOGITS],
        }
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        let t = Typed::new(common_shape(cx, false)?);
        Ok(match self.fixed {
            Some(_) => t,
            None => t.param(LOGITS, vec![cx.ops.len()], Init::Zeros),
        })
    }
}

/// g·a + (1 − g)·b with g = sigmoid(W·[a; b] + bias), for two vectors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gated;

impl Rules for Gated {
    fn kind_name(&self) -> Cow<'static, str> {
        "gated".into()
    }
    fn arity(&self) -> Arity {
        Arity::Many
    }
    fn params(&self) -> &'static [&'static str] {
        &[WEIGHT, BIAS]
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        let out = common_shape(cx, false)?;
        if out.rank() != 1 {
            return Err(fusion_error(
                cx,
                "`gated` fuses vectors (rank 1)".into(),
                "`gated` here".into(),
                "`gated`",
            ));
        }
        let d = cx.fixed(&out.shape[0], "the size of a `gated` fusion")?;
        Ok(Typed::new(out)
            .param(WEIGHT, vec![d, 2 * d], glorot(2 * d, d))
            .param(BIAS, vec![d], Init::Zeros))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{code, f32, infer, shapes};
    use super::*;

    #[test]
    fn concat_joins_along_the_keras_axis() {
        let op = |axis| Op::Concat(Concat { axis });
        assert_eq!(
            infer(op(-1), &[f32(&[2, 3]), f32(&[2, 5])]).unwrap().ty,
            f32(&[2, 8])
        );
        assert_eq!(
            infer(op(1), &[f32(&[2, 3]), f32(&[4, 3])]).unwrap().ty,
            f32(&[6, 3])
        );
        assert_eq!(
            code(infer(op(0), &[f32(&[2]), f32(&[2])])),
            "mtl::concat-axis"
        );
        assert_eq!(
            code(infer(op(-1), &[f32(&[2, 3]), f32(&[3])])),
            "mtl::fusion-shape"
        );
    }

    #[test]
    fn elementwise_broadcasts_size_one_axes_but_weighted_does_not() {
        let t = infer(Op::Elementwise(Ew::Add), &[f32(&[4, 1]), f32(&[1, 3])]).unwrap();
        assert_eq!(t.ty, f32(&[4, 3]));
        let w = Op::Weighted(Weighted { fixed: None });
        assert_eq!(
            code(infer(w.clone(), &[f32(&[4]), f32(&[1])])),
            "mtl::fusion-shape"
        );
        let t = infer(w, &[f32(&[4]), f32(&[4]), f32(&[4])]).unwrap();
        assert_eq!(shapes(&t), [(LOGITS, vec![3])]);
    }

    #[test]
    fn gated_fuses_two_vectors() {
        let t = infer(Op::Gated(Gated), &[f32(&[6]), f32(&[6])]).unwrap();
        assert_eq!(shapes(&t), [(WEIGHT, vec![6, 12]), (BIAS, vec![6])]);
        assert_eq!(
            code(infer(Op::Gated(Gated), &[f32(&[2, 6]), f32(&[2, 6])])),
            "mtl::fusion-shape"
        );
    }
}
