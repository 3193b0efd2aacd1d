//! Layer signatures and argument binding: positional then named, typed.
//! Each op file declares its callees' signatures with these; elaboration
//! evaluates the written arguments to [`Value`]s and binds them here.

use crate::diagnostics::{did_you_mean, Diagnostic, Span};
use std::collections::HashMap;

/// A constant argument value after block parameters are substituted.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Sym(String),
    Str(String),
    List(Vec<Value>),
}

impl Value {
    /// What was written, for "found …" labels: a number as itself.
    pub fn found(&self) -> String {
        match self {
            Value::Int(i) => i.to_string(),
            v => v.describe().to_string(),
        }
    }
    pub fn describe(&self) -> &'static str {
        match self {
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Sym(_) => "a name",
            Value::Str(_) => "a string",
            Value::List(_) => "a list",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A positive integer.
    Int,
    Float,
    Bool,
    /// `valid` or `same`.
    Padding,
    /// An integer or a list of two.
    IntOrPair,
    /// Any integer, e.g. an axis.
    SignedInt,
    FloatList,
    /// A tensor value (a fusion's named operand, e.g. `gate = x`).
    Tensor,
}

impl Kind {
    fn words(self) -> &'static str {
        match self {
            Kind::Int => "a positive integer",
            Kind::Float => "a number",
            Kind::Bool => "`true` or `false`",
            Kind::Padding => "`valid` or `same`",
            Kind::IntOrPair => "an integer or a list of two integers",
            Kind::SignedInt => "an integer",
            Kind::FloatList => "a list of numbers",
            Kind::Tensor => "a tensor value",
        }
    }
}

/// A parameter of a layer: name, kind, and default (None = required).
#[derive(Clone, Copy)]
pub struct ParamSpec {
    pub name: &'static str,
    pub kind: Kind,
    pub default: Option<fn() -> Value>,
}

pub const fn req(name: &'static str, kind: Kind) -> ParamSpec {
    ParamSpec {
        name,
        kind,
        default: None,
    }
}
pub const fn opt(name: &'static str, kind: Kind, default: fn() -> Value) -> ParamSpec {
    ParamSpec {
        name,
        kind,
        default: Some(default),
    }
}

pub fn one() -> Value {
    Value::Int(1)
}
pub fn zero_int() -> Value {
    Value::Int(0)
}
pub fn two() -> Value {
    Value::Int(2)
}
pub fn valid() -> Value {
    Value::Sym("valid".into())
}
pub fn no() -> Value {
    Value::Sym("false".into())
}
pub fn eps() -> Value {
    Value::Float(1e-3)
}
pub fn momentum() -> Value {
    Value::Float(0.99)
}
pub fn alpha() -> Value {
    Value::Float(0.3)
}
pub fn last_axis() -> Value {
    Value::Int(-1)
}
pub fn empty() -> Value {
    Value::List(vec![])
}

/// Arguments checked against a signature: name → (value, span).
pub struct Bound {
    pub values: HashMap<&'static str, Value>,
    /// The integers of an [`Sig::IntVariadic`] call, in order.
    pub variadic: Vec<i64>,
}

