//! Normalization: `batch_norm` (Keras `BatchNormalization`, axis 1: the
//! channels) and `layer_norm` (Keras `LayerNormalization`, the last axis).

use super::sig::{eps, momentum, opt, Kind};
use super::{Callee, Cx, MaskFlow, Rules, Sig, Typed, R};
use crate::ir::{Init, Op};
use serde::Serialize;
use std::borrow::Cow;

/// Parameter names: PyTorch's `BatchNorm`/`LayerNorm` keys.
pub const WEIGHT: &str = "weight";
pub const BIAS: &str = "bias";
pub const RUNNING_MEAN: &str = "running_mean";
pub const RUNNING_VAR: &str = "running_var";

pub const CALLEES: &[Callee] = &[
    Callee {
        name: "batch_norm",
        sig: Sig::Layer(&[
            opt("eps", Kind::Float, eps),
            opt("momentum", Kind::Float, momentum),
        ]),
        build: |b| {
            Ok(Op::BatchNorm(BatchNorm {
                eps: b.args.float("eps"),
                momentum: b.args.float("momentum"),
            }))
        },
    },
    Callee {
        name: "layer_norm",
        sig: Sig::Layer(&[opt("eps", Kind::Float, eps)]),
        build: |b| {
            Ok(Op::LayerNorm(LayerNorm {
                eps: b.args.float("eps"),
            }))
        },
    },
];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchNorm {
    pub eps: f64,
    pub momentum: f64,
}

impl Rules for BatchNorm {
    fn kind_name(&self) -> Cow<'static, str> {
        "batch_norm".into()
    }
    fn attrs(&self) -> String {
        format!("eps={}, momentum={}", self.eps, self.momentum)
    }
    fn params(&self) -> &'static [&'static str] {
        &[WEIGHT, BIAS, RUNNING_MEAN, RUNNING_VAR]
    }
    /// In training it reads batch statistics (and updates running ones).
    fn is_pure(&self, training: bool) -> bool {
        !training
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        cx.need_rank(1, usize::MAX, "a value of rank ≥ 1")?;
        let c = cx.fixed(&cx.s()[0], "the channel count of `batch_norm`")?;
        Ok(Typed::new(cx.x().clone())
            .param(WEIGHT, vec![c], Init::Ones)
            .param(BIAS, vec![c], Init::Zeros)
            .state(RUNNING_MEAN, vec![c], Init::Zeros)
            .state(RUNNING_VAR, vec![c], Init::Ones))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerNorm {
    pub eps: f64,
}

impl Rules for LayerNorm {
    fn mask_flow(&self) -> MaskFlow {
        MaskFlow::First
    }
    fn kind_name(&self) -> Cow<'static, str> {
        "layer_norm".into()
    }
    fn attrs(&self) -> String {
        format!("eps={}", self.eps)
    }
    fn params(&self) -> &'static [&'static str] {
        &[WEIGHT, BIAS]
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        cx.need_rank(1, usize::MAX, "a value of rank ≥ 1")?;
        let s = cx.s();
        let d = cx.fixed(&s[s.len() - 1], "the last axis of `layer_norm`")?;
        Ok(Typed::new(cx.x().clone())
            .param(WEIGHT, vec![d], Init::Ones)
            .param(BIAS, vec![d], Init::Zeros))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{f32, infer, shapes};
    use super::*;

    #[test]
    fn batch_norm_is_per_channel_with_untrained_statistics() {
        let op = Op::BatchNorm(BatchNorm {
            eps: 1e-3,
            momentum: 0.99,
        });
        let t = infer(op, &[f32(&[6, 4, 4])]).unwrap();
        assert_eq!(t.ty, f32(&[6, 4, 4]));
        assert!(shapes(&t).iter().all(|(_, s)| s == &[6]));
        let trainable: Vec<bool> = t.params.iter().map(|p| p.trainable).collect();
        assert_eq!(trainable, [true, true, false, false]);
    }

    #[test]
    fn layer_norm_is_over_the_last_axis() {
        let t = infer(Op::LayerNorm(LayerNorm { eps: 1e-3 }), &[f32(&[5, 8])]).unwrap();
        assert_eq!(shapes(&t), [(WEIGHT, vec![8]), (BIAS, vec![8])]);
    }
}
