//! What training cannot run: ops whose backward neither candle nor our
//! kernels provide, reported as located diagnostics before any step runs.

use crate::diagnostics::Diagnostic;
use crate::ir::{Conv, Graph, Op, Pool, PoolKind};

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

/// What no kernel runs, in either mode: a convolution whose strides or
/// dilations differ per axis (our im2col kernel and candle's conv take one
/// value for all axes). Found at check time, at the layer.
pub fn unsupported(g: &Graph) -> Vec<Diagnostic> {
    let mut out = vec![];
    for n in g.topo_order() {
        let node = &g.g[n];
        if let Op::Conv(Conv {
            stride, dilation, ..
        }) = &node.op
        {
            let mixed = |v: &[usize]| v.iter().any(|x| *x != v[0]);
            if mixed(stride) || mixed(dilation) {
                out.push(
                    Diagnostic::error(
                        "mtl::unsupported",
                        format!(
                            "`{}` with strides {stride:?} and dilations {dilation:?} cannot run: each must be the same on every axis",
                            node.op.kind_name()
                        ),
                    )
                    .label(node.span, "per-axis strides or dilations that differ")
                    .help("use one stride (and dilation) for both axes, e.g. `stride = 2`, and pool or reshape the other axis"),
                );
            }
        }
    }
    out
}
