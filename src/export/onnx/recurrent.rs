//! LSTM and GRU steps. Without a padding mask a layer is one ONNX `LSTM` /
//! `GRU` node (ONNX Runtime's fused recurrence, the fastest form it runs);
//! with one it is unrolled over its fixed length, because Keras's masking
//! carries the state over padded steps wherever they are, which
//! `sequence_lens` (trailing padding only, zeros after) cannot express.

use super::builder::Form;
use super::proto::AttributeProto as A;
use super::{values, StepCx, R};
use crate::ir::{Rnn, RnnCell};

/// Gate blocks in ONNX order, by index into ours. Ours: LSTM i, f, g, o and
/// GRU r, z, n (Keras's, `reset_after`); ONNX: LSTM i, o, f, c and GRU z, r, h.
fn onnx_order(cell: RnnCell) -> &'static [usize] {
    match cell {
        RnnCell::Lstm => &[0, 3, 1, 2],
        RnnCell::Gru => &[1, 0, 2],
    }
}

/// The rows of `v` regrouped: `block` elements per gate, gates in `order`.
fn regroup(v: &[f32], block: usize, order: &[usize]) -> Vec<f32> {
    order
        .iter()
        .flat_map(|&g| v[g * block..(g + 1) * block].iter().copied())
        .collect()
}