impl Bound {
    pub fn int(&self, k: &str) -> usize {
        match self.values.get(k) {
            Some(Value::Int(i)) => (*i).max(0) as usize,
            Some(Value::List(v)) => match v.first() {
                Some(Value::Int(i)) => (*i).max(0) as usize,
                _ => 0,
            },
            _ => 0,
        }
    }
    pub fn signed(&self, k: &str) -> i64 {
        match self.values.get(k) {
            Some(Value::Int(i)) => *i,
            _ => 0,
        }
    }
    pub fn float(&self, k: &str) -> f64 {
        match self.values.get(k) {
            Some(Value::Int(i)) => *i as f64,
            Some(Value::Float(f)) => *f,
            _ => 0.0,
        }
    }
    pub fn bool(&self, k: &str) -> bool {
        matches!(self.values.get(k), Some(Value::Sym(s)) if s == "true")
    }
    pub fn sym(&self, k: &str) -> String {
        match self.values.get(k) {
            Some(Value::Sym(s)) => s.clone(),
            _ => String::new(),
        }
    }
    /// An int or pair as a vector of 1 or 2 entries.
    pub fn ints(&self, k: &str) -> Vec<usize> {
        match self.values.get(k) {
            Some(Value::Int(i)) => vec![(*i).max(0) as usize],
            Some(Value::List(v)) => v
                .iter()
                .map(|x| match x {
                    Value::Int(i) => (*i).max(0) as usize,
                    _ => 0,
                })
                .collect(),
            _ => vec![],
        }
    }
    pub fn floats(&self, k: &str) -> Vec<f64> {
        match self.values.get(k) {
            Some(Value::List(v)) => v
                .iter()
                .map(|x| match x {
                    Value::Int(i) => *i as f64,
                    Value::Float(f) => *f,
                    _ => 0.0,
                })
                .collect(),
            _ => vec![],
        }
    }
}

fn check_kind(kind: Kind, v: &Value) -> bool {
    match (kind, v) {
        (Kind::Int, Value::Int(i)) => *i > 0,
        (Kind::SignedInt, Value::Int(_)) => true,
        (Kind::Float, Value::Int(_) | Value::Float(_)) => true,
        (Kind::Bool, Value::Sym(s)) => s == "true" || s == "false",
        (Kind::Padding, Value::Sym(s)) => s == "valid" || s == "same",
        (Kind::IntOrPair, Value::Int(i)) => *i > 0,
        (Kind::IntOrPair, Value::List(l)) => {
            l.len() == 2 && l.iter().all(|x| matches!(x, Value::Int(i) if *i > 0))
        }
        (Kind::FloatList, Value::List(l)) => l
            .iter()
            .all(|x| matches!(x, Value::Int(_) | Value::Float(_))),
        _ => false,
    }
}

/// One argument as written: optional name, value and span.
pub struct RawArg {
    pub name: Option<(String, Span)>,
    pub value: Value,
    pub span: Span,
}

/// Binds arguments to a fixed signature; every problem becomes a diagnostic.
pub fn bind(
    callee: &str,
    operands: &[&str],
    call_span: Span,
    specs: &[ParamSpec],
    args: &[RawArg],
) -> Result<Bound, Vec<Diagnostic>> {
    let mut errs = vec![];
    let mut invalid: Vec<&str> = vec![];
    let mut values: HashMap<&'static str, Value> = HashMap::new();
    let mut positional = 0;
    for a in args {
        let spec = match &a.name {
            None => {
                let s = specs.get(positional);
                positional += 1;
                match s {
                    Some(s) => s,
                    None => {
                        errs.push(
                            Diagnostic::error(
                                "mtl::arity",
                                format!(
                                    "`{callee}` takes at most {} positional argument{}",
                                    specs.len(),
                                    if specs.len() == 1 { "" } else { "s" }
                                ),
                            )
                            .label(a.span, "unexpected argument")
                            .help(signature_help(callee, operands, specs)),
                        );
                        continue;
                    }
                }
            }
            Some((n, nspan)) => match specs.iter().find(|s| s.name == n) {
                Some(s) => s,
                None => {
                    let names: Vec<&str> = specs.iter().map(|s| s.name).collect();
                    errs.push(
                        Diagnostic::error(
                            "mtl::unknown-argument",
                            format!("`{callee}` has no argument named `{n}`"),
                        )
                        .label(*nspan, "unknown argument")
                        .help(did_you_mean(n, &names, "argument")),
                    );
                    continue;
                }
            },
        };
        if values.contains_key(spec.name) {
            errs.push(
                Diagnostic::error(
                    "mtl::duplicate-argument",
                    format!("argument `{}` of `{callee}` is given twice", spec.name),
                )
                .label(a.span, "given again here"),
            );
            continue;
        }
        if !check_kind(spec.kind, &a.value) {
            errs.push(
                Diagnostic::error(
                    "mtl::argument-type",
                    format!(
                        "argument `{}` of `{callee}` must be {}",
                        spec.name,
                        spec.kind.words()
                    ),
                )
                .label(a.span, format!("found {}", a.value.found()))
                .help(signature_help(callee, operands, specs)),
            );
            // Given, if wrongly: not reported missing as well.
            invalid.push(spec.name);
            continue;
        }
        values.insert(spec.name, a.value.clone());
    }
    for s in specs {
        if !values.contains_key(s.name) && !invalid.contains(&s.name) {
            match s.default {
                Some(d) => {
                    values.insert(s.name, d());
                }
                None => errs.push(
                    Diagnostic::error(
                        "mtl::missing-argument",
                        format!("`{callee}` needs its argument `{}`", s.name),
                    )
                    .label(call_span, format!("`{}` missing", s.name))
                    .help(signature_help(callee, operands, specs)),
                ),
            }
        }
    }
    if errs.is_empty() {
        Ok(Bound {
            values,
            variadic: vec![],
        })
    } else {
        Err(errs)
    }
}

