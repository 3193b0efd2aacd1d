//! Dead-code elimination: nodes that reach no head or loss are removed.

use super::{Change, PassCx};
use crate::diagnostics::Diagnostic;
use crate::ir::{Graph, Op};
use petgraph::stable_graph::NodeIndex;
use petgraph::Direction;
use std::collections::HashSet;

pub fn run(g: &mut Graph, cx: &mut PassCx) -> Change {
    let mut live: HashSet<NodeIndex> = HashSet::new();
    let mut stack = g.roots();
    while let Some(n) = stack.pop() {
        if live.insert(n) {
            stack.extend(g.g.neighbors_directed(n, Direction::Incoming));
        }
    }
    // Inputs are the model's interface: kept, but an unused one is worth a warning.
    let dead: Vec<NodeIndex> = g.g.node_indices().filter(|n| !live.contains(n)).collect();
    for &n in &dead {
        let node = &g.g[n];
        let users_dead = g.users(n).iter().all(|u| !live.contains(u));
        let top = g.users(n).is_empty();
        if matches!(node.op, Op::Input(_)) {
            if users_dead {
                cx.warnings.push(
                    Diagnostic::warning(
                        "mtl::unused-input",
                        format!("input `{}` reaches no head", node.name),
                    )
                    .label(node.span, "never used by a head or loss")
                    .help("remove it, or feed it into the model"),
                );
            }
        } else if top {
            cx.warnings.push(
                Diagnostic::warning(
                    "mtl::unused",
                    format!("`{}` is computed but reaches no head or loss", node.name),
                )
                .label(node.span, "unused; removed")
                .help("remove this definition, or use it in a head"),
            );
        }
    }
    let mut removed = 0;
    for n in dead {
        if !matches!(g.g[n].op, Op::Input(_)) {
            g.g.remove_node(n);
            removed += 1;
        }
    }
    Change {
        removed,
        ..Default::default()
    }
}
