//! Multi-head attention (Keras `MultiHeadAttention`): projections, the
//! scaled query, the padding and causal masks added as −1e9, softmax, the
//! weighted sum per head and the output projection, with standard ops.

use super::proto::AttributeProto as A;
use super::{StepCx, R};
use crate::ir::ops::attention as n;
use crate::ir::Attention;

impl StepCx<'_> {
    /// `query` [N, Tq, Dq] over `context` [N, Tk, Dk]; `masks` are the
    /// (query, key) padding masks, f32 [N, T].
    pub fn attention(
        &mut self,
        query: &str,
        context: &str,
        a: &Attention,
        (qm, km): (Option<String>, Option<String>),
        out: &str,
    ) -> R<String> {
        let (heads, dk, dv) = (a.heads as i64, a.key_dim as i64, a.value_dim as i64);
        let q = self.linear_key(query, n::QUERY_WEIGHT, n::QUERY_BIAS, &self.hint("q"))?;
        let k = self.linear_key(context, n::KEY_WEIGHT, n::KEY_BIAS, &self.hint("k"))?;
        let v = self.linear_key(context, n::VALUE_WEIGHT, n::VALUE_BIAS, &self.hint("v"))?;
        // [N, T, H·d] → [N, T, H, d] → permuted.
        let split = |cx: &mut Self, y: &str, d: i64, perm: &[i64], what: &str| {
            let s = cx.b.i64s(&cx.hint("heads_shape"), &[0, 0, heads, d]);
            let r = cx.b.op(
                "Reshape",
                &[y, &s],
                vec![],
                &cx.hint(&format!("{what}_heads")),
            );
            cx.b.op(
                "Transpose",
                &[&r],
                vec![A::ints("perm", perm)],
                &cx.hint(what),
            )
        };
        let q = split(self, &q, dk, &[0, 2, 1, 3], "q_h");
        let kt = split(self, &k, dk, &[0, 2, 3, 1], "k_t");
        let v = split(self, &v, dv, &[0, 2, 1, 3], "v_h");
        // Keras scales the query before the product.
        let scale = self
            .b
            .f32_scalar(&self.hint("scale"), (1.0 / (dk as f64).sqrt()) as f32);
        let q = self
            .b
            .op("Mul", &[&q, &scale], vec![], &self.hint("q_scaled"));
        let mut scores = self
            .b
            .op("MatMul", &[&q, &kt], vec![], &self.hint("scores"));
        // The allowed (query, key) pairs: real queries × real keys × earlier keys.
        let mut allowed: Vec<String> = vec![];
        if let Some(m) = qm {
            let ax = self.b.i64s(&self.hint("axes"), &[1, 3]);
            allowed.push(
                self.b
                    .op("Unsqueeze", &[&m, &ax], vec![], &self.hint("query_mask")),
            );
        }
        if let Some(m) = km {
            let ax = self.b.i64s(&self.hint("axes"), &[1, 2]);
            allowed.push(
                self.b
                    .op("Unsqueeze", &[&m, &ax], vec![], &self.hint("key_mask")),
            );
        }
        if a.causal {
            let len = |cx: &Self, i: usize| {
                cx.in_tys
                    .get(i)
                    .and_then(|t| t.shape.first())
                    .and_then(|d| d.fixed())
            };
            let tq = if self.in_tys[0].rank() == 1 {
                Some(1)
            } else {
                len(self, 0)
            };
            let tk = len(self, self.in_tys.len() - 1);
            let (Some(tq), Some(tk)) = (tq, tk) else {
                return self.fail("causal attention over a sequence of symbolic length");
            };
            let earlier: Vec<f32> = (0..tq * tk)
                .map(|i| if i % tk > i / tk { 0.0 } else { 1.0 })
                .collect();
            allowed.push(self.b.f32(&self.hint("causal"), &[1, 1, tq, tk], &earlier));
        }
        if let Some((first, rest)) = allowed.split_first() {
            let mut acc = first.clone();
            for m in rest {
                acc = self.b.op("Mul", &[&acc, m], vec![], &self.hint("allowed"));
            }
            let one = self.b.f32_scalar(&self.hint("one"), 1.0);
            let big = self.b.f32_scalar(&self.hint("big"), 1e9);
            let off = self
                .b
                .op("Sub", &[&acc, &one], vec![], &self.hint("blocked"));
            let bias = self
                .b
                .op("Mul", &[&off, &big], vec![], &self.hint("mask_bias"));
            scores = self.b.op(
                "Add",
                &[&scores, &bias],
                vec![],
                &self.hint("masked_scores"),
            );
        }
        let p = self.b.op(
            "Softmax",
            &[&scores],
            vec![A::int("axis", -1)],
            &self.hint("probs"),
        );
        let o = self
            .b
            .op("MatMul", &[&p, &v], vec![], &self.hint("weighted"));
        let o = self.b.op(
            "Transpose",
            &[&o],
            vec![A::ints("perm", &[0, 2, 1, 3])],
            &self.hint("heads_last"),
        );
        let s = self.b.i64s(&self.hint("merge_shape"), &[0, 0, heads * dv]);
        if a.hf {
            // Hugging Face's layout: the output projection is a dense step of its own.
            return Ok(self.b.op("Reshape", &[&o, &s], vec![], out));
        }
        let o = self
            .b
            .op("Reshape", &[&o, &s], vec![], &self.hint("merged"));
        self.linear_key(&o, n::OUT_WEIGHT, n::OUT_BIAS, out)
    }
}
