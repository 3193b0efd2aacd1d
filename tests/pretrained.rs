//! `pretrained(...)`: tiny random Hugging Face checkpoints
//! (tests/reference/pretrained/make.py) give `transformers`' outputs, alone
//! and fused; freezing keeps encoder weights bit-identical while heads
//! train; broken checkpoints are located errors naming the file and key.

mod common;

use candle_core::{Device, Tensor};
use common::graph;
use mtl::lower::{init_params, lower};
use mtl::pipeline::Mode;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    common::root().join("tests/reference/pretrained")
}

fn max_rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1e-3))
        .fold(0.0, f32::max)
}

/// `mtl init` then `mtl predict`, through the library: the heads' outputs.
fn predict(
    model: &Path,
    inputs: HashMap<String, Tensor>,
) -> (HashMap<String, Tensor>, mtl::lower::Params) {
    let c = mtl::compile_file(model, &mtl::Options::default()).unwrap();
    assert!(!c.has_errors(), "{:?}", c.diagnostics);
    let g = graph(c);
    let prog = lower(&g, Mode::Infer).unwrap();
    let params = init_params(&prog, 0, &Device::Cpu).unwrap();
    for u in &g.pretrained {
        let ck = mtl::pretrained::open(&u.dir).unwrap();
        let n = ck.load_into(&params, &u.prefix).unwrap();
        assert!(n > 20, "{n} tensors loaded for {}", u.prefix);
    }
    let ds = mtl::data::Dataset::from_tensors(inputs, "inputs").unwrap();
    (
        mtl::predict::predict(&prog, &params, &ds, 2, &Device::Cpu).unwrap(),
        params,
    )
}

fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join(name), &Device::Cpu).unwrap()
}

#[test]
fn bert_and_vit_equal_transformers() {
    for m in ["bert", "vit"] {
        let (out, _) = predict(
            &dir().join(format!("{m}.mtl")),
            load(&format!("{m}.inputs.safetensors")),
        );
        for (k, want) in load(&format!("{m}.expected.safetensors")) {
            let err = max_rel_err(&out[&k], &want);
            assert!(err < 1e-4, "{m} {k}: max relative error {err}");
        }
    }
}

#[test]
fn fused_encoders_feed_one_head() {
    let text = load("bert.inputs.safetensors")
        .remove("text")
        .unwrap()
        .narrow(0, 0, 3)
        .unwrap();
    let image = load("vit.inputs.safetensors").remove("image").unwrap();
    let inputs = HashMap::from([("text".to_string(), text), ("image".to_string(), image)]);
    let (out, params) = predict(&dir().join("fused.mtl"), inputs);
    // softmax([BERT pooled, ViT pooled] · Wᵀ + b) from transformers' outputs.
    let pb = load("bert.expected.safetensors")
        .remove("pooled")
        .unwrap()
        .narrow(0, 0, 3)
        .unwrap();
    let pv = load("vit.expected.safetensors").remove("pooled").unwrap();
    let x = Tensor::cat(&[pb, pv], 1).unwrap();
    let (w, b) = (
        params.get("out.weight").unwrap(),
        params.get("out.bias").unwrap(),
    );
    let logits = x.matmul(&w.t().unwrap()).unwrap().broadcast_add(b).unwrap();
    let want = candle_nn::ops::softmax(&logits, 1).unwrap();
    let err = max_rel_err(&out["y"], &want);
    assert!(err < 1e-4, "max relative error {err}");
}

/// A classifier on the tiny BERT, written next to its data in `tmp`.
fn classifier(tmp: &Path, train: &str) -> PathBuf {
    let ck = dir().join("bert");
    let src = format!(
        "model cls {{\n  input text: tokens[12] vocab 99\n  head label = text -> pretrained({:?}, output = pooled) as bert -> dense(2) as out {{ loss: cross_entropy }}\n  train {{ epochs: 2, batch_size: 8, lr: 0.01{train} }}\n}}\n",
        ck.to_str().unwrap()
    );
    let model = tmp.join("cls.mtl");
    std::fs::write(&model, src).unwrap();
    let mut csv = String::from("text,label\n");
    for i in 0..32 {
        let label = if i % 2 == 0 { "even" } else { "odd" };
        csv += &format!(
            "w{} w{} w{},{label}\n",
            i % 7,
            (i * 3) % 11 + 20,
            i % 5 + 40
        );
    }
    std::fs::write(tmp.join("train.csv"), csv).unwrap();
    model
}

