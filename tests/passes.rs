//! Optimizer passes: the dedup must-show, and every pass preserves meaning.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{graph, max_abs_diff, mtl_files, random_inputs};
use mtl::lower::{init_params, lower};
use mtl::pipeline::Mode;
use rand::SeedableRng;

const REDUNDANT: &str = r#"
model redundant {
  input x: f32[8]
  shared enc = dense(16) -> relu
  let a = x -> enc
  let b = enc(x)
  let pa = a -> relu -> identity
  let pb = b -> relu
  let unused = x -> dense(4)
  head y = add(pa, pb) -> dense(2) { loss: mse }
}
"#;

const BY_HAND: &str = r#"
model by_hand {
  input x: f32[8]
  shared enc = dense(16) -> relu
  let a = x -> enc
  head y = add(a, a) -> dense(2) { loss: mse }
}
"#;

#[test]
fn dedup_matches_the_hand_written_model() {
    let opt = mtl::compile_str("r.mtl", REDUNDANT, &Default::default());
    let hand = mtl::compile_str("h.mtl", BY_HAND, &Default::default());
    let (g, h) = (graph(opt), graph(hand));
    assert_eq!(
        g.g.node_count(),
        h.g.node_count(),
        "\n{}\nvs\n{}",
        mtl::ir::print_ir(&g),
        mtl::ir::print_ir(&h)
    );
    // The unused definition is reported.
    let c = mtl::compile_str("r.mtl", REDUNDANT, &Default::default());
    assert!(c.diagnostics.iter().any(|d| d.code == "mtl::unused"));
    assert!(c
        .passes
        .stats
        .iter()
        .any(|s| s.pass == "cse" && s.merged > 0));
}

#[test]
fn cse_never_merges_dropout_or_different_weights() {
    let src = r#"
model m {
  input x: f32[8]
  let a = x -> dense(4)
  let b = x -> dense(4)
  let c = x -> dropout(0.5)
  let d = x -> dropout(0.5)
  head y = concat(a, b, c, d) -> dense(1) { loss: mse }
}
"#;
    let c = mtl::compile_str(
        "m.mtl",
        src,
        &mtl::Options {
            mode: Mode::Train,
            ..Default::default()
        },
    );
    let g = graph(c);
    let dense =
        g.g.node_weights()
            .filter(|n| n.op.kind_name() == "dense")
            .count();
    let dropout =
        g.g.node_weights()
            .filter(|n| n.op.kind_name() == "dropout")
            .count();
    assert_eq!((dense, dropout), (3, 2));
}

