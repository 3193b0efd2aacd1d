//! Graph invariants, checked after every stage in tests and debug builds.

use super::ops::Arity;
use super::Graph;
use petgraph::visit::{EdgeRef, IntoEdgeReferences};
use petgraph::Direction;
use std::collections::HashSet;

/// Checks: acyclic, operand slots dense and unique, arity fits the op, names
/// unique, types present when `typed`, heads and losses point at live nodes.
pub fn verify(g: &Graph, typed: bool) -> Result<(), String> {
    if g.topo_order().len() != g.g.node_count() {
        return Err("graph has a cycle".into());
    }
    let mut names = HashSet::new();
    for n in g.g.node_indices() {
        let node = &g.g[n];
        if !names.insert(node.name.as_str()) {
            return Err(format!("duplicate node name %{}", node.name));
        }
        let mut slots: Vec<usize> =
            g.g.edges_directed(n, Direction::Incoming)
                .map(|e| e.weight().slot)
                .collect();
        slots.sort_unstable();
        if slots.iter().enumerate().any(|(i, s)| i != *s) {
            return Err(format!(
                "%{}: operand slots {slots:?} are not 0..n",
                node.name
            ));
        }
        let arity = slots.len();
        let ok = match node.op.rules().arity() {
            Arity::None => arity == 0,
            Arity::One => arity == 1,
            Arity::Many => arity >= 2,
        };
        if !ok {
            return Err(format!(
                "%{}: {} operands for {}",
                node.name,
                arity,
                node.op.kind_name()
            ));
        }
        if typed && node.ty.is_none() {
            return Err(format!("%{} has no type", node.name));
        }
        if let Some(p) = node.param {
            if p.0 >= g.params.len() {
                return Err(format!("%{} points at a missing parameter set", node.name));
            }
        }
    }
    for r in g.roots() {
        if !g.g.contains_node(r) {
            return Err("a head or loss points at a removed node".into());
        }
    }
    for e in (&g.g).edge_references() {
        if !g.g.contains_node(e.source()) || !g.g.contains_node(e.target()) {
            return Err("dangling edge".into());
        }
    }
    Ok(())
}
