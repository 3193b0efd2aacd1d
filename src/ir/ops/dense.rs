//! `dense(units)` (Keras `Dense`: the last axis), and the inference forms the
//! optimizer builds from sibling dense layers: one merged GEMM and its slices.

use super::cx::glorot;
use super::sig::{req, Kind, ParamSpec};
use super::{Build, Callee, Cx, MaskFlow, Rules, Sig, Typed, R};
use crate::diagnostics::Diagnostic;
use crate::ir::{shape_str, Dim, Init, Op, ParamId, Type};
use serde::Serialize;
use std::borrow::Cow;

/// Parameter names: PyTorch's `Linear` layout, weight `[units, in]`.
pub const WEIGHT: &str = "weight";
pub const BIAS: &str = "bias";

pub const CALLEES: &[Callee] = &[Callee {
    name: "dense",
    sig: Sig::Layer(&[req("units", Kind::Int)] as &[ParamSpec]),
    build: |b: &Build| {
        Ok(Op::Dense(Dense {
            units: b.args.int("units"),
        }))
    },
}];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dense {
    pub units: usize,
}

impl Rules for Dense {
    fn mask_flow(&self) -> MaskFlow {
        MaskFlow::First
    }
    fn kind_name(&self) -> Cow<'static, str> {
        "dense".into()
    }
    fn attrs(&self) -> String {
        format!("units={}", self.units)
    }
    fn params(&self) -> &'static [&'static str] {
        &[WEIGHT, BIAS]
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        cx.need_rank(1, usize::MAX, "a value of rank ≥ 1")?;
        let s = cx.s();
        let i = cx.fixed(&s[s.len() - 1], "the input feature size of `dense`")?;
        // Position-wise dense over a sequence [T, D] is the transformer's
        // feed-forward; over a feature map it is rarely meant.
        if s.len() > 2 {
            let w = cx
                .at_input(
                    Diagnostic::warning(
                        "mtl::dense-rank",
                        format!(
                            "`dense` acts on the last axis of a rank-{} value {}",
                            s.len(),
                            shape_str(cx.x())
                        ),
                    )
                    .label(cx.span(), "applied to every position separately"),
                )
                .help("this is rarely meant: add `flatten` or `global_avg_pool` first");
            cx.warnings.push(w);
        }
        let units = self.units;
        Ok(Typed::new(last_axis(cx.s(), units))
            .param(WEIGHT, vec![units, i], glorot(i, units))
            .param(BIAS, vec![units], Init::Zeros))
    }
}

/// `s` with its last axis replaced by `len`.
fn last_axis(s: &[Dim], len: usize) -> Type {
    let mut out = s[..s.len().saturating_sub(1)].to_vec();
    out.push(Dim::Fixed(len));
    Type::f32(out)
}

/// Inference: sibling dense layers on one operand as one GEMM; outputs
/// concatenated on the last axis in `parts` order (parameters, units). Reads
/// each part's [`WEIGHT`] and [`BIAS`]; owns no parameters of its own.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MergedDense {
    pub parts: Vec<(ParamId, usize)>,
}

impl Rules for MergedDense {
    fn kind_name(&self) -> Cow<'static, str> {
        "merged_dense".into()
    }
    fn attrs(&self) -> String {
        let units: Vec<usize> = self.parts.iter().map(|p| p.1).collect();
        format!("units={units:?}")
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        Ok(Typed::new(last_axis(
            cx.s(),
            self.parts.iter().map(|p| p.1).sum(),
        )))
    }
}

/// A slice of the last axis (one part of a [`MergedDense`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Slice {
    pub start: usize,
    pub len: usize,
}

impl Rules for Slice {
    fn kind_name(&self) -> Cow<'static, str> {
        "slice".into()
    }
    fn attrs(&self) -> String {
        format!("start={}, len={}", self.start, self.len)
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        Ok(Typed::new(last_axis(cx.s(), self.len)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{code, f32, infer, shapes};
    use super::*;

    #[test]
    fn maps_the_last_axis_with_pytorch_layout_weights() {
        let t = infer(Op::Dense(Dense { units: 8 }), &[f32(&[4])]).unwrap();
        assert_eq!(t.ty, f32(&[8]));
        assert_eq!(shapes(&t), [(WEIGHT, vec![8, 4]), (BIAS, vec![8])]);
    }

    #[test]
    fn acts_per_position_on_higher_ranks() {
        let t = infer(Op::Dense(Dense { units: 3 }), &[f32(&[5, 4])]).unwrap();
        assert_eq!(t.ty, f32(&[5, 3]));
    }

    #[test]
    fn rejects_scalars_and_symbolic_features() {
        assert_eq!(
            code(infer(Op::Dense(Dense { units: 3 }), &[f32(&[])])),
            "mtl::rank"
        );
        let sym = Type::f32(vec![Dim::Sym("n".into())]);
        assert_eq!(
            code(infer(Op::Dense(Dense { units: 3 }), &[sym])),
            "mtl::symbolic-dim"
        );
    }

    #[test]
    fn merged_dense_and_slice_shapes() {
        let m = MergedDense {
            parts: vec![(ParamId(0), 3), (ParamId(1), 5)],
        };
        assert_eq!(
            infer(Op::MergedDense(m), &[f32(&[4])]).unwrap().ty,
            f32(&[8])
        );
        let s = Slice { start: 3, len: 5 };
        assert_eq!(infer(Op::Slice(s), &[f32(&[8])]).unwrap().ty, f32(&[5]));
    }
}
