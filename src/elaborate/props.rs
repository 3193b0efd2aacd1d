//! Property blocks: a head's `{ loss: ..., metrics: [...] }` and `train { ... }`.

use super::args::eval_const;
use crate::diagnostics::{did_you_mean, Diagnostic, Span};
use crate::ir::ops::Value;
use crate::ir::{InputPolicy, LossKind, Metric};
use crate::syntax::ast::{Expr, ExprKind, Prop};
use crate::train::config::{
    OptimizerKind, Schedule, TrainConfig, Weighting, WeightingError, WEIGHTINGS,
};
use std::collections::HashMap;

pub const HEAD_KEYS: &[&str] = &["loss", "weight", "metrics", "label"];
pub const TRAIN_KEYS: &[&str] = &[
    "optimizer",
    "lr",
    "batch_size",
    "epochs",
    "schedule",
    "weighting",
    "clip_norm",
    "patience",
    "monitor",
    "val_split",
    "seed",
    "weight_decay",
    "freeze",
];
pub const OPTIMIZERS: &[&str] = &["adam", "adamw", "sgd"];
pub const SCHEDULES: &[&str] = &["constant", "step", "cosine"];

pub struct HeadProps {
    pub loss: Option<(LossKind, Span)>,
    pub weight: f64,
    pub metrics: Vec<(Metric, Span)>,
    pub label: Option<String>,
}

fn constant(e: &Expr) -> Result<Value, Diagnostic> {
    eval_const(e, &HashMap::new())
}

fn number(e: &Expr, what: &str) -> Result<f64, Diagnostic> {
    match constant(e)? {
        Value::Int(i) => Ok(i as f64),
        Value::Float(f) => Ok(f),
        v => Err(
            Diagnostic::error("mtl::property-type", format!("`{what}` must be a number"))
                .label(e.span, format!("found {}", v.describe())),
        ),
    }
}

/// A number in a range: `positive` > 0, else ≥ 0; always finite.
fn ranged(e: &Expr, what: &str, positive: bool) -> Result<f64, Diagnostic> {
    let v = number(e, what)?;
    let ok = v.is_finite() && if positive { v > 0.0 } else { v >= 0.0 };
    if ok {
        return Ok(v);
    }
    let want = if positive { "> 0" } else { "≥ 0" };
    Err(Diagnostic::error(
        "mtl::property-type",
        format!("`{what}` must be a finite number {want}"),
    )
    .label(e.span, format!("found {v}")))
}

fn positive_int(e: &Expr, what: &str) -> Result<usize, Diagnostic> {
    match constant(e)? {
        Value::Int(i) if i > 0 => Ok(i as usize),
        v => Err(Diagnostic::error(
            "mtl::property-type",
            format!("`{what}` must be a positive integer"),
        )
        .label(e.span, format!("found {}", v.describe()))),
    }
}

fn unknown_key(key: &str, span: Span, keys: &[&str], what: &str) -> Diagnostic {
    Diagnostic::error(
        "mtl::unknown-property",
        format!("unknown {what} property `{key}`"),
    )
    .label(span, "not a known property")
    .help(did_you_mean(key, keys, "property"))
}

fn duplicate_keys(props: &[Prop], errs: &mut Vec<Diagnostic>) {
    let mut seen: HashMap<&str, Span> = HashMap::new();
    for p in props {
        if let Some(first) = seen.insert(&p.key.name, p.key.span) {
            errs.push(
                Diagnostic::error(
                    "mtl::duplicate-property",
                    format!("property `{}` is set twice", p.key.name),
                )
                .label(p.key.span, "set again here")
                .label(first, "first set here"),
            );
        }
    }
}

/// A named function call `f(a = 1)` or bare `f`: (name, named args).
type CallParts<'a> = (&'a str, Span, Vec<(Option<String>, &'a Expr)>);

fn call_parts(e: &Expr) -> Option<CallParts<'_>> {
    match &e.kind {
        ExprKind::Call(c) => Some((
            c.callee.name.as_str(),
            c.callee.span,
            c.args
                .iter()
                .flatten()
                .map(|a| (a.name.as_ref().map(|n| n.name.clone()), &a.value))
                .collect(),
        )),
        _ => None,
    }
}

