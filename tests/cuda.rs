//! On a CUDA device: our CUDA kernels and candle's CUDA backend give the
//! numbers of our CPU kernels. Built with `--features cuda` and run on the GPU
//! machine by `benches/gpu/check.sh` (the test binary is carried there by
//! `benches/gpu/pack.sh`); on a machine without a device each test says so
//! and passes, and the default build has no tests here.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{Device, Tensor, Var};
use common::{compile, max_abs_diff, mtl_files, random_inputs};
use mtl::kernels::attention::Sdpa;
use mtl::kernels::batch_norm::{BatchNormTrain, Stats};
use mtl::kernels::cpu_ops::MaxPool2d;
use mtl::kernels::gru::GruSeq;
use mtl::kernels::layer_norm::LayerNormTrain;
use mtl::kernels::lstm::LstmSeq;
use mtl::kernels::softmax::SoftmaxLastDim;
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

/// An op applied to its operands.
type Apply<'a> = dyn Fn(&[Tensor]) -> Tensor + 'a;

/// The output of `apply` over `operands` (copied to `dev` as variables) and
/// the gradient of each operand, through a fixed projection of the output.
fn output_and_gradients(
    operands: &[Tensor],
    dev: &Device,
    apply: &Apply<'_>,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = operands
        .iter()
        .map(|x| Var::from_tensor(&x.to_device(dev).unwrap()).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = apply(&ts);
    let n = y.elem_count() as u32;
    let pattern = (Tensor::arange(0u32, n, dev)
        .unwrap()
        .to_dtype(candle_core::DType::F32))
    .and_then(|t| (t * 0.37)?.sin()?.reshape(y.shape()))
    .unwrap();
    let g = (&y * pattern)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let grads = ts.iter().map(|x| g.get(x).unwrap().clone()).collect();
    (y, grads)
}

/// `gpu_apply` on the GPU gives `cpu_apply`'s output (within `tol.0`) and
/// operand gradients (within `tol.1`) on the CPU, relative to the CPU's
/// largest value.
fn assert_matches_the_cpu(
    gpu: &Device,
    operands: &[Tensor],
    (cpu_apply, gpu_apply): (&Apply<'_>, &Apply<'_>),
    tol: (f32, f32),
    what: &str,
) {
    let (y0, g0) = output_and_gradients(operands, &Device::Cpu, cpu_apply);
    let (y1, g1) = output_and_gradients(operands, gpu, gpu_apply);
    assert_close(&y1, &y0, tol.0, &format!("{what}: output"));
    for (k, (a, b)) in g1.iter().zip(&g0).enumerate() {
        assert_close(a, b, tol.1, &format!("{what}: gradient of operand {k}"));
    }
}

/// Shapes for the sequence kernels: forward and reversed, a partial last
/// block of rows, one step, and rows wider than the grid's 1,024 threads;
/// W_hh in shared memory (up to 24 units within the default 48 KiB, 64
/// units opted in above it) and, from 128 units, read from L2.
const SEQUENCES: [(usize, usize, usize, bool); 6] = [
    (5, 7, 24, false),
    (5, 7, 24, true),
    (2, 1, 8, false),
    (9, 5, 64, true),
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
        let what = format!("{gates} gates, b {b}, t {t}, h {h}, reverse {reverse}");
        for train in [true, false] {
            let kept = |x: &[Tensor]| apply(x, (h, reverse, true));
            let on_gpu = |x: &[Tensor]| apply(x, (h, reverse, train));
            let what = format!("{what}, train {train}");
            assert_matches_the_cpu(&gpu, &operands, (&kept, &on_gpu), (1e-5, 1e-4), &what);
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

#[test]
fn gru_sequence_matches_the_cpu() {
    sequence_matches_the_cpu(3, true, |x, (h, reverse, train)| {
        x[0].apply_op3(&x[1], &x[2], GruSeq::new(h, reverse, train))
            .unwrap()
    });
}

/// One op, the same code on both devices, over operands of `shapes` drawn
/// from N(0, `spread`²).
fn op_matches_the_cpu(shapes: &[&[usize]], spread: f32, apply: &Apply<'_>, what: &str) {
    let Some(gpu) = gpu() else { return };
    let operands: Vec<Tensor> = shapes
        .iter()
        .map(|s| Tensor::randn(0f32, spread, *s, &Device::Cpu).unwrap())
        .collect();
    let what = format!("{what} {shapes:?}");
    assert_matches_the_cpu(&gpu, &operands, (apply, apply), (1e-5, 1e-4), &what);
}

/// Rows narrower and wider than a warp, rows not filling the last block.
#[test]
fn softmax_matches_the_cpu() {
    let apply = |x: &[Tensor]| x[0].apply_op1(SoftmaxLastDim).unwrap();
    for shape in [&[3, 7][..], &[2, 3, 5, 5], &[37, 77], &[4, 1], &[9, 300]] {
        op_matches_the_cpu(&[shape], 3.0, &apply, "softmax");
    }
}

#[test]
fn layer_norm_matches_the_cpu() {
    let apply = |x: &[Tensor]| {
        x[0].apply_op3(&x[1], &x[2], LayerNormTrain { eps: 1e-3 })
            .unwrap()
    };
    for (rows, d) in [
        (&[4, 6][..], 6),
        (&[2, 5, 8], 8),
        (&[3, 1], 1),
        (&[37, 100], 100),
        (&[1000, 32], 32),
    ] {
        op_matches_the_cpu(&[rows, &[d], &[d]], 1.0, &apply, "layer norm");
    }
}

/// Dense and convolutional shapes; the batch statistics the op leaves for
/// the running averages too.
#[test]
fn batch_norm_matches_the_cpu() {
    let kept: std::sync::Mutex<Vec<(Tensor, Tensor)>> = Default::default();
    let apply = |x: &[Tensor]| {
        let stats = Stats::default();
        let op = BatchNormTrain {
            eps: 1e-3,
            stats: stats.clone(),
        };
        let y = x[0].apply_op3(&x[1], &x[2], op).unwrap();
        let taken = stats.lock().unwrap().take().unwrap();
        kept.lock().unwrap().push(taken);
        y
    };
    for (shape, c) in [
        (&[4, 3, 5, 6][..], 3),
        (&[8, 5], 5),
        (&[3, 2, 7], 2),
        (&[32, 16, 9, 9], 16),
    ] {
        op_matches_the_cpu(&[shape, &[c], &[c]], 1.5, &apply, "batch norm");
        let mut kept = kept.lock().unwrap();
        if let [(m0, v0), (m1, v1)] = &kept[..] {
            assert_close(m1, m0, 1e-5, &format!("batch norm {shape:?}: mean"));
            assert_close(v1, v0, 1e-5, &format!("batch norm {shape:?}: variance"));
        }
        kept.clear();
    }
}

/// Windows equal to the stride, overlapping, and apart; values on a coarse
/// grid, so that windows hold ties (the first maximum takes the gradient).
#[test]
fn max_pool_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    for ((k, s), shape) in [
        (((2, 2), (2, 2)), [2, 3, 8, 9]),
        (((3, 3), (2, 2)), [2, 3, 9, 11]),
        (((1, 2), (1, 2)), [3, 4, 1, 10]),
        (((3, 2), (1, 3)), [1, 2, 7, 8]),
    ] {
        let x = (Tensor::randn(0f32, 2.0, &shape, &Device::Cpu)
            .unwrap()
            .round()
            .unwrap()
            / 2.0)
            .unwrap()
            .relu()
            .unwrap();
        for train in [true, false] {
            let kept = |x: &[Tensor]| x[0].apply_op1(MaxPool2d::new(k, s, true)).unwrap();
            let on_gpu = |x: &[Tensor]| x[0].apply_op1(MaxPool2d::new(k, s, train)).unwrap();
            let what = format!("max pool {k:?}/{s:?} of {shape:?}, train {train}");
            let x = std::slice::from_ref(&x);
            assert_matches_the_cpu(&gpu, x, (&kept, &on_gpu), (1e-6, 1e-6), &what);
        }
    }
}

/// The fused attention with its mask on the device against the CPU op with
/// the same mask on the host: padding and causal masks with a query that
/// may attend to no key, cross-attention shapes, more keys than a block
/// has threads, a single key; kept and recomputed probabilities.
#[test]
fn attention_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    for (b, h, tq, tk, kd, vd, masked) in [
        (2, 3, 4, 5, 6, 2, true),
        (3, 2, 16, 16, 16, 16, false),
        (2, 2, 8, 300, 8, 24, true),
        (1, 1, 1, 1, 3, 3, false),
    ] {
        let allowed: Option<Vec<f32>> = masked.then(|| {
            (0..b * tq * tk)
                .map(|n| {
                    let (s, i, j) = (n / (tq * tk), n / tk % tq, n % tk);
                    let blocked = j > i + 1 || (s == 0 && i == tq / 2) || (s > 0 && j == tk - 1);
                    if blocked {
                        0.0
                    } else {
                        1.0
                    }
                })
                .collect()
        });
        let scale = 1.0 / (kd as f32).sqrt();
        let operands: Vec<Tensor> = [(tq, kd), (tk, kd), (tk, vd)]
            .iter()
            .map(|&(t, d)| Tensor::randn(0f32, 1.0, (b, h, t, d), &Device::Cpu).unwrap())
            .collect();
        let on_cpu = |x: &[Tensor]| {
            let op = Sdpa::new(scale, allowed.clone(), true);
            x[0].apply_op3(&x[1], &x[2], op).unwrap()
        };
        for train in [true, false] {
            let on_gpu = |x: &[Tensor]| {
                let mask = allowed
                    .clone()
                    .map(|a| Tensor::from_vec(a, (b, tq, tk), x[0].device()).unwrap());
                let op = Sdpa::with_mask(scale, mask, train).unwrap();
                x[0].apply_op3(&x[1], &x[2], op).unwrap()
            };
            let what = format!(
                "attention {:?}, train {train}",
                (b, h, tq, tk, kd, vd, masked)
            );
            assert_matches_the_cpu(&gpu, &operands, (&on_cpu, &on_gpu), (1e-5, 1e-4), &what);
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
