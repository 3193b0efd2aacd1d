//! `input NAME: TYPE`: a graph input, typed from its declaration.

use super::{Arity, Cx, Rules, Typed, R};
use crate::diagnostics::{Diagnostic, Span};
use crate::ir::{DType, Dim, Type};
use serde::Serialize;
use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    Image,
    Tokens {
        vocab: usize,
    },
    /// `audio[M, F] rate R`: M log-mel bands × F frames of WAV files at R Hz.
    Audio {
        rate: usize,
    },
    F32,
}

/// What the data does when a sample lacks this input (`input x: T { ... }`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct InputPolicy {
    /// Modality dropout (Ludwig's `modality_dropout`): in training, each
    /// sample's value is replaced by zeros with this probability.
    pub dropout: f64,
    /// An empty cell becomes zeros instead of an error (`missing: zeros`,
    /// implied by `dropout`).
    pub zeros_when_missing: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Input {
    pub name: String,
    pub kind: InputKind,
    pub policy: InputPolicy,
}

impl Rules for Input {
    fn kind_name(&self) -> Cow<'static, str> {
        "input".into()
    }
    fn attrs(&self) -> String {
        let name = &self.name;
        let kind = match self.kind {
            InputKind::Tokens { vocab } => format!("name={name}, vocab={vocab}"),
            InputKind::Image => format!("name={name}, image"),
            InputKind::Audio { rate } => format!("name={name}, audio, rate={rate}"),
            InputKind::F32 => format!("name={name}"),
        };
        let p = &self.policy;
        match (p.dropout > 0.0, p.zeros_when_missing) {
            (true, _) => format!("{kind}, dropout={}", p.dropout),
            (false, true) => format!("{kind}, missing=zeros"),
            _ => kind,
        }
    }
    fn arity(&self) -> Arity {
        Arity::None
    }
    fn is_pure(&self, _training: bool) -> bool {
        false
    }
    fn takes_tokens(&self) -> bool {
        true
    }
    /// Inputs are typed from their declaration ([`Input::declared_type`]), not inferred.
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        Ok(Typed::new(cx.x().clone()))
    }
}

impl Input {
    /// The per-sample type of a declared input: `image[C, H, W]`, `tokens[T]`
    /// or `f32[...]`; `span` is the declaration's, `dim_spans` each dim's.
    pub fn declared_type(&self, dims: &[(Dim, Span)], span: Span) -> R<Type> {
        if let Some((_, s)) = dims.iter().find(|(d, _)| *d == Dim::Fixed(0)) {
            return Err(
                Diagnostic::error("mtl::zero-dim", "a dimension cannot be 0")
                    .label(*s, "zero here"),
            );
        }
        let (dtype, want) = match self.kind {
            InputKind::Image => (DType::F32, Some(3)),
            InputKind::Tokens { vocab: 0 } => {
                return Err(
                    Diagnostic::error("mtl::zero-dim", "a vocabulary cannot be empty")
                        .label(span, "vocab 0"),
                )
            }
            InputKind::Tokens { .. } => (DType::I64, Some(1)),
            InputKind::Audio { rate: 0 } => {
                return Err(
                    Diagnostic::error("mtl::zero-dim", "a sample rate cannot be 0")
                        .label(span, "rate 0"),
                )
            }
            InputKind::Audio { .. } => (DType::F32, Some(2)),
            InputKind::F32 => (DType::F32, None),
        };
        if let Some(w) = want {
            if dims.len() != w {
                let what = match w {
                    3 => "`image[C, H, W]` takes three dimensions (channels first)",
                    2 => "`audio[M, F] rate R` takes two dimensions: mel bands and frames",
                    _ => "`tokens[T]` takes one dimension, the sequence length",
                };
                return Err(Diagnostic::error("mtl::input-rank", what.to_string())
                    .label(span, format!("{} given", dims.len())));
            }
        }
        Ok(Type {
            dtype,
            shape: dims.iter().map(|(d, _)| d.clone()).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(kind: InputKind) -> Input {
        Input {
            name: "x".into(),
            kind,
            policy: InputPolicy::default(),
        }
    }
    fn dims(d: &[usize]) -> Vec<(Dim, Span)> {
        d.iter()
            .map(|d| (Dim::Fixed(*d), Span::default()))
            .collect()
    }

    #[test]
    fn images_are_channels_first_rank_3() {
        let t = input(InputKind::Image).declared_type(&dims(&[1, 8, 8]), Span::default());
        assert_eq!(t.unwrap().to_string(), "f32[1, 8, 8]");
        let e = input(InputKind::Image).declared_type(&dims(&[8, 8]), Span::default());
        assert_eq!(e.unwrap_err().code, "mtl::input-rank");
    }

    #[test]
    fn tokens_are_i64_and_need_a_vocabulary() {
        let t = input(InputKind::Tokens { vocab: 5 }).declared_type(&dims(&[7]), Span::default());
        assert_eq!(t.unwrap().to_string(), "i64[7]");
        let e = input(InputKind::Tokens { vocab: 0 }).declared_type(&dims(&[7]), Span::default());
        assert_eq!(e.unwrap_err().code, "mtl::zero-dim");
    }

    #[test]
    fn zero_dims_are_rejected() {
        let e = input(InputKind::F32).declared_type(&dims(&[3, 0]), Span::default());
        assert_eq!(e.unwrap_err().code, "mtl::zero-dim");
    }
}
