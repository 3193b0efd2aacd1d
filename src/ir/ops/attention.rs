//! Multi-head attention (Keras `MultiHeadAttention`):
//! `attention(heads, key_dim, value_dim = key_dim, dropout = 0, causal = false)`
//! is self-attention `[T, D] → [T, D]`; the fusion
//! `attend(query, context, heads, key_dim, value_dim = key_dim, dropout = 0)`
//! is cross-attention `[Tq, Dq]` (or a vector `[Dq]`, a sequence of one) over
//! `[Tk, Dk]` → the query's shape. Scores are scaled by 1/√key_dim and
//! softmaxed over the keys; padded keys (a padding mask on the keys' value)
//! and, when `causal`, later positions are masked out.

use super::sig::{no, opt, req, Kind, ParamSpec, Value};
use super::{Arity, Build, Callee, Cx, MaskFlow, Rules, Sig, Typed, R};
use crate::diagnostics::Diagnostic;
use crate::ir::{shape_str, Init, Op, Type};
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
/// Every projection's tensors, in declaration order.
const PARAMS: [&str; 8] = [
    QUERY_WEIGHT,
    QUERY_BIAS,
    KEY_WEIGHT,
    KEY_BIAS,
    VALUE_WEIGHT,
    VALUE_BIAS,
    OUT_WEIGHT,
    OUT_BIAS,
];

fn zero() -> Value {
    Value::Float(0.0)
}
/// Shown as `value_dim = key_dim` in signature help; read as 0, then key_dim.
fn same_as_key() -> Value {
    Value::Sym("key_dim".into())
}

const HEADS: [ParamSpec; 4] = [
    req("heads", Kind::Int),
    req("key_dim", Kind::Int),
    opt("value_dim", Kind::Int, same_as_key),
    opt("dropout", Kind::Float, zero),
];

pub const CALLEES: &[Callee] = &[
    Callee {
        name: "attention",
        sig: Sig::Layer(&[
            HEADS[0],
            HEADS[1],
            HEADS[2],
            HEADS[3],
            opt("causal", Kind::Bool, no),
        ]),
        build: |b| {
            Ok(Op::Attention(Attention {
                causal: b.args.bool("causal"),
                ..heads(b)?
            }))
        },
    },
    Callee {
        name: "attend",
        sig: Sig::FusionOf(&["query", "context"], &HEADS),
        build: |b| {
            if b.operands != 2 {
                return Err(Diagnostic::error(
                    "mtl::arity",
                    "`attend` takes two values: the query and the context",
                )
                .label(b.span, format!("{} values given", b.operands))
                .help("write `attend(query, context, heads, key_dim)`"));
            }
            Ok(Op::Attend(Attend(heads(b)?)))
        },
    },
];

/// The arguments `attention` and `attend` share.
fn heads(b: &Build) -> R<Attention> {
    let rate = b.args.float("dropout");
    if !(0.0..1.0).contains(&rate) {
        return Err(
            Diagnostic::error("mtl::argument-type", "attention dropout must be in [0, 1)")
                .label(b.span, format!("dropout = {rate}")),
        );
    }
    let key_dim = b.args.int("key_dim");
    let value_dim = match b.args.int("value_dim") {
        0 => key_dim,
        v => v,
    };
    Ok(Attention {
        heads: b.args.int("heads"),
        key_dim,
        value_dim,
        dropout: rate,
        causal: false,
        hf: false,
    })
}
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attention {
    pub heads: usize,
    pub key_dim: usize,
    pub value_dim: usize,
    /// Dropout on the attention probabilities, in training.
    pub dropout: f64,
    pub causal: bool,
    /// Hugging Face's layout (a `pretrained` encoder): the padding mask
    /// applies to keys only (padded query rows attend like real ones, as
    /// `transformers` computes them), and there is no output projection (a
    /// dense layer follows, keyed as the checkpoint keys it).
    pub hf: bool,
}

impl Rules for Attention {
    fn reads_mask(&self) -> bool {
        true
    }
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
        if self.hf {
            s += ", keys-only mask, no output projection";
        }
        s
    }
    fn params(&self) -> &'static [&'static str] {
        // Hugging Face's layout has no output projection: the first six.
        if self.hf {
            &PARAMS[..6]
        } else {
            &PARAMS
        }
    }
    fn is_pure(&self, training: bool) -> bool {
        !(training && self.dropout > 0.0)
    }
    fn mask_flow(&self) -> MaskFlow {
        MaskFlow::First
    }
    fn rank_help(&self, rank: usize) -> Option<&'static str> {
        (rank == 1).then_some("attention reads a sequence [T, D]: keep the sequence axis (e.g. `return_sequences = true`, or no pooling before it)")
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        cx.need_rank(2, 2, "a sequence [T, D]")?;
        let d = cx.fixed(&cx.s()[1], "the feature size of `attention`'s input")?;
        let mut ty = cx.x().clone();
        if self.hf {
            ty.shape[1] = crate::ir::Dim::Fixed(self.heads * self.value_dim);
        }
        Ok(self.projections(Typed::new(ty), d, d))
    }
}

