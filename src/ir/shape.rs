//! Shape and dtype inference: every tensor typed before any weight exists.
//! The rules live with their ops ([`super::ops`]); this walks the graph in
//! topological order, applies them, and binds parameter shapes to each
//! layer's (possibly shared) parameter set.

use super::ops::{Cx, MaskFlow, Typed, Unifier};
use super::*;
use crate::diagnostics::Diagnostic;

/// Infers every node's type in topological order, fills parameter shapes,
/// derives head label types. Returns every error found (and warnings).
pub fn infer(g: &mut Graph) -> Vec<Diagnostic> {
    let mut errs = vec![];
    let mut u = Unifier::default();
    for n in g.topo_order() {
        if matches!(g.g[n].op, Op::Input(_)) {
            if let Some(t) = &g.g[n].ty {
                errs.extend(size_check(&t.shape, "input", &g.g[n].name, g.g[n].span));
            }
            continue;
        }
        let ops = g.operands(n);
        let tys: Option<Vec<Type>> = ops.iter().map(|o| g.g[*o].ty.clone()).collect();
        let Some(tys) = tys else { continue };
        let tys: Vec<Type> = tys
            .into_iter()
            .map(|t| Type {
                dtype: t.dtype,
                shape: t.shape.iter().map(|d| u.resolve(d)).collect(),
            })
            .collect();
        let mut cx = Cx {
            g,
            n,
            ops: &ops,
            tys: &tys,
            u: &mut u,
            warnings: &mut errs,
        };
        match rule(&mut cx) {
            Ok(Typed { ty, params }) => {
                let span = g.g[n].span;
                errs.extend(size_check(&ty.shape, "value", &g.g[n].name, span));
                for p in &params {
                    let dims: Vec<Dim> = p.shape.iter().map(|d| Dim::Fixed(*d)).collect();
                    errs.extend(size_check(&dims, "parameter", &p.name, span));
                }
                g.g[n].ty = Some(ty);
                g.g[n].mask = mask_of(g, n, &ops);
                if let Some(p) = g.g[n].param {
                    bind_params(g, n, p, params, &mut errs);
                }
            }
            Err(d) => errs.push(d),
        }
    }
    super::heads::check(g, &mut errs);
    errs
}

/// Per-sample values and parameter tensors above this many elements (8 GiB
/// of f32) are refused when the model is checked: they would exhaust the
/// machine's memory when weights are made or the first batch runs.
pub const MAX_ELEMENTS: u128 = 1 << 31;

fn size_check(
    shape: &[Dim],
    what: &str,
    name: &str,
    span: crate::diagnostics::Span,
) -> Option<Diagnostic> {
    let n: u128 = shape
        .iter()
        .filter_map(|d| d.fixed().map(|v| v as u128))
        .fold(1u128, |a, b| a.saturating_mul(b));
    (n > MAX_ELEMENTS).then(|| {
        Diagnostic::error(
            "mtl::too-large",
            format!("{what} `{name}` would hold {n} elements, above the limit of {MAX_ELEMENTS} (8 GiB)"),
        )
        .label(span, "here")
        .help("check the sizes: a dimension or a layer width is probably mistyped")
    })
}

/// The op's rule, after the one check every op but a few shares: token ids
/// only go through ops that read them.
fn rule(cx: &mut Cx) -> Result<Typed, Diagnostic> {
    let g = cx.g;
    let op = g.g[cx.n].op.rules();
    let x = cx.x();
    if x.dtype == DType::I64 && !op.takes_tokens() {
        let kind = cx.kind();
        return Err(Diagnostic::error(
            "mtl::token-dtype",
            format!("`{kind}` cannot take token ids"),
        )
        .label(cx.span(), format!("`{kind}` applied here"))
        .label(
            cx.operand_span(0),
            format!("{}: integer token ids", cx.describe(0)),
        )
        .help("map tokens to vectors first: `text -> embedding(64) -> ...`"));
    }
    let t = op.infer(cx)?;
    debug_assert_eq!(
        t.params.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        op.params(),
        "{}: the shape rule and the declared parameter names disagree",
        g.g[cx.n].op
    );
    Ok(t)
}

/// The padding mask of `n`'s output: made by `embedding(mask_zero = true)`
/// from its token input, carried by ops that keep the sequence axis (from
/// any operand of a fusion that does), dropped by every other op.
fn mask_of(g: &Graph, n: NodeIndex, ops: &[NodeIndex]) -> Option<NodeIndex> {
    match &g.g[n].op {
        Op::Embedding(e) if e.mask_zero => ops.first().copied(),
        op => match op.rules().mask_flow() {
            MaskFlow::Drop => None,
            MaskFlow::First => ops.first().and_then(|o| g.g[*o].mask),
            MaskFlow::Any => ops.iter().find_map(|o| g.g[*o].mask),
        },
    }
}

/// The first use of a parameter set fixes its tensors; a shared layer's
/// later uses must need the same shapes.
fn bind_params(
    g: &mut Graph,
    n: NodeIndex,
    p: ParamId,
    tensors: Vec<ParamTensor>,
    errs: &mut Vec<Diagnostic>,
) {
    let site = g.use_sites.get(&n).copied();
    let set = &mut g.params[p.0];
    if set.tensors.is_empty() {
        set.tensors = tensors;
    } else if shapes_of(&set.tensors) != shapes_of(&tensors) {
        // One error per disagreeing use, at the use: a shared block's
        // later layers would disagree too, as a consequence.
        let at = site.unwrap_or(g.g[n].span);
        if errs
            .iter()
            .any(|e| e.code == "mtl::shared-shape" && e.primary_span() == Some(at))
        {
            return;
        }
        errs.push(
            Diagnostic::error(
                "mtl::shared-shape",
                format!(
                    "shared layer `{}` is applied to values of different shapes",
                    set.prefix
                ),
            )
            .label(
                at,
                format!("this use would need weights {}", show_params(&tensors)),
            )
            .label(
                set.span,
                format!(
                    "defined here; its weights (from the first use) are {}",
                    show_params(&set.tensors)
                ),
            )
            .help("a shared layer has one set of weights: feed it values of one shape"),
        );
    }
}

fn shapes_of(t: &[ParamTensor]) -> Vec<&Vec<usize>> {
    t.iter().map(|t| &t.shape).collect()
}

fn show_params(t: &[ParamTensor]) -> String {
    t.iter()
        .map(|t| format!("{} {:?}", t.name, t.shape))
        .collect::<Vec<_>>()
        .join(", ")
}
