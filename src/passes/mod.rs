//! The optimizer: one pass per file, each a plain function over the graph that
//! says what it changed; named pipelines run to a fixed point with a cap.

mod algebraic;
mod cse;
mod dce;
mod fold_bn;
mod hoist_rnn;
mod merge_dense;
mod sink_upsample;

use crate::diagnostics::Diagnostic;
use crate::ir::{print_ir, verify, Graph};
use crate::pipeline::{Mode, Options};
use serde::Serialize;

/// What one pass run changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Change {
    pub removed: usize,
    pub merged: usize,
    pub fused: usize,
}

impl Change {
    pub fn any(&self) -> bool {
        self.removed + self.merged + self.fused > 0
    }
}

pub struct PassCx<'a> {
    pub mode: Mode,
    pub warnings: &'a mut Vec<Diagnostic>,
}

type PassFn = fn(&mut Graph, &mut PassCx) -> Change;

/// The passes by name, in pipeline order.
pub const PASSES: &[(&str, PassFn)] = &[
    ("dce", dce::run),
    ("algebraic", algebraic::run),
    ("cse", cse::run),
    ("sink-upsample", sink_upsample::run),
    ("fold-bn", fold_bn::run),
    ("merge-dense", merge_dense::run),
    ("hoist-rnn", hoist_rnn::run),
];

#[derive(Debug, Clone, Default, Serialize)]
pub struct PassStat {
    pub pass: String,
    pub runs: usize,
    pub removed: usize,
    pub merged: usize,
    pub fused: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PassReport {
    pub iterations: usize,
    pub stats: Vec<PassStat>,
    /// (pass, iteration, IR text) for `--print-after`.
    #[serde(skip)]
    pub dumps: Vec<(String, usize, String)>,
}

const MAX_ITERATIONS: usize = 8;

/// Runs the pipeline of `opts.mode` to a fixed point; verifies after every pass.
pub fn run_pipeline(
    g: &mut Graph,
    opts: &Options,
) -> Result<(PassReport, Vec<Diagnostic>), String> {
    let mut warnings = vec![];
    let mut report = PassReport {
        stats: PASSES
            .iter()
            .map(|(n, _)| PassStat {
                pass: n.to_string(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    for it in 0..MAX_ITERATIONS {
        report.iterations = it + 1;
        let mut changed = false;
        for (i, (name, pass)) in PASSES.iter().enumerate() {
            // Dead code is reported once, on the first sweep.
            let mut sink = vec![];
            let mut cx = PassCx {
                mode: opts.mode,
                warnings: if it == 0 { &mut warnings } else { &mut sink },
            };
            let ch = pass(g, &mut cx);
            let st = &mut report.stats[i];
            st.runs += 1;
            st.removed += ch.removed;
            st.merged += ch.merged;
            st.fused += ch.fused;
            changed |= ch.any();
            verify(g, true).map_err(|e| format!("pass `{name}` broke the IR: {e}"))?;
            if opts.print_after_all || opts.print_after.iter().any(|p| p == name) {
                report.dumps.push((name.to_string(), it + 1, print_ir(g)));
            }
        }
        if !changed {
            break;
        }
    }
    Ok((report, warnings))
}

pub fn pass_names() -> Vec<&'static str> {
    PASSES.iter().map(|(n, _)| *n).collect()
}
