//! RNN input-projection hoisting: the input projection of every timestep as
//! one GEMM before the recurrence, instead of one small GEMM per step.
//!
//! Inference only: measured with `mtl bench models/reviews.mtl` (2 cores) it
//! is 1.2× faster at inference but 0.6× at training, because candle's backward
//! of each per-step `narrow` of the hoisted tensor materializes a zero-padded
//! gradient of the whole sequence (O(T²) work).

use super::{Change, Mode, PassCx};
use crate::ir::{Graph, Op};

pub fn run(g: &mut Graph, cx: &mut PassCx) -> Change {
    if cx.mode == Mode::Train {
        return Change::default();
    }
    let mut fused = 0;
    for n in g.g.node_indices().collect::<Vec<_>>() {
        if let Op::Rnn { hoisted, .. } = &mut g.g[n].op {
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
