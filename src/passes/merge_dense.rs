//! Inference: sibling dense layers reading one value become one GEMM whose
//! output is sliced back: 2.7–2.9× on three heads dense(10), dense(1),
//! dense(1) over a [64] vector (`cargo bench --bench fusions`).
//! (Splitting a dense over a concat into per-operand GEMMs measured 0.55–0.59×
//! there, so that rewrite is not done.)

use super::{Change, PassCx};
use crate::ir::{Dense, MergedDense, Slice};
use crate::ir::{Graph, Node, Op, ParamId, Type};
use crate::pipeline::Mode;
use petgraph::stable_graph::NodeIndex;
use std::collections::BTreeMap;

pub fn run(g: &mut Graph, cx: &mut PassCx) -> Change {
    if cx.mode != Mode::Infer {
        return Change::default();
    }
    // Dense layers with weights of their own, by operand.
    type Member = (NodeIndex, (ParamId, usize));
    let mut groups: BTreeMap<NodeIndex, Vec<Member>> = BTreeMap::new();
    let users = g.param_users();
    for n in g.topo_order() {
        let node = &g.g[n];
        if let (Op::Dense(Dense { units }), Some(p), None, &[x]) = (
            &node.op,
            node.param,
            node.folded_bn,
            g.operands(n).as_slice(),
        ) {
            if users.get(&p) == Some(&1) {
                groups.entry(x).or_default().push((n, (p, *units)));
            }
        }
    }
    let mut fused = 0;
    for (x, members) in groups.into_iter().filter(|(_, m)| m.len() >= 2) {
        let parts: Vec<(ParamId, usize)> = members.iter().map(|m| m.1).collect();
        let first = &g.g[members[0].0];
        let mut shape = first
            .ty
            .as_ref()
            .map(|t| t.shape.clone())
            .unwrap_or_default();
        if let Some(last) = shape.last_mut() {
            *last = crate::ir::Dim::Fixed(parts.iter().map(|p| p.1).sum());
        }
        let merged = Node {
            op: Op::MergedDense(MergedDense {
                parts: parts.clone(),
            }),
            name: format!("{}+{}", first.name, members.len() - 1),
            span: first.span,
            ty: Some(Type::f32(shape)),
            param: None,
            folded_bn: None,
            mask: first.mask,
        };
        let merged = g.add_node(merged, &[x]);
        let mut start = 0;
        for (m, (_, units)) in &members {
            let old = g.g[*m].clone();
            let slice = g.add_node(
                Node {
                    op: Op::Slice(Slice { start, len: *units }),
                    param: None,
                    ..old
                },
                &[merged],
            );
            g.replace_all_uses(*m, slice);
            g.g.remove_node(*m);
            start += units;
        }
        fused += members.len();
    }
    Change {
        fused,
        ..Default::default()
    }
}
