//! Shape and dtype inference: every tensor typed before any weight exists.
//! Each op's rule follows Keras 3 (channels-first layouts, implicit batch).

use super::*;
use crate::diagnostics::Diagnostic;
use crate::syntax::ast;
use std::collections::HashMap;

type R<T> = Result<T, Diagnostic>;

/// Types an input node from its declaration.
pub fn set_input_type(
    g: &mut Graph,
    n: NodeIndex,
    ty: &ast::InputType,
    errs: &mut Vec<Diagnostic>,
) {
    let dims: Vec<Dim> = ty
        .dims
        .iter()
        .map(|(d, _)| match d {
            ast::DimAst::Fixed(k) => Dim::Fixed(*k),
            ast::DimAst::Sym(s) => Dim::Sym(s.clone()),
        })
        .collect();
    if let Some((_, span)) = ty.dims.iter().find(|(d, _)| *d == ast::DimAst::Fixed(0)) {
        errs.push(
            Diagnostic::error("mtl::zero-dim", "a dimension cannot be 0").label(*span, "zero here"),
        );
        return;
    }
    let (dtype, want) = match ty.kind {
        ast::InputKind::Image => (DType::F32, Some(3)),
        ast::InputKind::Tokens { vocab } => {
            if vocab == 0 {
                errs.push(
                    Diagnostic::error("mtl::zero-dim", "a vocabulary cannot be empty")
                        .label(ty.span, "vocab 0"),
                );
                return;
            }
            (DType::I64, Some(1))
        }
        ast::InputKind::F32 => (DType::F32, None),
    };
    if let Some(w) = want {
        if dims.len() != w {
            let what = if w == 3 {
                "`image[C, H, W]` takes three dimensions (channels first)"
            } else {
                "`tokens[T]` takes one dimension, the sequence length"
            };
            errs.push(
                Diagnostic::error("mtl::input-rank", what.to_string())
                    .label(ty.span, format!("{} given", dims.len())),
            );
            return;
        }
    }
    g.g[n].ty = Some(Type { dtype, shape: dims });
}

/// Symbolic dims unified so far: name → what it stands for.
#[derive(Default)]
struct Unifier {
    subst: HashMap<String, Dim>,
}

impl Unifier {
    fn resolve(&self, d: &Dim) -> Dim {
        let mut d = d.clone();
        for _ in 0..64 {
            match &d {
                Dim::Sym(s) => match self.subst.get(s) {
                    Some(n) => d = n.clone(),
                    None => break,
                },
                Dim::Fixed(_) => break,
            }
        }
        d
    }
    fn unify(&mut self, a: &Dim, b: &Dim) -> bool {
        let (a, b) = (self.resolve(a), self.resolve(b));
        match (&a, &b) {
            (Dim::Fixed(x), Dim::Fixed(y)) => x == y,
            (Dim::Sym(x), Dim::Sym(y)) if x == y => true,
            (Dim::Sym(x), _) => {
                self.subst.insert(x.clone(), b);
                true
            }
            (_, Dim::Sym(y)) => {
                self.subst.insert(y.clone(), a);
                true
            }
        }
    }
}

