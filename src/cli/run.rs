//! `predict` and `init`: running compiled models on tensors.

use super::{build, report_storage, resolve_model, Fail, StorageArgs};
use clap::Args;
use mtl::data::{Dataset, Encoders};
use mtl::lower::{init_params, save_atomic, Params};
use mtl::pipeline::Mode;
use std::path::PathBuf;

#[derive(Args)]
pub struct PredictArgs {
    /// A model file, or a run directory written by `mtl train`.
    model: PathBuf,
    /// Weights (safetensors); defaults to the run directory's weights.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Inputs: safetensors (one tensor per input, batch first) or a CSV /
    /// JSON Lines manifest (needs a run directory's vocabularies).
    #[arg(long)]
    input: PathBuf,
    /// Predictions: `.safetensors`, or `.csv` (class names; the tensors go
    /// next to it as `.safetensors`).
    #[arg(long)]
    output: PathBuf,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    no_opt: bool,
    #[command(flatten)]
    storage: StorageArgs,
}

#[derive(Args)]
pub struct InitArgs {
    model: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn predict(a: PredictArgs) -> Result<i32, Fail> {
    let device = mtl::predict::device(&a.device).map_err(Fail::usage)?;
    let (model, run_weights) = resolve_model(&a.model);
    let weights = a
        .weights
        .or(run_weights)
        .ok_or_else(|| Fail::usage("error: --weights is required when MODEL is a file"))?;
    let (_, _, prog) = build(&model, Mode::Infer, !a.no_opt, true)?;
    let prog = prog.for_device(&device);
    let sig = prog.signature();
    let mut params =
        init_params(&prog, 0, &device).map_err(|e| Fail::model(format!("error: {e}")))?;
    params
        .load(&weights, &device)
        .map_err(|e| Fail::model(format!("error: {e}")))?;
    // Vocabularies and label maps of the run, when MODEL is a run directory.
    let enc = Encoders::load(&a.model.join("data.json"))
        .map_err(|e| Fail::usage(format!("error: {e}")))?;
    let opts = a.storage.options();
    let inputs = if mtl::data::is_manifest(&a.input) {
        let m =
            mtl::data::Manifest::read(&a.input).map_err(|e| Fail::usage(format!("error: {e}")))?;
        m.to_dataset(&sig, &enc, false, &opts)
            .map_err(|e| Fail::model(format!("error: {e}")))?
    } else {
        Dataset::load(&a.input, &device, opts.memory_limit)
            .map_err(|e| Fail::usage(format!("error: inputs: {e}")))?
    };
    report_storage(&inputs, "inputs");
    let out = mtl::predict::predict(&prog, &params, &inputs, a.batch_size, &device)
        .map_err(|e| Fail::model(format!("error: {e}")))?;
    let tensors_path = if a.output.extension().is_some_and(|e| e == "csv") {
        let csv = mtl::data::predictions::to_csv(&sig, &enc, &out)
            .map_err(|e| Fail::model(format!("error: {e}")))?;
        let tmp = a.output.with_extension("csv.tmp");
        std::fs::write(&tmp, csv)
            .and_then(|_| std::fs::rename(&tmp, &a.output))
            .map_err(|e| Fail::usage(format!("error: cannot write {}: {e}", a.output.display())))?;
        eprintln!("wrote {}", a.output.display());
        a.output.with_extension("safetensors")
    } else {
        a.output.clone()
    };
    save_atomic(&out, &tensors_path).map_err(|e| Fail::usage(format!("error: {e}")))?;
    let mut names: Vec<String> = out
        .iter()
        .map(|(k, v)| format!("{k} {:?}", v.dims()))
        .collect();
    names.sort();
    eprintln!("wrote {} ({})", tensors_path.display(), names.join(", "));
    Ok(0)
}

pub fn init(a: InitArgs) -> Result<i32, Fail> {
    let (_, _, prog) = build(&a.model, Mode::Infer, true, true)?;
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
    /// The data set: `shapes` (images and captions, four tasks), `mmoe`
    /// (two conflicting regression tasks, the MMoE paper's synthetic data) or
    /// `overlap` (two overlaid shapes, one class task each, MultiMNIST-style).
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
    let (write, extra): (mtl::data::SizedGenerator, &str) = match a.name.as_str() {
        "shapes" => (mtl::data::shapes::write, ", with their images and masks"),
        "mmoe" => (mtl::data::mmoe::write, ""),
        "overlap" => (mtl::data::overlap::write, ", with their images"),
        _ => {
            return Err(Fail::usage(format!(
                "error: unknown data set `{}`; available: shapes, mmoe, overlap",
                a.name
            )))
        }
    };
    write(&a.out, a.n, a.seed).map_err(|e| Fail::usage(format!("error: {e}")))?;
    eprintln!("wrote {}/train.csv and test.csv{extra}", a.out.display());
    Ok(0)
}
