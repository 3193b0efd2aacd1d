//! Gradients: every trainable parameter of every shipped model receives a
//! non-zero gradient in training mode (guards against candle's fast paths
//! that drop gradients), and finite differences agree with backprop for our
//! own kernels (RNNs, norms, gated/weighted fusion, same-padding convs).

use candle_core::{DType, Device, Tensor};
use mtl::lower::{init_params, lower, Params, Program};
use mtl::passes::Mode;
use rand::SeedableRng;
use std::collections::HashMap;
use std::path::Path;

fn program(src_or_path: &str, from_file: bool) -> Program {
    let c = if from_file {
        mtl::compile_file(
            Path::new(src_or_path),
            &mtl::Options {
                mode: Mode::Train,
                ..Default::default()
            },
        )
        .unwrap()
    } else {
        mtl::compile_str(
            "t.mtl",
            src_or_path,
            &mtl::Options {
                mode: Mode::Train,
                ..Default::default()
            },
        )
    };
    let (g, _) = c.into_graph().map_err(|(d, _)| format!("{d:?}")).unwrap();
    lower(&g, Mode::Train)
}

fn inputs(p: &Program, n: usize, seed: u64) -> HashMap<String, Tensor> {
    use rand::Rng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    p.inputs
        .iter()
        .map(|(name, _, ty)| {
            let dims = ty.dims().unwrap();
            let count: usize = n * dims.iter().product::<usize>();
            let mut shape = vec![n];
            shape.extend(dims);
            let t = if ty.dtype == mtl::ir::DType::I64 {
                Tensor::from_vec(
                    (0..count)
                        .map(|_| rng.random_range(0..5i64))
                        .collect::<Vec<_>>(),
                    shape,
                    &Device::Cpu,
                )
                .unwrap()
            } else {
                Tensor::from_vec(
                    (0..count)
                        .map(|_| rng.random_range(-1.0f32..1.0))
                        .collect::<Vec<_>>(),
                    shape,
                    &Device::Cpu,
                )
                .unwrap()
            };
            (name.clone(), t)
        })
        .collect()
}

/// A scalar that depends on every output element non-trivially.
fn objective(p: &Program, params: &Params, x: &HashMap<String, Tensor>) -> Tensor {
    let dev = Device::Cpu;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let fwd = p
        .forward(params, p.prepare_inputs(x, &dev).unwrap(), &mut rng)
        .unwrap();
    let mut s = Tensor::zeros((), DType::F32, &dev).unwrap();
    for (i, (_, slot)) in p.heads.iter().enumerate() {
        let y = fwd.get(*slot).unwrap();
        let w = Tensor::arange(0f32, y.elem_count() as f32, &dev)
            .unwrap()
            .reshape(y.dims())
            .unwrap()
            .affine(0.01, 0.3 + i as f64)
            .unwrap()
            .sin()
            .unwrap();
        s = (s + (y.sqr().unwrap() * w).unwrap().sum_all().unwrap()).unwrap();
    }
    s
}

#[test]
fn every_trainable_parameter_gets_a_gradient() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(root.join("models"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "mtl"))
        .collect();
    files.sort();
    for f in files {
        if f.file_stem()
            .is_some_and(|s| s == "seed_multimodal" || s == "seed_multitask")
        {
            continue; // large inputs; their ops are covered by the other models
        }
        let p = program(f.to_str().unwrap(), true);
        let params = init_params(&p, 1, &Device::Cpu).unwrap();
        let x = inputs(&p, 4, 2);
        let grads = objective(&p, &params, &x).backward().unwrap();
        for k in &params.trainable {
            let v = &params.vars[k];
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{}: no gradient for {k}", f.display()));
            let norm = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "{}: zero gradient for {k}", f.display());
        }
    }
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

#[test]
fn finite_differences_agree_with_backprop() {
    let p = program(KERNELS, false);
    let params = init_params(&p, 5, &Device::Cpu).unwrap();
    let x = inputs(&p, 3, 9);
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
