//! On a CUDA device: our CUDA kernels and candle's CUDA backend give the
//! numbers of our CPU kernels. Built with `--features cuda` and run on the GPU
//! machine by `benches/gpu/check.sh` (the test binary is carried there by
//! `benches/gpu/pack.sh`); on a machine without a device each test says so
//! and passes, and the default build has no tests here.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{compile, max_abs_diff, mtl_files, random_inputs};
use mtl::kernels::lstm::LstmSeq;
use mtl::lower::{init_params, lower, Program};
use mtl::pipeline::Mode;
use std::collections::HashMap;

fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("no CUDA device ({e}): skipped");
            None
        }
    }
}

/// |a − b| ≤ tol · max(1, max |b|), a on any device, b on the CPU.
fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
    let a = a.to_device(&Device::Cpu).unwrap();
    let scale = common::abs_max(b).max(1.0);
    let d = max_abs_diff(&a, b);
    assert!(d <= tol * scale, "{what}: differs by {d} (scale {scale})");
}

/// The whole-sequence LSTM's forward and backward (one kernel each on CUDA)
/// against the CPU kernel, forward and reversed, with a partial last block
/// of rows, one step, and the widest rows the grid loops over.
#[test]
fn lstm_sequence_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let cpu = Device::Cpu;
    for (b, t, h, reverse) in [
        (5, 7, 24, false),
        (5, 7, 24, true),
        (2, 1, 8, false),
        (33, 6, 128, true),
        (3, 4, 300, false),
    ] {
        let xw = Tensor::randn(0f32, 1.0, (b, t, 4 * h), &cpu).unwrap();
        let w = (Tensor::randn(0f32, 1.0, (4 * h, h), &cpu).unwrap() / (h as f64).sqrt()).unwrap();
        let proj = Tensor::randn(0f32, 1.0, (b, t, h), &cpu).unwrap();
        let run = |dev: &Device, train: bool| {
            let xv = Var::from_tensor(&xw.to_device(dev).unwrap()).unwrap();
            let wv = Var::from_tensor(&w.to_device(dev).unwrap()).unwrap();
            let op = LstmSeq::new(h, reverse, train);
            let hs = xv.as_tensor().apply_op2(wv.as_tensor(), op).unwrap();
            let loss = (&hs * proj.to_device(dev).unwrap())
                .unwrap()
                .sum_all()
                .unwrap();
            let g = loss.backward().unwrap();
            let (dx, dw) = (g.get(xv.as_tensor()), g.get(wv.as_tensor()));
            (hs, dx.unwrap().clone(), dw.unwrap().clone())
        };
        let (hs0, dx0, dw0) = run(&cpu, true);
        let what = format!("b {b}, t {t}, h {h}, reverse {reverse}");
        // Training keeps the activations; inference recomputes them in backward.
        for train in [true, false] {
            let (hs1, dx1, dw1) = run(&gpu, train);
            assert_close(&hs1, &hs0, 1e-5, &format!("{what}: hidden states"));
            assert_close(&dx1, &dx0, 1e-4, &format!("{what}: ∂xw"));
            assert_close(&dw1, &dw0, 1e-4, &format!("{what}: ∂W_hh"));
        }
    }
}

/// The loss and every parameter's gradient of a model on `dev` (the
/// initial values are drawn on the host: the same on every device).
fn loss_and_gradients(
    p: &Program,
    x: &HashMap<String, Tensor>,
    dev: &Device,
) -> (f32, Vec<(String, Tensor)>) {
    let p = p.clone().for_device(dev);
    let params = init_params(&p, 2, dev).unwrap();
    let loss = common::objective(&p, &params, x, dev);
    let grads = loss.backward().unwrap();
    let g = params
        .trainable
        .iter()
        .filter_map(|k| {
            let g = grads.get(params.vars[k].as_tensor())?;
            Some((k.clone(), g.to_device(&Device::Cpu).unwrap()))
        })
        .collect();
    (loss.to_scalar::<f32>().unwrap(), g)
}

/// Every shipped model, fixture and reference case: the loss and gradients
/// on CUDA equal those of our CPU kernels (the CPU side of this comparison,
/// candle's ops against ours, is `grad.rs`'s
/// `candle_ops_give_the_gradients_of_our_kernels`).
#[test]
fn every_model_has_the_cpu_gradients_on_cuda() {
    let Some(gpu) = gpu() else { return };
    let mut files = mtl_files("models");
    files.extend(mtl_files("../shared/fixtures"));
    files.extend(mtl_files("tests/reference"));
    let mut checked = 0;
    for f in files {
        let p = lower(&compile(&f, Mode::Train), Mode::Train).expect("lowers");
        let x = random_inputs(&p, 4, 3, -1.0);
        let (l0, g0) = loss_and_gradients(&p, &x, &Device::Cpu);
        let (l1, g1) = loss_and_gradients(&p, &x, &gpu);
        let what = f.display();
        assert!(
            (l0 - l1).abs() <= 1e-4 * l0.abs().max(1.0),
            "{what}: loss {l0} vs {l1}"
        );
        // As in grad.rs: this case's causal rows repeat exactly, so its
        // masked max has ties, and which values tie depends on rounding,
        // which differs between the devices (the gradient is split among
        // ties, as Keras does); its loss is compared above.
        if f.ends_with("ref_masked_causal.mtl") {
            continue;
        }
        assert_eq!(
            g0.len(),
            g1.len(),
            "{what}: the same parameters get gradients"
        );
        // Relative to the model's largest gradient, as in grad.rs.
        let scale = g0
            .iter()
            .map(|(_, a)| common::abs_max(a))
            .fold(1e-3, f32::max);
        for ((k, a), (_, b)) in g0.iter().zip(&g1) {
            let d = max_abs_diff(a, &b.to_dtype(DType::F32).unwrap());
            assert!(
                d <= 1e-4 * scale,
                "{what}: {k} gradient differs by {d} (scale {scale})"
            );
            checked += 1;
        }
        eprintln!("{what}: loss and {} gradients agree", g0.len());
    }
    assert!(checked > 100, "only {checked} gradients compared");
}
