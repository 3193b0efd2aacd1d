//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use mtl::lower::Program;
use mtl::train::config::TrainConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub fn root() -> PathBuf {
    // The GPU machine runs test binaries built here, from its own copy of
    // the repository (benches/gpu/check.sh sets MTL_TEST_ROOT).
    std::env::var_os("MTL_TEST_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The `.mtl` files of a directory, sorted, as paths relative to the crate
/// root (so rendered diagnostics and snapshots name `models/x.mtl`); the
/// crate root becomes the working directory.
pub fn mtl_files(dir: &str) -> Vec<PathBuf> {
    std::env::set_current_dir(root()).unwrap();
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "mtl"))
        .collect();
    v.sort();
    v
}

/// The optimized graph of a compilation that must succeed.
pub fn graph(c: mtl::Compiled) -> mtl::ir::Graph {
    c.into_graph().map_err(|(d, _)| format!("{d:?}")).unwrap().0
}

/// The optimized graph and the `train { }` block of a compilation that must succeed.
pub fn graph_and_train(c: mtl::Compiled) -> (mtl::ir::Graph, TrainConfig) {
    let train = c.train.clone();
    (graph(c), train)
}

pub fn options(mode: mtl::pipeline::Mode) -> mtl::Options {
    mtl::Options {
        mode,
        ..Default::default()
    }
}

pub fn compile(path: &Path, mode: mtl::pipeline::Mode) -> mtl::ir::Graph {
    graph(mtl::compile_file(path, &options(mode)).unwrap())
}

/// Seeded random inputs: token ids in [0, 5), numbers in [lo, 1).
pub fn random_inputs(p: &Program, n: usize, seed: u64, lo: f32) -> HashMap<String, Tensor> {
    random_inputs_from(p, n, &mut StdRng::seed_from_u64(seed), lo)
}

pub fn random_inputs_from(
    p: &Program,
    n: usize,
    rng: &mut StdRng,
    lo: f32,
) -> HashMap<String, Tensor> {
    p.inputs
        .iter()
        .map(|(name, _, ty)| {
            let dims = ty.dims().unwrap();
            let count = n * dims.iter().product::<usize>();
            let mut shape = vec![n];
            shape.extend(dims);
            let t = if ty.dtype == mtl::ir::DType::I64 {
                let v: Vec<i64> = (0..count).map(|_| rng.random_range(0..5i64)).collect();
                Tensor::from_vec(v, shape, &Device::Cpu)
            } else {
                let v: Vec<f32> = (0..count).map(|_| rng.random_range(lo..1.0)).collect();
                Tensor::from_vec(v, shape, &Device::Cpu)
            };
            (name.clone(), t.unwrap())
        })
        .collect()
}

/// max |a − b| over all elements.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    abs_max(&(a - b).unwrap())
}

/// max |t| over all elements (NaN if any is NaN).
pub fn abs_max(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Σ |t| over all elements.
pub fn abs_sum(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Every parameter of `a` equals `b`'s bit for bit.
pub fn assert_same_params(a: &mtl::lower::Params, b: &mtl::lower::Params, what: &str) {
    for (k, v) in &a.vars {
        let d = max_abs_diff(v.as_tensor(), b.vars[k].as_tensor());
        assert!(d == 0.0, "{k} differs by {d} {what}");
    }
}

/// A scalar on `dev` that depends on every output element non-trivially:
/// Σ heads² (and the values auxiliary losses read) times a fixed pattern.
pub fn objective(
    p: &Program,
    params: &mtl::lower::Params,
    x: &HashMap<String, Tensor>,
    dev: &Device,
) -> Tensor {
    let mut rng = StdRng::seed_from_u64(0);
    let fwd = p
        .forward(params, p.prepare_inputs(x, dev).unwrap(), &mut rng)
        .unwrap();
    let mut s = Tensor::zeros((), candle_core::DType::F32, dev).unwrap();
    let outputs = p
        .heads
        .iter()
        .map(|(_, slot)| *slot)
        .chain(p.losses.iter().flat_map(|l| l.slots.iter().copied()));
    for (i, slot) in outputs.enumerate() {
        let y = fwd.get(slot).unwrap();
        let w = Tensor::arange(0f32, y.elem_count() as f32, dev)
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

/// Two computations of a model's loss agree within 1e-4 (relative, or
/// absolute below 1).
pub fn assert_same_loss(what: &str, l0: f32, l1: f32) {
    assert!(
        (l0 - l1).abs() <= 1e-4 * l0.abs().max(1.0),
        "{what}: loss {l0} vs {l1}"
    );
}

/// The same parameters get gradients in `g0` and `g1`, and each pair
/// agrees within 1e-4 of the model's largest gradient in `g0` (f32
/// summation order differs between kernels and devices, and tiny gradients
/// carry its noise). Returns how many were compared.
pub fn assert_same_gradients(
    what: &str,
    g0: &[(String, Tensor)],
    g1: &[(String, Tensor)],
) -> usize {
    assert_eq!(
        g0.len(),
        g1.len(),
        "{what}: the same parameters get gradients"
    );
    let scale = g0.iter().map(|(_, a)| abs_max(a)).fold(1e-3, f32::max);
    for ((k, a), (_, b)) in g0.iter().zip(g1) {
        let d = max_abs_diff(a, &b.to_dtype(candle_core::DType::F32).unwrap());
        assert!(
            d <= 1e-4 * scale,
            "{what}: {k} gradient differs by {d} (scale {scale})"
        );
    }
    g0.len()
}
