//! `pretrained("DIR", output = sequence | pooled)`: a Hugging Face BERT or
//! ViT checkpoint expanded into IR nodes — embeddings, encoder layers, the
//! pooler — built from the op table's layers plus [`HfOp`]'s parts, so the
//! passes, the summary and the kernels see every layer. Each layer's
//! checkpoint prefix is `NAME.` + the checkpoint's own key path, so the
//! file loads as is; shapes are compared with the file after inference
//! ([`check_pretrained`]).

use super::*;
use crate::ir::ops::{activation, attention, dense, embedding, norm, reshape};
use crate::ir::Act;
use crate::ir::{HfOp, PretrainedUse};
use crate::pretrained::{Checkpoint, Family, HiddenAct};

pub const NAME: &str = "pretrained";

/// Which output of the encoder the layer gives.
#[derive(Clone, Copy, PartialEq)]
enum Output {
    Sequence,
    Pooled,
}

impl Elab<'_> {
    pub(super) fn apply_pretrained(
        &mut self,
        c: &Call,
        input: NodeIndex,
        env: &HashMap<String, (Value, Span)>,
    ) -> Option<NodeIndex> {
        let raw = self.raw_args(c, env)?;
        let mut dir = None;
        let mut output = Output::Sequence;
        let mut frozen = false;
        let bad = |span: Span, msg: String| {
            Diagnostic::error("mtl::pretrained-argument", msg)
                .label(span, "here")
                .help("write `pretrained(\"DIR\", output = sequence | pooled, trainable = true | false)`")
        };
        for a in &raw {
            match (a.name.as_ref().map(|n| n.0.as_str()), &a.value) {
                (None, Value::Str(s)) if dir.is_none() => dir = Some(s.clone()),
                (Some("output"), Value::Sym(s)) if s == "sequence" => output = Output::Sequence,
                (Some("output"), Value::Sym(s)) if s == "pooled" => output = Output::Pooled,
                (Some("trainable"), Value::Sym(s)) if s == "true" || s == "false" => {
                    frozen = s == "false"
                }
                (name, v) => {
                    let shown = match v {
                        Value::Sym(s) => format!("`{s}`"),
                        v => v.found(),
                    };
                    let what = match name {
                        Some("output") => {
                            format!("`output` is `sequence` or `pooled`, found {shown}")
                        }
                        Some("trainable") => {
                            format!("`trainable` is `true` or `false`, found {shown}")
                        }
                        Some(n) => format!("`pretrained` has no argument `{n}`"),
                        None => {
                            format!("`pretrained` takes one directory (a string), found {shown}")
                        }
                    };
                    self.errs.push(bad(a.span, what));
                    return None;
                }
            }
        }
        let Some(rel) = dir else {
            self.errs.push(bad(
                c.span,
                "`pretrained` needs the checkpoint directory".into(),
            ));
            return None;
        };
        let path = self.dir.join(&rel);
        let ck = match crate::pretrained::open(&path) {
            Ok(ck) => ck,
            Err(e) => {
                self.errs.push(
                    Diagnostic::error("mtl::pretrained-checkpoint", e.to_string())
                        .label(c.span, format!("checkpoint `{rel}`"))
                        .help("a Hugging Face directory: config.json and model.safetensors (`save_pretrained`); the path is relative to the model file"),
                );
                return None;
            }
        };
        let position = self.namer.counter;
        self.namer.counter += 1;
        let prefix = match &c.alias {
            Some(a) => a.name.clone(),
            None => format!("{}.{}", self.namer.item, position),
        };
        let tokens = match &self.g.g[input].op {
            Op::Input(i) => match i.kind {
                crate::ir::InputKind::Tokens { .. } => Some(i.name.clone()),
                _ => None,
            },
            _ => None,
        };
        let mut b = Expansion {
            e: self,
            span: c.span,
            prefix: prefix.clone(),
        };
        let out = match &ck.family {
            Family::Bert { .. } => {
                if tokens.is_none() {
                    b.e.errs.push(
                        Diagnostic::error(
                            "mtl::pretrained-input",
                            "a BERT encoder reads a token input",
                        )
                        .label(c.span, "this encoder")
                        .help("apply it to an input declared `tokens[T] vocab V`"),
                    );
                    return None;
                }
                b.bert(&ck, input, output)
            }
            Family::Vit { .. } => b.vit(&ck, input, output),
        };
        if frozen {
            self.g.frozen.push(prefix.clone());
        }
        self.g.pretrained.push(PretrainedUse {
            prefix,
            dir: path,
            span: c.span,
            input: tokens.filter(|_| matches!(ck.family, Family::Bert { .. })),
            tokenizer: ck.tokenizer.clone(),
        });
        Some(out)
    }
}

/// Builds one encoder's nodes under `prefix`.
struct Expansion<'e, 'a> {
    e: &'e mut Elab<'a>,
    span: Span,
    prefix: String,
}

