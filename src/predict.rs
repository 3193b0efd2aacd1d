//! Batched inference over a data set: one tensor per head out.

use crate::data::Dataset;
use crate::lower::{head_output, Params, Program, RunError};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use std::collections::HashMap;

/// Runs `prog` over all samples of `data` in batches of `batch_size`;
/// returns one tensor per head: probabilities for classification heads.
pub fn predict(
    prog: &Program,
    params: &Params,
    data: &Dataset,
    batch_size: usize,
    device: &Device,
) -> Result<HashMap<String, Tensor>, RunError> {
    let mut outs: HashMap<String, Vec<Tensor>> = HashMap::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut exec = crate::lower::planned::Inference::new(prog, params);
    for batch in data.chunks(batch_size.max(1)) {
        let (_, batch) = batch.map_err(|e| RunError::Input(e.to_string()))?;
        let prepared = prog.prepare_inputs(&batch, device)?;
        let fwd = exec.forward(prog, params, prepared, &mut rng)?;
        for (h, slot) in &prog.heads {
            let logits = fwd.get(*slot).ok_or_else(|| RunError::Step {
                node: h.name.clone(),
                message: "head not computed".into(),
            })?;
            let y = head_output(h.loss, logits).map_err(|e| RunError::Step {
                node: h.name.clone(),
                message: e.to_string(),
            })?;
            outs.entry(h.name.clone()).or_default().push(y);
        }
    }
    if data.n == 0 {
        // Still validate: an empty or missing input is an error naming it.
        let empty = data
            .batch(&[])
            .map_err(|e| RunError::Input(e.to_string()))?;
        prog.prepare_inputs(&empty, device)?;
    }
    outs.into_iter()
        .map(|(k, v)| {
            Tensor::cat(&v, 0)
                .map(|t| (k.clone(), t))
                .map_err(|e| RunError::Step {
                    node: k,
                    message: e.to_string(),
                })
        })
        .collect()
}

/// The device named on the command line: `cpu`, `cuda`, `cuda:N`, `metal`.
pub fn device(name: &str) -> Result<Device, String> {
    let (kind, index) = match name.split_once(':') {
        Some((k, i)) => match i.parse::<usize>() {
            Ok(i) => (k, i),
            Err(_) => {
                return Err(format!(
                    "bad device `{name}`: the index after `:` is a number, as in `cuda:0`"
                ))
            }
        },
        None => (name, 0),
    };
    match kind {
        "cpu" if index == 0 => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(index).map_err(|e| {
            format!("cannot open CUDA device {index}: {e} (build with `--features cuda`)")
        }),
        "metal" => Device::new_metal(index).map_err(|e| {
            format!("cannot open Metal device {index}: {e} (build with `--features metal`)")
        }),
        _ => Err(format!(
            "unknown device `{name}`: use cpu, cuda, cuda:N or metal"
        )),
    }
}
