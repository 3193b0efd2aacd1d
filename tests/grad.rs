//! Gradients: every trainable parameter of every shipped model receives a
//! non-zero gradient in training mode (guards against candle's fast paths
//! that drop gradients), and finite differences agree with backprop for our
//! own kernels (RNNs, norms, gated/weighted fusion, same-padding convs).

mod common;

use candle_core::{DType, Device, Tensor};
use common::{compile, graph, max_abs_diff, mtl_files, options, random_inputs};
use mtl::lower::{init_params, lower, Params, Program};
use mtl::pipeline::Mode;
use std::collections::HashMap;

fn objective(p: &Program, params: &Params, x: &HashMap<String, Tensor>) -> Tensor {
    common::objective(p, params, x, &Device::Cpu)
}

#[test]
fn every_trainable_parameter_gets_a_gradient() {
    let mut files = mtl_files("models");
    files.extend(mtl_files("../shared/fixtures"));
    files.extend(mtl_files("tests/reference"));
    for f in files {
        if f.file_stem()
            .is_some_and(|s| s == "seed_multimodal" || s == "seed_multitask")
        {
            continue; // large inputs; their ops are covered by the other models
        }
        let p = lower(&compile(&f, Mode::Train), Mode::Train).expect("lowers");
        let params = init_params(&p, 1, &Device::Cpu).unwrap();
        let x = random_inputs(&p, 4, 2, -1.0);
        let grads = objective(&p, &params, &x).backward().unwrap();
        // A contrastive loss's learned temperature lives in the loss itself
        // (its gradient: `train::contrastive`'s finite-difference test).
        let in_losses: Vec<String> = p.losses.iter().filter_map(|l| l.params.clone()).collect();
        for k in &params.trainable {
            if in_losses.iter().any(|l| k.starts_with(&format!("{l}."))) {
                continue;
            }
            let v = &params.vars[k];
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{}: no gradient for {k}", f.display()));
            let norm = common::abs_sum(g);
            assert!(norm > 0.0, "{}: zero gradient for {k}", f.display());
        }
    }
}

/// The path every GPU run takes (candle's ops, `--kernels candle`) computes
/// the same loss and gradients as our fused CPU kernels, on every shipped
/// model, fixture and reference case: so CI checks the GPU path's numerics
/// without a GPU, and a GPU run differs only by candle's backend.
#[test]
fn candle_ops_give_the_gradients_of_our_kernels() {
    let mut files = mtl_files("models");
    files.extend(mtl_files("../shared/fixtures"));
    files.extend(mtl_files("tests/reference"));
    let mut checked = 0;
    for f in files {
        if f.file_stem()
            .is_some_and(|s| s == "seed_multimodal" || s == "seed_multitask")
        {
            continue; // large inputs; their ops are covered by the other models
        }
        let p = lower(&compile(&f, Mode::Train), Mode::Train).expect("lowers");
        let x = random_inputs(&p, 4, 3, -1.0);
        let run = |portable: bool, compute: DType| {
            mtl::kernels::set_portable(portable);
            let p = p.clone().for_device(&Device::Cpu).with_precision(compute);
            let params = init_params(&p, 2, &Device::Cpu).unwrap();
            let loss = objective(&p, &params, &x);
            let grads = loss.backward().unwrap();
            mtl::kernels::set_portable(false);
            let g: Vec<(String, Tensor)> = params
                .trainable
                .iter()
                .filter_map(|k| Some((k.clone(), grads.get(params.vars[k].as_tensor())?.clone())))
                .collect();
            (loss.to_scalar::<f32>().unwrap(), g)
        };
        let (l0, g0) = run(false, DType::F32);
        // candle's ops in f32, and through the mixed-precision casts in f64
        // (the plumbing of a bf16 GPU run, which candle's CPU cannot do).
        // One case is left out of the f64 gradients: with repeated tokens and
        // no position table, its causal rows repeat exactly, so its masked
        // max has ties, and which values tie depends on the rounding of the
        // dtype (the gradient is split among ties, as Keras does).
        let ties = f.ends_with("ref_masked_causal.mtl");
        for (l1, g1, dtype) in [
            (run(true, DType::F32), DType::F32),
            (run(true, DType::F64), DType::F64),
        ]
        .map(|((l, g), d)| (l, g, d))
        {
            let what = f.display().to_string();
            common::assert_same_loss(&what, l0, l1);
            if ties && dtype == DType::F64 {
                continue;
            }
            checked += common::assert_same_gradients(&what, &g0, &g1);
        }
    }
    assert!(checked > 100, "only {checked} gradients compared");
}