fn mtl(args: &[&std::ffi::OsStr]) -> std::process::Output {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mtl"))
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

fn weights(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn weights_i64(path: &Path, name: &str) -> Vec<i64> {
    let t = candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .remove(name)
        .unwrap();
    t.to_dtype(candle_core::DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        == b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn freezing_keeps_the_encoder_bit_identical_and_trains_the_head() {
    let tmp = std::env::temp_dir().join(format!("mtl-freeze-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let ckpt = weights(&dir().join("bert/model.safetensors"));
    let run = |model: &Path, out: &str, extra: &[&str]| {
        let out = tmp.join(out);
        let mut args: Vec<&std::ffi::OsStr> =
            vec!["train".as_ref(), model.as_os_str(), "--data".as_ref()];
        let data = tmp.join("train.csv");
        args.push(data.as_os_str());
        args.extend(["--out".as_ref(), out.as_os_str(), "--quiet".as_ref()]);
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        mtl(&args);
        out
    };
    // `train { freeze }`: every bert.* tensor as in the checkpoint; the head moves.
    let frozen_model = classifier(&tmp, ", freeze: [\"bert\"]");
    let frozen = run(&frozen_model, "frozen", &[]);
    let w = weights(&frozen.join("last.safetensors"));
    let mut n = 0;
    for (k, v) in &ckpt {
        assert!(
            same(&w[&format!("bert.{k}")], v),
            "bert.{k} changed while frozen"
        );
        n += 1;
    }
    assert!(n > 30);
    let init = tmp.join("init.safetensors");
    mtl(&[
        "init".as_ref(),
        frozen_model.as_os_str(),
        "--out".as_ref(),
        init.as_os_str(),
    ]);
    let w0 = weights(&init);
    assert!(
        !same(&w["out.weight"], &w0["out.weight"]),
        "the head did not train"
    );
    for (k, v) in &ckpt {
        assert!(
            same(&w0[&format!("bert.{k}")], v),
            "`mtl init` did not load bert.{k}"
        );
    }
    // The checkpoint's tokenizer, with its special tokens, encoded the text.
    let data = std::fs::read_to_string(frozen.join("data.json")).unwrap();
    let decoded = tmp.join("decoded.safetensors");
    let csv = tmp.join("train.csv");
    mtl(&[
        "data".as_ref(),
        "decode".as_ref(),
        frozen.as_os_str(),
        "--data".as_ref(),
        csv.as_os_str(),
        "--output".as_ref(),
        decoded.as_os_str(),
        "--rows".as_ref(),
        "1".as_ref(),
    ]);
    let ids = weights_i64(&decoded, "text");
    // "w0 w20 w40": [CLS] w0 w20 w40 [SEP], then padding.
    assert_eq!(&ids[..7], &[2, 5, 25, 45, 3, 0, 0], "{ids:?}");
    assert!(
        data.contains("tokenizer.json") && data.contains("special_tokens"),
        "{data}"
    );
    // Unfrozen (and starting from the first run): the encoder changes.
    let thawed = run(
        &frozen_model,
        "thawed",
        &[
            "--unfreeze",
            "bert",
            "--init-from",
            frozen.to_str().unwrap(),
        ],
    );
    let w2 = weights(&thawed.join("last.safetensors"));
    let moved = ckpt
        .keys()
        .filter(|k| !same(&w2[&format!("bert.{k}")], &ckpt[*k]))
        .count();
    assert!(
        moved > 30,
        "only {moved} encoder tensors changed without freezing"
    );
    // `--freeze` on the command line does what `train { freeze }` does.
    let plain = classifier(&tmp, "");
    let cli = run(&plain, "cli_frozen", &["--freeze", "bert.encoder"]);
    let w3 = weights(&cli.join("last.safetensors"));
    for (k, v) in ckpt.iter().filter(|(k, _)| k.starts_with("encoder.")) {
        assert!(
            same(&w3[&format!("bert.{k}")], v),
            "bert.{k} changed under --freeze bert.encoder"
        );
    }
    assert!(!same(
        &w3["bert.pooler.dense.weight"],
        &ckpt["pooler.dense.weight"]
    ));
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn trainable_false_freezes_one_layer() {
    let src = "model t {\n  input x: f32[4]\n  head y = x -> dense(8, trainable = false) as a -> relu -> dense(1) as b { loss: mse }\n}\n";
    let c = mtl::compile_str("t.mtl", src, &mtl::Options::default());
    let g = graph(c);
    assert!(g.is_frozen("a") && !g.is_frozen("b"));
    assert_eq!(g.param_counts(), (49, 9, 40));
    let prog = lower(&g, Mode::Train).unwrap();
    let params = init_params(&prog, 0, &Device::Cpu).unwrap();
    assert_eq!(params.trainable, ["b.bias", "b.weight"]);
}

/// Diagnostics of a copy of the tiny BERT with `config.json` changed by `edit`.
fn broken(edit: impl Fn(&mut serde_json::Value), remove: &[&str]) -> Vec<(String, String)> {
    let tmp = std::env::temp_dir().join(format!(
        "mtl-broken-{}-{}",
        std::process::id(),
        remove.len()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let ck = tmp.join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(dir().join("bert").join(f), ck.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ck.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(ck.join("config.json"), cfg.to_string()).unwrap();
    for f in remove {
        std::fs::remove_file(ck.join(f)).unwrap();
    }
    let model = tmp.join("m.mtl");
    std::fs::write(&model, "model m {\n  input text: tokens[12] vocab 99\n  head y = text -> pretrained(\"ck\", output = pooled) -> dense(2) { loss: cross_entropy }\n}\n").unwrap();
    let c = mtl::compile_file(&model, &mtl::Options::default()).unwrap();
    let _ = std::fs::remove_dir_all(&tmp);
    c.diagnostics
        .iter()
        .map(|d| (d.code.to_string(), d.message.clone()))
        .collect()
}

#[test]
fn broken_checkpoints_are_located_errors_naming_file_and_key() {
    let d = broken(|c| c["model_type"] = "gpt2".into(), &[]);
    assert_eq!(d[0].0, "mtl::pretrained-checkpoint");
    assert!(
        d[0].1.contains("config.json")
            && d[0].1.contains("`model_type`")
            && d[0].1.contains("gpt2"),
        "{d:?}"
    );
    let d = broken(
        |c| c["position_embedding_type"] = "relative_key".into(),
        &[],
    );
    assert!(
        d[0].1.contains("`position_embedding_type`") && d[0].1.contains("not supported"),
        "{d:?}"
    );
    let d = broken(|c| c["hidden_act"] = "gelu_new".into(), &[]);
    assert!(d[0].1.contains("`hidden_act`"), "{d:?}");
    let d = broken(|_| {}, &["model.safetensors"]);
    assert!(
        d[0].1.contains("model.safetensors") && d[0].1.contains("missing"),
        "{d:?}"
    );
    // A config that disagrees with the weights: shapes are compared after inference.
    let d = broken(|c| c["intermediate_size"] = 40.into(), &[]);
    assert!(
        d.iter().all(|(code, _)| code == "mtl::pretrained-weights"),
        "{d:?}"
    );
    let w = d
        .iter()
        .find(|(_, m)| m.contains("`encoder.layer.0.intermediate.dense.weight`"))
        .unwrap();
    assert!(
        w.1.contains("model.safetensors")
            && w.1.contains("[37, 32] in the checkpoint")
            && w.1.contains("[40, 32]"),
        "{d:?}"
    );
}

#[test]
fn a_vit_input_of_another_size_is_refused_at_check_time() {
    let tmp = std::env::temp_dir().join(format!("mtl-vit-size-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let model = tmp.join("m.mtl");
    let src = format!(
        "model m {{\n  input image: image[3, 32, 32]\n  head y = image -> pretrained({:?}) -> global_avg_pool(axis = 1) -> dense(2) {{ loss: cross_entropy }}\n}}\n",
        dir().join("vit").to_str().unwrap()
    );
    std::fs::write(&model, src).unwrap();
    let c = mtl::compile_file(&model, &mtl::Options::default()).unwrap();
    let _ = std::fs::remove_dir_all(&tmp);
    let d = &c.diagnostics[0];
    assert_eq!(d.code, "mtl::pretrained-weights");
    assert!(
        d.message.contains("`embeddings.position_embeddings`") && d.message.contains("[1, 17, 32]"),
        "{}",
        d.message
    );
}

/// The tiny BERT's config with weights `write` puts in the directory, as
/// `pretrained("ck", output = OUTPUT)`: the max relative error of that output
/// against `transformers`'.
fn rewritten_bert(tag: &str, output: &str, write: impl FnOnce(&Path)) -> f32 {
    let tmp = std::env::temp_dir().join(format!("mtl-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let ck = tmp.join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::copy(dir().join("bert/config.json"), ck.join("config.json")).unwrap();
    write(&ck);
    let model = tmp.join("m.mtl");
    let src = format!("model m {{\n  input text: tokens[12] vocab 99\n  head {output} = text -> pretrained(\"ck\", output = {output}) as enc {{ loss: mse }}\n}}\n");
    std::fs::write(&model, src).unwrap();
    let c = mtl::compile_file(&model, &mtl::Options::default()).unwrap();
    assert!(!c.has_errors(), "{:?}", c.diagnostics);
    let (out, _) = predict(&model, load("bert.inputs.safetensors"));
    let _ = std::fs::remove_dir_all(&tmp);
    let want = load("bert.expected.safetensors").remove(output).unwrap();
    max_rel_err(&out[output], &want)
}

#[test]
fn a_sharded_checkpoint_loads_as_one() {
    let err = rewritten_bert("sharded", "sequence", |ck| {
        let all = weights(&dir().join("bert/model.safetensors"));
        let mut keys: Vec<&String> = all.keys().collect();
        keys.sort();
        let mut map = serde_json::Map::new();
        for (i, part) in keys.chunks(keys.len().div_ceil(2)).enumerate() {
            let file = format!("model-0000{}-of-00002.safetensors", i + 1);
            let shard: HashMap<String, Tensor> = part
                .iter()
                .map(|k| ((*k).clone(), all[*k].clone()))
                .collect();
            candle_core::safetensors::save(&shard, ck.join(&file)).unwrap();
            for k in part {
                map.insert((*k).clone(), file.clone().into());
            }
        }
        let index = serde_json::json!({"metadata": {}, "weight_map": map});
        std::fs::write(ck.join("model.safetensors.index.json"), index.to_string()).unwrap();
    });
    assert!(err < 1e-4, "max relative error {err}");
}

#[test]
fn a_task_models_checkpoint_loads_its_encoder() {
    // `BertForSequenceClassification.save_pretrained` keys the encoder under
    // `bert.` and adds a classifier; old checkpoints name layer norms gamma/beta.
    let err = rewritten_bert("task", "pooled", |ck| {
        let mut renamed: HashMap<String, Tensor> = weights(&dir().join("bert/model.safetensors"))
            .into_iter()
            .map(|(k, v)| {
                let k = k
                    .replace("LayerNorm.weight", "LayerNorm.gamma")
                    .replace("LayerNorm.bias", "LayerNorm.beta");
                (format!("bert.{k}"), v)
            })
            .collect();
        let classifier = Tensor::zeros((2, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
        renamed.insert("classifier.weight".into(), classifier);
        candle_core::safetensors::save(&renamed, ck.join("model.safetensors")).unwrap();
    });
    assert!(err < 1e-4, "max relative error {err}");
}

#[test]
fn predict_reads_an_untrained_encoder_from_its_checkpoint() {
    // A weights file without any `bert.*` tensor: `predict` takes them from
    // the checkpoint directory (as `init` and `train` do).
    let tmp = std::env::temp_dir().join(format!("mtl-predict-ck-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let w = tmp.join("w.safetensors");
    let unrelated = HashMap::from([(
        "unrelated".to_string(),
        Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu).unwrap(),
    )]);
    candle_core::safetensors::save(&unrelated, &w).unwrap();
    let out = tmp.join("out.safetensors");
    let (model, input) = (
        dir().join("bert.mtl"),
        dir().join("bert.inputs.safetensors"),
    );
    mtl(&[
        "predict".as_ref(),
        model.as_os_str(),
        "--weights".as_ref(),
        w.as_os_str(),
        "--input".as_ref(),
        input.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
    ]);
    let got = weights(&out);
    let _ = std::fs::remove_dir_all(&tmp);
    for (k, want) in load("bert.expected.safetensors") {
        let err = max_rel_err(&got[&k], &want);
        assert!(err < 1e-4, "{k}: max relative error {err}");
    }
}

#[test]
fn freezing_a_name_no_layer_has_is_a_usage_error() {
    let tmp = std::env::temp_dir().join(format!("mtl-freeze-none-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let model = classifier(&tmp, "");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mtl"))
        .arg("train")
        .arg(&model)
        .arg("--data")
        .arg(tmp.join("train.csv"))
        .args(["--freeze", "bart", "--quiet", "--out"])
        .arg(tmp.join("run"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&tmp);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("freeze `bart`"));
}
