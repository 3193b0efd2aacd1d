//! `mtl summary`: a Keras-like table of layers, shapes and parameter counts.

use crate::ir::{shape_str, Graph};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write;

#[derive(Debug, Clone, Serialize)]
pub struct LayerRow {
    pub name: String,
    pub op: String,
    /// The per-sample output shape (of the first use, for a shared layer).
    pub output_shape: Vec<ShapeDim>,
    /// Every use's shape, when a shared layer is used more than once.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub output_shapes: Vec<Vec<ShapeDim>>,
    pub params: usize,
    pub inputs: Vec<String>,
    /// The `pretrained` encoder this layer belongs to (its prefix), so a
    /// viewer can fold the encoder into one row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// A `pretrained` encoder as one collapsible group of layers.
#[derive(Debug, Clone, Serialize)]
pub struct GroupRow {
    pub name: String,
    /// The checkpoint directory.
    pub checkpoint: String,
    pub layers: usize,
    pub params: usize,
    pub frozen: bool,
}

/// A dimension as JSON shows it: a number, or a symbolic size's name.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ShapeDim {
    Fixed(usize),
    Sym(String),
}

fn dims_of(ty: Option<&crate::ir::Type>) -> Vec<ShapeDim> {
    ty.map(|t| {
        t.shape
            .iter()
            .map(|d| match d.fixed() {
                Some(v) => ShapeDim::Fixed(v),
                None => ShapeDim::Sym(d.to_string()),
            })
            .collect()
    })
    .unwrap_or_default()
}

