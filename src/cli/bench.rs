//! `bench`: training or inference throughput on random data of the model's shapes.

use super::{build, DeviceArgs, Executor, Fail};
use candle_core::{DType, Tensor};
use clap::Args;
use mtl::lower::init_params;
use mtl::lower::planned::{Inference, PlannedTrain};
use mtl::pipeline::Mode;
use mtl::train::loss::head_loss;
use mtl::train::optim::Optimizer;
use rand::{Rng, SeedableRng};
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
    /// Untimed steps first: at least this many, and for at least
    /// `--warmup-ms` (a fresh process's first ~100 ms of steps run up to 2×
    /// slower on this kind of machine; the Python peers time after seconds
    /// of imports and compiling and a pass of 20 warm-up batches).
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    #[arg(long, default_value_t = 300)]
    warmup_ms: u64,
    #[arg(long)]
    no_opt: bool,
    #[command(flatten)]
    device: DeviceArgs,
    #[arg(long)]
    json: bool,
    /// Time per IR node and op kind (forward), and the backward and optimizer totals.
    #[arg(long)]
    profile: bool,
    /// `auto` runs the planned executor where the plan allows it (`mtl
    /// compile --emit plan` says), `candle` the candle path always.
    #[arg(long, value_enum, default_value_t = Executor::Auto)]
    executor: Executor,
    /// Inference: the peak heap one batch adds on the candle path and on the
    /// planned executor. Training: the whole heap's peak during a step on
    /// the executor in use (run once with each `--executor` to compare).
    #[arg(long)]
    memory: bool,
}

