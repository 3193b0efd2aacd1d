//! `embedding(dim)` (Keras `Embedding`): token ids to vectors.

use super::sig::{no, opt, req, Kind};
use super::{Build, Callee, Cx, Rules, Sig, Typed, R};
use crate::diagnostics::Diagnostic;
use crate::ir::{DType, Dim, Init, InputKind, Op, Type};
use serde::Serialize;
use std::borrow::Cow;

/// Parameter name: the table, `[vocab, dim]`.
pub const WEIGHT: &str = "weight";

pub const CALLEES: &[Callee] = &[Callee {
    name: "embedding",
    sig: Sig::Layer(&[req("dim", Kind::Int), opt("mask_zero", Kind::Bool, no)]),
    build,
}];

/// The vocabulary comes from the token input the layer is applied to.
fn build(b: &Build) -> R<Op> {
    let Some(input) = b.input else {
        return Err(Diagnostic::error(
            "mtl::embedding-input",
            "`embedding` applies to a token input",
        ));
    };
    match &input.op {
        Op::Input(i) => match i.kind {
            InputKind::Tokens { vocab } => Ok(Op::Embedding(Embedding {
                dim: b.args.int("dim"),
                vocab,
                mask_zero: b.args.bool("mask_zero"),
            })),
            _ => Err(not_tokens(b, input)),
        },
        _ => Err(not_tokens(b, input)),
    }
}

fn not_tokens(b: &Build, input: &crate::ir::Node) -> Diagnostic {
    Diagnostic::error(
        "mtl::embedding-input",
        "`embedding` applies to a token input",
    )
    .label(b.span, "embedding here")
    .label(
        input.span,
        format!("`{}` is not a `tokens[...] vocab N` input", input.name),
    )
    .help("declare the input as `tokens[T] vocab V` and apply embedding to it directly")
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Embedding {
    pub dim: usize,
    pub vocab: usize,
    /// Id 0 is padding: the output carries a padding mask along its first axis.
    pub mask_zero: bool,
}

impl Rules for Embedding {
    fn kind_name(&self) -> Cow<'static, str> {
        "embedding".into()
    }
    fn attrs(&self) -> String {
        let mask = if self.mask_zero { ", mask_zero" } else { "" };
        format!("dim={}, vocab={}{mask}", self.dim, self.vocab)
    }
    fn params(&self) -> &'static [&'static str] {
        &[WEIGHT]
    }
    fn takes_tokens(&self) -> bool {
        true
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        if cx.x().dtype != DType::I64 {
            return Err(cx.at_input(
                Diagnostic::error("mtl::embedding-input", "`embedding` applies to token ids")
                    .label(cx.span(), "embedding here"),
            ));
        }
        let mut out = cx.s().to_vec();
        out.push(Dim::Fixed(self.dim));
        Ok(Typed::new(Type::f32(out)).param(WEIGHT, vec![self.vocab, self.dim], Init::Uniform005))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{code, f32, infer, shapes, tokens};
    use super::*;

    #[test]
    fn adds_a_feature_axis() {
        let t = infer(
            Op::Embedding(Embedding {
                dim: 8,
                vocab: 50,
                mask_zero: false,
            }),
            &[tokens(12)],
        )
        .unwrap();
        assert_eq!(t.ty, f32(&[12, 8]));
        assert_eq!(shapes(&t), [(WEIGHT, vec![50, 8])]);
    }

    #[test]
    fn needs_token_ids() {
        let op = Op::Embedding(Embedding {
            dim: 8,
            vocab: 50,
            mask_zero: true,
        });
        assert_eq!(code(infer(op, &[f32(&[12])])), "mtl::embedding-input");
    }
}
