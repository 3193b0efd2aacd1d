//! AST → IR: names resolved, blocks expanded, shared layers bound to one
//! parameter set, heads and auxiliary losses as graph outputs.

mod apply;
pub mod args;
mod pretrained;
mod props;
pub use pretrained::check_pretrained;
pub use props::check_monitor;

use crate::diagnostics::{did_you_mean, Diagnostic, Span};
use crate::ir::ops::{self, residual, Callee, Sig, Value};
use crate::ir::{
    AuxKind, AuxLoss, Dim, Ew, Graph, Head, Input, InputKind, LossKind, Node, Op, ParamId, ParamSet,
};
use crate::syntax::ast::{self, BlockDef, Call, Expr, ExprKind, Item};
use crate::train::config::TrainConfig;
use args::eval_const;
use petgraph::stable_graph::NodeIndex;
use std::collections::HashMap;

pub use props::{HEAD_KEYS, TRAIN_KEYS};

#[derive(Clone)]
enum Binding {
    Value(NodeIndex),
    /// A value whose definition failed: uses are silent, to avoid cascades.
    Poisoned,
    Shared(String),
    Block,
    Loss,
}

struct SharedDef {
    body: Vec<Call>,
    /// Parameter sets by layer position inside the shared body.
    params: HashMap<usize, ParamId>,
    uses: usize,
}

/// Names layers of the item being elaborated: `item.k`, or the `as` name.
struct Namer {
    item: String,
    counter: usize,
    /// Second and later uses of a shared layer get `#use` appended to node names.
    suffix: String,
    /// Set while instantiating a shared body: position → parameter set.
    shared: Option<String>,
    /// Where the shared layer being instantiated was applied.
    use_site: Option<Span>,
}

struct Elab<'a> {
    g: Graph,
    train: TrainConfig,
    errs: Vec<Diagnostic>,
    blocks: HashMap<String, &'a BlockDef>,
    scope: HashMap<String, (Binding, Span)>,
    /// Every name the model defines, for "used before its definition".
    defined_later: HashMap<String, Span>,
    shared: HashMap<String, SharedDef>,
    aliases: HashMap<String, Span>,
    block_stack: Vec<String>,
    namer: Namer,
    /// The model file's directory: `pretrained("DIR")` paths are relative to it.
    dir: std::path::PathBuf,
}

/// Elaborates the single model of a parsed file: its graph and its `train { }`
/// block (defaults where it sets nothing). `blocks` are the file's own and its
/// imports' block definitions.
pub fn elaborate(
    model: &ast::Model,
    blocks: &[&BlockDef],
    dir: &std::path::Path,
) -> (Graph, TrainConfig, Vec<Diagnostic>) {
    let mut e = Elab {
        g: Graph::new(model.name.name.clone()),
        train: TrainConfig::default(),
        errs: vec![],
        blocks: HashMap::new(),
        scope: HashMap::new(),
        defined_later: HashMap::new(),
        shared: HashMap::new(),
        aliases: HashMap::new(),
        block_stack: vec![],
        namer: Namer {
            item: String::new(),
            counter: 0,
            suffix: String::new(),
            shared: None,
            use_site: None,
        },
        dir: dir.to_path_buf(),
    };
    let mut block_spans: HashMap<String, Span> = HashMap::new();
    for b in blocks
        .iter()
        .copied()
        .chain(model.items.iter().filter_map(|i| match i {
            Item::Block(b) => Some(b),
            _ => None,
        }))
    {
        if let Some(prev) = block_spans.insert(b.name.name.clone(), b.name.span) {
            e.errs.push(duplicate(&b.name.name, b.name.span, prev));
        }
        e.blocks.insert(b.name.name.clone(), b);
        e.scope
            .insert(b.name.name.clone(), (Binding::Block, b.name.span));
    }
    for item in &model.items {
        if let Some(n) = item_name(item) {
            e.defined_later.entry(n.name.clone()).or_insert(n.span);
        }
    }
    let mut saw_train = None::<Span>;
    for item in &model.items {
        e.item(item, &mut saw_train);
    }
    if !model.items.iter().any(|i| matches!(i, Item::Head { .. })) {
        e.errs.push(
            Diagnostic::error(
                "mtl::no-heads",
                format!("model `{}` has no head", model.name.name),
            )
            .label(model.name.span, "this model has no output")
            .help("add a task output: `head NAME = VALUE -> dense(N) { loss: cross_entropy }`"),
        );
    }
    (e.g, e.train, e.errs)
}