fn metric(e: &Expr) -> Result<Metric, Diagnostic> {
    let bad = || {
        Diagnostic::error("mtl::unknown-metric", "unknown metric")
            .label(e.span, "not a metric")
            .help(format!("known metrics: {}", Metric::NAMES.join(", ")))
    };
    let (name, span, args) = call_parts(e).ok_or_else(bad)?;
    Ok(match name {
        "accuracy" => Metric::Accuracy,
        "f1" => Metric::F1,
        "auc" => Metric::Auc,
        "mae" => Metric::Mae,
        "rmse" => Metric::Rmse,
        "iou" => Metric::Iou,
        "top_k" => match args.as_slice() {
            [(None | Some(_), v)] => Metric::TopK(positive_int(v, "top_k")?),
            [] => Metric::TopK(5),
            _ => {
                return Err(
                    Diagnostic::error("mtl::arity", "`top_k` takes one argument, k")
                        .label(e.span, "here"),
                )
            }
        },
        other => {
            return Err(Diagnostic::error(
                "mtl::unknown-metric",
                format!("unknown metric `{other}`"),
            )
            .label(span, "not a metric")
            .help(did_you_mean(other, Metric::NAMES, "metric")))
        }
    })
}

/// `monitor: "HEAD.METRIC"` must name a head and one of its metrics (or
/// `loss`): checked once the heads' metrics are known (defaults included),
/// since a typo would otherwise train to the end without ever saving a best
/// checkpoint.
pub fn check_monitor(props: &[Prop], g: &crate::ir::Graph) -> Option<Diagnostic> {
    let p = props.iter().find(|p| p.key.name == "monitor")?;
    let Ok(Value::Str(m) | Value::Sym(m)) = constant(&p.value) else {
        return None;
    };
    if m == "val_loss" {
        return None;
    }
    let mut known: Vec<String> = vec!["val_loss".into()];
    for h in &g.heads {
        known.push(format!("{}.loss", h.name));
        known.extend(h.metrics.iter().map(|x| format!("{}.{}", h.name, x.name())));
    }
    if known.contains(&m) {
        return None;
    }
    let names: Vec<&str> = known.iter().map(String::as_str).collect();
    Some(
        Diagnostic::error(
            "mtl::unknown-monitor",
            format!("`monitor` names `{m}`, which no head reports"),
        )
        .label(p.value.span, "not a head's metric")
        .help(format!(
            "{} (monitor `val_loss`, `HEAD.loss` or a metric the head declares)",
            did_you_mean(&m, &names, "metric")
        )),
    )
}

pub const INPUT_KEYS: &[&str] = &["dropout", "missing"];

/// `input x: T { dropout: P, missing: zeros }`.
pub fn input_policy(props: &[Prop], errs: &mut Vec<Diagnostic>) -> InputPolicy {
    duplicate_keys(props, errs);
    let mut p = InputPolicy::default();
    for prop in props {
        let r = (|| -> Result<(), Diagnostic> {
            match prop.key.name.as_str() {
                "dropout" => {
                    let v = number(&prop.value, "dropout")?;
                    if !(0.0..1.0).contains(&v) {
                        return Err(Diagnostic::error(
                            "mtl::property-type",
                            "`dropout` is a probability in [0, 1)",
                        )
                        .label(prop.value.span, "here"));
                    }
                    p.dropout = v;
                    p.zeros_when_missing = true;
                }
                "missing" => match prop.value.as_name().map(|i| i.name.as_str()) {
                    Some("zeros") => p.zeros_when_missing = true,
                    Some("error") => {}
                    _ => {
                        return Err(Diagnostic::error(
                            "mtl::property-type",
                            "`missing` is `zeros` (an empty cell becomes zeros) or `error`",
                        )
                        .label(prop.value.span, "here"))
                    }
                },
                k => return Err(unknown_key(k, prop.key.span, INPUT_KEYS, "input")),
            }
            Ok(())
        })();
        if let Err(e) = r {
            errs.push(e);
        }
    }
    p
}