pub fn bench(a: BenchArgs) -> Result<i32, Fail> {
    let dev = a.device.open()?;
    let mode = if a.infer { Mode::Infer } else { Mode::Train };
    let (_, cfg, mut prog) = build(&a.model, mode, !a.no_opt, true)?;
    // Frozen layers (`train { freeze }`) get no gradient and no optimizer state.
    prog.set_frozen(&cfg.freeze, &[]);
    let prog = a.device.place(prog, &dev)?;
    let params = init_params(&prog, 0, &dev).map_err(|e| Fail::model(e.to_string()))?;
    let b = a.batch_size.max(1);
    let f = |e: candle_core::Error| Fail::model(format!("error: {e}"));
    let mut x: HashMap<String, Tensor> = HashMap::new();
    // Token ids drawn from the whole vocabulary, as the peers' are: padding
    // (id 0) where it falls, real tokens elsewhere.
    let sig = prog.signature();
    let mut ids = rand::rngs::StdRng::seed_from_u64(1);
    for (name, _, ty) in &prog.inputs {
        let mut shape = vec![b];
        shape.extend(
            ty.dims()
                .ok_or_else(|| Fail::usage("error: bench needs fixed input sizes"))?,
        );
        let t = if ty.dtype == mtl::ir::DType::I64 {
            let vocab = sig
                .inputs
                .iter()
                .find(|i| &i.name == name)
                .and_then(|i| match i.kind {
                    mtl::ir::InputKind::Tokens { vocab } => Some(vocab.max(1) as i64),
                    _ => None,
                })
                .unwrap_or(1);
            let n: usize = shape.iter().product();
            let v: Vec<i64> = (0..n).map(|_| ids.random_range(0..vocab)).collect();
            Tensor::from_vec(v, shape, &dev).map_err(f)?
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
    let mut opt = Optimizer::new(mtl::train::config::TrainConfig::default().optimizer);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    // Forward time per step, then backward and optimizer totals.
    let mut node_times: Vec<f64> = vec![];
    let (mut back_time, mut opt_time, mut profiled) = (0f64, 0f64, 0usize);
    let mut exec = match (mode, a.executor) {
        (Mode::Infer, Executor::Auto) => Inference::new(&prog, &params),
        (Mode::Train, _) => Inference::candle("training runs on candle's autograd"),
        (_, Executor::Candle) => Inference::candle("--executor candle"),
    };
    let mut trainer = match (mode, a.executor) {
        (Mode::Train, Executor::Auto) => PlannedTrain::new(&prog, &params),
        (Mode::Train, Executor::Candle) => {
            Err(mtl::lower::planned::Unplanned("--executor candle".into()))
        }
        _ => Err(mtl::lower::planned::Unplanned("inference".into())),
    };
    let executor = match (mode, &trainer) {
        (Mode::Infer, _) => exec.executor(),
        (_, Ok(_)) => "planned".into(),
        (_, Err(why)) => format!("candle ({why})"),
    };
    if a.memory && mode == Mode::Infer {
        print!(
            "{}",
            memory_report(&prog, &params, &inputs, exec.planned_mut(), b)?
        );
    }
    let mut step = |profile: bool| -> Result<(), Fail> {
        if let Some(pl) = exec.planned_mut() {
            let fwd = if profile {
                pl.forward_timed(&prog, &inputs, &mut node_times)
            } else {
                pl.forward(&prog, &inputs)
            }
            .map_err(|e| Fail::model(e.to_string()))?;
            if profile {
                profiled += 1;
            }
            for (_, slot) in &prog.heads {
                let _ = fwd
                    .get(*slot)
                    .map(|t| t.sum_all().and_then(|s| s.to_scalar::<f32>()));
            }
            return Ok(());
        }
        let fwd = match trainer.as_mut() {
            Ok(pt) => {
                if profile && pt.times.is_none() {
                    pt.times = Some(vec![]);
                }
                pt.forward(&prog, &params, inputs.clone(), &mut rng)
            }
            Err(_) => prog.forward_timed(
                &params,
                inputs.clone(),
                &mut rng,
                profile.then_some(&mut node_times),
            ),
        }
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
                let loss = match trainer.as_mut() {
                    Ok(pt) => {
                        let fused = pt.head_loss(&fwd, *slot, h.loss, (&label, None), false);
                        fused.map_err(|e| Fail::model(e.to_string()))?.0
                    }
                    Err(_) => {
                        let batch = mtl::train::loss::Reduction::Batch;
                        head_loss(h.loss, y, &label, None, batch).map_err(f)?
                    }
                };
                total = (total + loss).map_err(f)?;
            }
            let t0 = Instant::now();
            let store = total.backward().map_err(f)?;
            let mut grads = mtl::train::optim::grads_for(&vars, &store);
            if let Ok(pt) = trainer.as_mut() {
                pt.backward(&prog, &params, (&fwd, &store), &vars, &mut grads)
                    .map_err(|e| Fail::model(e.to_string()))?;
            }
            let t1 = Instant::now();
            if profile {
                back_time += (t1 - t0).as_secs_f64();
            }
            opt.apply(&vars, grads, 1e-4, None).map_err(f)?;
            if profile {
                opt_time += t1.elapsed().as_secs_f64();
            }
        } else {
            for (_, slot) in &prog.heads {
                let _ = fwd
                    .get(*slot)
                    .map(|t| t.sum_all().and_then(|s| s.to_scalar::<f32>()));
            }
        }
        if profile {
            profiled += 1;
        }
        Ok(())
    };
    let warm = Instant::now();
    let mut warmed = 0;
    while warmed < a.warmup || warm.elapsed().as_millis() < u128::from(a.warmup_ms) {
        step(false)?;
        warmed += 1;
    }
    if a.memory && mode == Mode::Train {
        // The whole heap at its highest during a step: weights, optimizer
        // state, a planned executor's arena and packed weights, and whatever
        // the step allocates.
        let (done, peak) = super::heap::peak_total_during(|| step(false));
        done?;
        println!(
            "memory (training step, batch {b}, {executor}): heap peak {:.2} MiB",
            peak as f64 / (1 << 20) as f64
        );
    }
    let mut times = vec![];
    for _ in 0..a.repeats.max(1) {
        let t0 = Instant::now();
        for _ in 0..a.steps.max(1) {
            step(false)?;
        }
        // A GPU queues its kernels: the time counts once they have run.
        dev.synchronize().map_err(f)?;
        times.push(t0.elapsed().as_secs_f64() / a.steps.max(1) as f64);
    }
    // Profiled steps run separately, so timing them does not skew the throughput.
    if a.profile {
        for _ in 0..a.steps.max(1) {
            step(true)?;
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let sps = b as f64 / median;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"model": a.model.display().to_string(), "mode": if mode == Mode::Train { "train" } else { "infer" }, "executor": executor, "optimized": !a.no_opt, "batch_size": b, "device": a.device.device, "precision": a.device.precision_name(), "step_ms": median * 1e3, "samples_per_sec": sps})
        );
    } else {
        println!(
            "{} ({}, {}batch {b}): {:.2} ms/step, {:.0} samples/s (median of {})",
            a.model.display(),
            if mode == Mode::Train {
                "train".to_string()
            } else {
                format!("infer, {executor}")
            },
            if a.no_opt { "no-opt, " } else { "" },
            median * 1e3,
            sps,
            times.len()
        );
    }
    if let Some(t) = trainer.as_ref().ok().and_then(|pt| pt.times.as_ref()) {
        // The planned steps' forward and backward, per node.
        node_times = t.clone();
    }
    if a.profile {
        print!(
            "{}",
            profile_table(&prog, &node_times, back_time, opt_time, profiled.max(1))
        );
    }
    Ok(0)
}

