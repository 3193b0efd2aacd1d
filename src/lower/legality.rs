//! What training cannot run: ops whose backward neither candle nor our
//! kernels provide, reported as located diagnostics before any step runs.

use crate::diagnostics::Diagnostic;
use crate::ir::{Graph, Op, Pool, PoolKind};

/// Ops whose backward candle lacks: rejected for training unless lowered with
/// our own. Max pooling has its own (any stride, CPU); average pooling with
/// stride ≠ size has none.
pub fn check(g: &Graph) -> Vec<Diagnostic> {
    let mut out = vec![];
    for n in g.topo_order() {
        let node = &g.g[n];
        if let Op::Pool(Pool {
            kind: PoolKind::Avg,
            size,
            stride,
        }) = &node.op
        {
            if size != stride {
                out.push(
                    Diagnostic::error(
                        "mtl::no-backward",
                        format!(
                            "`{}` with stride {:?} ≠ size {:?} cannot be trained on candle",
                            node.op.kind_name(),
                            stride,
                            size
                        ),
                    )
                    .label(node.span, "no backward pass for this pooling")
                    .help(
                        "use a stride equal to the pool size, `max_pool`, or a strided convolution",
                    ),
                );
            }
        }
    }
    out
}
