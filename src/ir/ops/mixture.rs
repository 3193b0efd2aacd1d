//! `mixture(e1, ..., en, gate = x)`: `Σᵢ softmax(W·x + b)ᵢ · eᵢ`, an
//! input-dependent gate over experts of equal shape (MMoE, PLE/CGC). The
//! gate input `x` is a vector `[Dx]`; operands are the experts, then `x`.

use super::cx::glorot;
use super::sig::{req, Kind};
use super::{Arity, Callee, Cx, Rules, Sig, Typed, R};
use crate::diagnostics::Diagnostic;
use crate::ir::{shape_str, Init, Op};
use serde::Serialize;
use std::borrow::Cow;

/// Parameter names: the gate, PyTorch `Linear` layout `weight [n, Dx]`, `bias [n]`.
pub const WEIGHT: &str = "weight";
pub const BIAS: &str = "bias";

pub const CALLEES: &[Callee] = &[Callee {
    name: "mixture",
    sig: Sig::Fusion(&[req("gate", Kind::Tensor)]),
    build: |b| {
        Ok(Op::Mixture(Mixture {
            experts: b.operands - 1,
        }))
    },
}];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mixture {
    pub experts: usize,
}

impl Rules for Mixture {
    fn kind_name(&self) -> Cow<'static, str> {
        "mixture".into()
    }
    fn attrs(&self) -> String {
        format!("experts={}", self.experts)
    }
    fn arity(&self) -> Arity {
        Arity::Many
    }
    fn params(&self) -> &'static [&'static str] {
        &[WEIGHT, BIAS]
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        let n = self.experts;
        let e = &cx.tys[0];
        let unequal = cx.tys[1..n].iter().any(|t| {
            t.rank() != e.rank() || !t.shape.iter().zip(&e.shape).all(|(a, b)| cx.u.unify(a, b))
        });
        if unequal {
            return Err(cx
                .at_operands(
                    Diagnostic::error(
                        "mtl::fusion-shape",
                        "`mixture` needs experts of equal shapes",
                    )
                    .label(cx.span(), "`mixture` here"),
                )
                .help("project the experts to one size first, e.g. `-> dense(N)` on each"));
        }
        let g = &cx.tys[n];
        if g.rank() != 1 {
            return Err(Diagnostic::error(
                "mtl::rank",
                format!(
                    "the gate of `mixture` must be a vector [D], found {}",
                    shape_str(g)
                ),
            )
            .label(cx.operand_span(n), "gate input here")
            .help("pool or flatten the gate input first, e.g. `gate = x -> global_avg_pool`"));
        }
        let dx = cx.fixed(&g.shape[0], "the gate input size of `mixture`")?;
        Ok(Typed::new(e.clone())
            .param(WEIGHT, vec![n, dx], glorot(dx, n))
            .param(BIAS, vec![n], Init::Zeros))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{code, f32, infer, shapes};
    use super::*;

    #[test]
    fn gates_equal_experts_with_a_vector() {
        let op = Op::Mixture(Mixture { experts: 3 });
        let t = infer(
            op.clone(),
            &[f32(&[16]), f32(&[16]), f32(&[16]), f32(&[12])],
        )
        .unwrap();
        assert_eq!(t.ty, f32(&[16]));
        assert_eq!(shapes(&t), [(WEIGHT, vec![3, 12]), (BIAS, vec![3])]);
        let bad = infer(op.clone(), &[f32(&[16]), f32(&[8]), f32(&[16]), f32(&[12])]);
        assert_eq!(code(bad), "mtl::fusion-shape");
        let bad = infer(op, &[f32(&[16]), f32(&[16]), f32(&[16]), f32(&[3, 4])]);
        assert_eq!(code(bad), "mtl::rank");
    }
}