fn item_name(item: &Item) -> Option<&ast::Ident> {
    match item {
        Item::Input { name, .. }
        | Item::Let { name, .. }
        | Item::Shared { name, .. }
        | Item::Head { name, .. }
        | Item::Loss { name, .. } => Some(name),
        _ => None,
    }
}

fn duplicate(name: &str, span: Span, prev: Span) -> Diagnostic {
    Diagnostic::error("mtl::duplicate-name", format!("`{name}` is defined twice"))
        .label(span, "defined again here")
        .label(prev, "first defined here")
        .help("give each input, value, layer and head its own name")
}

impl<'a> Elab<'a> {
    fn define(&mut self, name: &ast::Ident, b: Binding) {
        if let Some((_, prev)) = self.scope.get(&name.name) {
            self.errs.push(duplicate(&name.name, name.span, *prev));
            return;
        }
        self.scope.insert(name.name.clone(), (b, name.span));
    }

    fn item(&mut self, item: &'a Item, saw_train: &mut Option<Span>) {
        if let Some(n) = item_name(item) {
            self.namer = Namer {
                item: n.name.clone(),
                counter: 0,
                suffix: String::new(),
                shared: None,
                use_site: None,
            };
        }
        match item {
            Item::Input { name, ty, props } => {
                let kind = match ty.kind {
                    ast::InputKind::Image => InputKind::Image,
                    ast::InputKind::F32 => InputKind::F32,
                    ast::InputKind::Tokens { vocab } => InputKind::Tokens { vocab },
                    ast::InputKind::Audio { rate } => InputKind::Audio { rate },
                };
                let input = Input {
                    name: name.name.clone(),
                    kind,
                    policy: props::input_policy(props, &mut self.errs),
                };
                let dims: Vec<(Dim, Span)> = ty
                    .dims
                    .iter()
                    .map(|(d, span)| match d {
                        ast::DimAst::Fixed(k) => (Dim::Fixed(*k), *span),
                        ast::DimAst::Sym(v) => (Dim::Sym(v.clone()), *span),
                    })
                    .collect();
                let declared = input.declared_type(&dims, ty.span);
                let node = self.g.add_node(
                    Node {
                        op: Op::Input(input),
                        name: name.name.clone(),
                        span: name.span.to(ty.span),
                        ty: None,
                        param: None,
                        folded_bn: None,
                        mask: None,
                    },
                    &[],
                );
                self.g.inputs.push(node);
                match declared {
                    Ok(t) => self.g.g[node].ty = Some(t),
                    Err(d) => self.errs.push(d),
                }
                self.define(name, Binding::Value(node));
            }
            Item::Let { name, value } => {
                let b = match self.expr(value) {
                    Some(n) => Binding::Value(n),
                    None => Binding::Poisoned,
                };
                self.define(name, b);
            }
            Item::Shared { name, body } => {
                self.shared.insert(
                    name.name.clone(),
                    SharedDef {
                        body: body.clone(),
                        params: HashMap::new(),
                        uses: 0,
                    },
                );
                // Check the body's layers now, so errors show even if unused.
                for c in body {
                    if self.blocks.contains_key(&c.callee.name)
                        || layer_callee(&c.callee.name).is_some()
                    {
                        continue;
                    }
                    self.errs.push(self.unknown_callee(c));
                }
                self.define(name, Binding::Shared(name.name.clone()));
            }
            Item::Block(_) => {}
            Item::Head {
                name,
                value,
                props,
                props_span,
            } => {
                let node = self.expr(value);
                let p = props::head_props(props, &mut self.errs);
                let loss = match p.loss {
                    Some((l, _)) => Some(l),
                    None => {
                        self.errs.push(
                            Diagnostic::error(
                                "mtl::missing-loss",
                                format!("head `{}` has no loss", name.name),
                            )
                            .label(*props_span, "no `loss:` here")
                            .help(format!(
                                "add `loss: NAME`, one of: {}",
                                LossKind::NAMES.join(", ")
                            )),
                        );
                        None
                    }
                };
                self.define(name, node.map_or(Binding::Poisoned, Binding::Value));
                if let (Some(node), Some(loss)) = (node, loss) {
                    self.g.heads.push(Head {
                        name: name.name.clone(),
                        node,
                        loss,
                        weight: p.weight,
                        metrics: p.metrics.iter().map(|(m, _)| *m).collect(),
                        metric_spans: p.metrics.iter().map(|(_, s)| *s).collect(),
                        label: p.label.unwrap_or_else(|| name.name.clone()),
                        span: name.span,
                        label_type: None,
                    });
                }
            }
            Item::Loss { name, call, props } => self.aux_loss(name, call, props),
            Item::Train { props, span } => {
                if let Some(prev) = saw_train {
                    self.errs.push(
                        Diagnostic::error(
                            "mtl::duplicate-train",
                            "the model has two `train` blocks",
                        )
                        .label(*span, "second one here")
                        .label(*prev, "first one here"),
                    );
                }
                *saw_train = Some(*span);
                self.train = props::train_props(props, &mut self.errs);
            }
            Item::Import { span, .. } => self.errs.push(
                Diagnostic::error(
                    "mtl::import-in-model",
                    "`import` belongs at the top of the file",
                )
                .label(*span, "inside a model")
                .help("move the `import` line above `model`"),
            ),
        }
    }

