//! `predict` and `init`: running compiled models on tensors.

use super::{build, report_storage, resolve_model, DeviceArgs, Fail, StorageArgs};
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
    #[command(flatten)]
    device: DeviceArgs,
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

/// Where `predict` reads its inputs from.
enum Source {
    Manifest(mtl::data::Manifest),
    Tensors(Dataset),
}

pub fn predict(a: PredictArgs) -> Result<i32, Fail> {
    if !a
        .output
        .extension()
        .is_some_and(|e| e == "csv" || e == "safetensors")
    {
        return Err(Fail::usage(format!(
            "error: --output {}: write predictions to a `.safetensors` or `.csv` file",
            a.output.display()
        )));
    }
    let device = a.device.open()?;
    let t = super::load_trained(
        &a.model,
        a.weights.clone(),
        &device,
        Some(&a.device),
        !a.no_opt,
    )?;
    let (prog, params, enc) = (t.prog, t.params, t.enc);
    let sig = prog.signature();
    let opts = a.storage.options();
    // Inputs absent from the data (no column, no tensor): answer the heads
    // that do not need them and name the others.
    let source = if mtl::data::is_manifest(&a.input) {
        let m =
            mtl::data::Manifest::read(&a.input).map_err(|e| Fail::usage(format!("error: {e}")))?;
        Source::Manifest(m)
    } else {
        let d = Dataset::load(&a.input, &device, opts.memory_limit)
            .map_err(|e| Fail::usage(format!("error: inputs: {e}")))?;
        Source::Tensors(d)
    };
    let absent: Vec<String> = sig
        .inputs
        .iter()
        .map(|i| i.name.clone())
        .filter(|n| match &source {
            Source::Manifest(m) => m.column(n).is_none(),
            Source::Tensors(d) => !d.has(n),
        })
        .collect();
    let (prog, sig) = if absent.is_empty() {
        (prog, sig)
    } else {
        let (p, skipped) = prog.without_inputs(&absent);
        for (head, needs) in &skipped {
            let needs: Vec<String> = needs.iter().map(|n| format!("`{n}`")).collect();
            eprintln!(
                "skipped head `{head}`: it needs input {} (absent from {})",
                needs.join(", "),
                a.input.display()
            );
        }
        if p.heads.is_empty() {
            return Err(Fail::usage(format!(
                "error: every head needs an input absent from {}: {}",
                a.input.display(),
                absent.join(", ")
            )));
        }
        let s = p.signature();
        (p, s)
    };
    // A manifest is decoded for the inputs still needed.
    let inputs = match source {
        Source::Manifest(m) => m
            .to_dataset(&sig, &enc, false, &opts)
            .map_err(|e| Fail::model(format!("error: {e}")))?,
        Source::Tensors(d) => d,
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
    write_tensors(&out, &tensors_path)
}

/// Writes `tensors` atomically and says what went where.
fn write_tensors(
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
    path: &std::path::Path,
) -> Result<i32, Fail> {
    save_atomic(tensors, path).map_err(|e| Fail::usage(format!("error: {e}")))?;
    let mut names: Vec<String> = tensors
        .iter()
        .map(|(k, v)| format!("{k} {:?}", v.dims()))
        .collect();
    names.sort();
    eprintln!("wrote {} ({})", path.display(), names.join(", "));
    Ok(0)
}

pub fn init(a: InitArgs) -> Result<i32, Fail> {
    let (g, _, prog) = build(&a.model, Mode::Infer, true, true)?;
    let params: Params = init_params(&prog, a.seed, &candle_core::Device::Cpu)
        .map_err(|e| Fail::model(format!("error: {e}")))?;
    // Pretrained encoders come from their checkpoints; the rest is fresh.
    super::load_pretrained(&g, &params)?;
    params
        .save(&a.out)
        .map_err(|e| Fail::usage(format!("error: {e}")))?;
    eprintln!("wrote {} ({} tensors)", a.out.display(), params.vars.len());
    Ok(0)
}

#[derive(Args)]
pub struct DataArgs {
    /// A generated data set: `shapes` (images and captions, four tasks),
    /// `mmoe` (two conflicting regression tasks, the MMoE paper's synthetic
    /// data), `overlap` (two overlaid shapes, one class task each,
    /// MultiMNIST-style) or `tones` (audio and images, three tasks); or
    /// `decode`: the tensors MODEL is fed from `--data`, written to `--output`.
    name: String,
    /// For `decode`: the model file or run directory (its vocabularies and
    /// label maps) whose inputs are decoded.
    model: Option<PathBuf>,
    /// Where a generator writes.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Training samples (a quarter as many test samples are written too).
    #[arg(long, default_value_t = 2000)]
    n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// For `decode`: the manifest to decode.
    #[arg(long)]
    data: Option<PathBuf>,
    /// For `decode`: the safetensors file written, one tensor per input.
    #[arg(long)]
    output: Option<PathBuf>,
    /// For `decode`: only the first N rows.
    #[arg(long)]
    rows: Option<usize>,
    #[command(flatten)]
    storage: super::StorageArgs,
}

pub fn data(a: DataArgs) -> Result<i32, Fail> {
    if a.name == "decode" {
        return decode(a);
    }
    let (write, extra): (mtl::data::SizedGenerator, &str) = match a.name.as_str() {
        "shapes" => (mtl::data::shapes::write, ", with their images and masks"),
        "mmoe" => (mtl::data::mmoe::write, ""),
        "overlap" => (mtl::data::overlap::write, ", with their images"),
        "tones" => (mtl::data::tones::write, ", with their sounds and images"),
        _ => {
            return Err(Fail::usage(format!(
                "error: unknown data set `{}`; available: shapes, mmoe, overlap, tones (or `decode MODEL`)",
                a.name
            )))
        }
    };
    let out = a
        .out
        .ok_or_else(|| Fail::usage("error: --out DIR is required"))?;
    write(&out, a.n, a.seed).map_err(|e| Fail::usage(format!("error: {e}")))?;
    eprintln!("wrote {}/train.csv and test.csv{extra}", out.display());
    Ok(0)
}

/// `mtl data decode MODEL --data MANIFEST --output X.safetensors [--rows N]`:
/// what the model would see for each input, after decoding, resizing,
/// tokenizing and spectrograms.
fn decode(a: DataArgs) -> Result<i32, Fail> {
    let usage =
        "usage: mtl data decode MODEL|RUN_DIR --data MANIFEST --output X.safetensors [--rows N]";
    let (Some(model), Some(data), Some(output)) = (&a.model, &a.data, &a.output) else {
        return Err(Fail::usage(format!("error: {usage}")));
    };
    let (model_file, _) = resolve_model(model);
    let (_, _, prog) = build(&model_file, Mode::Infer, true, true)?;
    let sig = prog.signature();
    // A run's vocabularies and label maps; for a model file, built from the data.
    let run = model.join("data.json");
    let mut enc = Encoders::load(&run).map_err(|e| Fail::usage(format!("error: {e}")))?;
    let fit = !run.exists();
    let dev = candle_core::Device::Cpu;
    let ds = mtl::data::load(data, &sig, &mut enc, fit, false, &dev, &a.storage.options())
        .map_err(|e| Fail::model(format!("error: {e}")))?;
    let ds = match a.rows {
        Some(n) if n < ds.n => ds.subset(&(0..n).collect::<Vec<_>>()),
        _ => ds,
    };
    let all = ds
        .tensors()
        .map_err(|e| Fail::model(format!("error: {e}")))?;
    let tensors: std::collections::HashMap<String, candle_core::Tensor> = sig
        .inputs
        .iter()
        .filter_map(|i| all.get(&i.name).map(|t| (i.name.clone(), t.clone())))
        .collect();
    write_tensors(&tensors, output)
}