/// The heap one inference batch needs, at its peak: the candle path's
/// tensors (every step's output, kept to the end of the forward, and the
/// kernels' own buffers) against the planned executor's arena (allocated by
/// its first batch) and its scratch. Inputs and weights exist before either.
fn memory_report(
    prog: &mtl::lower::Program,
    params: &mtl::lower::Params,
    inputs: &[(usize, Tensor)],
    planned: Option<&mut mtl::lower::planned::Planned>,
    batch: usize,
) -> Result<String, Fail> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let fail = |e: mtl::lower::RunError| Fail::model(e.to_string());
    let (fwd, candle) =
        super::heap::peak_during(|| prog.forward(params, inputs.to_vec(), &mut rng));
    fwd.map_err(fail)?;
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    let mut out = format!(
        "memory (inference, batch {batch}): candle path peak {:.2} MiB",
        mib(candle)
    );
    match planned {
        Some(p) => {
            let (fwd, planned) = super::heap::peak_during(|| p.forward(prog, inputs));
            fwd.map_err(fail)?;
            out += &format!(
                "; planned peak {:.2} MiB (arena {:.2} MiB), {:.1}x less; packed weights {:.2} MiB\n",
                mib(planned),
                mib(p.arena_bytes(batch)),
                candle as f64 / planned.max(1) as f64,
                mib(p.packed_bytes())
            )
        }
        None => out.push('\n'),
    }
    // Kernel scratch is kept per thread from the first batch on, on either
    // path; the first measured (the candle path) paid for it.
    out += &format!(
        "kernel scratch kept per thread (both paths, counted in the first): {:.2} MiB\n",
        mib(mtl::kernels::scratch::held_bytes())
    );
    Ok(out)
}

/// Forward time per op kind and per IR node, then backward and optimizer, in ms per step.
fn profile_table(
    prog: &mtl::lower::Program,
    node: &[f64],
    back: f64,
    opt: f64,
    steps: usize,
) -> String {
    use std::fmt::Write;
    let per = |t: f64| t * 1e3 / steps as f64;
    let fwd: f64 = node.iter().sum();
    let total = fwd + back + opt;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nprofile (ms per step): forward {:.2}, backward {:.2}, optimizer {:.2}",
        per(fwd),
        per(back),
        per(opt)
    );
    let mut kinds: std::collections::BTreeMap<String, f64> = Default::default();
    for (st, t) in prog.steps.iter().zip(node) {
        *kinds.entry(st.kernel.to_string()).or_default() += t;
    }
    let mut kinds: Vec<_> = kinds.into_iter().collect();
    kinds.sort_by(|a, b| b.1.total_cmp(&a.1));
    let _ = writeln!(out, "forward by kernel:");
    for (k, t) in kinds {
        let _ = writeln!(
            out,
            "  {:>8.3} ms {:>5.1}%  {k}",
            per(t),
            100.0 * t / total.max(1e-12)
        );
    }
    let mut nodes: Vec<(&str, String, f64)> = prog
        .steps
        .iter()
        .zip(node)
        .map(|(s, t)| (s.name.as_str(), s.kernel.to_string(), *t))
        .collect();
    nodes.sort_by(|a, b| b.2.total_cmp(&a.2));
    let _ = writeln!(out, "forward by node (top 10):");
    for (n, k, t) in nodes.into_iter().take(10) {
        let _ = writeln!(out, "  {:>8.3} ms  {n} ({k})", per(t));
    }
    out
}
