//! `position_embedding`: adds a learned `[T, D]` table to a sequence
//! (keras-hub `PositionEmbedding`, its output added to its input).

use super::{Callee, Cx, MaskFlow, Rules, Sig, Typed, R};
use crate::ir::{Init, Op};
use serde::Serialize;
use std::borrow::Cow;

/// Parameter name: the table, `[T, D]`.
pub const WEIGHT: &str = "weight";

pub const CALLEES: &[Callee] = &[Callee {
    name: "position_embedding",
    sig: Sig::Layer(&[]),
    build: |_| Ok(Op::PositionEmbedding(PositionEmbedding)),
}];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PositionEmbedding;

impl Rules for PositionEmbedding {
    fn kind_name(&self) -> Cow<'static, str> {
        "position_embedding".into()
    }
    fn params(&self) -> &'static [&'static str] {
        &[WEIGHT]
    }
    fn mask_flow(&self) -> MaskFlow {
        MaskFlow::First
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        cx.need_rank(2, 2, "a sequence [T, D]")?;
        let t = cx.fixed(&cx.s()[0], "the sequence length of `position_embedding`")?;
        let d = cx.fixed(&cx.s()[1], "the feature size of `position_embedding`")?;
        // keras-hub's default initializer is glorot_uniform over the [T, D] table.
        let init = Init::GlorotUniform {
            fan_in: t,
            fan_out: d,
        };
        Ok(Typed::new(cx.x().clone()).param(WEIGHT, vec![t, d], init))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{code, f32, infer, shapes};
    use super::*;

    #[test]
    fn a_table_per_position() {
        let t = infer(Op::PositionEmbedding(PositionEmbedding), &[f32(&[12, 16])]).unwrap();
        assert_eq!(t.ty, f32(&[12, 16]));
        assert_eq!(shapes(&t), [(WEIGHT, vec![12, 16])]);
        assert_eq!(
            code(infer(
                Op::PositionEmbedding(PositionEmbedding),
                &[f32(&[16])]
            )),
            "mtl::rank"
        );
    }
}