pub fn head_props(props: &[Prop], errs: &mut Vec<Diagnostic>) -> HeadProps {
    duplicate_keys(props, errs);
    let mut out = HeadProps {
        loss: None,
        weight: 1.0,
        metrics: vec![],
        label: None,
    };
    for p in props {
        let r: Result<(), Diagnostic> = (|| {
            match p.key.name.as_str() {
                "loss" => {
                    let name = p.value.as_name().map(|i| i.name.as_str()).unwrap_or("");
                    match LossKind::from_name(name) {
                        Some(l) => out.loss = Some((l, p.value.span)),
                        None => {
                            return Err(Diagnostic::error(
                                "mtl::unknown-loss",
                                format!("unknown loss `{}`", name),
                            )
                            .label(p.value.span, "not a loss")
                            .help(did_you_mean(
                                name,
                                LossKind::NAMES,
                                "loss",
                            )))
                        }
                    }
                }
                "weight" => {
                    out.weight = number(&p.value, "weight")?;
                    if out.weight < 0.0 || !out.weight.is_finite() {
                        return Err(Diagnostic::error(
                            "mtl::property-type",
                            "a head's weight must be a finite number ≥ 0",
                        )
                        .label(p.value.span, "here"));
                    }
                }
                "metrics" => match &p.value.kind {
                    ExprKind::List(items) => {
                        for i in items {
                            match metric(i) {
                                Ok(m) => out.metrics.push((m, i.span)),
                                Err(e) => errs.push(e),
                            }
                        }
                    }
                    _ => out.metrics.push((metric(&p.value)?, p.value.span)),
                },
                "label" => match constant(&p.value)? {
                    Value::Str(s) | Value::Sym(s) => out.label = Some(s),
                    v => {
                        return Err(Diagnostic::error(
                            "mtl::property-type",
                            "`label` must be a column name",
                        )
                        .label(p.value.span, format!("found {}", v.describe())))
                    }
                },
                k => return Err(unknown_key(k, p.key.span, HEAD_KEYS, "head")),
            }
            Ok(())
        })();
        if let Err(e) = r {
            errs.push(e);
        }
    }
    out
}

pub fn train_props(props: &[Prop], errs: &mut Vec<Diagnostic>) -> TrainConfig {
    duplicate_keys(props, errs);
    let mut t = TrainConfig::default();
    for p in props {
        let r: Result<(), Diagnostic> = (|| {
            match p.key.name.as_str() {
                "optimizer" => optimizer(&p.value, &mut t)?,
                "lr" => t.optimizer.lr = ranged(&p.value, "lr", true)?,
                "weight_decay" => {
                    t.optimizer.weight_decay = ranged(&p.value, "weight_decay", false)?
                }
                "batch_size" => t.batch_size = positive_int(&p.value, "batch_size")?,
                "epochs" => t.epochs = positive_int(&p.value, "epochs")?,
                "patience" => t.patience = Some(positive_int(&p.value, "patience")?),
                "seed" => t.seed = ranged(&p.value, "seed", false)? as u64,
                "clip_norm" => t.clip_norm = Some(ranged(&p.value, "clip_norm", true)?),
                "val_split" => {
                    let v = number(&p.value, "val_split")?;
                    if !(0.0..1.0).contains(&v) {
                        return Err(Diagnostic::error(
                            "mtl::property-type",
                            "`val_split` must be in [0, 1)",
                        )
                        .label(p.value.span, "here"));
                    }
                    t.val_split = v;
                }
                "monitor" => match constant(&p.value)? {
                    Value::Str(s) | Value::Sym(s) => t.monitor = s,
                    v => {
                        return Err(Diagnostic::error(
                            "mtl::property-type",
                            "`monitor` must be `val_loss` or \"HEAD.METRIC\"",
                        )
                        .label(p.value.span, format!("found {}", v.describe())))
                    }
                },
                "weighting" => t.weighting = weighting(&p.value)?,
                "schedule" => schedule(&p.value, &mut t)?,
                "freeze" => match constant(&p.value)? {
                    Value::List(items) if items.iter().all(|v| matches!(v, Value::Str(_))) => {
                        t.freeze = items
                            .into_iter()
                            .filter_map(|v| match v {
                                Value::Str(s) => Some(s),
                                _ => None,
                            })
                            .collect()
                    }
                    v => {
                        return Err(Diagnostic::error(
                            "mtl::property-type",
                            "`freeze` is a list of layer names, e.g. [\"bert\"]",
                        )
                        .label(p.value.span, format!("found {}", v.describe())))
                    }
                },
                k => return Err(unknown_key(k, p.key.span, TRAIN_KEYS, "train")),
            }
            Ok(())
        })();
        if let Err(e) = r {
            errs.push(e);
        }
    }
    t
}

