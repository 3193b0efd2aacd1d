//! RNN input-projection hoisting: the input projection of every timestep as
//! one GEMM before the recurrence, instead of one small GEMM per step.

use super::{Change, PassCx};
use crate::ir::{Graph, Op};

pub fn run(g: &mut Graph, _cx: &mut PassCx) -> Change {
    let mut fused = 0;
    for n in g.g.node_indices().collect::<Vec<_>>() {
        if let Op::Rnn { hoisted, .. } = &mut g.g[n].op {
            if !*hoisted {
                *hoisted = true;
                fused += 1;
            }
        }
    }
    Change { fused, ..Default::default() }
}