    fn aux_loss(&mut self, name: &ast::Ident, call: &Call, props: &[ast::Prop]) {
        let callee = call.callee.name.as_str();
        let mut operands = vec![];
        let mut positional = 0;
        let mut named = vec![];
        for a in call.args.iter().flatten() {
            match &a.name {
                Some(n) => named.push((n, &a.value)),
                None => {
                    positional += 1;
                    if let Some(n) = self.expr(&a.value) {
                        operands.push(n);
                    }
                }
            }
        }
        let mut weight = 1.0;
        for p in props {
            match p.key.name.as_str() {
                "weight" => match eval_const(&p.value, &HashMap::new()) {
                    Ok(Value::Int(i)) => weight = i as f64,
                    Ok(Value::Float(f)) => weight = f,
                    _ => self.errs.push(
                        Diagnostic::error("mtl::property-type", "`weight` must be a number")
                            .label(p.value.span, "here"),
                    ),
                },
                k => self.errs.push(
                    Diagnostic::error(
                        "mtl::unknown-property",
                        format!("unknown loss property `{k}`"),
                    )
                    .label(p.key.span, "not a known property")
                    .help("a `loss` item takes only `weight`"),
                ),
            }
        }
        self.define(name, Binding::Loss);
        let kind = match (callee, LossKind::from_name(callee)) {
            ("contrastive", _) => self.contrastive_kind(&named),
            (_, Some(LossKind::CrossEntropy | LossKind::BinaryCrossEntropy)) => {
                self.errs.push(
                    Diagnostic::error(
                        "mtl::aux-loss-kind",
                        "an auxiliary loss compares two values: use mse, mae, huber or contrastive",
                    )
                    .label(call.callee.span, "classification loss here")
                    .help("cross-entropy needs labels; put it on a `head`"),
                );
                return;
            }
            (_, Some(k)) => {
                if let Some((n, _)) = named.first() {
                    self.errs.push(
                        Diagnostic::error(
                            "mtl::unknown-argument",
                            format!("`{callee}` has no argument `{}`", n.name),
                        )
                        .label(n.span, "unknown argument")
                        .help("only `contrastive` takes named arguments (temperature, learn_temperature)"),
                    );
                }
                Some(AuxKind::Compare(k))
            }
            (_, None) => {
                let mut known: Vec<&str> = LossKind::NAMES.to_vec();
                known.push("contrastive");
                self.errs.push(
                    Diagnostic::error("mtl::unknown-loss", format!("unknown loss `{callee}`"))
                        .label(call.callee.span, "not a loss")
                        .help(did_you_mean(callee, &known, "loss")),
                );
                return;
            }
        };
        let Some(kind) = kind else { return };
        if positional != 2 {
            self.errs.push(
                Diagnostic::error(
                    "mtl::arity",
                    format!("`{callee}` as an auxiliary loss takes two values"),
                )
                .label(call.span, "here")
                .help("write e.g. `loss aux = mse(depth, depth_aux) { weight: 0.1 }`"),
            );
            return;
        }
        let param = match kind {
            AuxKind::Contrastive {
                temperature,
                learned: true,
            } => {
                let id = self.new_params(&name.name, name.span);
                self.g.params[id.0].tensors.push(crate::ir::ParamTensor {
                    name: crate::ir::LOGIT_SCALE.into(),
                    shape: vec![],
                    trainable: true,
                    init: crate::ir::Init::Const((1.0 / temperature).ln() as f32),
                });
                Some(id)
            }
            _ => None,
        };
        if operands.len() == 2 {
            self.g.losses.push(AuxLoss {
                name: name.name.clone(),
                kind,
                param,
                operands,
                weight,
                span: name.span.to(call.span),
            });
        }
    }