/// `the signature is `name(operands…, params…)``; `operands` are a fusion's
/// tensor arguments, written first.
pub fn signature_help(callee: &str, operands: &[&str], specs: &[ParamSpec]) -> String {
    let ps: Vec<String> = operands
        .iter()
        .map(|o| o.to_string())
        .chain(specs.iter().map(|s| match s.default {
            None => s.name.to_string(),
            Some(d) => format!("{} = {}", s.name, show(&d())),
        }))
        .collect();
    format!("the signature is `{callee}({})`", ps.join(", "))
}

fn show(v: &Value) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        Value::Float(f) => format!("{f}"),
        Value::Sym(s) => s.clone(),
        Value::Str(s) => format!("\"{s}\""),
        Value::List(l) => format!("[{}]", l.iter().map(show).collect::<Vec<_>>().join(", ")),
    }
}

/// How a callee takes its arguments.
pub enum Sig {
    /// A layer (one operand) with these parameters.
    Layer(&'static [ParamSpec]),
    /// A layer taking one or more integers: `reshape(4, -1)`, `permute(2, 1)`.
    IntVariadic,
    /// A fusion: positional arguments are operands, named ones these parameters.
    Fusion(&'static [ParamSpec]),
    /// A fusion of exactly these operands (named for help texts), given
    /// first; further arguments bind to the parameters: `attend(q, c, 2, 8)`.
    FusionOf(&'static [&'static str], &'static [ParamSpec]),
}

/// Binds the arguments of an [`Sig::IntVariadic`] layer: integers only, at least one.
pub fn bind_variadic(
    callee: &str,
    call_span: Span,
    args: &[RawArg],
) -> Result<Bound, Vec<Diagnostic>> {
    let mut v = vec![];
    for a in args {
        match (&a.name, &a.value) {
            (None, Value::Int(i)) => v.push(*i),
            _ => {
                return Err(vec![Diagnostic::error(
                    "mtl::argument-type",
                    format!("`{callee}` takes integers"),
                )
                .label(a.span, format!("found {}", a.value.describe()))])
            }
        }
    }
    if v.is_empty() {
        return Err(vec![Diagnostic::error(
            "mtl::missing-argument",
            format!("`{callee}` needs the target axes"),
        )
        .label(call_span, "no axes given")
        .help(format!("e.g. `{callee}(2, 1)`"))]);
    }
    Ok(Bound {
        values: HashMap::new(),
        variadic: v,
    })
}

impl Sig {
    pub fn is_fusion(&self) -> bool {
        matches!(self, Sig::Fusion(_) | Sig::FusionOf(..))
    }
}