fn dims_text(d: &[ShapeDim]) -> String {
    let parts: Vec<String> = d
        .iter()
        .map(|x| match x {
            ShapeDim::Fixed(v) => v.to_string(),
            ShapeDim::Sym(s) => s.clone(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

#[derive(Debug, Clone, Serialize)]
pub struct HeadRow {
    pub name: String,
    pub loss: String,
    pub weight: f64,
    pub output_shape: String,
    pub label: String,
    pub label_shape: String,
    pub metrics: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub model: String,
    pub total_params: usize,
    pub trainable_params: usize,
    pub non_trainable_params: usize,
    pub layers: Vec<LayerRow>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupRow>,
    pub heads: Vec<HeadRow>,
    /// Which parameter groups each head reaches (absent when the model
    /// cannot be lowered for training).
    pub sharing: Option<crate::lower::Sharing>,
}

pub fn summarize(g: &Graph) -> Summary {
    let mut rows: Vec<LayerRow> = vec![];
    let mut by_param: HashMap<usize, usize> = HashMap::new();
    for n in g.topo_order() {
        let node = &g.g[n];
        let shape = dims_of(node.ty.as_ref());
        let inputs: Vec<String> = g.operands(n).iter().map(|o| g.g[*o].name.clone()).collect();
        if let Some(p) = node.param {
            if let Some(&row) = by_param.get(&p.0) {
                let r: &mut LayerRow = &mut rows[row];
                if r.output_shapes.is_empty() {
                    r.output_shapes.push(r.output_shape.clone());
                }
                r.output_shapes.push(shape);
                rows[row].inputs.extend(inputs);
                continue;
            }
            by_param.insert(p.0, rows.len());
            let set = &g.params[p.0];
            rows.push(LayerRow {
                name: set.prefix.clone(),
                op: node.op.kind_name(),
                output_shape: shape,
                output_shapes: vec![],
                params: set.count(true) + set.count(false),
                inputs,
                group: None,
            });
        } else {
            rows.push(LayerRow {
                name: node.name.clone(),
                op: node.op.kind_name(),
                output_shape: shape,
                output_shapes: vec![],
                params: 0,
                inputs,
                group: None,
            });
        }
    }
    let mut groups = vec![];
    for u in &g.pretrained {
        let lead = format!("{}.", u.prefix);
        let mut gr = GroupRow {
            name: u.prefix.clone(),
            checkpoint: u.dir.display().to_string(),
            layers: 0,
            params: 0,
            frozen: g.is_frozen(&u.prefix),
        };
        for r in rows.iter_mut().filter(|r| r.name.starts_with(&lead)) {
            r.group = Some(u.prefix.clone());
            gr.layers += 1;
            gr.params += r.params;
        }
        groups.push(gr);
    }
    let (total, trainable, non) = g.param_counts();
    let heads = g
        .heads
        .iter()
        .map(|h| HeadRow {
            name: h.name.clone(),
            loss: h.loss.name().into(),
            weight: h.weight,
            output_shape: g.g[h.node].ty.as_ref().map(shape_str).unwrap_or_default(),
            label: h.label.clone(),
            label_shape: h
                .label_type
                .as_ref()
                .map(|t| t.to_string())
                .unwrap_or_default(),
            metrics: h.metrics.iter().map(|m| m.name()).collect(),
        })
        .collect();
    Summary {
        model: g.name.clone(),
        total_params: total,
        trainable_params: trainable,
        non_trainable_params: non,
        layers: rows,
        groups,
        heads,
        sharing: crate::lower::lower(g, crate::pipeline::Mode::Train)
            .ok()
            .map(|p| p.sharing()),
    }
}

fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The table as text.
pub fn render(s: &Summary) -> String {
    let mut rows: Vec<[String; 4]> = vec![[
        "Layer (op)".into(),
        "Output shape".into(),
        "Params".into(),
        "Connected to".into(),
    ]];
    let mut opened: Vec<&str> = vec![];
    for l in &s.layers {
        // An encoder's layers follow a header row with its totals, indented.
        if let Some(gname) = l.group.as_deref() {
            if !opened.contains(&gname) {
                opened.push(gname);
                if let Some(gr) = s.groups.iter().find(|x| x.name == gname) {
                    rows.push([
                        format!(
                            "▾ {} (pretrained {}, {} layers{})",
                            gr.name,
                            gr.checkpoint,
                            gr.layers,
                            if gr.frozen { ", frozen" } else { "" }
                        ),
                        String::new(),
                        group(gr.params),
                        String::new(),
                    ]);
                }
            }
        }
        let indent = if l.group.is_some() { "  " } else { "" };
        let mut shapes: Vec<String> = if l.output_shapes.is_empty() {
            vec![dims_text(&l.output_shape)]
        } else {
            l.output_shapes.iter().map(|d| dims_text(d)).collect()
        };
        shapes.dedup();
        rows.push([
            format!("{indent}{} ({})", l.name, l.op),
            shapes.join(", "),
            group(l.params),
            l.inputs.join(", "),
        ]);
    }
    let w: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let total_w = w.iter().sum::<usize>() + 6;
    let mut out = String::new();
    let _ = writeln!(out, "Model: \"{}\"", s.model);
    let rule = |c: char| c.to_string().repeat(total_w);
    let _ = writeln!(out, "{}", rule('━'));
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:>w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2]
        )
        .map(|_| ());
        if i == 0 {
            let _ = writeln!(out, "{}", rule('━'));
        }
    }
    let _ = writeln!(out, "{}", rule('━'));
    let _ = writeln!(out, " Total params: {}", group(s.total_params));
    let _ = writeln!(out, " Trainable params: {}", group(s.trainable_params));
    let _ = writeln!(
        out,
        " Non-trainable params: {}",
        group(s.non_trainable_params)
    );
    let _ = writeln!(out, "{}", rule('─'));
    for h in &s.heads {
        let m = if h.metrics.is_empty() {
            String::new()
        } else {
            format!(", metrics: {}", h.metrics.join(", "))
        };
        let _ = writeln!(
            out,
            " head {}: {} {} (weight {}), label `{}` {}{m}",
            h.name, h.output_shape, h.loss, h.weight, h.label, h.label_shape
        );
    }
    out.lines()
        .map(|l| l.trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_shapes_are_arrays_with_symbolic_sizes_named() {
        let src = "model m {\n input x: f32[T, 6]\n input y: image[3, 16, 16]\n shared enc = dense(4)\n let a = x -> enc\n head h = y -> conv2d(2, 3) -> flatten -> dense(2) { loss: mse }\n head k = x -> global_avg_pool(axis = 1) -> enc { loss: mse }\n head j = a -> global_avg_pool(axis = 1) { loss: mse }\n}";
        let c = crate::compile_str("m.mtl", src, &crate::Options::default());
        let g = c.graph.expect("compiles");
        let j = serde_json::to_value(super::summarize(&g)).unwrap();
        let layer = |name: &str| {
            j["layers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["name"] == name)
                .unwrap_or_else(|| panic!("{name}: {j}"))
                .clone()
        };
        assert_eq!(layer("x")["output_shape"], serde_json::json!(["T", 6]));
        assert_eq!(layer("h.0")["output_shape"], serde_json::json!([2, 14, 14]));
        // The shared layer: its first use, and every use.
        assert_eq!(layer("enc.0")["output_shape"], serde_json::json!(["T", 4]));
        assert_eq!(
            layer("enc.0")["output_shapes"],
            serde_json::json!([["T", 4], [4]])
        );
    }
}