    /// `contrastive(a, b, temperature = 0.07, learn_temperature = false)`.
    fn contrastive_kind(&mut self, named: &[(&ast::Ident, &Expr)]) -> Option<AuxKind> {
        let mut temperature = 0.07;
        let mut learned = false;
        for (n, v) in named {
            let value = eval_const(v, &HashMap::new());
            match (n.name.as_str(), value) {
                ("temperature", Ok(Value::Float(f))) if f > 0.0 => temperature = f,
                ("temperature", Ok(Value::Int(i))) if i > 0 => temperature = i as f64,
                ("learn_temperature", Ok(Value::Sym(s))) if s == "true" || s == "false" => {
                    learned = s == "true"
                }
                ("temperature" | "learn_temperature", _) => {
                    self.errs.push(
                        Diagnostic::error(
                            "mtl::property-type",
                            format!(
                                "`{}` must be {}",
                                n.name,
                                if n.name == "temperature" {
                                    "a number > 0"
                                } else {
                                    "true or false"
                                }
                            ),
                        )
                        .label(v.span, "here"),
                    );
                    return None;
                }
                (k, _) => {
                    self.errs.push(
                        Diagnostic::error(
                            "mtl::unknown-argument",
                            format!("`contrastive` has no argument `{k}`"),
                        )
                        .label(n.span, "unknown argument")
                        .help(did_you_mean(
                            k,
                            &["temperature", "learn_temperature"],
                            "argument",
                        )),
                    );
                    return None;
                }
            }
        }
        Some(AuxKind::Contrastive {
            temperature,
            learned,
        })
    }

    /// Elaborates a value expression; `None` after reporting an error.
    fn expr(&mut self, e: &Expr) -> Option<NodeIndex> {
        match &e.kind {
            ExprKind::Number { .. } | ExprKind::Str(_) | ExprKind::List(_) => {
                self.errs.push(
                    Diagnostic::error("mtl::not-a-tensor", "expected a tensor value")
                        .label(e.span, "this is a constant")
                        .help("values are inputs, `let` names, heads, or layers applied with `->`"),
                );
                None
            }
            ExprKind::Add(terms) => {
                let ops: Vec<Option<NodeIndex>> = terms.iter().map(|t| self.expr(t)).collect();
                let ops: Vec<NodeIndex> = ops.into_iter().collect::<Option<_>>()?;
                Some(self.node(Op::Elementwise(Ew::Add), e.span, None, &ops, None))
            }
            ExprKind::Pipe { source, stages } => {
                let mut cur = self.expr(source)?;
                for s in stages {
                    cur = self.apply(s, cur, &HashMap::new())?;
                }
                Some(cur)
            }
            ExprKind::Call(c) => self.primary(c),
        }
    }

    /// A call or name in value position.
    fn primary(&mut self, c: &Call) -> Option<NodeIndex> {
        let name = &c.callee.name;
        if let Some(fusion) = fusion_callee(name) {
            return self.fusion_call(c, fusion, None);
        }
        match self.scope.get(name).cloned() {
            Some((Binding::Value(n), _)) if c.args.is_none() => {
                if let Some(alias) = &c.alias {
                    self.errs.push(
                        Diagnostic::error("mtl::alias-on-value", "`as` names a layer, not a value")
                            .label(alias.span, "nothing to name here")
                            .help("use `let NAME = ...` to name a value"),
                    );
                }
                Some(n)
            }
            Some((Binding::Value(_), _)) => {
                self.errs.push(
                    Diagnostic::error(
                        "mtl::not-callable",
                        format!("`{name}` is a value, not a layer"),
                    )
                    .label(c.span, "cannot be called")
                    .help(format!(
                        "feed it into a layer instead: `{name} -> dense(N)`"
                    )),
                );
                None
            }
            Some((Binding::Poisoned, _)) => None,
            Some((Binding::Shared(_) | Binding::Block, _)) => {
                // `f(x)` is `x -> f`; block arguments follow the input.
                let args = c.args.as_deref().unwrap_or(&[]);
                let Some(first) = args.first().filter(|a| a.name.is_none()) else {
                    self.errs.push(
                        Diagnostic::error("mtl::missing-input", format!("`{name}` needs an input"))
                            .label(c.span, "applied to nothing")
                            .help(format!("write `x -> {name}` or `{name}(x)`")),
                    );
                    return None;
                };
                let input = self.expr(&first.value)?;
                let rest = Call {
                    callee: c.callee.clone(),
                    args: Some(args[1..].to_vec()),
                    alias: c.alias.clone(),
                    span: c.span,
                };
                self.apply(&rest, input, &HashMap::new())
            }
            Some((Binding::Loss, _)) => {
                self.errs.push(
                    Diagnostic::error(
                        "mtl::not-a-tensor",
                        format!("`{name}` is a loss, not a value"),
                    )
                    .label(c.span, "losses cannot be used as values"),
                );
                None
            }
            None if layer_callee(name).is_some() => {
                self.errs.push(
                    Diagnostic::error(
                        "mtl::missing-input",
                        format!("layer `{name}` needs an input"),
                    )
                    .label(c.span, "applied to nothing")
                    .help(format!("feed a value into it: `x -> {}`", self_text(c))),
                );
                None
            }
            None => {
                self.errs.push(self.unknown_value(c));
                None
            }
        }
    }

