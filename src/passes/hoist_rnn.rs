//! RNN input-projection hoisting: the input projection of every timestep as
//! one GEMM before the recurrence, instead of one small GEMM per step.
//!
//! On the CPU a hoisted LSTM or GRU runs as our fused recurrence op
//! (`lower/lstm_op.rs`, `lower/gru_op.rs`) with its own backward, much faster
//! than the per-step form (benches/README.md). Through candle's autograd
//! alone, each per-step slice of a hoisted projection gets a zero-padded
//! gradient of the whole sequence (O(T²)), which made hoisting 0.6× as fast:
//! the fused ops are what make hoisting pay for training.

use super::{Change, PassCx};
use crate::ir::Rnn;
use crate::ir::{Graph, Op};

pub fn run(g: &mut Graph, _cx: &mut PassCx) -> Change {
    let mut fused = 0;
    for n in g.g.node_indices().collect::<Vec<_>>() {
        if let Op::Rnn(Rnn { hoisted, .. }) = &mut g.g[n].op {
            if !*hoisted {
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