/// Infers every node's type in topological order, fills parameter shapes,
/// derives head label types. Returns every error found (and warnings).
pub fn infer(g: &mut Graph) -> Vec<Diagnostic> {
    let mut errs = vec![];
    let mut u = Unifier::default();
    for n in g.topo_order() {
        if matches!(g.g[n].op, Op::Input { .. }) {
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
        match rule(g, n, &ops, &tys, &mut u, &mut errs) {
            Ok((ty, params)) => {
                g.g[n].ty = Some(ty);
                if let (Some(p), Some(tensors)) = (g.g[n].param, params) {
                    let set = &mut g.params[p.0];
                    if set.tensors.is_empty() {
                        set.tensors = tensors;
                    } else if shapes_of(&set.tensors) != shapes_of(&tensors) {
                        errs.push(
                            Diagnostic::error("mtl::shared-shape", format!("shared layer `{}` is applied to values of different shapes", set.prefix))
                                .label(g.g[n].span, format!("here it would need weights {}", show_params(&tensors)))
                                .label(set.span, format!("its weights are {}", show_params(&set.tensors)))
                                .help("a shared layer has one set of weights: feed it values of one shape"),
                        );
                    }
                }
            }
            Err(d) => errs.push(d),
        }
    }
    heads(g, &mut errs);
    errs
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

fn p(name: &str, shape: Vec<usize>, init: Init) -> ParamTensor {
    ParamTensor {
        name: name.into(),
        shape,
        trainable: true,
        init,
    }
}

fn glorot(fan_in: usize, fan_out: usize) -> Init {
    Init::GlorotUniform { fan_in, fan_out }
}

/// Describes a node for diagnostics: `` `c1.0` (conv2d) has shape [16, 8, 8] ``.
fn describe(g: &Graph, n: NodeIndex, t: &Type) -> String {
    format!(
        "this is {} `{}` of shape {}",
        article(&g.g[n].op),
        g.g[n].name,
        shape_str(t)
    )
}

fn article(op: &Op) -> String {
    match op {
        Op::Input { .. } => "the input".into(),
        o => o.kind_name(),
    }
}

fn fixed(g: &Graph, n: NodeIndex, d: &Dim, what: &str) -> R<usize> {
    d.fixed().ok_or_else(|| {
        Diagnostic::error(
            "mtl::symbolic-dim",
            format!("{what} must be a fixed size, not the symbolic `{d}`"),
        )
        .label(g.g[n].span, "needs a fixed size here")
        .help("weights need fixed sizes: declare this dimension as a number")
    })
}

type Rule = (Type, Option<Vec<ParamTensor>>);

fn rule(
    g: &Graph,
    n: NodeIndex,
    ops: &[NodeIndex],
    tys: &[Type],
    u: &mut Unifier,
    errs: &mut Vec<Diagnostic>,
) -> R<Rule> {
    let node = &g.g[n];
    let span = node.span;
    let kind = node.op.kind_name();
    let x = &tys[0];
    let s = &x.shape;
    // Token ids only go through embedding.
    if x.dtype == DType::I64 && !matches!(node.op, Op::Embedding { .. }) {
        return Err(Diagnostic::error(
            "mtl::token-dtype",
            format!("`{kind}` cannot take token ids"),
        )
        .label(span, format!("`{kind}` applied here"))
        .label(
            g.g[ops[0]].span,
            format!("{}: integer token ids", describe(g, ops[0], x)),
        )
        .help("map tokens to vectors first: `text -> embedding(64) -> ...`"));
    }
    let need_rank = |lo: usize, hi: usize, what: &str| -> R<()> {
        if s.len() < lo || s.len() > hi {
            Err(Diagnostic::error(
                "mtl::rank",
                format!(
                    "`{kind}` expects {what}, found a value of rank {} {}",
                    s.len(),
                    shape_str(x)
                ),
            )
            .label(span, format!("`{kind}` applied here"))
            .label(g.g[ops[0]].span, describe(g, ops[0], x))
            .help(rank_help(&node.op, s.len())))
        } else {
            Ok(())
        }
    };
    let same = || Ok((x.clone(), None));
    match &node.op {
        Op::Input { .. } => same(),
        Op::Dense { units } => {
            need_rank(1, usize::MAX, "a value of rank ≥ 1")?;
            let i = fixed(g, n, &s[s.len() - 1], "the input feature size of `dense`")?;
            if s.len() > 1 {
                errs.push(
                    Diagnostic::warning(
                        "mtl::dense-rank",
                        format!(
                            "`dense` acts on the last axis of a rank-{} value {}",
                            s.len(),
                            shape_str(x)
                        ),
                    )
                    .label(span, "applied to every position separately")
                    .label(g.g[ops[0]].span, describe(g, ops[0], x))
                    .help("this is rarely meant: add `flatten` or `global_avg_pool` first"),
                );
            }
            let mut out = s[..s.len() - 1].to_vec();
            out.push(Dim::Fixed(*units));
            Ok((
                Type::f32(out),
                Some(vec![
                    p("weight", vec![*units, i], glorot(i, *units)),
                    p("bias", vec![*units], Init::Zeros),
                ]),
            ))
        }
        Op::Conv {
            filters,
            kernel,
            stride,
            padding,
            dilation,
            groups,
        } => {
            let r = kernel.len();
            need_rank(
                r + 1,
                r + 1,
                if r == 1 {
                    "a [C, L] value"
                } else {
                    "a [C, H, W] value"
                },
            )?;
            let c = fixed(g, n, &s[0], "the channel count of a convolution")?;
            if c % groups != 0 || filters % groups != 0 {
                return Err(Diagnostic::error("mtl::groups", format!("groups = {groups} must divide both the {c} input channels and the {filters} filters"))
                    .label(span, "here")
                    .label(g.g[ops[0]].span, describe(g, ops[0], x)));
            }
            let mut out = vec![Dim::Fixed(*filters)];
            for a in 0..r {
                out.push(match &s[a + 1] {
                    Dim::Fixed(len) => Dim::Fixed(conv_out(*len, kernel[a], stride[a], dilation[a], *padding).ok_or_else(|| {
                        Diagnostic::error("mtl::too-small", format!("`{kind}` with kernel {} (dilation {}) does not fit a spatial size of {len}", kernel[a], dilation[a]))
                            .label(span, "the output would be empty")
                            .label(g.g[ops[0]].span, describe(g, ops[0], x))
                            .help("use `padding = same`, a smaller kernel, or fewer pooling steps before it")
                    })?),
                    Dim::Sym(v) => Dim::Sym(format!("{v}'")),
                });
            }
            let k: usize = kernel.iter().product();
            let mut wshape = vec![*filters, c / groups];
            wshape.extend(kernel);
            Ok((
                Type::f32(out),
                Some(vec![
                    p("weight", wshape, glorot(k * c / groups, k * filters)),
                    p("bias", vec![*filters], Init::Zeros),
                ]),
            ))
        }
        Op::ConvTranspose2d {
            filters,
            kernel,
            stride,
            padding,
        } => {
            need_rank(3, 3, "a [C, H, W] value")?;
            let c = fixed(g, n, &s[0], "the channel count of a convolution")?;
            let mut out = vec![Dim::Fixed(*filters)];
            for d in &s[1..] {
                out.push(match d {
                    Dim::Fixed(len) => Dim::Fixed(match padding {
                        Padding::Valid => len * stride + kernel.saturating_sub(*stride),
                        Padding::Same => len * stride,
                    }),
                    Dim::Sym(v) => Dim::Sym(format!("{v}'")),
                });
            }
            let k = kernel * kernel;
            Ok((
                Type::f32(out),
                Some(vec![
                    p(
                        "weight",
                        vec![c, *filters, *kernel, *kernel],
                        glorot(k * filters, k * c),
                    ),
                    p("bias", vec![*filters], Init::Zeros),
                ]),
            ))
        }
        Op::Upsample { scale } => {
            need_rank(2, 3, "a [C, L] or [C, H, W] value")?;
            let mut out = vec![s[0].clone()];
            for d in &s[1..] {
                out.push(match d {
                    Dim::Fixed(l) => Dim::Fixed(l * scale),
                    Dim::Sym(v) => Dim::Sym(format!("{v}'")),
                });
            }
            Ok((Type::f32(out), None))
        }
        Op::Pool { size, stride, .. } => {
            need_rank(2, 3, "a [C, L] or [C, H, W] value")?;
            let r = s.len() - 1;
            let size = expand(size, r);
            let stride = expand(stride, r);
            let mut out = vec![s[0].clone()];
            for a in 0..r {
                out.push(match &s[a + 1] {
                    Dim::Fixed(len) if *len >= size[a] => {
                        Dim::Fixed((len - size[a]) / stride[a] + 1)
                    }
                    Dim::Fixed(len) => {
                        return Err(Diagnostic::error(
                            "mtl::too-small",
                            format!(
                                "`{kind}` of size {} does not fit a spatial size of {len}",
                                size[a]
                            ),
                        )
                        .label(span, "the output would be empty")
                        .label(g.g[ops[0]].span, describe(g, ops[0], x))
                        .help("pool less, or use `global_max_pool` / `global_avg_pool`"))
                    }
                    Dim::Sym(v) => Dim::Sym(format!("{v}'")),
                });
            }
            Ok((Type::f32(out), None))
        }
        Op::GlobalPool { .. } => {
            need_rank(
                2,
                usize::MAX,
                "a [C, ...] value with at least one axis after the channels",
            )?;
            Ok((Type::f32(vec![s[0].clone()]), None))
        }
        Op::Flatten => {
            let mut total = 1usize;
            for d in s {
                total *= fixed(g, n, d, "every dimension flattened")?;
            }
            Ok((Type::f32(vec![Dim::Fixed(total)]), None))
        }
        Op::Reshape { shape } => {
            let mut total = 1usize;
            for d in s {
                total *= fixed(g, n, d, "every dimension reshaped")?;
            }
            let known: i64 = shape.iter().filter(|d| **d != -1).product();
            let holes = shape.iter().filter(|d| **d == -1).count();
            let bad = shape.iter().any(|d| *d == 0 || *d < -1)
                || holes > 1
                || known <= 0
                || (holes == 0 && known as usize != total)
                || (holes == 1 && !total.is_multiple_of(known as usize));
            if bad {
                return Err(Diagnostic::error(
                    "mtl::reshape",
                    format!(
                        "cannot reshape {} ({total} values) to {shape:?}",
                        shape_str(x)
                    ),
                )
                .label(span, "reshape here")
                .label(g.g[ops[0]].span, describe(g, ops[0], x))
                .help("the sizes must multiply to the same count; at most one may be -1"));
            }
            let out = shape
                .iter()
                .map(|d| {
                    Dim::Fixed(if *d == -1 {
                        total / known as usize
                    } else {
                        *d as usize
                    })
                })
                .collect();
            Ok((Type::f32(out), None))
        }
        Op::Permute { axes } => {
            let mut sorted = axes.clone();
            sorted.sort_unstable();
            if sorted != (1..=s.len()).collect::<Vec<_>>() {
                return Err(Diagnostic::error(
                    "mtl::permute",
                    format!(
                        "permute{axes:?} is not a permutation of the axes 1..={} of {}",
                        s.len(),
                        shape_str(x)
                    ),
                )
                .label(span, "permute here")
                .label(g.g[ops[0]].span, describe(g, ops[0], x))
                .help("number the per-sample axes from 1, as Keras's Permute"));
            }
            Ok((
                Type::f32(axes.iter().map(|a| s[a - 1].clone()).collect()),
                None,
            ))
        }
        Op::Embedding { dim, vocab } => {
            if x.dtype != DType::I64 {
                return Err(Diagnostic::error(
                    "mtl::embedding-input",
                    "`embedding` applies to token ids",
                )
                .label(span, "embedding here")
                .label(g.g[ops[0]].span, describe(g, ops[0], x)));
            }
            let mut out = s.clone();
            out.push(Dim::Fixed(*dim));
            Ok((
                Type::f32(out),
                Some(vec![p("weight", vec![*vocab, *dim], Init::Uniform005)]),
            ))
        }
        Op::Rnn {
            cell,
            units,
            return_sequences,
            bidirectional,
            ..
        } => {
            need_rank(2, 2, "a sequence [T, D]")?;
            let i = fixed(g, n, &s[1], "the feature size of a recurrent layer's input")?;
            let gh = cell.gates() * units;
            let dirs = if *bidirectional { 2 } else { 1 };
            let mut ps = vec![];
            for suffix in if *bidirectional {
                vec!["", "_reverse"]
            } else {
                vec![""]
            } {
                ps.push(p(&format!("weight_ih{suffix}"), vec![gh, i], glorot(i, gh)));
                ps.push(p(
                    &format!("weight_hh{suffix}"),
                    vec![gh, *units],
                    Init::Orthogonal,
                ));
                match cell {
                    RnnCell::Lstm => ps.push(p(
                        &format!("bias{suffix}"),
                        vec![gh],
                        Init::LstmBias { units: *units },
                    )),
                    RnnCell::Gru => {
                        ps.push(p(&format!("bias_ih{suffix}"), vec![gh], Init::Zeros));
                        ps.push(p(&format!("bias_hh{suffix}"), vec![gh], Init::Zeros));
                    }
                }
            }
            let out = if *return_sequences {
                vec![s[0].clone(), Dim::Fixed(units * dirs)]
            } else {
                vec![Dim::Fixed(units * dirs)]
            };
            Ok((Type::f32(out), Some(ps)))
        }
        Op::Dropout { .. } | Op::Act(_) => {
            if matches!(node.op, Op::Act(Act::Softmax)) {
                need_rank(1, usize::MAX, "a value of rank ≥ 1")?;
            }
            same()
        }
        Op::BatchNorm { .. } => {
            need_rank(1, usize::MAX, "a value of rank ≥ 1")?;
            let c = fixed(g, n, &s[0], "the channel count of `batch_norm`")?;
            let stat = |name: &str, init| ParamTensor {
                name: name.into(),
                shape: vec![c],
                trainable: false,
                init,
            };
            let rm = stat("running_mean", Init::Zeros);
            let rv = stat("running_var", Init::Ones);
            Ok((
                x.clone(),
                Some(vec![
                    p("weight", vec![c], Init::Ones),
                    p("bias", vec![c], Init::Zeros),
                    rm,
                    rv,
                ]),
            ))
        }
        Op::LayerNorm { .. } => {
            need_rank(1, usize::MAX, "a value of rank ≥ 1")?;
            let d = fixed(g, n, &s[s.len() - 1], "the last axis of `layer_norm`")?;
            Ok((
                x.clone(),
                Some(vec![
                    p("weight", vec![d], Init::Ones),
                    p("bias", vec![d], Init::Zeros),
                ]),
            ))
        }
        Op::Concat { axis } => concat(g, n, ops, tys, *axis, u),
        // Built by the optimizer from typed nodes; their rules for completeness.
        Op::MergedDense { parts } => {
            let mut out = s[..s.len().saturating_sub(1)].to_vec();
            out.push(Dim::Fixed(parts.iter().map(|p| p.1).sum()));
            Ok((Type::f32(out), None))
        }
        Op::Slice { len, .. } => {
            let mut out = s[..s.len().saturating_sub(1)].to_vec();
            out.push(Dim::Fixed(*len));
            Ok((Type::f32(out), None))
        }
        Op::Elementwise(_) | Op::Weighted { .. } | Op::Gated => elementwise(g, n, ops, tys, u),
    }
}

fn expand(v: &[usize], r: usize) -> Vec<usize> {
    if v.len() == 1 {
        vec![v[0]; r]
    } else {
        v.to_vec()
    }
}

/// Output length of a convolution along one axis (Keras `valid` / `same`).
pub fn conv_out(
    len: usize,
    k: usize,
    stride: usize,
    dilation: usize,
    padding: Padding,
) -> Option<usize> {
    let span = dilation * (k - 1) + 1;
    match padding {
        Padding::Same => Some(len.div_ceil(stride)),
        Padding::Valid if len >= span => Some((len - span) / stride + 1),
        Padding::Valid => None,
    }
}

/// Keras `same` padding: (before, after), the odd pixel after.
pub fn same_padding(len: usize, k: usize, stride: usize, dilation: usize) -> (usize, usize) {
    let out = len.div_ceil(stride);
    let span = dilation * (k - 1) + 1;
    let total = ((out - 1) * stride + span).saturating_sub(len);
    (total / 2, total - total / 2)
}

fn rank_help(op: &Op, rank: usize) -> String {
    match op {
        Op::Conv { kernel, .. } if kernel.len() == 2 && rank == 1 => "conv2d needs a feature map; for vectors use `dense`, for sequences `conv1d`".into(),
        Op::Conv { kernel, .. } if kernel.len() == 1 && rank == 3 => "for images use `conv2d`".into(),
        Op::Rnn { .. } if rank == 1 => "a recurrent layer needs a sequence: set `return_sequences = true` on the previous one, or feed token embeddings".into(),
        Op::Rnn { .. } => "a recurrent layer reads [T, D] sequences; use `reshape` or `permute` to get one".into(),
        Op::GlobalPool { .. } => "this value has no spatial axes left to pool".into(),
        _ => "check the layers before this one".into(),
    }
}

fn operand_labels(g: &Graph, ops: &[NodeIndex], tys: &[Type], d: Diagnostic) -> Diagnostic {
    ops.iter().zip(tys).enumerate().fold(d, |d, (i, (o, t))| {
        d.label(
            g.g[*o].span,
            format!(
                "operand {} is {} `{}` of shape {}",
                i + 1,
                article(&g.g[*o].op),
                g.g[*o].name,
                shape_str(t)
            ),
        )
    })
}

fn fusion_help(tys: &[Type], what: &str) -> String {
    let ranks: Vec<usize> = tys.iter().map(Type::rank).collect();
    if ranks.iter().any(|r| *r > 1) && ranks.contains(&1) {
        format!("add `global_avg_pool` or `flatten` to the feature map before {what}, so that every operand is a vector")
    } else if ranks.iter().all(|r| *r == 1) {
        "project the operands to one size first, e.g. `-> dense(N)` on each".into()
    } else {
        "make the operands agree: pool, reshape or project them to one shape".into()
    }
}

fn concat(
    g: &Graph,
    n: NodeIndex,
    ops: &[NodeIndex],
    tys: &[Type],
    axis: i64,
    u: &mut Unifier,
) -> R<Rule> {
    let span = g.g[n].span;
    let rank = tys[0].rank();
    let err = |msg: String| {
        operand_labels(
            g,
            ops,
            tys,
            Diagnostic::error("mtl::fusion-shape", msg).label(span, "concat here"),
        )
        .help(fusion_help(tys, "concat"))
    };
    if tys.iter().any(|t| t.rank() != rank) {
        return Err(err("`concat` operands have different ranks".into()));
    }
    // Keras counts the batch axis: axis 1 is the first per-sample axis.
    let a = if axis < 0 {
        rank as i64 + axis
    } else {
        axis - 1
    };
    if a < 0 || a >= rank as i64 {
        return Err(Diagnostic::error("mtl::concat-axis", format!("axis {axis} is out of range for rank-{rank} values (the batch axis 0 cannot be joined)"))
            .label(span, "here")
            .help(format!("use -1 for the last axis, or 1..={rank}")));
    }
    let a = a as usize;
    let mut out = tys[0].shape.clone();
    let mut total = 0usize;
    for t in tys {
        for (i, d) in t.shape.iter().enumerate() {
            if i != a && !u.unify(&out[i], d) {
                return Err(err(format!(
                    "`concat` along axis {axis} needs every other axis to agree"
                )));
            }
        }
        total += t.shape[a]
            .fixed()
            .ok_or_else(|| err("`concat` needs a fixed size along its axis".into()))?;
    }
    out[a] = Dim::Fixed(total);
    Ok((Type::f32(out), None))
}

fn elementwise(
    g: &Graph,
    n: NodeIndex,
    ops: &[NodeIndex],
    tys: &[Type],
    u: &mut Unifier,
) -> R<Rule> {
    let node = &g.g[n];
    let kind = node.op.kind_name();
    let strict = !matches!(node.op, Op::Elementwise(_));
    let err = |msg: String| {
        operand_labels(
            g,
            ops,
            tys,
            Diagnostic::error("mtl::fusion-shape", msg).label(node.span, format!("`{kind}` here")),
        )
        .help(fusion_help(tys, &format!("`{kind}`")))
    };
    let rank = tys[0].rank();
    if tys.iter().any(|t| t.rank() != rank) {
        return Err(err(format!("`{kind}` operands have different ranks")));
    }
    let mut out = tys[0].shape.clone();
    for t in &tys[1..] {
        for (i, d) in t.shape.iter().enumerate() {
            let (a, b) = (u.resolve(&out[i]), u.resolve(d));
            if !strict && b == Dim::Fixed(1) {
                continue;
            }
            if !strict && a == Dim::Fixed(1) {
                out[i] = b;
                continue;
            }
            if !u.unify(&a, &b) {
                let msg = if strict {
                    format!("`{kind}` needs operands of equal shapes")
                } else {
                    format!("`{kind}` needs operands of equal shapes (size-1 axes broadcast)")
                };
                return Err(err(msg));
            }
        }
    }
    let params = match &node.op {
        Op::Weighted { fixed: None } => Some(vec![p("logits", vec![ops.len()], Init::Zeros)]),
        Op::Gated => {
            if rank != 1 {
                return Err(err("`gated` fuses vectors (rank 1)".into()));
            }
            let d = fixed(g, n, &out[0], "the size of a `gated` fusion")?;
            Some(vec![
                p("weight", vec![d, 2 * d], glorot(2 * d, d)),
                p("bias", vec![d], Init::Zeros),
            ])
        }
        _ => None,
    };
    Ok((Type::f32(out), params))
}

/// Label types and metric checks for each head; shape checks for aux losses.
fn heads(g: &mut Graph, errs: &mut Vec<Diagnostic>) {
    for hi in 0..g.heads.len() {
        let h = g.heads[hi].clone();
        let Some(t) = g.g[h.node].ty.clone() else {
            continue;
        };
        let vspan = g.g[h.node].span;
        let label = match h.loss {
            LossKind::CrossEntropy => {
                if t.rank() == 0 || t.shape[0] == Dim::Fixed(1) {
                    errs.push(
                        Diagnostic::error("mtl::head-shape", format!("head `{}`: cross_entropy needs at least two classes, found logits of shape {}", h.name, shape_str(&t)))
                            .label(vspan, "one logit per sample")
                            .label(h.span, "head declared here")
                            .help("for a yes/no task use `loss: binary_cross_entropy` with `dense(1)`"),
                    );
                    continue;
                }
                if t.rank() == 2 {
                    errs.push(
                        Diagnostic::error("mtl::head-shape", format!("head `{}`: cross_entropy logits must be [K] or per-pixel [K, H, W], found {}", h.name, shape_str(&t)))
                            .label(vspan, "logits here")
                            .help("pool or flatten the value first, then `dense(K)`"),
                    );
                    continue;
                }
                Type {
                    dtype: DType::I64,
                    shape: t.shape[1..].to_vec(),
                }
            }
            _ => t.clone(),
        };
        g.heads[hi].label_type = Some(label);
        for (m, span) in h.metrics.iter().zip(&h.metric_spans) {
            let ok = match m {
                Metric::Accuracy | Metric::F1 => h.loss.is_classification(),
                Metric::TopK(k) => {
                    h.loss == LossKind::CrossEntropy
                        && t.rank() == 1
                        && t.shape[0].fixed().is_none_or(|c| *k < c)
                }
                Metric::Auc => h.loss == LossKind::BinaryCrossEntropy,
                Metric::Iou => {
                    h.loss == LossKind::BinaryCrossEntropy
                        || (h.loss == LossKind::CrossEntropy && t.rank() == 3)
                }
                Metric::Mae | Metric::Rmse => !h.loss.is_classification(),
            };
            if !ok {
                errs.push(
                    Diagnostic::error(
                        "mtl::metric-loss",
                        format!(
                            "metric `{}` does not suit head `{}` with loss {}",
                            m.name(),
                            h.name,
                            h.loss.name()
                        ),
                    )
                    .label(*span, "this metric")
                    .help(metric_help(h.loss)),
                );
            }
        }
    }
    for l in g.losses.clone() {
        let tys: Option<Vec<Type>> = l.operands.iter().map(|o| g.g[*o].ty.clone()).collect();
        if let Some(tys) = tys {
            if tys[0] != tys[1] {
                errs.push(
                    operand_labels(
                        g,
                        &l.operands,
                        &tys,
                        Diagnostic::error(
                            "mtl::fusion-shape",
                            format!("loss `{}` compares values of different shapes", l.name),
                        )
                        .label(l.span, "here"),
                    )
                    .help("project one of them with `dense` or a 1×1 conv"),
                );
            }
        }
    }
}

fn metric_help(l: LossKind) -> String {
    match l {
        LossKind::CrossEntropy => {
            "for cross_entropy heads use accuracy, top_k(k), f1 (and iou per pixel)".into()
        }
        LossKind::BinaryCrossEntropy => {
            "for binary_cross_entropy heads use accuracy, f1, auc or iou".into()
        }
        _ => "for regression heads use mae or rmse".into(),
    }
}

/// Ops whose backward candle lacks: rejected for training unless lowered with
/// our own. Max pooling has its own (any stride, CPU); average pooling with
/// stride ≠ size has none.
pub fn training_legality(g: &Graph) -> Vec<Diagnostic> {
    let mut out = vec![];
    for n in g.topo_order() {
        let node = &g.g[n];
        if let Op::Pool {
            kind: PoolKind::Avg,
            size,
            stride,
        } = &node.op
        {
            if size != stride {
                out.push(
                    Diagnostic::error(
                        "mtl::no-backward",
                        format!(
                            "`{}` with stride {:?} ≠ size {:?} cannot be trained on candle",
                            node.op.kind_name(),
                            stride,
                            size
                        ),
                    )
                    .label(node.span, "no backward pass for this pooling")
                    .help(
                        "use a stride equal to the pool size, `max_pool`, or a strided convolution",
                    ),
                );
            }
        }
    }
    out
}