    fn unknown_value(&self, c: &Call) -> Diagnostic {
        let name = &c.callee.name;
        if let Some(def) = self.defined_later.get(name) {
            return use_before_definition(name, c.callee.span, *def);
        }
        let candidates: Vec<&str> = self
            .scope
            .iter()
            .filter(|(_, (b, _))| matches!(b, Binding::Value(_) | Binding::Poisoned))
            .map(|(k, _)| k.as_str())
            .collect();
        Diagnostic::error("mtl::unknown-name", format!("unknown name `{name}`"))
            .label(c.callee.span, "not defined")
            .help(did_you_mean(name, &candidates, "value"))
    }

    fn unknown_callee(&self, c: &Call) -> Diagnostic {
        let name = &c.callee.name;
        let mut candidates: Vec<&str> = ops::names(false);
        candidates.extend(ops::names(true));
        for (k, (b, _)) in &self.scope {
            if matches!(b, Binding::Shared(_) | Binding::Block) {
                candidates.push(k);
            }
        }
        if self.scope.contains_key(name) {
            return Diagnostic::error(
                "mtl::not-callable",
                format!("`{name}` is a value, not a layer"),
            )
            .label(c.callee.span, "cannot be applied")
            .help("combine values with a fusion such as `concat(a, b)` or `a + b`");
        }
        if let Some(def) = self.defined_later.get(name) {
            return use_before_definition(name, c.callee.span, *def);
        }
        Diagnostic::error("mtl::unknown-layer", format!("unknown layer `{name}`"))
            .label(c.callee.span, "not a layer, shared layer or block")
            .help(did_you_mean(name, &candidates, "layer"))
    }

    /// Applies one pipeline stage to `input`; `env` holds block parameters.
    fn apply(
        &mut self,
        c: &Call,
        input: NodeIndex,
        env: &HashMap<String, (Value, Span)>,
    ) -> Option<NodeIndex> {
        let name = c.callee.name.as_str();
        if name == residual::NAME {
            return self.apply_residual(c, input, env);
        }
        if name == pretrained::NAME {
            return self.apply_pretrained(c, input, env);
        }
        // A name bound by an enclosing block parameter cannot be a layer.
        if let Some(layer) = layer_callee(name) {
            let mut raw = self.raw_args(c, env)?;
            let frozen = self.take_trainable(&mut raw)?;
            let op = self.layer_op(c, layer, &raw, input)?;
            let n = self.layer_node(op, c, &[input]);
            if frozen {
                match self.g.g[n].param {
                    Some(p) => self.g.frozen.push(self.g.params[p.0].prefix.clone()),
                    None => self.errs.push(
                        Diagnostic::warning(
                            "mtl::trainable-without-weights",
                            format!("`{name}` has no weights to freeze"),
                        )
                        .label(c.span, "`trainable = false` has no effect here"),
                    ),
                }
            }
            return Some(n);
        }
        if let Some(fusion) = fusion_callee(name) {
            // `a -> concat(b)` is `concat(a, b)`.
            return self.fusion_call(c, fusion, Some(input));
        }
        match self.scope.get(name).cloned() {
            Some((Binding::Shared(s), _)) => self.apply_shared(c, &s, input),
            Some((Binding::Block, _)) => self.apply_block(c, input, env),
            _ => {
                self.errs.push(self.unknown_callee(c));
                None
            }
        }
    }

