//! Element-wise activations and dropout: the shape passes through.

use super::sig::{alpha, opt, req, Kind};
use super::{Callee, Cx, MaskFlow, Rules, Sig, Typed, R};
use crate::diagnostics::Diagnostic;
use crate::ir::Op;
use serde::Serialize;
use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Act {
    Relu,
    Gelu,
    Silu,
    Tanh,
    Sigmoid,
    Softmax,
    LeakyRelu(f64),
    Identity,
}

impl Act {
    pub fn name(self) -> &'static str {
        match self {
            Act::Relu => "relu",
            Act::Gelu => "gelu",
            Act::Silu => "silu",
            Act::Tanh => "tanh",
            Act::Sigmoid => "sigmoid",
            Act::Softmax => "softmax",
            Act::LeakyRelu(_) => "leaky_relu",
            Act::Identity => "identity",
        }
    }
    /// f(f(x)) = f(x).
    pub fn idempotent(self) -> bool {
        matches!(self, Act::Relu | Act::Identity)
    }
}

/// A callee for an activation without arguments.
macro_rules! plain {
    ($name:literal, $act:expr) => {
        Callee {
            name: $name,
            sig: Sig::Layer(&[]),
            build: |_| Ok(Op::Act($act)),
        }
    };
}

pub const CALLEES: &[Callee] = &[
    Callee {
        name: "dropout",
        sig: Sig::Layer(&[req("rate", Kind::Float)]),
        build: |b| {
            let rate = b.args.float("rate");
            if !(0.0..1.0).contains(&rate) {
                return Err(Diagnostic::error(
                    "mtl::argument-type",
                    "dropout rate must be in [0, 1)",
                )
                .label(b.span, format!("rate = {rate}")));
            }
            Ok(Op::Dropout(Dropout { rate }))
        },
    },
    plain!("relu", Act::Relu),
    plain!("gelu", Act::Gelu),
    plain!("silu", Act::Silu),
    plain!("tanh", Act::Tanh),
    plain!("sigmoid", Act::Sigmoid),
    plain!("softmax", Act::Softmax),
    plain!("identity", Act::Identity),
    Callee {
        name: "leaky_relu",
        sig: Sig::Layer(&[opt("alpha", Kind::Float, alpha)]),
        build: |b| Ok(Op::Act(Act::LeakyRelu(b.args.float("alpha")))),
    },
];

impl Rules for Act {
    fn mask_flow(&self) -> MaskFlow {
        MaskFlow::First
    }
    fn kind_name(&self) -> Cow<'static, str> {
        self.name().into()
    }
    fn attrs(&self) -> String {
        match self {
            Act::LeakyRelu(a) => format!("alpha={a}"),
            _ => String::new(),
        }
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        if *self == Act::Softmax {
            cx.need_rank(1, usize::MAX, "a value of rank ≥ 1")?;
        }
        Ok(Typed::new(cx.x().clone()))
    }
}

/// Inverted dropout: scales kept values by 1 / (1 − rate) in training.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dropout {
    pub rate: f64,
}

impl Rules for Dropout {
    fn mask_flow(&self) -> MaskFlow {
        MaskFlow::First
    }
    fn kind_name(&self) -> Cow<'static, str> {
        "dropout".into()
    }
    fn attrs(&self) -> String {
        format!("rate={}", self.rate)
    }
    fn is_pure(&self, _training: bool) -> bool {
        false
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        Ok(Typed::new(cx.x().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{code, f32, infer};
    use super::*;

    #[test]
    fn activations_keep_the_shape() {
        for a in [Act::Relu, Act::Gelu, Act::LeakyRelu(0.1), Act::Softmax] {
            assert_eq!(infer(Op::Act(a), &[f32(&[3, 4])]).unwrap().ty, f32(&[3, 4]));
        }
        let d = Op::Dropout(Dropout { rate: 0.5 });
        assert_eq!(infer(d, &[f32(&[3])]).unwrap().ty, f32(&[3]));
    }

    #[test]
    fn softmax_needs_an_axis() {
        assert_eq!(code(infer(Op::Act(Act::Softmax), &[f32(&[])])), "mtl::rank");
    }
}
