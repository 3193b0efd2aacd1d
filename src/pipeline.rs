//! What the pipeline is asked to do: the [`Mode`] a model is compiled for
//! (training or inference, which decides what the passes may drop or fold and
//! how the lowering runs) and the [`Options`] of one compilation (whether the
//! optimizer runs, and which IR dumps it records). Read by `driver`, `passes`
//! and `lower`; depends on nothing in the crate.

use serde::Serialize;

/// Training keeps stochastic ops and batch statistics; inference may drop or fold them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Train,
    Infer,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Run the optimizer pipeline (`--no-opt` turns it off).
    pub optimize: bool,
    pub mode: Mode,
    /// Record the IR text after these passes (`--print-after`), or all.
    pub print_after: Vec<String>,
    pub print_after_all: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            optimize: true,
            mode: Mode::Infer,
            print_after: vec![],
            print_after_all: false,
        }
    }
}