impl StepCx<'_> {
    pub fn rnn(&mut self, r: &Rnn, x: &str) -> R<String> {
        match self.masks.first().cloned().flatten() {
            Some(m) => self.rnn_unrolled(r, x, &m),
            None if self.unroll => {
                // Every step real: a mask of ones keeps one unrolled form.
                let Some(t) = self.in_tys[0].shape.first().and_then(|d| d.fixed()) else {
                    return self.fail("unrolling a recurrence over a symbolic length");
                };
                let ones = self.b.f32(&self.hint("all_real"), &[1, t], &vec![1.0; t]);
                self.rnn_unrolled(r, x, &ones)
            }
            None => self.rnn_node(r, x),
        }
    }

    /// One `LSTM` / `GRU` node over both directions.
    fn rnn_node(&mut self, r: &Rnn, x: &str) -> R<String> {
        let h = r.units;
        let order = onnx_order(r.cell);
        let g = order.len();
        let dirs = r.directions();
        let node = self.st.name.clone();
        let (mut w, mut rr, mut bias) = (vec![], vec![], vec![]);
        let mut input = 0;
        for names in dirs {
            let w_ih = self.param(names.weight_ih)?;
            input = w_ih.dims().get(1).copied().unwrap_or(0);
            w.extend(regroup(&values(w_ih, &node)?, h * input, order));
            rr.extend(regroup(
                &values(self.param(names.weight_hh)?, &node)?,
                h * h,
                order,
            ));
            match r.cell {
                // One bias: the input side's; the recurrent side's is zero.
                RnnCell::Lstm => {
                    bias.extend(regroup(&values(self.param(names.bias)?, &node)?, h, order));
                    bias.extend(std::iter::repeat_n(0.0, g * h));
                }
                RnnCell::Gru => {
                    bias.extend(regroup(
                        &values(self.param(names.bias_ih)?, &node)?,
                        h,
                        order,
                    ));
                    bias.extend(regroup(
                        &values(self.param(names.bias_hh)?, &node)?,
                        h,
                        order,
                    ));
                }
            }
        }
        let d = dirs.len();
        let wn = self.b.f32(&self.hint("W"), &[d, g * h, input], &w);
        let rn = self.b.f32(&self.hint("R"), &[d, g * h, h], &rr);
        let bn = self.b.f32(&self.hint("B"), &[d, 2 * g * h], &bias);
        // ONNX recurrences read [T, N, I] (layout 0: what every runtime implements).
        let xt = self.b.op(
            "Transpose",
            &[x],
            vec![A::ints("perm", &[1, 0, 2])],
            &self.hint("time_major"),
        );
        let mut attrs = vec![
            A::int("hidden_size", h as i64),
            A::string(
                "direction",
                if d == 2 { "bidirectional" } else { "forward" },
            ),
        ];
        let op = match r.cell {
            RnnCell::Lstm => "LSTM",
            RnnCell::Gru => {
                // Keras's `reset_after`: r multiplies (R·h + Rb).
                attrs.push(A::int("linear_before_reset", 1));
                "GRU"
            }
        };
        let out = self.out_name();
        if r.return_sequences {
            // Y [T, D, N, H] → [N, T, D·H]: forward then reverse, as our concat.
            let y = self.b.fresh(&self.hint("Y"));
            self.b
                .push(op, &[&xt, &wn, &rn, &bn], std::slice::from_ref(&y), attrs);
            let p = self.b.op(
                "Transpose",
                &[&y],
                vec![A::ints("perm", &[2, 0, 1, 3])],
                &self.hint("batch_major"),
            );
            let s = self.b.i64s(&self.hint("shape"), &[0, 0, -1]);
            Ok(self.b.op("Reshape", &[&p, &s], vec![], &out))
        } else {
            // Y_h [D, N, H] → [N, D·H].
            let yh = self.b.fresh(&self.hint("Y_h"));
            self.b.push(
                op,
                &[&xt, &wn, &rn, &bn],
                &[String::new(), yh.clone()],
                attrs,
            );
            let p = self.b.op(
                "Transpose",
                &[&yh],
                vec![A::ints("perm", &[1, 0, 2])],
                &self.hint("batch_major"),
            );
            let s = self.b.i64s(&self.hint("shape"), &[0, -1]);
            Ok(self.b.op("Reshape", &[&p, &s], vec![], &out))
        }
    }

    /// The recurrence written out step by step with Keras's masking: at a
    /// padded step the state is kept, s = m·s_new + (1 − m)·s; the output
    /// there is the kept state, or zero under `bidirectional`.
    fn rnn_unrolled(&mut self, r: &Rnn, x: &str, m: &str) -> R<String> {
        let Some(t) = self.in_tys[0].shape.first().and_then(|d| d.fixed()) else {
            return self.fail("a masked recurrent layer over a sequence of symbolic length");
        };
        let h = r.units as i64;
        let g = onnx_order(r.cell).len();
        // Zeros [N, H] for the initial state.
        let n = self.b.op(
            "Shape",
            &[x],
            vec![A::int("start", 0), A::int("end", 1)],
            &self.hint("batch"),
        );
        let hd = self.b.i64s(&self.hint("units"), &[h]);
        let shape = self.b.op(
            "Concat",
            &[&n, &hd],
            vec![A::int("axis", 0)],
            &self.hint("state_shape"),
        );
        let zero = super::proto::TensorProto::f32("", &[1], &[0.0]);
        let zeros = self.b.op(
            "ConstantOfShape",
            &[&shape],
            vec![A::tensor("value", zero)],
            &self.hint("zeros"),
        );
        let one = self.b.f32_scalar(&self.hint("one"), 1.0);
        let split = self.b.i64s(&self.hint("split"), &vec![h; g]);
        let mut dirs = vec![];
        for (d, names) in r.directions().iter().enumerate() {
            let reverse = d == 1;
            let input_bias = match r.cell {
                RnnCell::Lstm => names.bias,
                RnnCell::Gru => names.bias_ih,
            };
            // The input projection of all steps as one product (hoisted).
            let xw = self.linear_key(
                x,
                names.weight_ih,
                input_bias,
                &self.hint(&format!("xw{d}")),
            )?;
            let prefix = self.st.params.clone().unwrap_or_default();
            let key = format!("{prefix}.{}", names.weight_hh);
            let w_hh = self.param(names.weight_hh)?.clone();
            let wt = w_hh
                .t()
                .and_then(|w| w.contiguous())
                .map_err(|e| super::ExportError(e.to_string()))?;
            let whh = self.b.weight(
                &key,
                Form::Transposed,
                &[h as usize, g * h as usize],
                &values(&wt, &self.st.name)?,
            );
            let bhh = match r.cell {
                RnnCell::Gru => Some(self.param_as_is(names.bias_hh)?),
                RnnCell::Lstm => None,
            };
            let (mut hs, mut c) = (zeros.clone(), zeros.clone());
            let mut outs = vec![String::new(); t];
            for step in 0..t {
                let ts = if reverse { t - 1 - step } else { step };
                let base = self.st.name.clone();
                let at = |what: &str| format!("{base}/{what}{d}_{ts}");
                let idx = self.b.i64_scalar(&at("t"), ts as i64);
                let xt = self
                    .b
                    .op("Gather", &[&xw, &idx], vec![A::int("axis", 1)], &at("x"));
                let idx1 = self.b.i64s(&at("t"), &[ts as i64]);
                let mt = self
                    .b
                    .op("Gather", &[m, &idx1], vec![A::int("axis", 1)], &at("m"));
                let keep_old = self.b.op("Sub", &[&one, &mt], vec![], &at("not_m"));
                let mut hw = self.b.op("MatMul", &[&hs, &whh], vec![], &at("hw"));
                if let Some(bh) = &bhh {
                    hw = self.b.op("Add", &[&hw, bh], vec![], &at("hw_b"));
                }
                let (h_new, c_new) = match r.cell {
                    RnnCell::Lstm => {
                        let gates = self.b.op("Add", &[&xt, &hw], vec![], &at("gates"));
                        let parts: Vec<String> = (0..4)
                            .map(|k| self.b.fresh(&at(&format!("gate{k}_"))))
                            .collect();
                        self.b
                            .push("Split", &[&gates, &split], &parts, vec![A::int("axis", 1)]);
                        let ig = self.b.op("Sigmoid", &[&parts[0]], vec![], &at("i"));
                        let fg = self.b.op("Sigmoid", &[&parts[1]], vec![], &at("f"));
                        let gg = self.b.op("Tanh", &[&parts[2]], vec![], &at("g"));
                        let og = self.b.op("Sigmoid", &[&parts[3]], vec![], &at("o"));
                        let fc = self.b.op("Mul", &[&fg, &c], vec![], &at("fc"));
                        let ic = self.b.op("Mul", &[&ig, &gg], vec![], &at("ig"));
                        let c_new = self.b.op("Add", &[&fc, &ic], vec![], &at("c_new"));
                        let tc = self.b.op("Tanh", &[&c_new], vec![], &at("tanh_c"));
                        (
                            self.b.op("Mul", &[&og, &tc], vec![], &at("h_new")),
                            Some(c_new),
                        )
                    }
                    RnnCell::Gru => {
                        let xs: Vec<String> = (0..3)
                            .map(|k| self.b.fresh(&at(&format!("x{k}_"))))
                            .collect();
                        self.b
                            .push("Split", &[&xt, &split], &xs, vec![A::int("axis", 1)]);
                        let hp: Vec<String> = (0..3)
                            .map(|k| self.b.fresh(&at(&format!("h{k}_"))))
                            .collect();
                        self.b
                            .push("Split", &[&hw, &split], &hp, vec![A::int("axis", 1)]);
                        let rs = self.b.op("Add", &[&xs[0], &hp[0]], vec![], &at("r_in"));
                        let rg = self.b.op("Sigmoid", &[&rs], vec![], &at("r"));
                        let zs = self.b.op("Add", &[&xs[1], &hp[1]], vec![], &at("z_in"));
                        let zg = self.b.op("Sigmoid", &[&zs], vec![], &at("z"));
                        let rh = self.b.op("Mul", &[&rg, &hp[2]], vec![], &at("r_h"));
                        let ns = self.b.op("Add", &[&xs[2], &rh], vec![], &at("n_in"));
                        let ng = self.b.op("Tanh", &[&ns], vec![], &at("n"));
                        let omz = self.b.op("Sub", &[&one, &zg], vec![], &at("one_minus_z"));
                        let a = self.b.op("Mul", &[&omz, &ng], vec![], &at("zn"));
                        let bz = self.b.op("Mul", &[&zg, &hs], vec![], &at("zh"));
                        (self.b.op("Add", &[&a, &bz], vec![], &at("h_new")), None)
                    }
                };
                let keep = |cx: &mut Self, new: &str, old: &str, what: &str| {
                    let a =
                        cx.b.op("Mul", &[new, &mt], vec![], &at(&format!("{what}_new")));
                    let b = cx.b.op(
                        "Mul",
                        &[old, &keep_old],
                        vec![],
                        &at(&format!("{what}_old")),
                    );
                    cx.b.op("Add", &[&a, &b], vec![], &at(what))
                };
                if let Some(c_new) = c_new {
                    c = keep(self, &c_new, &c, "c");
                }
                hs = keep(self, &h_new, &hs, "h");
                outs[ts] = if r.bidirectional {
                    self.b.op("Mul", &[&h_new, &mt], vec![], &at("out"))
                } else {
                    hs.clone()
                };
            }
            dirs.push(if r.return_sequences {
                let ax = self.b.i64s(&self.hint("axis1"), &[1]);
                let seq: Vec<String> = outs
                    .iter()
                    .map(|o| {
                        self.b
                            .op("Unsqueeze", &[o, &ax], vec![], &self.hint("step"))
                    })
                    .collect();
                let refs: Vec<&str> = seq.iter().map(String::as_str).collect();
                self.b.op(
                    "Concat",
                    &refs,
                    vec![A::int("axis", 1)],
                    &self.hint(&format!("dir{d}")),
                )
            } else {
                hs
            });
        }
        let out = self.out_name();
        let refs: Vec<&str> = dirs.iter().map(String::as_str).collect();
        Ok(self.b.op("Concat", &refs, vec![A::int("axis", -1)], &out))
    }
}