fn optimizer(e: &Expr, t: &mut TrainConfig) -> Result<(), Diagnostic> {
    let (name, span, args) = call_parts(e).ok_or_else(|| {
        Diagnostic::error(
            "mtl::unknown-optimizer",
            "expected an optimizer such as `adam(lr = 1e-3)`",
        )
        .label(e.span, "not an optimizer")
    })?;
    t.optimizer.kind = match name {
        "adam" => OptimizerKind::Adam,
        "adamw" => {
            t.optimizer.weight_decay = 0.004; // Keras AdamW default
            OptimizerKind::AdamW
        }
        "sgd" => {
            t.optimizer.lr = 0.01; // Keras SGD default
            OptimizerKind::Sgd
        }
        _ => {
            return Err(Diagnostic::error(
                "mtl::unknown-optimizer",
                format!("unknown optimizer `{name}`"),
            )
            .label(span, "not an optimizer")
            .help(did_you_mean(name, OPTIMIZERS, "optimizer")))
        }
    };
    const KEYS: &[&str] = &[
        "lr",
        "weight_decay",
        "momentum",
        "nesterov",
        "beta1",
        "beta2",
        "eps",
    ];
    for (i, (k, v)) in args.into_iter().enumerate() {
        let key = k.unwrap_or_else(|| if i == 0 { "lr".into() } else { String::new() });
        match key.as_str() {
            "lr" => t.optimizer.lr = ranged(v, "lr", true)?,
            "weight_decay" => t.optimizer.weight_decay = ranged(v, "weight_decay", false)?,
            "momentum" => t.optimizer.momentum = ranged(v, "momentum", false)?,
            "beta1" => t.optimizer.beta1 = number(v, "beta1")?,
            "beta2" => t.optimizer.beta2 = number(v, "beta2")?,
            "eps" => t.optimizer.eps = number(v, "eps")?,
            "nesterov" => {
                t.optimizer.nesterov = matches!(constant(v)?, Value::Sym(s) if s == "true")
            }
            _ => {
                return Err(Diagnostic::error(
                    "mtl::unknown-argument",
                    format!("`{name}` has no argument `{key}`"),
                )
                .label(v.span, "unknown argument")
                .help(did_you_mean(&key, KEYS, "argument")))
            }
        }
    }
    Ok(())
}

/// `weighting: NAME` or `weighting: NAME(k = v, ...)`.
fn weighting(e: &Expr) -> Result<Weighting, Diagnostic> {
    let (name, span, args) = match (call_parts(e), e.as_name()) {
        (Some(parts), _) => parts,
        (None, Some(id)) => (id.name.as_str(), id.span, vec![]),
        (None, None) => {
            return Err(Diagnostic::error(
                "mtl::unknown-weighting",
                "expected a loss weighting such as `cagrad(c = 0.4)`",
            )
            .label(e.span, "not a weighting"))
        }
    };
    let mut values = vec![];
    for (k, v) in &args {
        values.push((k.clone(), number(v, k.as_deref().unwrap_or("argument"))?));
    }
    Weighting::build(name, &values).map_err(|err| {
        let code = match err {
            WeightingError::UnknownMethod(_) => "mtl::unknown-weighting",
            WeightingError::UnknownArgument(..) => "mtl::unknown-argument",
            WeightingError::BadValue(..) => "mtl::property-type",
        };
        let d = Diagnostic::error(code, err.to_string());
        let names: Vec<&str> = WEIGHTINGS.iter().map(|(n, _)| *n).collect();
        match &err {
            WeightingError::UnknownMethod(_) => d
                .label(span, "not a weighting")
                .help(did_you_mean(name, &names, "weighting")),
            WeightingError::UnknownArgument(..) | WeightingError::BadValue(..) => {
                d.label(e.span, "here")
            }
        }
    })
}

fn schedule(e: &Expr, t: &mut TrainConfig) -> Result<(), Diagnostic> {
    let (name, span, args) = call_parts(e).ok_or_else(|| {
        Diagnostic::error("mtl::unknown-schedule", "expected a schedule").label(e.span, "here")
    })?;
    // `k` is the parameter's name, `pos` its position when given positionally.
    let get = |k: &str, pos: usize, default: f64, positive: bool| -> Result<f64, Diagnostic> {
        for (i, (n, v)) in args.iter().enumerate() {
            if n.as_deref() == Some(k) || (n.is_none() && i == pos) {
                return ranged(v, k, positive);
            }
        }
        Ok(default)
    };
    t.schedule = match name {
        "constant" => Schedule::Constant,
        "step" => Schedule::Step {
            every: get("every", 0, 10.0, true)?.max(1.0) as usize,
            gamma: get("gamma", 1, 0.1, true)?,
        },
        "cosine" => Schedule::Cosine {
            warmup: get("warmup", 0, 0.0, false)? as usize,
        },
        _ => {
            return Err(Diagnostic::error(
                "mtl::unknown-schedule",
                format!("unknown schedule `{name}`"),
            )
            .label(span, "not a schedule")
            .help(did_you_mean(name, SCHEDULES, "schedule")))
        }
    };
    Ok(())
}
