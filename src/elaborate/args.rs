//! Written layer arguments evaluated to constants, block parameters substituted.
//! Binding them to a signature is the op table's ([`crate::ir::ops`]).

use crate::diagnostics::{Diagnostic, Span};
use crate::ir::ops::Value;
use crate::syntax::ast::{Expr, ExprKind};
use std::collections::HashMap;

/// Evaluates a constant argument, substituting block parameters from `env`.
pub fn eval_const(e: &Expr, env: &HashMap<String, (Value, Span)>) -> Result<Value, Diagnostic> {
    match &e.kind {
        ExprKind::Number { value, is_int } => Ok(if *is_int {
            Value::Int(*value as i64)
        } else {
            Value::Float(*value)
        }),
        ExprKind::Str(s) => Ok(Value::Str(s.clone())),
        ExprKind::List(items) => Ok(Value::List(
            items.iter().map(|i| eval_const(i, env)).collect::<Result<_, _>>()?,
        )),
        ExprKind::Call(c) if c.args.is_none() && c.alias.is_none() => Ok(env
            .get(&c.callee.name)
            .map(|(v, _)| v.clone())
            .unwrap_or_else(|| Value::Sym(c.callee.name.clone()))),
        _ => Err(Diagnostic::error(
            "mtl::bad-argument",
            "a layer argument must be a constant",
        )
        .label(e.span, "this is not a number, name or list")
        .help("layer arguments are numbers, names such as `same`, or lists; pass tensors with `->`")),
    }
}
