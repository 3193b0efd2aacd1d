//! `attention(heads, key_dim, value_dim = key_dim, dropout = 0, causal = false)`:
//! multi-head self-attention, `[T, D] → [T, D]` (Keras
//! `MultiHeadAttention(heads, key_dim)(x, x)`). Scores are scaled by
//! 1/√key_dim and softmaxed over the keys; padded keys (a padding mask on
//! the value) and, when `causal`, later positions are masked out.

use super::sig::{no, opt, req, Kind, Value};
use super::{Callee, Cx, Rules, Sig, Typed, R};
use crate::diagnostics::Diagnostic;
use crate::ir::{Init, Op};
use serde::Serialize;
use std::borrow::Cow;

/// Parameter names: PyTorch layouts, `query.weight [heads·key_dim, D]`; head
/// h owns rows `h·key_dim … (h+1)·key_dim − 1`.
pub const QUERY_WEIGHT: &str = "query.weight";
pub const QUERY_BIAS: &str = "query.bias";
pub const KEY_WEIGHT: &str = "key.weight";
pub const KEY_BIAS: &str = "key.bias";
pub const VALUE_WEIGHT: &str = "value.weight";
pub const VALUE_BIAS: &str = "value.bias";
pub const OUT_WEIGHT: &str = "out.weight";
pub const OUT_BIAS: &str = "out.bias";

fn zero() -> Value {
    Value::Float(0.0)
}
/// Shown as `value_dim = key_dim` in signature help; read as 0, then key_dim.
fn same_as_key() -> Value {
    Value::Sym("key_dim".into())
}

pub const CALLEES: &[Callee] = &[Callee {
    name: "attention",
    sig: Sig::Layer(&[
        req("heads", Kind::Int),
        req("key_dim", Kind::Int),
        opt("value_dim", Kind::Int, same_as_key),
        opt("dropout", Kind::Float, zero),
        opt("causal", Kind::Bool, no),
    ]),
    build: |b| {
        let rate = b.args.float("dropout");
        if !(0.0..1.0).contains(&rate) {
            return Err(Diagnostic::error(
                "mtl::argument-type",
                "attention dropout must be in [0, 1)",
            )
            .label(b.span, format!("dropout = {rate}")));
        }
        let key_dim = b.args.int("key_dim");
        let value_dim = match b.args.int("value_dim") {
            0 => key_dim,
            v => v,
        };
        Ok(Op::Attention(Attention {
            heads: b.args.int("heads"),
            key_dim,
            value_dim,
            dropout: rate,
            causal: b.args.bool("causal"),
        }))
    },
}];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attention {
    pub heads: usize,
    pub key_dim: usize,
    pub value_dim: usize,
    /// Dropout on the attention probabilities, in training.
    pub dropout: f64,
    pub causal: bool,
}

impl Rules for Attention {
    fn kind_name(&self) -> Cow<'static, str> {
        "attention".into()
    }
    fn attrs(&self) -> String {
        let mut s = format!("heads={}, key_dim={}", self.heads, self.key_dim);
        if self.value_dim != self.key_dim {
            s += &format!(", value_dim={}", self.value_dim);
        }
        if self.dropout > 0.0 {
            s += &format!(", dropout={}", self.dropout);
        }
        if self.causal {
            s += ", causal";
        }
        s
    }
    fn params(&self) -> &'static [&'static str] {
        &[
            QUERY_WEIGHT,
            QUERY_BIAS,
            KEY_WEIGHT,
            KEY_BIAS,
            VALUE_WEIGHT,
            VALUE_BIAS,
            OUT_WEIGHT,
            OUT_BIAS,
        ]
    }
    fn is_pure(&self, training: bool) -> bool {
        !(training && self.dropout > 0.0)
    }
    fn keeps_mask(&self) -> bool {
        true
    }
    fn rank_help(&self, rank: usize) -> Option<&'static str> {
        (rank == 1).then_some("attention reads a sequence [T, D]: keep the sequence axis (e.g. `return_sequences = true`, or no pooling before it)")
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        cx.need_rank(2, 2, "a sequence [T, D]")?;
        let d = cx.fixed(&cx.s()[1], "the feature size of `attention`'s input")?;
        let (hk, hv) = (self.heads * self.key_dim, self.heads * self.value_dim);
        let glorot = |fan_in, fan_out| Init::GlorotUniform { fan_in, fan_out };
        // Keras's fans are those of its 3-D kernels: [D, heads, key_dim] and [heads, value_dim, D].
        Ok(Typed::new(cx.x().clone())
            .param(QUERY_WEIGHT, vec![hk, d], glorot(d, hk))
            .param(QUERY_BIAS, vec![hk], Init::Zeros)
            .param(KEY_WEIGHT, vec![hk, d], glorot(d, hk))
            .param(KEY_BIAS, vec![hk], Init::Zeros)
            .param(VALUE_WEIGHT, vec![hv, d], glorot(d, hv))
            .param(VALUE_BIAS, vec![hv], Init::Zeros)
            .param(OUT_WEIGHT, vec![d, hv], glorot(hv, d))
            .param(OUT_BIAS, vec![d], Init::Zeros))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{code, f32, infer, shapes};
    use super::*;

    fn mha(heads: usize, key_dim: usize, value_dim: usize) -> Op {
        Op::Attention(Attention {
            heads,
            key_dim,
            value_dim,
            dropout: 0.0,
            causal: false,
        })
    }

    #[test]
    fn keeps_the_shape_and_counts_keras_parameters() {
        let t = infer(mha(2, 8, 8), &[f32(&[12, 16])]).unwrap();
        assert_eq!(t.ty, f32(&[12, 16]));
        let n: usize = t
            .params
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .sum();
        assert_eq!(n, 1088); // Keras MultiHeadAttention(2, 8) on D = 16
        assert_eq!(shapes(&t)[0], (QUERY_WEIGHT, vec![16, 16]));
    }

    #[test]
    fn value_dim_sizes_the_value_and_output_projections() {
        let t = infer(mha(2, 4, 3), &[f32(&[5, 10])]).unwrap();
        assert_eq!(shapes(&t)[4], (VALUE_WEIGHT, vec![6, 10]));
        assert_eq!(shapes(&t)[6], (OUT_WEIGHT, vec![10, 6]));
    }

    #[test]
    fn needs_a_sequence() {
        assert_eq!(code(infer(mha(2, 8, 8), &[f32(&[16])])), "mtl::rank");
    }
}