/// Outputs (inference) and gradients (training) agree with and without passes.
#[test]
fn passes_preserve_outputs_and_gradients() {
    let big = |p: &std::path::PathBuf| {
        p.file_stem()
            .is_some_and(|s| s == "seed_multitask" || s == "seed_multimodal")
    };
    let mut files = mtl_files("models");
    files.extend(mtl_files("../shared/fixtures"));
    files.extend(mtl_files("tests/reference"));
    files.retain(|p| !big(p));
    let dev = Device::Cpu;
    for f in files {
        for mode in [Mode::Infer, Mode::Train] {
            let build = |optimize| {
                let c = mtl::compile_file(
                    &f,
                    &mtl::Options {
                        optimize,
                        mode,
                        ..Default::default()
                    },
                )
                .unwrap();
                lower(&graph(c), mode).expect("lowers")
            };
            let (a, b) = (build(true), build(false));
            let params = init_params(&a, 3, &dev).unwrap();
            let inputs = random_inputs(&a, 3, 11, 0.0);
            let run = |p: &mtl::lower::Program| {
                let mut rng = rand::rngs::StdRng::seed_from_u64(0);
                let fwd = p
                    .forward(&params, p.prepare_inputs(&inputs, &dev).unwrap(), &mut rng)
                    .unwrap();
                p.heads
                    .iter()
                    .map(|(h, s)| (h.name.clone(), fwd.get(*s).unwrap().clone()))
                    .collect::<Vec<_>>()
            };
            let (oa, ob) = (run(&a), run(&b));
            for ((h, x), (_, y)) in oa.iter().zip(&ob) {
                let d = max_abs_diff(x, y);
                assert!(
                    d < 1e-5,
                    "{}: head {h} differs by {d} ({mode:?})",
                    f.display()
                );
            }
            if mode == Mode::Train && !f.to_string_lossy().contains("fusions") {
                // Gradients of the summed outputs w.r.t. every parameter.
                let grad = |o: &Vec<(String, Tensor)>| {
                    let mut s = Tensor::zeros((), DType::F32, &dev).unwrap();
                    for (_, t) in o {
                        s = (s + t.sum_all().unwrap()).unwrap();
                    }
                    s.backward().unwrap()
                };
                let (ga, gb) = (grad(&oa), grad(&ob));
                for (k, v) in &params.vars {
                    if let (Some(x), Some(y)) = (ga.get(v.as_tensor()), gb.get(v.as_tensor())) {
                        let max_abs = |t: &Tensor| {
                            t.abs()
                                .unwrap()
                                .max_all()
                                .unwrap()
                                .to_scalar::<f32>()
                                .unwrap()
                        };
                        // f32 rounding scales with the gradient: a rewrite may sum
                        // the same terms in another order (e.g. sink-upsample).
                        let (d, scale) = (max_abs(&(x - y).unwrap()), max_abs(y).max(1.0));
                        assert!(
                            d < 1e-5 * scale,
                            "{}: gradient of {k} differs by {d} (scale {scale})",
                            f.display()
                        );
                    }
                }
            }
        }
    }
}

/// Folded batch norms and merged sibling dense layers compute what the
/// unoptimized graph computes, with non-trivial running statistics.
#[test]
fn inference_folding_and_merging_preserve_outputs() {
    let src = r#"
model m {
  input img: image[3, 9, 9]
  input v: f32[6]
  let c = img -> conv2d(4, 3, padding = same) -> batch_norm -> relu -> global_avg_pool
  let d = v -> dense(5) -> batch_norm
  let h = concat(c, d)
  head a = h -> dense(3) { loss: cross_entropy }
  head b = h -> dense(1) { loss: binary_cross_entropy }
  head e = h -> dense(2) { loss: mse }
}
"#;
    let build = |optimize| {
        let opts = mtl::Options {
            optimize,
            ..Default::default()
        };
        lower(&graph(mtl::compile_str("m.mtl", src, &opts)), Mode::Infer).expect("lowers")
    };
    let (opt, plain) = (build(true), build(false));
    let text = opt.render();
    assert!(
        text.contains("batch_norm folded") && text.contains("merged matmul"),
        "{text}"
    );
    let dev = Device::Cpu;
    let params = init_params(&opt, 2, &dev).unwrap();
    // Random statistics and affine terms, so folding is not the identity.
    for (k, v) in &params.vars {
        if k.contains("running")
            || k.ends_with("_bn.weight")
            || k.contains(".1.")
            || k.contains(".2.")
        {
            let r = Tensor::rand(0.5f32, 1.5, v.dims(), &dev).unwrap();
            v.set(&r).unwrap();
        }
    }
    let x = random_inputs(&opt, 4, 3, -1.0);
    let x = mtl::data::Dataset::from_tensors(x, "inputs").unwrap();
    let out = |p: &mtl::lower::Program| mtl::predict::predict(p, &params, &x, 4, &dev).unwrap();
    let (a, b) = (out(&opt), out(&plain));
    for (h, t) in &a {
        let d = max_abs_diff(t, &b[h]);
        assert!(d < 1e-5, "head {h} differs by {d}");
    }
}

