//! Numeric parity with Keras 3: every fixture in ../shared/fixtures and every
//! case in tests/reference reproduced within 1e-4 relative error, with and
//! without the optimizer, with Keras's parameter counts.

mod common;

use candle_core::{Device, Tensor};
use common::graph;
use mtl::lower::{init_params, lower};
use mtl::pipeline::Mode;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

fn max_rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1e-3))
        .fold(0.0, f32::max)
}

fn check(dir: &Path, name: &str, optimize: bool) {
    let opts = mtl::Options {
        optimize,
        ..Default::default()
    };
    let c = mtl::compile_file(&dir.join(format!("{name}.mtl")), &opts).unwrap();
    let g = graph(c);
    let dev = Device::Cpu;
    let prog = lower(&g, Mode::Infer).expect("lowers").for_device(&dev);
    let mut params = init_params(&prog, 0, &dev).unwrap();
    params
        .load(&dir.join(format!("{name}.weights.safetensors")), &dev)
        .unwrap();
    let inputs =
        candle_core::safetensors::load(dir.join(format!("{name}.inputs.safetensors")), &dev)
            .unwrap();
    let expected =
        candle_core::safetensors::load(dir.join(format!("{name}.expected.safetensors")), &dev)
            .unwrap();
    let inputs = mtl::data::Dataset::from_tensors(inputs, "inputs").unwrap();
    let out = mtl::predict::predict(&prog, &params, &inputs, 3, &dev).unwrap();
    assert_eq!(out.len(), expected.len(), "{name}: one output per head");
    for (head, want) in &expected {
        let got = &out[head];
        assert_eq!(got.dims(), want.dims(), "{name}.{head} shape");
        let err = max_rel_err(got, want);
        assert!(err < 1e-4, "{name}.{head}: max relative error {err}");
    }
}

/// Every `NAME.mtl` with Keras outputs in `dir`.
fn cases(dir: &Path) -> Vec<String> {
    common::mtl_files(dir.to_str().unwrap())
        .iter()
        .filter_map(|p| p.file_stem()?.to_str().map(String::from))
        .collect()
}

/// Our own Keras-checked cases (`tests/reference/make.py`).
fn references() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference")
}

/// The same with candle's ops only: the kernels every GPU run uses.
#[test]
fn every_fixture_matches_keras_with_candle_ops() {
    mtl::kernels::set_portable(true);
    for dir in [fixtures(), references()] {
        for name in cases(&dir) {
            check(&dir, &name, true);
        }
    }
    mtl::kernels::set_portable(false);
}

#[test]
fn every_shared_fixture_matches_keras() {
    let dir = fixtures();
    let names = cases(&dir);
    assert!(names.len() >= 6, "fixtures found: {names:?}");
    for name in names {
        check(&dir, &name, true);
        check(&dir, &name, false);
    }
}

#[test]
fn every_reference_case_matches_keras() {
    let dir = references();
    let names = cases(&dir);
    assert!(names.len() >= 4, "reference cases found: {names:?}");
    for name in names {
        check(&dir, &name, true);
        check(&dir, &name, false);
    }
}

#[test]
fn param_counts_match_keras() {
    for dir in [fixtures(), references()] {
        for name in cases(&dir) {
            let text =
                std::fs::read_to_string(dir.join(format!("{name}.keras_params.txt"))).unwrap();
            let get = |k: &str| -> usize {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap()
            };
            let c =
                mtl::compile_file(&dir.join(format!("{name}.mtl")), &Default::default()).unwrap();
            let g = graph(c);
            let s = mtl::summary::summarize(&g);
            assert_eq!(s.total_params, get("total"), "{name} total");
            assert_eq!(s.trainable_params, get("trainable"), "{name} trainable");
            assert_eq!(
                s.non_trainable_params,
                get("non_trainable"),
                "{name} non-trainable"
            );
        }
    }
}
