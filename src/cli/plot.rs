//! `plot`: a run's learning curves and loss weights, and with `--data` a
//! confusion matrix per classification head and predicted-vs-true per
//! regression head (drawn by `mtl::plot`).

use super::{build, resolve_model, Fail, StorageArgs};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use mtl::data::Encoders;
use mtl::ir::LossKind;
use mtl::lower::init_params;
use mtl::pipeline::Mode;
use mtl::plot::Evaluation;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct PlotArgs {
    /// A run directory written by `mtl train`.
    run: PathBuf,
    /// Labelled data (a manifest or tensor file) to draw the run's
    /// predictions against, with its best weights.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The picture: `.png` or `.svg`.
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    storage: StorageArgs,
}

pub fn plot(a: PlotArgs) -> Result<i32, Fail> {
    let stats = a.run.join("training_statistics.json");
    let text = std::fs::read_to_string(&stats).map_err(|e| {
        Fail::usage(format!(
            "error: {} is not a run directory written by `mtl train` ({}: {e})",
            a.run.display(),
            stats.display()
        ))
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Fail::usage(format!("error: {}: {e}", stats.display())))?;
    let curves = mtl::plot::curves_from_json(&v)
        .map_err(|e| Fail::usage(format!("error: {}: {e}", stats.display())))?;
    let evals = match &a.data {
        Some(d) => evaluations(&a.run, d, &a.storage)?,
        None => vec![],
    };
    mtl::plot::draw(&curves, &evals, &a.output).map_err(|e| Fail::usage(format!("error: {e}")))?;
    eprintln!("wrote {}", a.output.display());
    Ok(0)
}

/// The run's predictions on `data` against its labels: a confusion matrix
/// per classification head with one label per sample (binary ones at 0.5),
/// a scatter per single-valued regression head.
fn evaluations(run: &Path, data: &Path, storage: &StorageArgs) -> Result<Vec<Evaluation>, Fail> {
    let dev = Device::Cpu;
    let (model, weights) = resolve_model(run);
    let weights = weights.ok_or_else(|| Fail::usage("error: `--data` needs the run's weights"))?;
    let (_, _, prog) = build(&model, Mode::Infer, true, false)?;
    let mut params = init_params(&prog, 0, &dev).map_err(|e| Fail::model(e.to_string()))?;
    params
        .load(&weights, &dev)
        .map_err(|e| Fail::model(format!("error: {e}")))?;
    let mut enc = Encoders::load(&run.join("data.json")).unwrap_or_default();
    let sig = prog.signature();
    let ds = mtl::data::load(data, &sig, &mut enc, false, true, &dev, &storage.options())
        .map_err(|e| Fail::model(format!("error: {e}")))?;
    let out = mtl::predict::predict(&prog, &params, &ds, 256, &dev)
        .map_err(|e| Fail::model(format!("error: {e}")))?;
    let f = |e: candle_core::Error| Fail::model(format!("error: {e}"));
    // The label columns alone: the inputs were read once, by the predictions.
    let all: Vec<usize> = (0..ds.n).collect();
    let mut evals = vec![];
    for h in &sig.heads {
        let (Some(y), Some(t)) = (out.get(&h.name), ds.rows_of(&h.label, &all).map_err(f)?) else {
            continue;
        };
        let t = &t;
        let single = y.rank() == 2;
        match h.loss {
            LossKind::CrossEntropy if single => {
                let k = y.dim(1).map_err(f)?;
                let pred = y.argmax(1).map_err(f)?;
                let classes = enc
                    .labels
                    .get(&h.name)
                    .map(|m| m.classes.clone())
                    .filter(|c| c.len() == k)
                    .unwrap_or_else(|| (0..k).map(|c| c.to_string()).collect());
                evals.push(confusion(&h.name, classes, &pred, t).map_err(f)?);
            }
            LossKind::BinaryCrossEntropy if single && y.dim(1).map_err(f)? == 1 => {
                let pred = y.ge(0.5).map_err(f)?.to_dtype(DType::I64).map_err(f)?;
                let truth = t.ge(0.5).map_err(f)?.to_dtype(DType::I64).map_err(f)?;
                // Missing labels (NaN) compare false: keep them out.
                let truth = t
                    .eq(t)
                    .map_err(f)?
                    .where_cond(&truth, &truth.affine(0.0, -1.0).map_err(f)?)
                    .map_err(f)?;
                let classes = vec!["0".to_string(), "1".to_string()];
                evals.push(confusion(&h.name, classes, &pred, &truth).map_err(f)?);
            }
            LossKind::CrossEntropy | LossKind::BinaryCrossEntropy => {}
            _ if single && y.dim(1).map_err(f)? == 1 => {
                let pred = y
                    .flatten_all()
                    .and_then(|v| v.to_vec1::<f32>())
                    .map_err(f)?;
                let truth = t
                    .to_dtype(DType::F32)
                    .and_then(|v| v.flatten_all()?.to_vec1::<f32>())
                    .map_err(f)?;
                let (truth, pred) = truth
                    .into_iter()
                    .zip(pred)
                    .filter(|(t, _)| !t.is_nan())
                    .unzip();
                evals.push(Evaluation::Scatter {
                    head: h.name.clone(),
                    truth,
                    pred,
                });
            }
            _ => {}
        }
    }
    Ok(evals)
}

/// Counts of (label, prediction); labels below 0 are missing.
fn confusion(
    head: &str,
    classes: Vec<String>,
    pred: &Tensor,
    truth: &Tensor,
) -> candle_core::Result<Evaluation> {
    let k = classes.len();
    let p = pred.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
    let t = truth
        .to_dtype(DType::I64)?
        .flatten_all()?
        .to_vec1::<i64>()?;
    let mut counts = vec![vec![0u64; k]; k];
    for (t, p) in t.into_iter().zip(p) {
        if let (Ok(t), Ok(p)) = (usize::try_from(t), usize::try_from(p)) {
            if t < k && p < k {
                counts[t][p] += 1;
            }
        }
    }
    Ok(Evaluation::Confusion {
        head: head.to_string(),
        classes,
        counts,
    })
}
