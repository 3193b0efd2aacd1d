//! `export`: a trained model as a file other engines run.

use super::{load_trained, Fail};
use clap::Args;
use mtl::export::onnx::{self, ExportOptions};
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// ONNX, opset 17: ONNX Runtime, TensorRT, onnx2torch.
    Onnx,
}

#[derive(Args)]
pub struct ExportArgs {
    /// A model file, or a run directory written by `mtl train`.
    model: PathBuf,
    /// Weights (safetensors); defaults to the run directory's weights.
    #[arg(long)]
    weights: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "onnx")]
    format: Format,
    /// The file written (replaced atomically).
    #[arg(long)]
    output: PathBuf,
    /// Export these heads only (comma-separated); the graph keeps only what
    /// they need, inputs included.
    #[arg(long, value_delimiter = ',')]
    heads: Vec<String>,
    /// Write LSTM/GRU layers unrolled over their length instead of as ONNX
    /// `LSTM`/`GRU` nodes: for converters without those operators (onnx2torch).
    #[arg(long)]
    unroll_rnn: bool,
}

pub fn export(a: ExportArgs) -> Result<i32, Fail> {
    // The inference program after the inference passes: what `predict` runs.
    let dev = candle_core::Device::Cpu;
    let t = load_trained(&a.model, a.weights.clone(), &dev, None, true)?;
    let (g, prog, params) = (t.graph, t.prog, t.params);
    let Format::Onnx = a.format;
    let opts = ExportOptions {
        heads: a.heads,
        name: g.name.clone(),
        unroll_recurrences: a.unroll_rnn,
    };
    let out =
        onnx::export(&prog, &params, &opts).map_err(|e| Fail::model(format!("error: {e}")))?;
    // What we wrote must read back whole; a failure here is our bug, said as such.
    let s = onnx::check::check(&out.bytes).map_err(|e| {
        Fail::model(format!(
            "error: the exported graph fails its structural check (a bug in mtl):\n{e}"
        ))
    })?;
    mtl::files::write_atomic(&a.output, &out.bytes)
        .map_err(|e| Fail::usage(format!("error: cannot write {}: {e}", a.output.display())))?;
    eprintln!(
        "wrote {} (ONNX opset {}, {} nodes, {} initializers; inputs {}; outputs {})",
        a.output.display(),
        s.opset,
        out.nodes,
        out.initializers,
        out.inputs.join(", "),
        out.heads.join(", ")
    );
    Ok(0)
}
