//! Algebraic clean-ups: identity ops, idempotent activations, permute and
//! reshape pairs that cancel, dropout at inference.

use super::{Change, PassCx};
use crate::ir::Permute;
use crate::ir::{Act, Graph, Op};
use crate::pipeline::Mode;
use petgraph::stable_graph::NodeIndex;

pub fn run(g: &mut Graph, cx: &mut PassCx) -> Change {
    let mut removed = 0;
    for n in g.topo_order() {
        if !g.g.contains_node(n) {
            continue;
        }
        let ops = g.operands(n);
        let Some(&x) = ops.first() else { continue };
        let same_type = g.g[n].ty == g.g[x].ty;
        let forward_to: Option<NodeIndex> = match &g.g[n].op {
            Op::Act(Act::Identity) => Some(x),
            Op::Dropout(_) if cx.mode == Mode::Infer => Some(x),
            // relu(relu(x)) = relu(x)
            Op::Act(a) if a.idempotent() && g.g[x].op == Op::Act(*a) => Some(x),
            Op::Reshape(_) | Op::Flatten(_) if same_type => Some(x),
            // permute(q) ∘ permute(p) = identity when q undoes p
            Op::Permute(Permute { axes: q }) => match &g.g[x].op {
                Op::Permute(Permute { axes: p })
                    if q.iter()
                        .map(|&i| p[i - 1])
                        .enumerate()
                        .all(|(k, a)| a == k + 1) =>
                {
                    g.operands(x).first().copied()
                }
                _ => None,
            },
            _ => None,
        };
        if let Some(to) = forward_to {
            g.replace_all_uses(n, to);
            g.g.remove_node(n);
            removed += 1;
        }
    }
    Change {
        removed,
        ..Default::default()
    }
}
