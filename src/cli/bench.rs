//! `bench`: training or inference throughput on random data of the model's shapes.

use super::run::build;
use super::Fail;
use candle_core::{DType, Tensor};
use clap::Args;
use mtl::lower::init_params;
use mtl::passes::Mode;
use mtl::train::loss::head_loss;
use mtl::train::optim::Optimizer;
use rand::SeedableRng;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    model: PathBuf,
    /// Time training steps (forward, backward, Adam); the default.
    #[arg(long, conflicts_with = "infer")]
    train: bool,
    /// Time inference batches.
    #[arg(long)]
    infer: bool,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Timed steps per repeat.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    #[arg(long)]
    no_opt: bool,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    json: bool,
}

pub fn bench(a: BenchArgs) -> Result<i32, Fail> {
    let dev = mtl::predict::device(&a.device).map_err(Fail::usage)?;
    let mode = if a.infer { Mode::Infer } else { Mode::Train };
    let (_, prog) = build(&a.model, mode, !a.no_opt, true)?;
    let params = init_params(&prog, 0, &dev).map_err(|e| Fail::model(e.to_string()))?;
    let b = a.batch_size.max(1);
    let f = |e: candle_core::Error| Fail::model(format!("error: {e}"));
    let mut x: HashMap<String, Tensor> = HashMap::new();
    for (name, _, ty) in &prog.inputs {
        let mut shape = vec![b];
        shape.extend(
            ty.dims()
                .ok_or_else(|| Fail::usage("error: bench needs fixed input sizes"))?,
        );
        let t = if ty.dtype == mtl::ir::DType::I64 {
            Tensor::zeros(shape, DType::I64, &dev).map_err(f)?
        } else {
            Tensor::rand(0f32, 1.0, shape, &dev).map_err(f)?
        };
        x.insert(name.clone(), t);
    }
    let inputs = prog
        .prepare_inputs(&x, &dev)
        .map_err(|e| Fail::model(e.to_string()))?;
    let vars: Vec<(String, candle_core::Var)> = params
        .trainable
        .iter()
        .map(|k| (k.clone(), params.vars[k].clone()))
        .collect();
    let mut opt = Optimizer::new(mtl::ir::TrainConfig::default().optimizer);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut step = || -> Result<(), Fail> {
        let fwd = prog
            .forward(&params, inputs.clone(), &mut rng)
            .map_err(|e| Fail::model(e.to_string()))?;
        if mode == Mode::Train {
            let mut total = Tensor::zeros((), DType::F32, &dev).map_err(f)?;
            for (h, slot) in &prog.heads {
                let y = fwd
                    .get(*slot)
                    .ok_or_else(|| Fail::model("head not computed"))?;
                let label = match h.loss {
                    mtl::ir::LossKind::CrossEntropy => Tensor::zeros(
                        y.dims()[..1]
                            .iter()
                            .chain(y.dims().get(2..).unwrap_or(&[]))
                            .copied()
                            .collect::<Vec<_>>(),
                        DType::I64,
                        &dev,
                    ),
                    _ => y.zeros_like(),
                }
                .map_err(f)?;
                total = (total + head_loss(h.loss, y, &label, None).map_err(f)?).map_err(f)?;
            }
            let grads = total.backward().map_err(f)?;
            opt.apply(
                &vars,
                mtl::train::optim::grads_for(&vars, &grads),
                1e-4,
                None,
            )
            .map_err(f)?;
        } else {
            for (_, slot) in &prog.heads {
                let _ = fwd
                    .get(*slot)
                    .map(|t| t.sum_all().and_then(|s| s.to_scalar::<f32>()));
            }
        }
        Ok(())
    };
    for _ in 0..2 {
        step()?;
    }
    let mut times = vec![];
    for _ in 0..a.repeats.max(1) {
        let t0 = Instant::now();
        for _ in 0..a.steps.max(1) {
            step()?;
        }
        times.push(t0.elapsed().as_secs_f64() / a.steps.max(1) as f64);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let sps = b as f64 / median;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"model": a.model.display().to_string(), "mode": if mode == Mode::Train { "train" } else { "infer" }, "optimized": !a.no_opt, "batch_size": b, "step_ms": median * 1e3, "samples_per_sec": sps})
        );
    } else {
        println!(
            "{} ({}, {}batch {b}): {:.2} ms/step, {:.0} samples/s (median of {})",
            a.model.display(),
            if mode == Mode::Train {
                "train"
            } else {
                "infer"
            },
            if a.no_opt { "no-opt, " } else { "" },
            median * 1e3,
            sps,
            times.len()
        );
    }
    Ok(0)
}
