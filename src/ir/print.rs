//! Deterministic text and Graphviz forms of the IR.

use super::Graph;
use std::fmt::Write;

/// One line per node in topological order: `%name = op(attrs) (%operands) : type [params]`.
pub fn print_ir(g: &Graph) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "model {}", g.name);
    for n in g.topo_order() {
        let node = &g.g[n];
        let ops: Vec<String> = g
            .operands(n)
            .iter()
            .map(|o| format!("%{}", g.g[*o].name))
            .collect();
        let _ = write!(s, "  %{} = {}", node.name, node.op);
        if !ops.is_empty() {
            let _ = write!(s, " ({})", ops.join(", "));
        }
        match &node.ty {
            Some(t) => {
                let _ = write!(s, " : {t}");
            }
            None => s.push_str(" : ?"),
        }
        let prefixes: Vec<String> = node
            .param_ids()
            .iter()
            .map(|p| format!("@{}", g.params[p.0].prefix))
            .collect();
        if !prefixes.is_empty() {
            let _ = write!(s, " {}", prefixes.join(" "));
        }
        if let Some(m) = node.mask {
            let _ = write!(s, " mask(%{})", g.g[m].name);
        }
        if node.folded_bn.is_some() {
            s.push_str(" (batch_norm folded)");
        }
        s.push('\n');
    }
    for h in &g.heads {
        let _ = write!(
            s,
            "  head {} = %{} loss={} weight={} label={}",
            h.name,
            g.g[h.node].name,
            h.loss.name(),
            h.weight,
            h.label
        );
        if let Some(t) = &h.label_type {
            let _ = write!(s, " : {t}");
        }
        s.push('\n');
    }
    for l in &g.losses {
        let ops: Vec<String> = l
            .operands
            .iter()
            .map(|o| format!("%{}", g.g[*o].name))
            .collect();
        let _ = writeln!(
            s,
            "  loss {} = {}({}) weight={}",
            l.name,
            match l.kind {
                crate::ir::AuxKind::Contrastive {
                    temperature,
                    learned,
                } => {
                    format!(
                        "contrastive[t={temperature}{}]",
                        if learned { ", learned" } else { "" }
                    )
                }
                k => k.name().to_string(),
            },
            ops.join(", "),
            l.weight
        );
    }
    s
}

/// Graphviz `dot` text.
pub fn print_dot(g: &Graph) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "digraph \"{}\" {{\n  rankdir=TB;\n  node [shape=box, fontname=monospace];",
        g.name
    );
    let order = g.topo_order();
    for n in &order {
        let node = &g.g[*n];
        let ty = node.ty.as_ref().map(|t| t.to_string()).unwrap_or_default();
        let _ = writeln!(
            s,
            "  n{} [label=\"{}\\n{}\\n{}\"];",
            n.index(),
            node.name,
            node.op.kind_name(),
            ty
        );
    }
    for n in &order {
        for (slot, o) in g.operands(*n).iter().enumerate() {
            let _ = writeln!(s, "  n{} -> n{} [label=\"{slot}\"];", o.index(), n.index());
        }
    }
    for h in &g.heads {
        let _ = writeln!(
            s,
            "  head_{0} [label=\"head {0}\\n{1}\", shape=ellipse];\n  n{2} -> head_{0};",
            h.name,
            h.loss.name(),
            h.node.index()
        );
    }
    s.push_str("}\n");
    s
}
