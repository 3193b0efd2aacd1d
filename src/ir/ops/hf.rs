//! The parts of Hugging Face encoders that no `.mtl` layer spells: what
//! `pretrained(...)` expands into besides dense, attention, layer norm and
//! embedding layers (`elaborate/pretrained.rs`). Not callable from source.
//! Parameter names are the checkpoints' own, so their files load as is.

use super::{Cx, MaskFlow, Rules, Typed, R};
use crate::diagnostics::Diagnostic;
use crate::ir::{Dim, Init, Type};
use serde::Serialize;
use std::borrow::Cow;

/// BERT's position table `[max_positions, D]` (the first T rows are added).
pub const WEIGHT: &str = "weight";
/// ViT's class token `[1, 1, D]`.
pub const CLS_TOKEN: &str = "cls_token";
/// ViT's position table `[1, 1 + patches, D]`.
pub const POSITIONS: &str = "position_embeddings";

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HfOp {
    /// Adds rows `0..T` of a learned `[rows, D]` table to a sequence `[T, D]`
    /// (BERT's absolute position embeddings).
    PositionRows { rows: usize },
    /// Adds row 0 of a learned `[types, D]` table to every position (BERT's
    /// token-type embedding of single-segment input).
    SegmentRow { types: usize },
    /// Prepends a learned class token to `[P, D]` and adds a learned
    /// `[1, 1 + P, D]` position table (ViT's embeddings).
    ClsAndPositions,
    /// Per-channel `(x − mean) / std` over axis 0 (an image processor's
    /// normalisation, inside the graph).
    Normalize { mean: Vec<f64>, std: Vec<f64> },
}

impl Rules for HfOp {
    fn kind_name(&self) -> Cow<'static, str> {
        match self {
            HfOp::PositionRows { .. } => "hf.position_rows",
            HfOp::SegmentRow { .. } => "hf.segment_row",
            HfOp::ClsAndPositions => "hf.cls_and_positions",
            HfOp::Normalize { .. } => "hf.normalize",
        }
        .into()
    }
    fn attrs(&self) -> String {
        match self {
            HfOp::PositionRows { rows } => format!("rows={rows}"),
            HfOp::SegmentRow { types } => format!("types={types}"),
            HfOp::ClsAndPositions => String::new(),
            HfOp::Normalize { mean, std } => format!("mean={mean:?}, std={std:?}"),
        }
    }
    fn params(&self) -> &'static [&'static str] {
        match self {
            HfOp::PositionRows { .. } | HfOp::SegmentRow { .. } => &[WEIGHT],
            HfOp::ClsAndPositions => &[CLS_TOKEN, POSITIONS],
            HfOp::Normalize { .. } => &[],
        }
    }
    fn mask_flow(&self) -> MaskFlow {
        match self {
            HfOp::PositionRows { .. } | HfOp::SegmentRow { .. } => MaskFlow::First,
            _ => MaskFlow::Drop,
        }
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        let init = Init::Const(0.0);
        match self {
            HfOp::PositionRows { rows } => {
                cx.need_rank(2, 2, "a sequence [T, D]")?;
                let t = cx.fixed(&cx.s()[0], "the sequence length of a BERT encoder")?;
                let d = cx.fixed(&cx.s()[1], "the width of a BERT encoder")?;
                if t > *rows {
                    return Err(cx.at_input(
                        Diagnostic::error(
                            "mtl::sequence-too-long",
                            format!("sequences of {t} tokens, but the checkpoint has {rows} positions"),
                        )
                        .label(cx.span(), "this encoder")
                        .help(format!("declare the token input with at most {rows} tokens (`max_position_embeddings` in config.json)")),
                    ));
                }
                Ok(Typed::new(cx.x().clone()).param(WEIGHT, vec![*rows, d], init))
            }
            HfOp::SegmentRow { types } => {
                cx.need_rank(2, 2, "a sequence [T, D]")?;
                let d = cx.fixed(&cx.s()[1], "the width of a BERT encoder")?;
                Ok(Typed::new(cx.x().clone()).param(WEIGHT, vec![(*types).max(1), d], init))
            }
            HfOp::ClsAndPositions => {
                cx.need_rank(2, 2, "patches [P, D]")?;
                let p = cx.fixed(&cx.s()[0], "the patch count of a ViT encoder")?;
                let d = cx.fixed(&cx.s()[1], "the width of a ViT encoder")?;
                let ty = Type::f32(vec![Dim::Fixed(p + 1), Dim::Fixed(d)]);
                Ok(Typed::new(ty).param(CLS_TOKEN, vec![1, 1, d], init).param(
                    POSITIONS,
                    vec![1, p + 1, d],
                    init,
                ))
            }
            HfOp::Normalize { mean, .. } => {
                cx.need_rank(3, 3, "an image [C, H, W]")?;
                let c = cx.fixed(&cx.s()[0], "the channels of the image")?;
                if c != mean.len() {
                    return Err(cx.at_input(
                        Diagnostic::error(
                            "mtl::channels",
                            format!(
                                "an image of {c} channels, but the processor normalises {}",
                                mean.len()
                            ),
                        )
                        .label(cx.span(), "this encoder"),
                    ));
                }
                Ok(Typed::new(cx.x().clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{code, f32, infer, shapes};
    use super::*;
    use crate::ir::Op;

    #[test]
    fn shapes_and_parameters() {
        let t = infer(Op::Hf(HfOp::PositionRows { rows: 40 }), &[f32(&[12, 8])]).unwrap();
        assert_eq!(
            (t.ty.clone(), shapes(&t)),
            (f32(&[12, 8]), vec![(WEIGHT, vec![40, 8])])
        );
        let long = infer(Op::Hf(HfOp::PositionRows { rows: 10 }), &[f32(&[12, 8])]);
        assert_eq!(code(long), "mtl::sequence-too-long");
        let t = infer(Op::Hf(HfOp::ClsAndPositions), &[f32(&[16, 8])]).unwrap();
        assert_eq!(t.ty, f32(&[17, 8]));
        assert_eq!(
            shapes(&t),
            [(CLS_TOKEN, vec![1, 1, 8]), (POSITIONS, vec![1, 17, 8])]
        );
        let n = HfOp::Normalize {
            mean: vec![0.5; 3],
            std: vec![0.5; 3],
        };
        assert_eq!(code(infer(Op::Hf(n), &[f32(&[1, 4, 4])])), "mtl::channels");
    }
}
