//! Reads an ONNX file back and checks its structure without a runtime: the
//! opset, that every node input is defined before it is read (a graph input,
//! an initializer or an earlier node's output), that no value is defined
//! twice, that initializers hold as many bytes as their shapes say, that
//! element types agree along every node (the rules of the operators this
//! exporter writes), and that every graph output is produced with its
//! declared type.

use super::proto::{elem, ModelProto, NodeProto};
use prost::Message;
use std::collections::HashMap;

/// What a well-formed file holds, for tests and the CLI.
#[derive(Debug, Clone, PartialEq)]
pub struct Structure {
    pub opset: i64,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub nodes: usize,
    /// Node count per operator type, sorted by name.
    pub ops: Vec<(String, usize)>,
}

/// Decodes `bytes` and checks them; the error lists every problem found.
pub fn check(bytes: &[u8]) -> Result<Structure, String> {
    let model = ModelProto::decode(bytes).map_err(|e| format!("not an ONNX model: {e}"))?;
    let mut problems = vec![];
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(0);
    if opset < 17 {
        problems.push(format!(
            "default-domain opset {opset}, expected 17 or newer"
        ));
    }
    let Some(g) = model.graph else {
        return Err("the model has no graph".into());
    };
    // Every defined value's element type.
    let mut ty: HashMap<String, i32> = HashMap::new();
    fn define(ty: &mut HashMap<String, i32>, name: &str, t: i32, problems: &mut Vec<String>) {
        if ty.insert(name.to_string(), t).is_some() {
            problems.push(format!("value `{name}` is defined twice"));
        }
    }
    for i in &g.input {
        let t = i.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
        match t {
            Some(t) => define(&mut ty, &i.name, t.elem_type, &mut problems),
            None => problems.push(format!("input `{}` has no tensor type", i.name)),
        }
    }
    for t in &g.initializer {
        let n: i64 = t.dims.iter().product();
        let width = match t.data_type {
            elem::FLOAT => 4,
            elem::INT64 => 8,
            other => {
                problems.push(format!("initializer `{}` has element type {other}", t.name));
                0
            }
        };
        if t.dims.iter().any(|d| *d < 0) || n as usize * width != t.raw_data.len() {
            problems.push(format!(
                "initializer `{}`: shape {:?} needs {} bytes, holds {}",
                t.name,
                t.dims,
                n.max(0) as usize * width,
                t.raw_data.len()
            ));
        }
        define(&mut ty, &t.name, t.data_type, &mut problems);
    }
    let mut ops: HashMap<String, usize> = HashMap::new();
    for node in &g.node {
        *ops.entry(node.op_type.clone()).or_default() += 1;
        let mut ins = vec![];
        for i in &node.input {
            if i.is_empty() {
                ins.push(None); // an omitted optional input
                continue;
            }
            match ty.get(i) {
                Some(t) => ins.push(Some(*t)),
                None => {
                    problems.push(format!(
                        "node `{}` ({}) reads `{i}` before it is defined",
                        node.name, node.op_type
                    ));
                    ins.push(None);
                }
            }
        }
        match output_type(node, &ins) {
            Ok(t) => {
                for o in node.output.iter().filter(|o| !o.is_empty()) {
                    define(&mut ty, o, t, &mut problems);
                }
            }
            Err(why) => problems.push(format!("node `{}` ({}): {why}", node.name, node.op_type)),
        }
    }
    for o in &g.output {
        let want = o
            .r#type
            .as_ref()
            .and_then(|t| t.tensor_type.as_ref())
            .map(|t| t.elem_type);
        match (ty.get(&o.name), want) {
            (None, _) => problems.push(format!("output `{}` is never produced", o.name)),
            (Some(t), Some(w)) if *t != w => problems.push(format!(
                "output `{}` is declared with element type {w} but computed as {t}",
                o.name
            )),
            _ => {}
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    let mut ops: Vec<(String, usize)> = ops.into_iter().collect();
    ops.sort();
    Ok(Structure {
        opset,
        inputs: g.input.iter().map(|i| i.name.clone()).collect(),
        outputs: g.output.iter().map(|o| o.name.clone()).collect(),
        nodes: g.node.len(),
        ops,
    })
}

/// The element type a node's outputs have, or why its inputs do not fit.
/// `ins` are the input types, `None` for omitted (or undefined) inputs.
fn output_type(node: &NodeProto, ins: &[Option<i32>]) -> Result<i32, String> {
    let attr_i = |name: &str| {
        node.attribute
            .iter()
            .find(|a| a.name == name)
            .and_then(|a| a.i)
    };
    let at = |k: usize| ins.get(k).copied().flatten();
    let need = |k: usize, want: i32, what: &str| -> Result<(), String> {
        match at(k) {
            Some(t) if t != want => Err(format!(
                "input {k} ({what}) has element type {t}, expected {want}"
            )),
            _ => Ok(()),
        }
    };
    let same = |ks: &[usize]| -> Result<i32, String> {
        let ts: Vec<i32> = ks.iter().filter_map(|k| at(*k)).collect();
        match ts.split_first() {
            Some((first, rest)) if rest.iter().all(|t| t == first) => Ok(*first),
            Some(_) => Err(format!("inputs of different element types {ts:?}")),
            None => Err("no typed input".into()),
        }
    };
    let all: Vec<usize> = (0..ins.len()).collect();
    match node.op_type.as_str() {
        "Cast" => attr_i("to")
            .map(|t| t as i32)
            .ok_or_else(|| "no `to`".into()),
        "Shape" => Ok(elem::INT64),
        "Equal" => same(&all).map(|_| elem::BOOL),
        "Not" => {
            need(0, elem::BOOL, "a boolean")?;
            Ok(elem::BOOL)
        }
        "ConstantOfShape" => {
            need(0, elem::INT64, "the shape")?;
            let t = node
                .attribute
                .iter()
                .find(|a| a.name == "value")
                .and_then(|a| a.t.as_ref());
            Ok(t.map_or(elem::FLOAT, |t| t.data_type))
        }
        "Gather" => {
            need(1, elem::INT64, "the indices")?;
            at(0).ok_or_else(|| "untyped data".into())
        }
        "Reshape" | "Unsqueeze" | "Squeeze" | "Split" | "ReduceSum" | "Expand" => {
            need(1, elem::INT64, "the shape, axes or sizes")?;
            at(0).ok_or_else(|| "untyped data".into())
        }
        "Slice" => {
            for k in 1..ins.len() {
                need(k, elem::INT64, "starts, ends or axes")?;
            }
            at(0).ok_or_else(|| "untyped data".into())
        }
        "Resize" => {
            need(2, elem::FLOAT, "the scales")?;
            at(0).ok_or_else(|| "untyped data".into())
        }
        "Concat" | "Sum" | "Mean" | "Max" | "Min" | "Add" | "Sub" | "Mul" | "Div" | "MatMul"
        | "Clip" | "Identity" | "Transpose" | "Flatten" => same(&all),
        // Float-only operators: every typed input is f32.
        "Conv" | "ConvTranspose" | "MaxPool" | "AveragePool" | "GlobalMaxPool"
        | "GlobalAveragePool" | "ReduceMean" | "ReduceMax" | "Relu" | "Sigmoid" | "Tanh"
        | "Softmax" | "LeakyRelu" | "Erf" | "LayerNormalization" | "LSTM" | "GRU" => {
            for k in 0..ins.len() {
                need(k, elem::FLOAT, "a float tensor")?;
            }
            Ok(elem::FLOAT)
        }
        other => Err(format!(
            "operator `{other}` is not one this exporter writes"
        )),
    }
}