impl Attention {
    /// The four projections for a query of width `dq` over keys of width
    /// `dk`; the fans are those of Keras's 3-D kernels.
    fn projections(&self, t: Typed, dq: usize, dk: usize) -> Typed {
        let (hk, hv) = (self.heads * self.key_dim, self.heads * self.value_dim);
        let glorot = |fan_in, fan_out| Init::GlorotUniform { fan_in, fan_out };
        let t = t
            .param(QUERY_WEIGHT, vec![hk, dq], glorot(dq, hk))
            .param(QUERY_BIAS, vec![hk], Init::Zeros)
            .param(KEY_WEIGHT, vec![hk, dk], glorot(dk, hk))
            .param(KEY_BIAS, vec![hk], Init::Zeros)
            .param(VALUE_WEIGHT, vec![hv, dk], glorot(dk, hv))
            .param(VALUE_BIAS, vec![hv], Init::Zeros);
        if self.hf {
            return t;
        }
        t.param(OUT_WEIGHT, vec![dq, hv], glorot(hv, dq))
            .param(OUT_BIAS, vec![dq], Init::Zeros)
    }
}

/// Cross-attention: the query (operand 1) attends to the context (operand
/// 2, keys = values); the output keeps the query's shape and mask.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attend(pub Attention);

impl Rules for Attend {
    fn reads_mask(&self) -> bool {
        true
    }
    fn kind_name(&self) -> Cow<'static, str> {
        "attend".into()
    }
    fn attrs(&self) -> String {
        self.0.attrs()
    }
    fn arity(&self) -> Arity {
        Arity::Many
    }
    fn params(&self) -> &'static [&'static str] {
        self.0.params()
    }
    fn is_pure(&self, training: bool) -> bool {
        self.0.is_pure(training)
    }
    fn mask_flow(&self) -> MaskFlow {
        MaskFlow::First
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        let (q, c) = (&cx.tys[0], &cx.tys[1]);
        if !(1..=2).contains(&q.rank()) {
            let what = "the query of `attend` must be a sequence [Tq, Dq] or a vector [Dq]";
            return Err(rank_error(cx, 0, what, q));
        }
        if c.rank() != 2 {
            let what = "the context of `attend` must be a sequence [Tk, Dk]";
            return Err(rank_error(cx, 1, what, c));
        }
        let dq = cx.fixed(&q.shape[q.rank() - 1], "the query width of `attend`")?;
        let dk = cx.fixed(&c.shape[1], "the context width of `attend`")?;
        let t = Typed::new(Type::f32(q.shape.clone()));
        Ok(self.0.projections(t, dq, dk))
    }
}

fn rank_error(cx: &Cx, i: usize, what: &str, t: &Type) -> Diagnostic {
    Diagnostic::error("mtl::rank", format!("{what}, found {}", shape_str(t)))
        .label(cx.operand_span(i), cx.describe(i))
        .label(cx.span(), "`attend` here")
        .help("make image features a sequence first, e.g. `conv2d(64, 8, stride = 8) -> reshape(64, -1) -> permute(2, 1)`")
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
            hf: false,
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
    fn attend_keeps_the_query_shape_with_context_width_keys() {
        let a = |heads, key_dim| {
            let m = Attention {
                heads,
                key_dim,
                value_dim: key_dim,
                dropout: 0.0,
                causal: false,
                hf: false,
            };
            Op::Attend(Attend(m))
        };
        let t = infer(a(2, 4), &[f32(&[6]), f32(&[9, 10])]).unwrap();
        assert_eq!(t.ty, f32(&[6]));
        assert_eq!(shapes(&t)[2], (KEY_WEIGHT, vec![8, 10]));
        assert_eq!(shapes(&t)[6], (OUT_WEIGHT, vec![6, 8]));
        let t = infer(a(1, 3), &[f32(&[5, 6]), f32(&[9, 10])]).unwrap();
        assert_eq!(t.ty, f32(&[5, 6]));
        assert_eq!(code(infer(a(2, 4), &[f32(&[6]), f32(&[10])])), "mtl::rank");
    }

    #[test]
    fn needs_a_sequence() {
        assert_eq!(code(infer(mha(2, 8, 8), &[f32(&[16])])), "mtl::rank");
    }
}
