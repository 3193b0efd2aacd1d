//! RNN input-projection hoisting: the input projection of every timestep as
//! one GEMM before the recurrence, instead of one small GEMM per step.
//!
//! For training only LSTMs are hoisted: they train through our fused
//! recurrence op (`lower/lstm_op.rs`), 1.45–1.8× faster per step than the
//! per-step form (`mtl bench models/reviews.mtl --train`, benches/README.md).
//! Through candle's autograd alone, each per-step slice of a hoisted
//! projection gets a zero-padded gradient of the whole sequence (O(T²)), which
//! made hoisting 0.6× as fast; GRUs, which have no fused op yet, keep
//! per-step projections when training.

use super::{Change, Mode, PassCx};
use crate::ir::{Graph, Op, RnnCell};

pub fn run(g: &mut Graph, cx: &mut PassCx) -> Change {
    let mut fused = 0;
    for n in g.g.node_indices().collect::<Vec<_>>() {
        if let Op::Rnn { hoisted, cell, .. } = &mut g.g[n].op {
            if !*hoisted && (cx.mode == Mode::Infer || *cell == RnnCell::Lstm) {
                *hoisted = true;
                fused += 1;
            }
        }
    }
    Change {
        fused,
        ..Default::default()
    }
}
