//! Common-subexpression elimination: nodes with the same op, attributes,
//! ordered operands and parameter identity are one. A shared layer applied
//! twice to one value is computed once; what is built on equal values merges too.

use super::{Change, PassCx};
use crate::ir::Graph;
use crate::pipeline::Mode;
use petgraph::stable_graph::NodeIndex;
use std::collections::HashMap;

pub fn run(g: &mut Graph, cx: &mut PassCx) -> Change {
    type Key = (String, Vec<usize>, Vec<NodeIndex>);
    let mut seen: HashMap<Key, NodeIndex> = HashMap::new();
    let mut merged = 0;
    for n in g.topo_order() {
        let node = &g.g[n];
        if !node.op.is_pure(cx.mode == Mode::Train) {
            continue;
        }
        // Nodes without parameters merge by op; with parameters only when the set is the same.
        let key = (
            format!("{:?}", node.op),
            node.param_ids().iter().map(|p| p.0).collect::<Vec<_>>(),
            g.operands(n),
        );
        match seen.get(&key) {
            Some(&first) => {
                g.replace_all_uses(n, first);
                g.g.remove_node(n);
                merged += 1;
            }
            None => {
                seen.insert(key, n);
            }
        }
    }
    Change {
        merged,
        ..Default::default()
    }
}
