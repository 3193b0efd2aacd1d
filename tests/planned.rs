//! The planned executor against the candle path: every shipped model and
//! fixture it covers gives the same head outputs (with and without the
//! optimizer, several batch sizes) and, where it trains, the same gradients;
//! and the models it covers stay covered.

mod common;

use candle_core::{Device, Tensor};
use mtl::lower::planned::{Planned, Schedule};
use mtl::lower::{init_params, lower};
use mtl::pipeline::Mode;
use rand::SeedableRng;
use std::path::PathBuf;

fn models() -> Vec<PathBuf> {
    let mut v = common::mtl_files("models");
    v.extend(common::mtl_files("../shared/fixtures"));
    v
}

/// Largest |a − b| relative to max(1, |b|).
fn diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f32::max)
}

#[test]
fn planned_outputs_equal_the_candle_path() {
    let dev = Device::Cpu;
    let mut planned = vec![];
    for m in models() {
        let name = m.file_stem().unwrap().to_string_lossy().to_string();
        for optimize in [true, false] {
            let opts = mtl::Options {
                optimize,
                ..Default::default()
            };
            let g = common::graph(mtl::compile_file(&m, &opts).unwrap());
            let prog = lower(&g, Mode::Infer).unwrap().for_device(&dev);
            // Random weights with large enough biases that relus are not all off.
            let params = init_params(&prog, 7, &dev).unwrap();
            let Ok(mut pl) = Planned::new(&prog, &params) else {
                continue;
            };
            if optimize {
                planned.push(name.clone());
            }
            for (batch, seed) in [(1, 1), (5, 2), (3, 3)] {
                let x = common::random_inputs(&prog, batch, seed, -1.0);
                let inputs = prog.prepare_inputs(&x, &dev).unwrap();
                let mut rng = rand::rngs::StdRng::seed_from_u64(0);
                let want = prog.forward(&params, inputs.clone(), &mut rng).unwrap();
                let got = pl.forward(&prog, &inputs).unwrap();
                let read = prog.heads.iter().map(|(_, s)| *s);
                for slot in read.chain(prog.losses.iter().flat_map(|l| l.slots.clone())) {
                    let (a, b) = (got.get(slot).unwrap(), want.get(slot).unwrap());
                    assert_eq!(a.dims(), b.dims(), "{name} value {slot}");
                    let d = diff(a, b);
                    assert!(
                        d < 1e-5,
                        "{name} (optimize {optimize}, batch {batch}) value {slot}: {d}"
                    );
                }
            }
        }
    }
    // The plan covers these; a model falling back to the candle path is a regression.
    for want in [
        "captions",
        "clip",
        "digits",
        "digits_mt",
        "fusion_ops",
        "fusions",
        "mmoe",
        "overlap",
        "reviews",
        "seed_multimodal",
        "seed_multitask",
        "seed_multitask_small",
        "shapes",
        "shapes_mm",
        "siamese",
        "text_transformer",
        "tones",
    ] {
        assert!(planned.iter().any(|p| p == want), "{want} is not planned");
    }
}

#[test]
fn schedules_refuse_training_programs_masked_recurrences_and_attention_dropout() {
    let dev = Device::Cpu;
    let g = common::compile(&PathBuf::from("models/shapes.mtl"), Mode::Train);
    let prog = lower(&g, Mode::Train).unwrap().for_device(&dev);
    let why = Schedule::of(&prog).unwrap_err();
    assert!(why.0.contains("training"), "{why}");
    // A GRU over padded tokens: only LSTMs carry their state over padding.
    let src = "model m {\n  input t: tokens[6] vocab 9\n  let h = t -> embedding(8, mask_zero = true) -> gru(4)\n  head y = h -> dense(1) {\n    loss: mse\n  }\n}\n";
    let c = mtl::compile_str("m.mtl", src, &common::options(Mode::Infer));
    let prog = lower(&common::graph(c), Mode::Infer).unwrap();
    let why = Schedule::of(&prog).unwrap_err();
    assert!(why.0.contains("padding mask"), "{why}");
    // Dropout on attention probabilities trains on the candle path.
    let src = "model m {\n  input t: tokens[6] vocab 9\n  let h = t -> embedding(8) -> attention(2, 4, dropout = 0.1) -> global_avg_pool(axis = 1)\n  head y = h -> dense(1) {\n    loss: mse\n  }\n}\n";
    let c = mtl::compile_str("m.mtl", src, &common::options(Mode::Train));
    let prog = lower(&common::graph(c), Mode::Train).unwrap();
    let params = init_params(&prog, 1, &dev).unwrap();
    let why = mtl::lower::planned::PlannedTrain::new(&prog, &params)
        .err()
        .unwrap();
    assert!(why.0.contains("attention probabilities"), "{why}");
}