const KERNELS: &str = r#"
model k {
  input img: image[2, 5, 5]
  input seq: f32[4, 3]
  let c = img -> conv2d(3, 2, padding = same) -> batch_norm -> global_avg_pool
  let l = seq -> lstm(3, return_sequences = true, bidirectional = true) -> lstm(3)
  let r = seq -> gru(3, bidirectional = true)
  let rr = r -> dense(3) -> layer_norm
  let w = weighted(c, l, rr)
  let g = gated(c, l)
  head y = concat(w, g) -> softmax -> dense(2) { loss: mse }
}
"#;

/// Attention (masked, causal, cross), residuals, position tables, masked
/// pools and recurrences, `select` and `mixture`.
const SEQUENCES: &str = r#"
model s {
  input text: tokens[6] vocab 9
  input v: f32[5]
  let e = text -> embedding(4, mask_zero = true) -> position_embedding
  let a = e -> residual(attention(2, 3, causal = true) -> dense(4)) -> layer_norm
  let m = mixture(a -> global_avg_pool(axis = 1), a -> global_max_pool(axis = 1), gate = v)
  let x = attend(v -> dense(4), a, 2, 2)
  let r = a -> lstm(3)
  head y = concat(m, x, r, a -> select(0)) -> dense(2) { loss: mse }
}
"#;

#[test]
fn finite_differences_agree_with_backprop() {
    finite_differences(KERNELS);
}

#[test]
fn finite_differences_agree_with_backprop_on_sequence_layers() {
    finite_differences(SEQUENCES);
}

fn finite_differences(src: &str) {
    let p = lower(
        &graph(mtl::compile_str("k.mtl", src, &options(Mode::Train))),
        Mode::Train,
    )
    .expect("lowers");
    let params = init_params(&p, 5, &Device::Cpu).unwrap();
    let x = random_inputs(&p, 3, 9, -1.0);
    let grads = objective(&p, &params, &x).backward().unwrap();
    let eps = 1e-2f32;
    let mut checked = 0;
    for k in params.trainable.clone() {
        let var = params.vars[&k].clone();
        let g = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // A few entries per tensor.
        for idx in [0, base.len() / 2, base.len() - 1] {
            let eval = |delta: f32| {
                let mut v = base.clone();
                v[idx] += delta;
                var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
                    .unwrap();
                let f = objective(&p, &params, &x).to_scalar::<f32>().unwrap();
                var.set(&Tensor::from_vec(base.clone(), var.dims(), &Device::Cpu).unwrap())
                    .unwrap();
                f
            };
            let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
            let err = (fd - g[idx]).abs() / (fd.abs().max(g[idx].abs()).max(1e-2));
            assert!(
                err < 5e-2,
                "{k}[{idx}]: backprop {} vs finite difference {fd}",
                g[idx]
            );
            checked += 1;
        }
    }
    assert!(checked > 30);
}

/// The fused LSTM op (hoisted, training) equals candle's autograd form
/// (`--no-opt`) in outputs and in every parameter's gradient. 19 units: one
/// whole block of 16 gate lanes in the backward and a tail of 3.
#[test]
fn fused_lstm_matches_candle_autograd() {
    fused_rnn_matches_candle_autograd("lstm");
}

/// The fused GRU op likewise.
#[test]
fn fused_gru_matches_candle_autograd() {
    fused_rnn_matches_candle_autograd("gru");
}

fn fused_rnn_matches_candle_autograd(cell: &str) {
    let src = r#"
model rnn {
  input seq: f32[7, 5]
  head y = seq -> lstm(6, bidirectional = true, return_sequences = true) -> lstm(4) -> dense(2) { loss: mse }
  head z = seq -> lstm(19, bidirectional = true) -> dense(1) { loss: mse }
}
"#
    .replace("lstm", cell);
    let build = |optimize| {
        let opts = mtl::Options {
            optimize,
            mode: Mode::Train,
            ..Default::default()
        };
        lower(
            &graph(mtl::compile_str("rnn.mtl", &src, &opts)),
            Mode::Train,
        )
        .expect("lowers")
    };
    let (fused, plain) = (build(true), build(false));
    assert!(fused.render().contains("fused recurrence op") && !plain.render().contains("fused"));
    let params = init_params(&fused, 4, &Device::Cpu).unwrap();
    let x = random_inputs(&fused, 3, 5, -1.0);
    let (a, b) = (
        objective(&fused, &params, &x),
        objective(&plain, &params, &x),
    );
    let d = (a.to_scalar::<f32>().unwrap() - b.to_scalar::<f32>().unwrap()).abs();
    assert!(d < 1e-4, "objective differs by {d}");
    let (ga, gb) = (a.backward().unwrap(), b.backward().unwrap());
    for (k, v) in &params.vars {
        let (x, y) = (
            ga.get(v.as_tensor()).unwrap(),
            gb.get(v.as_tensor()).unwrap(),
        );
        let d = max_abs_diff(x, y);
        assert!(d < 1e-4, "gradient of {k} differs by {d}");
    }
}
