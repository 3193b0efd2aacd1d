//! Dense, convolution, pooling, normalization, activation, shape and fusion
//! steps. Each arm writes the same computation as the step's candle call in
//! `lower::exec`, in the same order where rounding could differ.

use super::builder::Form;
use super::proto::AttributeProto as A;
use super::{values, StepCx, R};
use crate::ir::ops::{conv, dense, embedding, fusion, mixture, norm, position_embedding};
use crate::ir::{Act, Attend, BatchNorm, Concat, ConvTranspose2d, Ew, GlobalPool, LayerNorm};
use crate::ir::{Mixture, Op, Permute, Pool, PoolKind, Slice, Upsample, Weighted};
use crate::lower::{fold_bn, ConvKernel, Kernel};
use candle_core::Tensor;

impl StepCx<'_> {
    /// Writes the step; returns the name of its output value.
    pub fn emit(&mut self) -> R<String> {
        let x = self.ins[0].clone();
        let out = self.out_name();
        let st = self.st;
        match (&st.kernel, &st.op) {
            (Kernel::Linear { relu, bn }, _) => {
                let (w, b) = self.folded(bn)?;
                if !*relu {
                    return self.linear(&x, &w, &b, None, &out);
                }
                let y = self.linear(&x, &w, &b, None, &self.hint("linear"))?;
                Ok(self.b.op("Relu", &[&y], vec![], &out))
            }
            (Kernel::MergedLinear { parts }, _) => {
                let get = |name: &str| -> R<Vec<Tensor>> {
                    parts
                        .iter()
                        .map(|(p, _)| self.tensor(&format!("{p}.{name}")).cloned())
                        .collect()
                };
                let (ws, bs) = (get(dense::WEIGHT)?, get(dense::BIAS)?);
                let cat =
                    |v: &[Tensor]| Tensor::cat(v, 0).map_err(|e| super::ExportError(e.to_string()));
                self.linear(&x, &cat(&ws)?, &cat(&bs)?, None, &out)
            }
            (Kernel::Conv(k), Op::Conv(c)) => self.conv(&x, k, c),
            (_, Op::Dense(_) | Op::Conv(_) | Op::MergedDense(_)) => {
                self.fail(format!("kernel `{}` does not run `{}`", st.kernel, st.op))
            }
            (_, Op::Input(_)) => Ok(x),
            (_, op) => self.layer(op, &x),
        }
    }

    /// Every step whose kernel is named by its op.
    fn layer(&mut self, op: &Op, x: &str) -> R<String> {
        let out = self.out_name();
        let rank = self.in_tys[0].rank() + 1;
        match op {
            Op::ConvTranspose2d(ConvTranspose2d {
                kernel,
                stride,
                padding,
                ..
            }) => {
                let (k, s) = (*kernel, *stride);
                let (pad, out_pad) = conv::transposed_padding(k, s, *padding);
                let w = self.param_as_is(conv::WEIGHT)?;
                let b = self.param_as_is(conv::BIAS)?;
                let ints = |v: usize| vec![v as i64; 2];
                let attrs = vec![
                    A::ints("kernel_shape", &ints(k)),
                    A::ints("strides", &ints(s)),
                    A::ints("pads", &[pad as i64; 4]),
                    A::ints("output_padding", &ints(out_pad)),
                ];
                Ok(self.b.op("ConvTranspose", &[x, &w, &b], attrs, &out))
            }
            Op::Upsample(Upsample { scale }) => {
                let mut scales = vec![1.0, 1.0];
                scales.extend(std::iter::repeat_n(*scale as f32, rank - 2));
                let s = self.b.f32(&self.hint("scales"), &[rank], &scales);
                // floor(i / scale): each output cell copies its source cell.
                let attrs = vec![
                    A::string("mode", "nearest"),
                    A::string("coordinate_transformation_mode", "asymmetric"),
                    A::string("nearest_mode", "floor"),
                ];
                Ok(self.b.op("Resize", &[x, "", &s], attrs, &out))
            }
            Op::Pool(Pool { kind, size, stride }) => {
                let spatial = rank - 2;
                let per_axis = |v: &[usize]| -> Vec<i64> {
                    (0..spatial)
                        .map(|a| *v.get(a).unwrap_or(&v[0]) as i64)
                        .collect()
                };
                let attrs = vec![
                    A::ints("kernel_shape", &per_axis(size)),
                    A::ints("strides", &per_axis(stride)),
                ];
                let name = match kind {
                    PoolKind::Max => "MaxPool",
                    PoolKind::Avg => "AveragePool",
                };
                Ok(self.b.op(name, &[x], attrs, &out))
            }
            Op::GlobalPool(GlobalPool { kind, axis: None }) => {
                let name = match kind {
                    PoolKind::Max => "GlobalMaxPool",
                    PoolKind::Avg => "GlobalAveragePool",
                };
                let p = self.b.op(name, &[x], vec![], &self.hint("pool"));
                Ok(self.b.op("Flatten", &[&p], vec![A::int("axis", 1)], &out))
            }
            Op::GlobalPool(gp @ GlobalPool { axis: Some(_), .. }) => {
                let Some(a) = gp.axis_index(rank - 1) else {
                    return self.fail("pool axis out of range");
                };
                let max = gp.kind == PoolKind::Max;
                match self.masks.first().cloned().flatten().filter(|_| a == 0) {
                    Some(m) => self.masked_pool(x, &m, max),
                    None => {
                        let op = if max { "ReduceMax" } else { "ReduceMean" };
                        let attrs = vec![A::ints("axes", &[a as i64 + 1]), A::int("keepdims", 0)];
                        Ok(self.b.op(op, &[x], attrs, &out))
                    }
                }
            }
            Op::Flatten(_) => Ok(self.b.op("Flatten", &[x], vec![A::int("axis", 1)], &out)),
            Op::Reshape(_) => {
                let Some(dims) = self.st.ty.dims() else {
                    return self.fail("a reshape to a symbolic shape");
                };
                // 0 keeps the batch dimension as it comes.
                let mut shape = vec![0i64];
                shape.extend(dims.iter().map(|d| *d as i64));
                let s = self.b.i64s(&self.hint("shape"), &shape);
                Ok(self.b.op("Reshape", &[x, &s], vec![], &out))
            }
            Op::Permute(Permute { axes }) => {
                let mut perm = vec![0i64];
                perm.extend(axes.iter().map(|a| *a as i64));
                Ok(self
                    .b
                    .op("Transpose", &[x], vec![A::ints("perm", &perm)], &out))
            }
            Op::Embedding(_) => {
                let w = self.param_as_is(embedding::WEIGHT)?;
                Ok(self.b.op("Gather", &[&w, x], vec![A::int("axis", 0)], &out))
            }
            Op::Rnn(r) => self.rnn(r, x),
            Op::Dropout(_) => Ok(x.to_string()),
            Op::BatchNorm(BatchNorm { eps, .. }) => self.batch_norm(x, *eps),
            Op::LayerNorm(LayerNorm { eps }) => {
                let w = self.param_as_is(norm::WEIGHT)?;
                let b = self.param_as_is(norm::BIAS)?;
                let attrs = vec![A::int("axis", -1), A::float("epsilon", *eps as f32)];
                Ok(self.b.op("LayerNormalization", &[x, &w, &b], attrs, &out))
            }
            Op::Act(a) => Ok(self.act(x, *a, &out)),
            Op::Concat(Concat { axis }) => {
                let a = if *axis < 0 { rank as i64 + axis } else { *axis };
                let ins = self.ins.clone();
                let refs: Vec<&str> = ins.iter().map(String::as_str).collect();
                Ok(self.b.op("Concat", &refs, vec![A::int("axis", a)], &out))
            }
            Op::Elementwise(e) => {
                let ins = self.ins.clone();
                let refs: Vec<&str> = ins.iter().map(String::as_str).collect();
                let name = match e {
                    Ew::Add => "Sum",
                    Ew::Mean => "Mean",
                    Ew::Max => "Max",
                    Ew::Min => "Min",
                    Ew::Mul => {
                        let mut acc = refs[0].to_string();
                        for (i, y) in refs[1..].iter().enumerate() {
                            let last = i + 2 == refs.len();
                            let hint = if last {
                                out.clone()
                            } else {
                                self.hint("product")
                            };
                            acc = self.b.op("Mul", &[&acc, y], vec![], &hint);
                        }
                        return Ok(acc);
                    }
                };
                Ok(self.b.op(name, &refs, vec![], &out))
            }
            Op::Weighted(Weighted { fixed }) => {
                let ws: Vec<f32> = match fixed {
                    Some(ws) => ws.iter().map(|w| *w as f32).collect(),
                    // Learned logits are constants at inference: their softmax, once.
                    None => {
                        let l = self.param(fusion::LOGITS)?;
                        let sm = candle_nn::ops::softmax(l, 0)
                            .map_err(|e| super::ExportError(e.to_string()))?;
                        values(&sm, &self.st.name)?
                    }
                };
                let ins = self.ins.clone();
                let mut terms = vec![];
                for (i, (y, w)) in ins.iter().zip(&ws).enumerate() {
                    let c = self.b.f32_scalar(&self.hint(&format!("w{i}")), *w);
                    terms.push(
                        self.b
                            .op("Mul", &[y, &c], vec![], &self.hint(&format!("term{i}"))),
                    );
                }
                let refs: Vec<&str> = terms.iter().map(String::as_str).collect();
                Ok(self.b.op("Sum", &refs, vec![], &out))
            }
            Op::Gated(_) => {
                let (a, b) = (self.ins[0].clone(), self.ins[1].clone());
                let cat = self.b.op(
                    "Concat",
                    &[&a, &b],
                    vec![A::int("axis", 1)],
                    &self.hint("both"),
                );
                let z = self.linear_key(&cat, fusion::WEIGHT, fusion::BIAS, &self.hint("logit"))?;
                let g = self.b.op("Sigmoid", &[&z], vec![], &self.hint("gate"));
                let one = self.b.f32_scalar(&self.hint("one"), 1.0);
                let ga = self.b.op("Mul", &[&g, &a], vec![], &self.hint("gate_a"));
                let rest = self
                    .b
                    .op("Sub", &[&one, &g], vec![], &self.hint("one_minus_gate"));
                let gb = self.b.op("Mul", &[&rest, &b], vec![], &self.hint("gate_b"));
                Ok(self.b.op("Add", &[&ga, &gb], vec![], &out))
            }
            Op::Slice(Slice { start, len }) => {
                let s = self.b.i64s(&self.hint("starts"), &[*start as i64]);
                let e = self.b.i64s(&self.hint("ends"), &[(*start + *len) as i64]);
                let a = self.b.i64s(&self.hint("axes"), &[-1]);
                Ok(self.b.op("Slice", &[x, &s, &e, &a], vec![], &out))
            }
            Op::PositionEmbedding(_) => {
                let w = self.param_as_is(position_embedding::WEIGHT)?;
                Ok(self.b.op("Add", &[x, &w], vec![], &out))
            }
            Op::Residual(_) => {
                let y = self.ins[1].clone();
                Ok(self.b.op("Add", &[x, &y], vec![], &out))
            }
            Op::Select(s) => {
                let Some((a, i)) = s.resolve(&self.in_tys[0].shape) else {
                    return self.fail("select out of range");
                };
                // A symbolic length: Gather takes the negative index as is.
                let i = i.map_or(s.index, |i| i as i64);
                let idx = self.b.i64_scalar(&self.hint("index"), i);
                Ok(self.b.op(
                    "Gather",
                    &[x, &idx],
                    vec![A::int("axis", a as i64 + 1)],
                    &out,
                ))
            }
            Op::Mixture(Mixture { experts }) => self.mixture(*experts),
            Op::Attention(a) => {
                let m = self.masks.first().cloned().flatten();
                // Hugging Face masks keys only; Keras masks query rows too.
                let qm = m.clone().filter(|_| !a.hf);
                self.attention(x, x, a, (qm, m), &out)
            }
            Op::Attend(Attend(a)) => {
                let vector = self.in_tys[0].rank() == 1;
                let ctx = self.ins[1].clone();
                let km = self.masks.get(1).cloned().flatten();
                if vector {
                    // A vector query is a sequence of one.
                    let ax = self.b.i64s(&self.hint("axis1"), &[1]);
                    let q = self
                        .b
                        .op("Unsqueeze", &[x, &ax], vec![], &self.hint("query_seq"));
                    let y = self.attention(&q, &ctx, a, (None, km), &self.hint("attended"))?;
                    let ax = self.b.i64s(&self.hint("axis1"), &[1]);
                    Ok(self.b.op("Squeeze", &[&y, &ax], vec![], &out))
                } else {
                    let qm = self.masks.first().cloned().flatten();
                    self.attention(x, &ctx, a, (qm, km), &out)
                }
            }
            Op::Hf(h) => self.hf(h, x),
            Op::Dense(_) | Op::Conv(_) | Op::MergedDense(_) | Op::Input(_) => {
                self.fail("handled by its kernel")
            }
        }
    }

    /// (weight, bias) of this dense or conv, a batch norm folded in.
    fn folded(&self, bn: &crate::lower::FoldedBn) -> R<(Tensor, Tensor)> {
        let (w, b) = (self.param(dense::WEIGHT)?, self.param(dense::BIAS)?);
        match bn {
            Some((pre, eps)) => {
                let g = |n: &str| self.tensor(&format!("{pre}.{n}"));
                fold_bn(
                    w,
                    b,
                    g(norm::WEIGHT)?,
                    g(norm::BIAS)?,
                    g(norm::RUNNING_MEAN)?,
                    g(norm::RUNNING_VAR)?,
                    *eps,
                )
                .map_err(|e| super::ExportError(e.to_string()))
            }
            None => Ok((w.clone(), b.clone())),
        }
    }

    /// A checkpoint tensor of this layer as an initializer named by its key.
    pub fn param_as_is(&mut self, name: &str) -> R<String> {
        let prefix = self.st.params.clone().unwrap_or_default();
        self.key_as_is(&format!("{prefix}.{name}"))
    }

    pub fn key_as_is(&mut self, key: &str) -> R<String> {
        let t = self.tensor(key)?.clone();
        let data = values(&t, &self.st.name)?;
        Ok(self.b.weight(key, Form::AsIs, t.dims(), &data))
    }

    /// `x · Wᵀ + b` over the last axis with this layer's `w` and `b` keys;
    /// Wᵀ written once per checkpoint key.
    pub fn linear_key(&mut self, x: &str, w: &str, b: &str, out: &str) -> R<String> {
        let prefix = self.st.params.clone().unwrap_or_default();
        let wk = format!("{prefix}.{w}");
        let wt = self.tensor(&wk)?.clone();
        let bias = self.tensor(&format!("{prefix}.{b}"))?.clone();
        self.linear(x, &wt, &bias, Some((&wk, &format!("{prefix}.{b}"))), out)
    }

    /// `x · Wᵀ + b`: `MatMul` with the transposed weight, then `Add`.
    /// `keys` name checkpoint tensors (written once however often read);
    /// `out` names the result.
    pub fn linear(
        &mut self,
        x: &str,
        w: &Tensor,
        b: &Tensor,
        keys: Option<(&str, &str)>,
        out: &str,
    ) -> R<String> {
        let node = self.st.name.clone();
        let err =
            |e: candle_core::Error| super::ExportError(format!("cannot export `{node}`: {e}"));
        let (o, i) = w.dims2().map_err(err)?;
        let wt = values(&w.t().and_then(|t| t.contiguous()).map_err(err)?, &node)?;
        let bd = values(b, &node)?;
        let (wn, bn) = match keys {
            Some((wk, bk)) => (
                self.b.weight(wk, Form::Transposed, &[i, o], &wt),
                self.b.weight(bk, Form::AsIs, &[o], &bd),
            ),
            None => (
                self.b.f32(&self.hint("weight^T"), &[i, o], &wt),
                self.b.f32(&self.hint("bias"), &[o], &bd),
            ),
        };
        let m = self.b.op("MatMul", &[x, &wn], vec![], &self.hint("matmul"));
        Ok(self.b.op("Add", &[&m, &bn], vec![], out))
    }

    fn conv(&mut self, x: &str, k: &ConvKernel, c: &crate::ir::Conv) -> R<String> {
        let (w, b) = self.folded(&k.bn)?;
        let node = self.st.name.clone();
        let wn = self
            .b
            .f32(&self.hint("weight"), w.dims(), &values(&w, &node)?);
        let bn = self
            .b
            .f32(&self.hint("bias"), b.dims(), &values(&b, &node)?);
        let spatial = c.kernel.len();
        let pads: Vec<(usize, usize)> = (0..spatial)
            .map(|a| k.pads.get(a).copied().unwrap_or((0, 0)))
            .collect();
        let mut p: Vec<i64> = pads.iter().map(|p| p.0 as i64).collect();
        p.extend(pads.iter().map(|p| p.1 as i64));
        let i64s = |v: &[usize]| v.iter().map(|x| *x as i64).collect::<Vec<_>>();
        let attrs = vec![
            A::ints("kernel_shape", &i64s(&c.kernel)),
            A::ints("strides", &i64s(&c.stride)),
            A::ints("dilations", &i64s(&c.dilation)),
            A::int("group", c.groups as i64),
            A::ints("pads", &p),
        ];
        let then = k.mean || k.pool;
        let last = !k.relu && !then;
        let hint = if last {
            self.out_name()
        } else {
            self.hint("conv")
        };
        let mut y = self.b.op("Conv", &[x, &wn, &bn], attrs, &hint);
        if k.relu {
            let hint = if then {
                self.hint("relu")
            } else {
                self.out_name()
            };
            y = self.b.op("Relu", &[&y], vec![], &hint);
        }
        if k.pool {
            // The 2×2, stride-2 max pool the inference plan folded in.
            let attrs = vec![
                A::ints("kernel_shape", &[2, 2]),
                A::ints("strides", &[2, 2]),
            ];
            y = self.b.op("MaxPool", &[&y], attrs, &self.out_name());
        }
        if k.mean {
            let p = self
                .b
                .op("GlobalAveragePool", &[&y], vec![], &self.hint("mean"));
            y = self
                .b
                .op("Flatten", &[&p], vec![A::int("axis", 1)], &self.out_name());
        }
        Ok(y)
    }

    /// An activation; `out` names its result.
    pub fn act(&mut self, x: &str, a: Act, out: &str) -> String {
        match a {
            Act::Relu => self.b.op("Relu", &[x], vec![], out),
            Act::Tanh => self.b.op("Tanh", &[x], vec![], out),
            Act::Sigmoid => self.b.op("Sigmoid", &[x], vec![], out),
            Act::Softmax => self.b.op("Softmax", &[x], vec![A::int("axis", -1)], out),
            Act::LeakyRelu(alpha) => self.b.op(
                "LeakyRelu",
                &[x],
                vec![A::float("alpha", alpha as f32)],
                out,
            ),
            Act::Identity => self.b.op("Identity", &[x], vec![], out),
            Act::Silu => {
                let s = self.b.op("Sigmoid", &[x], vec![], &self.hint("sigmoid"));
                self.b.op("Mul", &[x, &s], vec![], out)
            }
            // 0.5·x·(1 + erf(x/√2)): opset 17 has no Gelu (it came in 20).
            Act::Gelu => {
                let r2 = self
                    .b
                    .f32_scalar(&self.hint("sqrt2"), std::f32::consts::SQRT_2);
                let one = self.b.f32_scalar(&self.hint("one"), 1.0);
                let half = self.b.f32_scalar(&self.hint("half"), 0.5);
                let d = self.b.op("Div", &[x, &r2], vec![], &self.hint("scaled"));
                let e = self.b.op("Erf", &[&d], vec![], &self.hint("erf"));
                let s = self
                    .b
                    .op("Add", &[&e, &one], vec![], &self.hint("one_plus"));
                let m = self.b.op("Mul", &[x, &s], vec![], &self.hint("x_times"));
                self.b.op("Mul", &[&m, &half], vec![], out)
            }
        }
    }

    /// Inference batch norm over axis 1 as `x·s + t`, s = γ/√(var+ε), t = β − mean·s.
    fn batch_norm(&mut self, x: &str, eps: f64) -> R<String> {
        let node = self.st.name.clone();
        let get = |n: &str| -> R<Vec<f32>> { values(self.param(n)?, &node) };
        let (g, b, m, v) = (
            get(norm::WEIGHT)?,
            get(norm::BIAS)?,
            get(norm::RUNNING_MEAN)?,
            get(norm::RUNNING_VAR)?,
        );
        let s: Vec<f32> = g
            .iter()
            .zip(&v)
            .map(|(g, v)| (*g as f64 / (*v as f64 + eps).sqrt()) as f32)
            .collect();
        let t: Vec<f32> = b
            .iter()
            .zip(&m)
            .zip(&s)
            .map(|((b, m), s)| b - m * s)
            .collect();
        let mut dims = vec![s.len()];
        dims.extend(std::iter::repeat_n(1, self.in_tys[0].rank() - 1));
        let sn = self.b.f32(&self.hint("scale"), &dims, &s);
        let tn = self.b.f32(&self.hint("shift"), &dims, &t);
        let y = self.b.op("Mul", &[x, &sn], vec![], &self.hint("scaled"));
        Ok(self.b.op("Add", &[&y, &tn], vec![], &self.out_name()))
    }

    /// Mean or max over axis 1 at real positions only (0 where there are none).
    fn masked_pool(&mut self, x: &str, m: &str, max: bool) -> R<String> {
        let rank = self.in_tys[0].rank() + 1;
        let out = self.out_name();
        // The mask [N, T] shaped to broadcast over x: [N, T, 1, …].
        let mk = self.unsqueeze_tail(m, rank, 2, "mask")?;
        let one_ax = self.b.i64s(&self.hint("axis1"), &[1]);
        let count = self.b.op(
            "ReduceSum",
            &[m, &one_ax],
            vec![A::int("keepdims", 1)],
            &self.hint("count"),
        );
        // [N, 1] → [N, 1…] over the pooled value's rank (rank − 1).
        let per_sample = |cx: &mut Self, t: &str, what: &str| -> R<String> {
            let mut shape = vec![0i64];
            shape.extend(std::iter::repeat_n(1, rank - 2));
            let s = cx.b.i64s(&cx.hint("per_sample"), &shape);
            Ok(cx.b.op("Reshape", &[t, &s], vec![], &cx.hint(what)))
        };
        let xm = self.b.op("Mul", &[x, &mk], vec![], &self.hint("masked"));
        if max {
            let zero = self.b.f32_scalar(&self.hint("zero"), 0.0);
            let one = self.b.f32_scalar(&self.hint("one"), 1.0);
            let any = self
                .b
                .op("Clip", &[&count, &zero, &one], vec![], &self.hint("any"));
            let any = per_sample(self, &any, "any_b")?;
            let onec = self.b.f32_scalar(&self.hint("one"), 1.0);
            let big = self.b.f32_scalar(&self.hint("big"), 1e30);
            let off = self.b.op("Sub", &[&mk, &onec], vec![], &self.hint("off"));
            let off = self
                .b
                .op("Mul", &[&off, &big], vec![], &self.hint("off_big"));
            let shifted = self
                .b
                .op("Add", &[&xm, &off], vec![], &self.hint("shifted"));
            let attrs = vec![A::ints("axes", &[1]), A::int("keepdims", 0)];
            let mx = self
                .b
                .op("ReduceMax", &[&shifted], attrs, &self.hint("max"));
            Ok(self.b.op("Mul", &[&mx, &any], vec![], &out))
        } else {
            let sum = self.b.op(
                "ReduceSum",
                &[&xm, &one_ax],
                vec![A::int("keepdims", 0)],
                &self.hint("sum"),
            );
            let one = self.b.f32_scalar(&self.hint("one"), 1.0);
            let big = self.b.f32_scalar(&self.hint("max"), f32::MAX);
            let c = self
                .b
                .op("Clip", &[&count, &one, &big], vec![], &self.hint("count_1"));
            let c = per_sample(self, &c, "count_b")?;
            Ok(self.b.op("Div", &[&sum, &c], vec![], &out))
        }
    }

    /// `t` with axes `from..rank` added as 1s (an `Unsqueeze`), or `t` when none.
    pub fn unsqueeze_tail(&mut self, t: &str, rank: usize, from: usize, what: &str) -> R<String> {
        if from >= rank {
            return Ok(t.to_string());
        }
        let axes: Vec<i64> = (from as i64..rank as i64).collect();
        let a = self.b.i64s(&self.hint("axes"), &axes);
        Ok(self.b.op("Unsqueeze", &[t, &a], vec![], &self.hint(what)))
    }

    /// The parts of a `pretrained` encoder; learned tables become constants
    /// (the rows a fixed length reads).
    fn hf(&mut self, h: &crate::ir::HfOp, x: &str) -> R<String> {
        use crate::ir::ops::hf;
        use crate::ir::HfOp;
        let out = self.out_name();
        let node = self.st.name.clone();
        let rows = |cx: &Self, name: &str, n: usize| -> R<(Vec<usize>, Vec<f32>)> {
            let t = cx.param(name)?;
            let d = t.dims().last().copied().unwrap_or(0);
            let v = values(t, &node)?;
            Ok((vec![n, d], v[..n * d].to_vec()))
        };
        match h {
            HfOp::PositionRows { .. } => {
                let Some(t) = self.in_tys[0].shape.first().and_then(|d| d.fixed()) else {
                    return self.fail("positions of a symbolic length");
                };
                let (dims, v) = rows(self, hf::WEIGHT, t)?;
                let c = self.b.f32(&self.hint("positions"), &dims, &v);
                Ok(self.b.op("Add", &[x, &c], vec![], &out))
            }
            HfOp::SegmentRow { .. } => {
                let (dims, v) = rows(self, hf::WEIGHT, 1)?;
                let c = self.b.f32(&self.hint("segment"), &dims, &v);
                Ok(self.b.op("Add", &[x, &c], vec![], &out))
            }
            HfOp::ClsAndPositions => {
                let cls = self.param_as_is(hf::CLS_TOKEN)?;
                let pos = self.param_as_is(hf::POSITIONS)?;
                let d = self.in_tys[0].shape[1].fixed().unwrap_or(0) as i64;
                let n = self.b.op(
                    "Shape",
                    &[x],
                    vec![A::int("start", 0), A::int("end", 1)],
                    &self.hint("batch"),
                );
                let rest = self.b.i64s(&self.hint("one_by_d"), &[1, d]);
                let shape = self.b.op(
                    "Concat",
                    &[&n, &rest],
                    vec![A::int("axis", 0)],
                    &self.hint("cls_shape"),
                );
                let cls = self
                    .b
                    .op("Expand", &[&cls, &shape], vec![], &self.hint("cls"));
                let seq = self.b.op(
                    "Concat",
                    &[&cls, x],
                    vec![A::int("axis", 1)],
                    &self.hint("tokens"),
                );
                Ok(self.b.op("Add", &[&seq, &pos], vec![], &out))
            }
            HfOp::Normalize { mean, std } => {
                let c = mean.len();
                let f = |v: &[f64]| v.iter().map(|x| *x as f32).collect::<Vec<_>>();
                let m = self.b.f32(&self.hint("mean"), &[c, 1, 1], &f(mean));
                let s = self.b.f32(&self.hint("std"), &[c, 1, 1], &f(std));
                let y = self.b.op("Sub", &[x, &m], vec![], &self.hint("centred"));
                Ok(self.b.op("Div", &[&y, &s], vec![], &out))
            }
        }
    }

    /// Σᵢ softmax(W·gate + b)ᵢ · expertᵢ.
    fn mixture(&mut self, experts: usize) -> R<String> {
        let gate = self.ins[experts].clone();
        let z = self.linear_key(&gate, mixture::WEIGHT, mixture::BIAS, &self.hint("logits"))?;
        let g = self.b.op(
            "Softmax",
            &[&z],
            vec![A::int("axis", 1)],
            &self.hint("gate"),
        );
        let mut terms = vec![];
        for i in 0..experts {
            let e = self.ins[i].clone();
            let idx = self.b.i64s(&self.hint("expert"), &[i as i64]);
            let gi = self.b.op(
                "Gather",
                &[&g, &idx],
                vec![A::int("axis", 1)],
                &self.hint("g"),
            );
            let gi = self.unsqueeze_tail(&gi, self.in_tys[i].rank() + 1, 2, "g_b")?;
            terms.push(self.b.op("Mul", &[&e, &gi], vec![], &self.hint("term")));
        }
        let refs: Vec<&str> = terms.iter().map(String::as_str).collect();
        Ok(self.b.op("Sum", &refs, vec![], &self.out_name()))
    }
}