/// An inference recurrence that alone reads an embedding reads its rows of a
/// projected table (E·W_ihᵀ + b) instead of a GEMM over the embedded tokens:
/// GRUs and LSTMs, one and two directions, sequences or the last state, with
/// the outputs of the candle path; not where the embedding has another
/// reader or the table would be too large; a token id outside the table is
/// an error, not a read out of bounds.
#[test]
fn recurrences_read_projected_tables_with_the_outputs_of_the_gemm() {
    let dev = Device::Cpu;
    let model = |vocab: usize, body: &str| {
        format!("model m {{\n  input t: tokens[7] vocab {vocab}\n  let e = t -> embedding(6)\n  {body}\n  head y = h -> dense(2) {{\n    loss: mse\n  }}\n}}\n")
    };
    let cases = [
        (model(11, "let h = e -> gru(5, bidirectional = true)"), true),
        (
            model(
                11,
                "let h = e -> lstm(4, bidirectional = true, return_sequences = true) -> flatten",
            ),
            true,
        ),
        (
            model(
                11,
                "let h = e -> gru(3, return_sequences = true) -> flatten",
            ),
            true,
        ),
        (
            model(
                11,
                "let h = concat(e -> lstm(4), e -> global_avg_pool(axis = 1))",
            ),
            false,
        ),
        (model(300_000, "let h = e -> lstm(4)"), false),
    ];
    for (src, folds) in cases {
        let c = mtl::compile_str("m.mtl", &src, &common::options(Mode::Infer));
        let prog = lower(&common::graph(c), Mode::Infer).unwrap();
        let plan = mtl::lower::planned::render(&prog);
        assert_eq!(plan.contains("projected table"), folds, "{src}\n{plan}");
        assert_eq!(plan.contains("= gather"), !folds, "{src}\n{plan}");
        let params = init_params(&prog, 3, &dev).unwrap();
        let mut pl = Planned::new(&prog, &params).unwrap();
        for (batch, seed) in [(1, 1), (4, 2)] {
            let x = common::random_inputs(&prog, batch, seed, -1.0);
            let inputs = prog.prepare_inputs(&x, &dev).unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(0);
            let want = prog.forward(&params, inputs.clone(), &mut rng).unwrap();
            let got = pl.forward(&prog, &inputs).unwrap();
            let slot = prog.heads[0].1;
            let d = diff(got.get(slot).unwrap(), want.get(slot).unwrap());
            assert!(d < 1e-5, "{src} (batch {batch}): {d}");
        }
    }
    let c = mtl::compile_str(
        "m.mtl",
        &model(11, "let h = e -> lstm(4)"),
        &common::options(Mode::Infer),
    );
    let prog = lower(&common::graph(c), Mode::Infer).unwrap();
    let params = init_params(&prog, 3, &dev).unwrap();
    let mut pl = Planned::new(&prog, &params).unwrap();
    let ids = Tensor::new(&[[1u32, 2, 3, 4, 5, 6, 11]], &dev).unwrap();
    let name = prog.inputs[0].0.clone();
    let why = prog
        .prepare_inputs(&[(name, ids)].into_iter().collect(), &dev)
        .map_err(|e| e.to_string())
        .and_then(|inputs| {
            pl.forward(&prog, &inputs)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .unwrap_err();
    assert!(why.contains("11"), "{why}");
}

/// The summed head losses (zero labels, as `mtl bench --train`) but head
/// `skip`'s (as a batch without its labels), and the auxiliary losses (as
/// training computes them). With `planned`, the heads' losses are its fused
/// ones (`PlannedTrain::head_loss`).
fn total_loss(
    prog: &mtl::lower::Program,
    params: &mtl::lower::Params,
    (fwd, mut planned): (
        &mtl::lower::Forward,
        Option<&mut mtl::lower::planned::PlannedTrain>,
    ),
    skip: Option<usize>,
) -> Tensor {
    use mtl::train::loss::{head_loss, Reduction};
    let dev = Device::Cpu;
    let mut total = Tensor::zeros((), candle_core::DType::F32, &dev).unwrap();
    for (i, (h, slot)) in prog.heads.iter().enumerate() {
        if skip == Some(i) {
            continue;
        }
        let y = fwd.get(*slot).unwrap();
        let label = match h.loss {
            mtl::ir::LossKind::CrossEntropy => {
                let mut dims = vec![y.dims()[0]];
                dims.extend(y.dims().get(2..).unwrap_or(&[]));
                Tensor::zeros(dims, candle_core::DType::I64, &dev).unwrap()
            }
            _ => (y.zeros_like().unwrap() + 0.5).unwrap(),
        };
        let l = match planned.as_deref_mut() {
            Some(p) => {
                p.head_loss(fwd, *slot, h.loss, (&label, None), false)
                    .unwrap()
                    .0
            }
            None => head_loss(h.loss, y, &label, None, Reduction::Batch).unwrap(),
        };
        total = (total + l).unwrap();
    }
    for l in &prog.losses {
        let (a, b) = (fwd.get(l.slots[0]).unwrap(), fwd.get(l.slots[1]).unwrap());
        let loss = match l.kind {
            mtl::ir::AuxKind::Compare(kind) => {
                head_loss(kind, a, &b.detach(), None, Reduction::Batch).unwrap()
            }
            mtl::ir::AuxKind::Contrastive {
                temperature,
                learned,
            } => {
                let scale = match (learned, &l.params) {
                    (true, Some(p)) => params
                        .get(&format!("{p}.{}", mtl::ir::LOGIT_SCALE))
                        .unwrap()
                        .clone(),
                    _ => Tensor::new((1.0 / temperature).ln() as f32, &dev).unwrap(),
                };
                mtl::train::contrastive::contrastive(a, b, &scale).unwrap()
            }
        };
        total = (total + loss).unwrap();
    }
    total
}

#[test]
fn planned_training_gradients_equal_the_candle_path() {
    use mtl::lower::planned::PlannedTrain;
    let dev = Device::Cpu;
    let mut planned = vec![];
    for m in models() {
        let name = m.file_stem().unwrap().to_string_lossy().to_string();
        let g = common::compile(&m, Mode::Train);
        let prog = lower(&g, Mode::Train).unwrap().for_device(&dev);
        let params = init_params(&prog, 7, &dev).unwrap();
        let Ok(mut pt) = PlannedTrain::new(&prog, &params) else {
            continue;
        };
        planned.push(name.clone());
        let vars: Vec<(String, candle_core::Var)> = params
            .trainable
            .iter()
            .map(|k| (k.clone(), params.vars[k].clone()))
            .collect();
        // Without the first head's loss too: weights only it reaches get no
        // gradient on either path.
        for (batch, seed, skip) in [(1, 4, None), (6, 5, None), (6, 5, Some(0))] {
            let x = common::random_inputs(&prog, batch, seed, -1.0);
            let inputs = prog.prepare_inputs(&x, &dev).unwrap();
            // Batch norms' running statistics: both paths move them alike.
            let running: Vec<&candle_core::Var> = params
                .vars
                .iter()
                .filter(|(k, _)| k.contains("running_"))
                .map(|(_, v)| v)
                .collect();
            let copies = || -> Vec<Tensor> {
                running
                    .iter()
                    .map(|v| v.as_tensor().copy().unwrap())
                    .collect()
            };
            let before = copies();
            let mut rng = rand::rngs::StdRng::seed_from_u64(0);
            let fwd = prog.forward(&params, inputs.clone(), &mut rng).unwrap();
            let moved = copies();
            for (v, b) in running.iter().zip(&before) {
                v.set(b).unwrap();
            }
            let want = total_loss(&prog, &params, (&fwd, None), skip)
                .backward()
                .unwrap();
            let want = mtl::train::optim::grads_for(&vars, &want);
            // The same dropout masks: a stream as the candle path's.
            let mut rng = rand::rngs::StdRng::seed_from_u64(0);
            let pf = pt.forward(&prog, &params, inputs, &mut rng).unwrap();
            for ((v, want), b) in running.iter().zip(&moved).zip(&before) {
                assert!(
                    diff(want, b) > 0.0,
                    "{name}: a running statistic stayed put"
                );
                let d = diff(v.as_tensor(), want);
                assert!(d < 1e-6, "{name}: running statistics differ by {d}");
            }
            let store = total_loss(&prog, &params, (&pf, Some(&mut pt)), skip)
                .backward()
                .unwrap();
            let mut got = mtl::train::optim::grads_for(&vars, &store);
            pt.backward(&prog, &params, (&pf, &store), &vars, &mut got)
                .unwrap();
            for ((k, _), (a, b)) in vars.iter().zip(got.iter().zip(&want)) {
                let (Some(a), Some(b)) = (a, b) else {
                    assert!(a.is_none() == b.is_none(), "{name}: {k} {a:?} vs {b:?}");
                    continue;
                };
                let max_abs = |t: &Tensor| -> f32 {
                    let m = t.abs().unwrap().max_all().unwrap();
                    m.to_scalar::<f32>().unwrap()
                };
                let scale = max_abs(b);
                if scale < 1e-6 {
                    // A gradient that vanishes (an attention's key bias: the
                    // softmax ignores a shift shared by a row's scores) is
                    // rounding on both sides: ours must vanish as well.
                    let ours = max_abs(a);
                    assert!(ours < 1e-6, "{name}: {k} is {ours}, candle's {scale}");
                    continue;
                }
                let d = max_abs(&(a - b).unwrap()) / scale;
                assert!(
                    d < 1e-4,
                    "{name} (batch {batch}): gradient of {k} differs by {d} of {scale}"
                );
            }
        }
    }
    for want in [
        "captions",
        "clip",
        "digits_mt",
        "fusion_ops",
        "fusions",
        "mmoe",
        "reviews",
        "seed_multitask_small",
        "shapes",
        "shapes_mm",
        "siamese",
        "text_transformer",
    ] {
        assert!(
            planned.iter().any(|p| p == want),
            "{want} does not train planned: {planned:?}"
        );
    }
}
