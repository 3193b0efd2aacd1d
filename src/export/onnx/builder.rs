//! Accumulates an ONNX graph: nodes in topological order, initializers, and
//! value names kept unique (IR node names, checkpoint keys and derived names
//! share one namespace in ONNX).

use super::proto::{AttributeProto, NodeProto, TensorProto};
use std::collections::{HashMap, HashSet};

#[derive(Default)]
pub struct Builder {
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    used: HashSet<String>,
    /// Checkpoint-derived initializers already written: (key, form) → name.
    weights: HashMap<(String, Form), String>,
}

/// How a checkpoint tensor is stored as an initializer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Form {
    AsIs,
    /// A 2-D weight transposed: `x @ Wᵀ` becomes a plain `MatMul(x, W')`.
    Transposed,
}

impl Builder {
    /// Reserves a value name: `hint`, or `hint_1`, `hint_2`… when taken.
    pub fn fresh(&mut self, hint: &str) -> String {
        let mut name = hint.to_string();
        let mut k = 1;
        while !self.used.insert(name.clone()) {
            name = format!("{hint}_{k}");
            k += 1;
        }
        name
    }

    /// Claims `name` exactly (graph inputs and outputs keep the model's names).
    pub fn claim(&mut self, name: &str) -> bool {
        self.used.insert(name.to_string())
    }

    /// One node with one output named after `hint`; returns the output's name.
    pub fn op(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        hint: &str,
    ) -> String {
        let out = self.fresh(hint);
        self.push(op, inputs, std::slice::from_ref(&out), attrs);
        out
    }

    /// One node with outputs already named (an empty name omits an optional output).
    pub fn push(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[String],
        attrs: Vec<AttributeProto>,
    ) {
        let name = outputs
            .iter()
            .find(|o| !o.is_empty())
            .map(|o| format!("{op}:{o}"))
            .unwrap_or_else(|| op.to_string());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.to_vec(),
            name,
            op_type: op.into(),
            attribute: attrs,
        });
    }

    /// An f32 constant (an initializer).
    pub fn f32(&mut self, hint: &str, dims: &[usize], data: &[f32]) -> String {
        let name = self.fresh(hint);
        self.initializers.push(TensorProto::f32(&name, dims, data));
        name
    }

    /// A 1-D i64 constant (shapes, axes, indices).
    pub fn i64s(&mut self, hint: &str, data: &[i64]) -> String {
        let name = self.fresh(hint);
        self.initializers
            .push(TensorProto::i64(&name, &[data.len()], data));
        name
    }

    /// A rank-0 i64 constant (a `Gather` index that drops its axis).
    pub fn i64_scalar(&mut self, hint: &str, v: i64) -> String {
        let name = self.fresh(hint);
        self.initializers.push(TensorProto::i64(&name, &[], &[v]));
        name
    }

    /// A rank-0 f32 constant.
    pub fn f32_scalar(&mut self, hint: &str, v: f32) -> String {
        self.f32(hint, &[], &[v])
    }

    /// A checkpoint tensor as an initializer, written once however often it
    /// is read (a shared layer's weights stay one tensor in the file).
    pub fn weight(&mut self, key: &str, form: Form, dims: &[usize], data: &[f32]) -> String {
        let k = (key.to_string(), form);
        if let Some(n) = self.weights.get(&k) {
            return n.clone();
        }
        let hint = match form {
            Form::AsIs => key.to_string(),
            Form::Transposed => format!("{key}^T"),
        };
        let name = self.f32(&hint, dims, data);
        self.weights.insert(k, name.clone());
        name
    }
}
