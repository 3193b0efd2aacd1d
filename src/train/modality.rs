//! Modality dropout (Ludwig's `modality_dropout`): in training, each
//! sample's value of an input declared `{ dropout: P }` is replaced by zeros
//! with probability P, so the heads learn to answer from the other inputs.
//! Zeros are what an absent value becomes in the data (`missing: zeros`),
//! and for token ids they are padding.

use crate::distributed::Part;
use crate::lower::Program;
use candle_core::{Result, Tensor};
use rand::rngs::StdRng;
use rand::Rng;

/// Zeroes whole samples of the inputs with a dropout probability. Draws from
/// `rng` only for such inputs, so other models' runs are unchanged; draws for
/// the whole batch when it is split over ranks (`part`).
pub fn drop_inputs(
    prog: &Program,
    inputs: &mut [(usize, Tensor)],
    rng: &mut StdRng,
    part: &Part,
) -> Result<()> {
    for (name, slot, _) in &prog.inputs {
        let p = prog.input_policies.get(name).map_or(0.0, |p| p.dropout);
        if p <= 0.0 {
            continue;
        }
        let Some((_, t)) = inputs.iter_mut().find(|(s, _)| s == slot) else {
            continue;
        };
        let n = t.dim(0)?;
        let keep: Vec<u8> = part.keep(1, || u8::from(!rng.random_bool(p)));
        let mut shape = vec![n];
        shape.extend(std::iter::repeat_n(1, t.rank() - 1));
        let keep = Tensor::from_vec(keep, shape, t.device())?.broadcast_as(t.shape())?;
        let zeros = t.zeros_like()?;
        *t = keep.where_cond(t, &zeros)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use rand::SeedableRng;

    #[test]
    fn drops_whole_samples_at_the_declared_rate_and_is_seeded() {
        let src = "model m {\n input a: f32[3] { dropout: 0.5 }\n input b: f32[3]\n head y = concat(a, b) -> dense(1) { loss: mse }\n}";
        let c = crate::compile_str("m.mtl", src, &crate::Options::default());
        let g = c.graph.expect("compiles");
        let p = crate::lower::lower(&g, crate::pipeline::Mode::Train).expect("lowers");
        let dev = candle_core::Device::Cpu;
        let run = |seed: u64| {
            let mut inputs: Vec<(usize, Tensor)> = p
                .inputs
                .iter()
                .map(|(_, s, _)| (*s, Tensor::ones((400, 3), DType::F32, &dev).unwrap()))
                .collect();
            let part = Part::of(400, None);
            drop_inputs(&p, &mut inputs, &mut StdRng::seed_from_u64(seed), &part).unwrap();
            inputs
                .into_iter()
                .map(|(_, t)| t.sum(1).unwrap().to_vec1::<f32>().unwrap())
                .collect::<Vec<_>>()
        };
        let a = run(1);
        let slot_a = p.inputs.iter().position(|(n, ..)| n == "a").unwrap();
        let rows = &a[slot_a];
        // Each sample is all kept (3) or all dropped (0); about half dropped.
        assert!(rows.iter().all(|v| *v == 0.0 || *v == 3.0));
        let dropped = rows.iter().filter(|v| **v == 0.0).count();
        assert!((150..250).contains(&dropped), "{dropped} of 400 dropped");
        // The other input is untouched; the same seed drops the same samples.
        assert!(a[1 - slot_a].iter().all(|v| *v == 3.0));
        assert_eq!(a, run(1));
        assert_ne!(a, run(2));
    }
}
