//! On a CUDA device: our CUDA kernels and candle's CUDA backend give the
//! numbers of our CPU kernels. Built with `--features cuda` and run on the GPU
//! machine by `benches/gpu/check.sh` (the test binary is carried there by
//! `benches/gpu/pack.sh`); on a machine without a device each test says so
//! and passes, and the default build has no tests here.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{Device, Tensor, Var};
use common::{compile, max_abs_diff, mtl_files, random_inputs};
use mtl::kernels::gru::GruSeq;
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

/// Shapes for the sequence kernels: forward and reversed, a partial last
/// block of rows, one step, and rows wider than the grid's 1,024 threads.
const SEQUENCES: [(usize, usize, usize, bool); 5] = [
    (5, 7, 24, false),
    (5, 7, 24, true),
    (2, 1, 8, false),
    (33, 6, 128, true),
    (3, 4, 300, false),
];

/// A whole-sequence op over `gates`·H-wide projections and its backward
/// (one kernel each way on CUDA) against the CPU kernel: the hidden states
/// and the gradients of every operand. `apply` runs the op (`train`: keep
/// the activations; otherwise the backward recomputes them).
fn sequence_matches_the_cpu(
    gates: usize,
    with_bias: bool,
    apply: impl Fn(&[Tensor], (usize, bool, bool)) -> Tensor,
) {
    let Some(gpu) = gpu() else { return };
    let cpu = Device::Cpu;
    for (b, t, h, reverse) in SEQUENCES {
        let mut operands = vec![
            Tensor::randn(0f32, 1.0, (b, t, gates * h), &cpu).unwrap(),
            (Tensor::randn(0f32, 1.0, (gates * h, h), &cpu).unwrap() / (h as f64).sqrt()).unwrap(),
        ];
        if with_bias {
            operands.push(Tensor::randn(0f32, 0.5, gates * h, &cpu).unwrap());
        }
        let proj = Tensor::randn(0f32, 1.0, (b, t, h), &cpu).unwrap();
        let run = |dev: &Device, train: bool| {
            let vars: Vec<Var> = operands
                .iter()
                .map(|x| Var::from_tensor(&x.to_device(dev).unwrap()).unwrap())
                .collect();
            let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let hs = apply(&ts, (h, reverse, train));
            let loss = (&hs * proj.to_device(dev).unwrap())
                .unwrap()
                .sum_all()
                .unwrap();
            let g = loss.backward().unwrap();
            let grads: Vec<Tensor> = ts.iter().map(|x| g.get(x).unwrap().clone()).collect();
            (hs, grads)
        };
        let (hs0, g0) = run(&cpu, true);
        let what = format!("{gates} gates, b {b}, t {t}, h {h}, reverse {reverse}");
        for train in [true, false] {
            let (hs1, g1) = run(&gpu, train);
            assert_close(&hs1, &hs0, 1e-5, &format!("{what}: hidden states"));
            for (k, (a, b)) in g1.iter().zip(&g0).enumerate() {
                assert_close(a, b, 1e-4, &format!("{what}: gradient of operand {k}"));
            }
        }
    }
}

#[test]
fn lstm_sequence_matches_the_cpu() {
    sequence_matches_the_cpu(4, false, |x, (h, reverse, train)| {
        x[0].apply_op2(&x[1], LstmSeq::new(h, reverse, train))
            .unwrap()
    });
}

/// Not yet run on a GPU: written after the session's last lease (the GRU
/// kernels were checked there through `fusions` and the fixtures).
#[test]
fn gru_sequence_matches_the_cpu() {
    sequence_matches_the_cpu(3, true, |x, (h, reverse, train)| {
        x[0].apply_op3(&x[1], &x[2], GruSeq::new(h, reverse, train))
            .unwrap()
    });
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
        let what = f.display().to_string();
        common::assert_same_loss(&what, l0, l1);
        // As in grad.rs: this case's causal rows repeat exactly, so its
        // masked max has ties, and which values tie depends on rounding,
        // which differs between the devices (the gradient is split among
        // ties, as Keras does); its loss is compared above.
        if f.ends_with("ref_masked_causal.mtl") {
            continue;
        }
        checked += common::assert_same_gradients(&what, &g0, &g1);
        eprintln!("{what}: loss and {} gradients agree", g0.len());
    }
    assert!(checked > 100, "only {checked} gradients compared");
}