/// A relu folds into the dense or conv that feeds only it; a value also
/// observed elsewhere (a head, a second user) keeps its own relu step.
#[test]
fn relu_fuses_into_its_only_producer() {
    let src = r#"
model m {
  input x: f32[8]
  input img: image[1, 6, 6]
  let a = x -> dense(4) as d1 -> relu
  let pre = a -> dense(4) as d2
  let c = img -> conv2d(2, 3) as c1 -> relu -> flatten
  head y = concat(a, pre -> relu, c) -> dense(2) { loss: mse }
  head z = pre { loss: mse }
}
"#;
    for mode in [Mode::Train, Mode::Infer] {
        let g = graph(mtl::compile_str("m.mtl", src, &common::options(mode)));
        let plan = lower(&g, mode).expect("lowers");
        let kernel = |name: &str| {
            plan.steps
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.kernel.to_string())
                .unwrap_or_default()
        };
        assert_eq!(kernel("d1"), "matmul+bias+relu", "{}", plan.render());
        assert!(kernel("c1").ends_with("+relu"), "{}", plan.render());
        assert_eq!(kernel("d2"), "matmul+bias", "{}", plan.render());
        assert_eq!(
            plan.steps
                .iter()
                .filter(|s| s.kernel.to_string() == "mtl.relu")
                .count(),
            1,
            "{}",
            plan.render()
        );
        // Fused and unfused give the same outputs: the fixtures check this
        // against Keras; here the head on `pre` must still be its raw value.
        let dev = Device::Cpu;
        let params = init_params(&plan, 0, &dev).unwrap();
        let x = random_inputs(&plan, 3, 1, -1.0);
        let data = mtl::data::Dataset::from_tensors(x.clone(), "x").unwrap();
        let out = mtl::predict::predict(&plan, &params, &data, 3, &dev).unwrap();
        let a = x["x"]
            .matmul(&params.get("d1.weight").unwrap().t().unwrap())
            .unwrap()
            .broadcast_add(params.get("d1.bias").unwrap())
            .unwrap()
            .relu()
            .unwrap();
        let want = a
            .matmul(&params.get("d2.weight").unwrap().t().unwrap())
            .unwrap()
            .broadcast_add(params.get("d2.bias").unwrap())
            .unwrap();
        assert!(max_abs_diff(&out["z"], &want) < 1e-5);
    }
}

/// For inference a global average pool folds into the conv (+relu) that
/// alone feeds it; outputs equal the training plan's unfused steps.
#[test]
fn global_mean_fuses_into_its_conv_for_inference() {
    let src = r#"
model m {
  input img: image[3, 9, 7]
  let f = img -> conv2d(4, 3, padding = same) as c1 -> relu
  head y = f -> global_avg_pool -> dense(2) { loss: mse }
  head z = f -> conv2d(2, 3) as c2 -> global_avg_pool { loss: mse }
}
"#;
    let plan = |mode| {
        lower(
            &graph(mtl::compile_str("m.mtl", src, &common::options(mode))),
            mode,
        )
        .expect("lowers")
    };
    let (infer, train) = (plan(Mode::Infer), plan(Mode::Train));
    let fused: Vec<&str> = infer
        .steps
        .iter()
        .filter(|s| s.kernel.to_string().ends_with("+global_avg_pool"))
        .map(|s| s.name.as_str())
        .collect();
    // c1's output has two users: only c2 takes the pool in.
    assert_eq!(fused, ["c2"], "{}", infer.render());
    assert!(!train.render().contains("+global_avg_pool"));
    let dev = Device::Cpu;
    let params = init_params(&infer, 0, &dev).unwrap();
    let x = random_inputs(&infer, 5, 2, -1.0);
    let data = mtl::data::Dataset::from_tensors(x, "x").unwrap();
    let (a, b) = (
        mtl::predict::predict(&infer, &params, &data, 5, &dev).unwrap(),
        mtl::predict::predict(&train, &params, &data, 5, &dev).unwrap(),
    );
    for h in ["y", "z"] {
        assert!(max_abs_diff(&a[h], &b[h]) < 1e-5, "{h}");
    }
}
