//! Applying callees to values: layers (arguments bound to their signature,
//! the op built), fusions (operands and named tensor arguments), `shared`
//! bodies, `block` expansions with their parameters, and `residual` pipelines.

use super::*;
use crate::ir::ops::{bind, bind_variadic, residual, Build, Callee, Kind, ParamSpec, RawArg, Sig};

impl Elab<'_> {
    /// `residual(PIPELINE)`: the pipeline applied to `input`, then added to it.
    pub(super) fn apply_residual(
        &mut self,
        c: &Call,
        input: NodeIndex,
        env: &HashMap<String, (Value, Span)>,
    ) -> Option<NodeIndex> {
        let args = c.args.as_deref().unwrap_or(&[]);
        let stages: Option<Vec<&Call>> = match args {
            [a] if a.name.is_none() => match &a.value.kind {
                ExprKind::Call(s) => Some(vec![s]),
                ExprKind::Pipe { source, stages } => match &source.kind {
                    ExprKind::Call(s) => Some(std::iter::once(s).chain(stages).collect()),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        };
        let Some(stages) = stages else {
            self.errs.push(
                Diagnostic::error(
                    "mtl::residual-argument",
                    "`residual` takes one pipeline of layers",
                )
                .label(c.span, "not a single pipeline")
                .help("write e.g. `x -> residual(dense(64) -> relu -> dense(D))`"),
            );
            return None;
        };
        let mut cur = input;
        for s in stages {
            cur = self.apply(s, cur, env)?;
        }
        let position = self.namer.counter;
        self.namer.counter += 1;
        let name = format!("{}.{}{}", self.namer.item, position, self.namer.suffix);
        Some(self.node(
            Op::Residual(residual::Residual),
            c.span,
            Some(name),
            &[input, cur],
            None,
        ))
    }

    pub(super) fn raw_args(
        &mut self,
        c: &Call,
        env: &HashMap<String, (Value, Span)>,
    ) -> Option<Vec<RawArg>> {
        let mut out = vec![];
        let mut ok = true;
        for a in c.args.iter().flatten() {
            match eval_const(&a.value, env) {
                Ok(v) => out.push(RawArg {
                    name: a.name.as_ref().map(|n| (n.name.clone(), n.span)),
                    value: v,
                    span: a.value.span,
                }),
                Err(d) => {
                    self.errs.push(d);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    pub(super) fn apply_shared(
        &mut self,
        c: &Call,
        name: &str,
        input: NodeIndex,
    ) -> Option<NodeIndex> {
        if c.args.as_ref().is_some_and(|a| !a.is_empty()) {
            self.errs.push(
                Diagnostic::error(
                    "mtl::arity",
                    format!("shared layer `{name}` takes no arguments"),
                )
                .label(c.span, "arguments given here")
                .help(format!("apply it with `x -> {name}` or `{name}(x)`")),
            );
            return None;
        }
        let def = self.shared.get_mut(name)?;
        let body = def.body.clone();
        let use_no = def.uses;
        def.uses += 1;
        let saved = std::mem::replace(
            &mut self.namer,
            Namer {
                item: name.to_string(),
                counter: 0,
                suffix: if use_no == 0 {
                    String::new()
                } else {
                    format!("#{use_no}")
                },
                shared: Some(name.to_string()),
                use_site: Some(c.span),
            },
        );
        let mut cur = Some(input);
        for s in &body {
            cur = cur.and_then(|x| self.apply(s, x, &HashMap::new()));
        }
        self.namer = saved;
        cur
    }

    pub(super) fn apply_block(
        &mut self,
        c: &Call,
        input: NodeIndex,
        outer: &HashMap<String, (Value, Span)>,
    ) -> Option<NodeIndex> {
        let block = *self.blocks.get(&c.callee.name)?;
        if self.block_stack.contains(&block.name.name) {
            let chain = self.block_stack.join(" → ");
            self.errs.push(
                Diagnostic::error(
                    "mtl::block-recursion",
                    format!("block `{}` uses itself", block.name.name),
                )
                .label(c.callee.span, "recursive use here")
                .label(block.name.span, "block defined here")
                .help(format!(
                    "blocks are expanded inline and cannot recurse ({chain} → {})",
                    block.name.name
                )),
            );
            return None;
        }
        if let Some(alias) = &c.alias {
            self.errs.push(
                Diagnostic::error(
                    "mtl::alias-on-block",
                    "`as` names a single layer, not a block",
                )
                .label(alias.span, "cannot name a block use")
                .help("name the layers inside the block, or use a `shared` layer"),
            );
        }
        let raw = self.raw_args(c, outer)?;
        let mut env: HashMap<String, (Value, Span)> = HashMap::new();
        let mut positional = 0;
        let mut ok = true;
        for a in raw {
            let pname = match &a.name {
                Some((n, nspan)) => {
                    if !block.params.iter().any(|p| &p.name.name == n) {
                        let names: Vec<&str> =
                            block.params.iter().map(|p| p.name.name.as_str()).collect();
                        self.errs.push(
                            Diagnostic::error(
                                "mtl::unknown-argument",
                                format!("block `{}` has no parameter `{n}`", block.name.name),
                            )
                            .label(*nspan, "unknown parameter")
                            .help(did_you_mean(n, &names, "parameter")),
                        );
                        ok = false;
                        continue;
                    }
                    n.clone()
                }
                None => {
                    let Some(p) = block.params.get(positional) else {
                        self.errs.push(
                            Diagnostic::error(
                                "mtl::arity",
                                format!(
                                    "block `{}` takes {} argument{}",
                                    block.name.name,
                                    block.params.len(),
                                    if block.params.len() == 1 { "" } else { "s" }
                                ),
                            )
                            .label(a.span, "unexpected argument")
                            .label(block.name.span, "block defined here"),
                        );
                        ok = false;
                        continue;
                    };
                    positional += 1;
                    p.name.name.clone()
                }
            };
            env.insert(pname, (a.value, a.span));
        }
        for p in &block.params {
            if env.contains_key(&p.name.name) {
                continue;
            }
            match &p.default {
                Some(d) => match eval_const(d, &HashMap::new()) {
                    Ok(v) => {
                        env.insert(p.name.name.clone(), (v, d.span));
                    }
                    Err(e) => {
                        self.errs.push(e);
                        ok = false;
                    }
                },
                None => {
                    self.errs.push(
                        Diagnostic::error(
                            "mtl::missing-argument",
                            format!(
                                "block `{}` needs its parameter `{}`",
                                block.name.name, p.name.name
                            ),
                        )
                        .label(c.span, format!("`{}` missing", p.name.name))
                        .label(p.name.span, "parameter declared here"),
                    );
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        self.block_stack.push(block.name.name.clone());
        let mut cur = Some(input);
        for s in &block.body {
            cur = cur.and_then(|x| self.apply(s, x, &env));
        }
        self.block_stack.pop();
        cur
    }

    /// A fusion call: positional arguments are operands (after `first`, the
    /// piped value, if any), named ones attributes.
    pub(super) fn fusion_call(
        &mut self,
        c: &Call,
        callee: &'static Callee,
        first: Option<NodeIndex>,
    ) -> Option<NodeIndex> {
        // Operand names for help texts: fixed ones, or any number.
        let (specs, arity, names): (_, _, &[&str]) = match callee.sig {
            Sig::Fusion(s) => (s, None, &["a", "b", "..."]),
            Sig::FusionOf(names, s) => (s, Some(names.len()), names),
            _ => return None,
        };
        let is_tensor = |n: &str| specs.iter().any(|s| s.name == n && s.kind == Kind::Tensor);
        let mut operands: Vec<NodeIndex> = first.into_iter().collect();
        let mut positional = operands.len();
        // Named tensor arguments (`gate = x`) follow the positional operands.
        let mut tensors = vec![];
        let mut named = vec![];
        let mut ok = true;
        for a in c.args.iter().flatten() {
            let slot = match &a.name {
                Some(n) if !is_tensor(&n.name) => {
                    named.push(a);
                    continue;
                }
                // Past a fixed arity, positional arguments are constants
                // (counted as written, whether or not an operand failed).
                None if arity.is_some_and(|n| positional >= n) => {
                    named.push(a);
                    continue;
                }
                None => {
                    positional += 1;
                    &mut operands
                }
                Some(_) => &mut tensors,
            };
            match self.expr(&a.value) {
                Some(n) => slot.push(n),
                None => ok = false,
            }
        }
        for s in specs.iter().filter(|s| s.kind == Kind::Tensor) {
            let given = c
                .args
                .iter()
                .flatten()
                .any(|a| a.name.as_ref().is_some_and(|n| n.name == s.name));
            if !given {
                self.errs.push(
                    Diagnostic::error(
                        "mtl::missing-argument",
                        format!("`{}` needs its argument `{}`", callee.name, s.name),
                    )
                    .label(c.span, format!("`{}` missing", s.name))
                    .help(format!(
                        "the signature is `{}(a, b, ..., {} = x)`",
                        callee.name, s.name
                    )),
                );
                ok = false;
            }
        }
        operands.extend(tensors);
        let consts: Vec<ParamSpec> = specs
            .iter()
            .filter(|s| s.kind != Kind::Tensor)
            .copied()
            .collect();
        self.fusion(c, callee, (&consts, names), operands, &named, ok)
    }

    pub(super) fn fusion(
        &mut self,
        c: &Call,
        callee: &'static Callee,
        (specs, operand_names): (&[ParamSpec], &[&str]),
        operands: Vec<NodeIndex>,
        named: &[&ast::Arg],
        ok: bool,
    ) -> Option<NodeIndex> {
        let name = c.callee.name.as_str();
        let mut raw = vec![];
        for a in named {
            match eval_const(&a.value, &HashMap::new()) {
                Ok(v) => raw.push(RawArg {
                    name: a.name.as_ref().map(|n| (n.name.clone(), n.span)),
                    value: v,
                    span: a.value.span,
                }),
                Err(d) => self.errs.push(d),
            }
        }
        let bound = match bind(name, operand_names, c.span, specs, &raw) {
            Ok(b) => b,
            Err(es) => {
                self.errs.extend(es);
                return None;
            }
        };
        if !ok {
            return None;
        }
        if operands.len() < 2 {
            self.errs.push(
                Diagnostic::error("mtl::arity", format!("`{name}` fuses two or more values"))
                    .label(c.span, format!("{} value given", operands.len()))
                    .help(format!("write `{name}(a, b)`")),
            );
            return None;
        }
        let build = Build {
            name,
            span: c.span,
            args: &bound,
            input: None,
            operands: operands.len(),
        };
        let op = (callee.build)(&build).map_err(|d| self.errs.push(d)).ok()?;
        Some(self.layer_node(op, c, &operands))
    }

    /// Binds a layer's arguments and builds its op.
    pub(super) fn layer_op(
        &mut self,
        c: &Call,
        layer: &'static Callee,
        raw: &[RawArg],
        input: NodeIndex,
    ) -> Option<Op> {
        let name = layer.name;
        let bound = match layer.sig {
            Sig::IntVariadic => bind_variadic(name, c.span, raw),
            Sig::Layer(specs) | Sig::Fusion(specs) | Sig::FusionOf(_, specs) => {
                bind(name, &[], c.span, specs, raw)
            }
        };
        let bound = bound.map_err(|es| self.errs.extend(es)).ok()?;
        let build = Build {
            name,
            span: c.span,
            args: &bound,
            input: Some(&self.g.g[input]),
            operands: 1,
        };
        (layer.build)(&build).map_err(|d| self.errs.push(d)).ok()
    }
}
