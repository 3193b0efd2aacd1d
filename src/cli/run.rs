//! `predict` and `init`: running compiled models on tensors.

use super::{load, Fail};
use clap::Args;
use mtl::lower::{init_params, lower, save_atomic, Params, Program};
use mtl::passes::Mode;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct PredictArgs {
    /// A model file, or a run directory written by `mtl train`.
    model: PathBuf,
    /// Weights (safetensors); defaults to the run directory's weights.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// One tensor per input, keyed by input name, batch first.
    #[arg(long)]
    input: PathBuf,
    #[arg(long)]
    output: PathBuf,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    no_opt: bool,
}

#[derive(Args)]
pub struct InitArgs {
    model: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// A model file, or `RUN_DIR/model.mtl` with `RUN_DIR/weights.safetensors`.
pub fn resolve_model(path: &Path) -> (PathBuf, Option<PathBuf>) {
    if path.is_dir() {
        (
            path.join("model.mtl"),
            Some(path.join("weights.safetensors")),
        )
    } else {
        (path.to_path_buf(), None)
    }
}

pub fn build(model: &Path, mode: Mode, optimize: bool) -> Result<(mtl::ir::Graph, Program), Fail> {
    let opts = mtl::Options {
        optimize,
        mode,
        ..Default::default()
    };
    let (g, _) = load(model, &opts)?;
    let prog = lower(&g, mode);
    Ok((g, prog))
}

pub fn predict(a: PredictArgs) -> Result<i32, Fail> {
    let device = mtl::predict::device(&a.device).map_err(Fail::usage)?;
    let (model, run_weights) = resolve_model(&a.model);
    let weights = a
        .weights
        .or(run_weights)
        .ok_or_else(|| Fail::usage("error: --weights is required when MODEL is a file"))?;
    let (_, prog) = build(&model, Mode::Infer, !a.no_opt)?;
    let mut params =
        init_params(&prog, 0, &device).map_err(|e| Fail::model(format!("error: {e}")))?;
    params
        .load(&weights, &device)
        .map_err(|e| Fail::model(format!("error: {e}")))?;
    let inputs = candle_core::safetensors::load(&a.input, &device).map_err(|e| {
        Fail::usage(format!(
            "error: cannot read inputs {}: {e}",
            a.input.display()
        ))
    })?;
    let out = mtl::predict::predict(&prog, &params, &inputs, a.batch_size, &device)
        .map_err(|e| Fail::model(format!("error: {e}")))?;
    save_atomic(&out, &a.output).map_err(|e| Fail::usage(format!("error: {e}")))?;
    let mut names: Vec<String> = out
        .iter()
        .map(|(k, v)| format!("{k} {:?}", v.dims()))
        .collect();
    names.sort();
    eprintln!("wrote {} ({})", a.output.display(), names.join(", "));
    Ok(0)
}

pub fn init(a: InitArgs) -> Result<i32, Fail> {
    let (_, prog) = build(&a.model, Mode::Infer, true)?;
    let params: Params = init_params(&prog, a.seed, &candle_core::Device::Cpu)
        .map_err(|e| Fail::model(format!("error: {e}")))?;
    params
        .save(&a.out)
        .map_err(|e| Fail::usage(format!("error: {e}")))?;
    eprintln!("wrote {} ({} tensors)", a.out.display(), params.vars.len());
    Ok(0)
}

#[derive(Args)]
pub struct DataArgs {
    /// The data set: `shapes`.
    name: String,
    #[arg(long)]
    out: PathBuf,
    /// Training samples (a quarter as many test samples are written too).
    #[arg(long, default_value_t = 2000)]
    n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn data(a: DataArgs) -> Result<i32, Fail> {
    if a.name != "shapes" {
        return Err(Fail::usage(format!(
            "error: unknown data set `{}`; available: shapes",
            a.name
        )));
    }
    mtl::data::shapes::write(&a.out, a.n, a.seed)
        .map_err(|e| Fail::usage(format!("error: {e}")))?;
    eprintln!(
        "wrote {}/train.safetensors and test.safetensors",
        a.out.display()
    );
    Ok(0)
}