    /// Removes a `trainable = true | false` argument (every layer with
    /// weights takes one); returns whether the layer is frozen.
    fn take_trainable(&mut self, raw: &mut Vec<ops::RawArg>) -> Option<bool> {
        let Some(i) = raw
            .iter()
            .position(|a| a.name.as_ref().is_some_and(|n| n.0 == "trainable"))
        else {
            return Some(false);
        };
        let a = raw.remove(i);
        match &a.value {
            Value::Sym(s) if s == "true" || s == "false" => Some(s == "false"),
            v => {
                self.errs.push(
                    Diagnostic::error("mtl::argument-type", "`trainable` is `true` or `false`")
                        .label(a.span, format!("found {}", v.found())),
                );
                None
            }
        }
    }

    /// Adds a layer node, naming it and binding its parameters.
    fn layer_node(&mut self, op: Op, c: &Call, operands: &[NodeIndex]) -> NodeIndex {
        let has_params = op.has_params();
        let position = self.namer.counter;
        self.namer.counter += 1;
        let prefix = match &c.alias {
            Some(a) => {
                if self.namer.suffix.is_empty() {
                    if let Some(prev) = self.aliases.insert(a.name.clone(), a.span) {
                        self.errs.push(
                            Diagnostic::error(
                                "mtl::duplicate-name",
                                format!("layer name `{}` is used twice", a.name),
                            )
                            .label(a.span, "named again here")
                            .label(prev, "first named here")
                            .help("`as` names are checkpoint prefixes and must be unique"),
                        );
                    }
                }
                a.name.clone()
            }
            None => format!("{}.{}", self.namer.item, position),
        };
        let name = format!("{prefix}{}", self.namer.suffix);
        let param = has_params.then(|| self.param_for(&prefix, position, c.span));
        self.node(op, c.span, Some(name), operands, param)
    }

    fn param_for(&mut self, prefix: &str, position: usize, span: Span) -> ParamId {
        if let Some(s) = self.namer.shared.clone() {
            if let Some(p) = self.shared.get(&s).and_then(|d| d.params.get(&position)) {
                return *p;
            }
            let id = self.new_params(prefix, span);
            if let Some(d) = self.shared.get_mut(&s) {
                d.params.insert(position, id);
            }
            return id;
        }
        self.new_params(prefix, span)
    }

    fn new_params(&mut self, prefix: &str, span: Span) -> ParamId {
        self.g.params.push(ParamSet {
            prefix: prefix.to_string(),
            span,
            tensors: vec![],
        });
        ParamId(self.g.params.len() - 1)
    }

    fn node(
        &mut self,
        op: Op,
        span: Span,
        name: Option<String>,
        operands: &[NodeIndex],
        param: Option<ParamId>,
    ) -> NodeIndex {
        let name = name.unwrap_or_else(|| {
            let n = format!(
                "{}.{}{}",
                self.namer.item, self.namer.counter, self.namer.suffix
            );
            self.namer.counter += 1;
            n
        });
        let n = self.g.add_node(
            Node {
                op,
                name,
                span,
                ty: None,
                param,
                folded_bn: None,
                mask: None,
            },
            operands,
        );
        if let Some(site) = self.namer.use_site {
            self.g.use_sites.insert(n, site);
        }
        n
    }
}

fn use_before_definition(name: &str, used: Span, def: Span) -> Diagnostic {
    Diagnostic::error(
        "mtl::use-before-definition",
        format!("`{name}` is used before its definition"),
    )
    .label(used, "used here")
    .label(def, "defined later here")
    .help(format!("move the definition of `{name}` above this line"))
}

fn self_text(c: &Call) -> String {
    c.callee.name.clone() + if c.args.is_some() { "(...)" } else { "" }
}

/// The layer (one operand) called `name`.
fn layer_callee(name: &str) -> Option<&'static Callee> {
    if name == residual::NAME {
        return Some(&RESIDUAL);
    }
    ops::callee(name).filter(|c| !c.sig.is_fusion())
}

/// `residual` in the layer position; elaboration expands it before any build.
const RESIDUAL: Callee = Callee {
    name: residual::NAME,
    sig: Sig::Layer(&[]),
    build: |_| Ok(Op::Residual(residual::Residual)),
};

/// The fusion called `name`.
fn fusion_callee(name: &str) -> Option<&'static Callee> {
    ops::callee(name).filter(|c| c.sig.is_fusion())
}