impl Expansion<'_, '_> {
    /// A node; `key` (relative to the prefix) names its checkpoint prefix
    /// when the op has weights, and the node either way.
    fn node(&mut self, op: Op, key: &str, operands: &[NodeIndex]) -> NodeIndex {
        let full = format!("{}.{key}", self.prefix);
        let param = op.has_params().then(|| self.e.new_params(&full, self.span));
        self.e.node(op, self.span, Some(full), operands, param)
    }

    fn dense(&mut self, units: usize, key: &str, x: NodeIndex) -> NodeIndex {
        self.node(Op::Dense(dense::Dense { units }), key, &[x])
    }

    fn layer_norm(&mut self, eps: f64, key: &str, x: NodeIndex) -> NodeIndex {
        self.node(Op::LayerNorm(norm::LayerNorm { eps }), key, &[x])
    }

    /// Dropout in training where the checkpoint has it (identity in inference).
    fn dropout(&mut self, rate: f64, key: &str, x: NodeIndex) -> NodeIndex {
        if rate > 0.0 {
            self.node(Op::Dropout(activation::Dropout { rate }), key, &[x])
        } else {
            x
        }
    }

    fn act(&mut self, a: HiddenAct, key: &str, x: NodeIndex) -> NodeIndex {
        let a = match a {
            HiddenAct::Gelu => Act::Gelu,
            HiddenAct::Relu => Act::Relu,
            HiddenAct::Silu => Act::Silu,
            HiddenAct::Tanh => Act::Tanh,
        };
        self.node(Op::Act(a), key, &[x])
    }

    fn self_attention(&mut self, ck: &Checkpoint, key: &str, x: NodeIndex) -> NodeIndex {
        let enc = &ck.encoder;
        let d = enc.hidden / enc.heads;
        let op = Op::Attention(attention::Attention {
            heads: enc.heads,
            key_dim: d,
            value_dim: d,
            dropout: enc.attention_dropout,
            causal: false,
            hf: true,
        });
        self.node(op, key, &[x])
    }

    /// `skip + branch`.
    fn residual(&mut self, key: &str, skip: NodeIndex, branch: NodeIndex) -> NodeIndex {
        self.node(Op::Residual(crate::ir::Residual), key, &[skip, branch])
    }

    /// Self-attention over `x` (keyed `layer.keys.0`), its output dense and
    /// dropout, added to `skip` (keyed `layer.keys.1`): BERT's post-LN and
    /// ViT's pre-LN layers differ only in what `x` and `skip` are.
    fn attention_sublayer(
        &mut self,
        ck: &Checkpoint,
        layer: &str,
        keys: (&str, &str),
        x: NodeIndex,
        skip: NodeIndex,
    ) -> NodeIndex {
        let enc = &ck.encoder;
        let a = self.self_attention(ck, &format!("{layer}.{}", keys.0), x);
        let a = self.dense(enc.hidden, &format!("{layer}.attention.output.dense"), a);
        let a = self.dropout(
            enc.hidden_dropout,
            &format!("{layer}.attention.output.dropout"),
            a,
        );
        self.residual(&format!("{layer}.{}", keys.1), skip, a)
    }

    /// The feed-forward half: dense, activation, dense, dropout.
    fn feed_forward(&mut self, ck: &Checkpoint, layer: &str, x: NodeIndex) -> NodeIndex {
        let enc = &ck.encoder;
        let f = self.dense(enc.intermediate, &format!("{layer}.intermediate.dense"), x);
        let f = self.act(enc.act, &format!("{layer}.intermediate.act"), f);
        let f = self.dense(enc.hidden, &format!("{layer}.output.dense"), f);
        self.dropout(enc.hidden_dropout, &format!("{layer}.output.dropout"), f)
    }

    /// `[CLS]` (position 0) through dense + tanh.
    fn pooler(&mut self, ck: &Checkpoint, x: NodeIndex) -> NodeIndex {
        let first = Op::Select(reshape::Select { index: 0, axis: 1 });
        let cls = self.node(first, "pooler.first_token", &[x]);
        let d = self.dense(ck.encoder.hidden, "pooler.dense", cls);
        self.node(Op::Act(Act::Tanh), "pooler.activation", &[d])
    }

