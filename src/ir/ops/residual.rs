//! `residual(PIPELINE)`: `x + PIPELINE(x)`. Elaboration applies the pipeline
//! to `x` and joins both here (operands: `x`, then the pipeline's output);
//! the rule insists the pipeline keeps the shape.

use super::{Arity, Cx, MaskFlow, Rules, Typed, R};
use crate::diagnostics::Diagnostic;
use crate::ir::shape_str;
use serde::Serialize;
use std::borrow::Cow;

/// The name elaboration recognizes; its argument is a pipeline, not a constant.
pub const NAME: &str = "residual";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Residual;

impl Rules for Residual {
    fn kind_name(&self) -> Cow<'static, str> {
        NAME.into()
    }
    fn arity(&self) -> Arity {
        Arity::Many
    }
    /// A mask survives when either side carries one.
    fn mask_flow(&self) -> MaskFlow {
        MaskFlow::Any
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        let (x, y) = (&cx.tys[0], &cx.tys[1]);
        let same =
            x.rank() == y.rank() && x.shape.iter().zip(&y.shape).all(|(a, b)| cx.u.unify(a, b));
        if !same {
            let last = x.shape.last().map(|d| d.to_string()).unwrap_or_default();
            let (x, y) = (shape_str(x), shape_str(y));
            return Err(Diagnostic::error(
                "mtl::residual-shape",
                format!("the pipeline of `residual` changes the shape {x} to {y}"),
            )
            .label(cx.span(), format!("this pipeline turns {x} into {y}"))
            .help(format!(
                "`residual` adds the pipeline's output to its input: end the pipeline with a projection back, e.g. `dense({last})`"
            )));
        }
        Ok(Typed::new(x.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{code, f32, infer};
    use super::*;
    use crate::ir::Op;

    #[test]
    fn keeps_the_shape_or_says_how_to_project() {
        let t = infer(Op::Residual(Residual), &[f32(&[4, 8]), f32(&[4, 8])]).unwrap();
        assert_eq!(t.ty, f32(&[4, 8]));
        assert_eq!(
            code(infer(Op::Residual(Residual), &[f32(&[4, 8]), f32(&[4, 6])])),
            "mtl::residual-shape"
        );
    }
}