    /// BERT: word + position + token-type embeddings, post-LN layers, pooler.
    fn bert(&mut self, ck: &Checkpoint, ids: NodeIndex, output: Output) -> NodeIndex {
        let Family::Bert {
            vocab,
            positions,
            token_types,
        } = ck.family
        else {
            unreachable!("bert() is called for BERT checkpoints")
        };
        let enc = ck.encoder.clone();
        let emb = Op::Embedding(embedding::Embedding {
            dim: enc.hidden,
            vocab,
            mask_zero: true,
        });
        let x = self.node(emb, "embeddings.word_embeddings", &[ids]);
        let x = self.node(
            Op::Hf(HfOp::PositionRows { rows: positions }),
            "embeddings.position_embeddings",
            &[x],
        );
        let x = self.node(
            Op::Hf(HfOp::SegmentRow { types: token_types }),
            "embeddings.token_type_embeddings",
            &[x],
        );
        let x = self.layer_norm(enc.eps, "embeddings.LayerNorm", x);
        let mut h = self.dropout(enc.hidden_dropout, "embeddings.dropout", x);
        for i in 0..enc.layers {
            let l = format!("encoder.layer.{i}");
            let r =
                self.attention_sublayer(ck, &l, ("attention.self", "attention.output.add"), h, h);
            let h1 = self.layer_norm(enc.eps, &format!("{l}.attention.output.LayerNorm"), r);
            let f = self.feed_forward(ck, &l, h1);
            let r = self.residual(&format!("{l}.output.add"), h1, f);
            h = self.layer_norm(enc.eps, &format!("{l}.output.LayerNorm"), r);
        }
        match output {
            Output::Sequence => h,
            Output::Pooled => self.pooler(ck, h),
        }
    }

    /// ViT: normalisation, patch embedding, class token and positions,
    /// pre-LN layers, final layer norm, pooler.
    fn vit(&mut self, ck: &Checkpoint, image: NodeIndex, output: Output) -> NodeIndex {
        let Family::Vit {
            patch,
            ref mean,
            ref std,
            ..
        } = ck.family
        else {
            unreachable!("vit() is called for ViT checkpoints")
        };
        let enc = ck.encoder.clone();
        let norm = HfOp::Normalize {
            mean: mean.clone(),
            std: std.clone(),
        };
        let x = self.node(Op::Hf(norm), "embeddings.normalize", &[image]);
        let conv = Op::Conv(crate::ir::Conv {
            filters: enc.hidden,
            kernel: vec![patch.0, patch.1],
            stride: vec![patch.0, patch.1],
            padding: crate::ir::Padding::Valid,
            dilation: vec![1; 2],
            groups: 1,
        });
        let x = self.node(conv, "embeddings.patch_embeddings.projection", &[x]);
        let flat = Op::Reshape(reshape::Reshape {
            shape: vec![enc.hidden as i64, -1],
        });
        let x = self.node(flat, "embeddings.patch_embeddings.flatten", &[x]);
        let x = self.node(
            Op::Permute(reshape::Permute { axes: vec![2, 1] }),
            "embeddings.patch_embeddings.transpose",
            &[x],
        );
        let x = self.node(Op::Hf(HfOp::ClsAndPositions), "embeddings", &[x]);
        let mut h = self.dropout(enc.hidden_dropout, "embeddings.dropout", x);
        for i in 0..enc.layers {
            let l = format!("encoder.layer.{i}");
            let n = self.layer_norm(enc.eps, &format!("{l}.layernorm_before"), h);
            let r = self.attention_sublayer(ck, &l, ("attention.attention", "attention.add"), n, h);
            let n = self.layer_norm(enc.eps, &format!("{l}.layernorm_after"), r);
            let f = self.feed_forward(ck, &l, n);
            h = self.residual(&format!("{l}.output.add"), r, f);
        }
        let h = self.layer_norm(enc.eps, "layernorm", h);
        match output {
            Output::Sequence => h,
            Output::Pooled => self.pooler(ck, h),
        }
    }
}

/// After shape inference: every tensor a `pretrained` layer declares is in
/// its checkpoint with the same shape (else a located error naming the file
/// and the key).
pub fn check_pretrained(g: &Graph) -> Vec<Diagnostic> {
    let mut out = vec![];
    for u in &g.pretrained {
        let ck = match crate::pretrained::open(&u.dir) {
            Ok(ck) => ck,
            Err(e) => {
                out.push(
                    Diagnostic::error("mtl::pretrained-checkpoint", e.to_string())
                        .label(u.span, "this encoder"),
                );
                continue;
            }
        };
        let lead = format!("{}.", u.prefix);
        let declared: std::collections::BTreeMap<String, Vec<usize>> = g
            .params
            .iter()
            .filter_map(|s| s.prefix.strip_prefix(&lead).map(|k| (k, s)))
            .flat_map(|(k, s)| {
                s.tensors
                    .iter()
                    .map(move |t| (format!("{k}.{}", t.name), t.shape.clone()))
            })
            .collect();
        let help = match &ck.family {
            Family::Vit {
                image: (h, w),
                channels,
                ..
            } => format!(
                "declare the input `image[{channels}, {h}, {w}]`: the checkpoint's `image_size` in config.json"
            ),
            Family::Bert { positions, .. } => format!(
                "the model's layers must be the checkpoint's (and at most {positions} tokens): is config.json the one saved with these weights?"
            ),
        };
        for e in ck.check(&declared) {
            out.push(
                Diagnostic::error("mtl::pretrained-weights", e.to_string())
                    .label(u.span, "this encoder")
                    .help(help.clone()),
            );
        }
    }
    out
}
