//! The data front door: training from a CSV manifest of PNG images, captions,
//! class-name labels and empty label cells; broken data sets rejected with the
//! file, row and column; JSON Lines; predictions as CSV with class names.

mod common;

use candle_core::Device;
use common::{graph, options, root};
use mtl::data::{manifest::Manifest, Dataset, Encoders};
use mtl::lower::{init_params, lower, Program};
use mtl::passes::Mode;
use mtl::train::{EvalResult, FitConfig, Observer};
use std::path::{Path, PathBuf};

struct Quiet;
impl Observer for Quiet {}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mtl-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn programs(src: &str) -> (mtl::ir::Graph, Program, Program) {
    let g = graph(mtl::compile_str("m.mtl", src, &options(Mode::Train)));
    let t = lower(&g, Mode::Train);
    let i = lower(
        &graph(mtl::compile_str("m.mtl", src, &options(Mode::Infer))),
        Mode::Infer,
    );
    (g, t, i)
}

/// Trains `src` on `train.csv` and evaluates on `test.csv` of `data`.
fn train_eval(src: &str, data: &Path, epochs: usize) -> EvalResult {
    let (g, t, i) = programs(src);
    let dev = Device::Cpu;
    let mut enc = Encoders::default();
    let train = mtl::data::load(&data.join("train.csv"), &t, &mut enc, true, true, &dev).unwrap();
    let test = mtl::data::load(&data.join("test.csv"), &t, &mut enc, false, true, &dev).unwrap();
    let mut cfg = g.train.clone();
    cfg.epochs = epochs;
    cfg.val_split = 0.0;
    let dir = data.join(format!("run-{}", src.len()));
    let fc = FitConfig {
        train: cfg,
        run_dir: dir,
        resume: false,
        device: dev.clone(),
    };
    let mut params = init_params(&t, 0, &dev).unwrap();
    mtl::train::fit(&fc, &t, &i, &mut params, &train, None, &mut Quiet).unwrap();
    mtl::train::evaluate(&i, &params, &test, 128, &dev).unwrap()
}

#[test]
fn manifest_training_learns_and_fusion_beats_each_modality() {
    let data = tmp("shapes");
    mtl::data::shapes::write(&data, 600, 0).unwrap();
    let text = std::fs::read_to_string(data.join("train.csv")).unwrap();
    assert!(
        text.lines().any(|l| l.contains(",,")),
        "some label cells are empty"
    );
    let fused = std::fs::read_to_string(root().join("models/shapes.mtl")).unwrap();
    let image_only = fused.replace("head total = concat(img, txt)", "head total = img");
    let caption_only = fused.replace("head total = concat(img, txt)", "head total = txt");
    assert!(image_only != fused && caption_only != fused);
    let mae = |r: &EvalResult| r.heads["total"].metrics["mae"];
    let f = train_eval(&fused, &data, 10);
    let (im, ca) = (
        train_eval(&image_only, &data, 10),
        train_eval(&caption_only, &data, 10),
    );
    // `total` needs both: the fused model beats each single modality.
    assert!(
        mae(&f) < mae(&ca) && mae(&f) < mae(&im),
        "total MAE: fused {} caption-only {} image-only {}",
        mae(&f),
        mae(&ca),
        mae(&im)
    );
    // Well above chance (3 classes) on class-name labels with empty cells.
    assert!(
        f.heads["shape"].metrics["accuracy"] > 0.45,
        "{:?}",
        f.heads["shape"]
    );
    let _ = std::fs::remove_dir_all(&data);
}

const SMALL: &str = r#"
model small {
  input image: image[1, 4, 4]
  input text: tokens[3] vocab 10
  input num: f32[3]
  let h = concat(image -> flatten, text -> embedding(2) -> flatten, num)
  head kind = h -> dense(2) { loss: cross_entropy }
  head value = h -> dense(1) { loss: mse }
}
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Loads `csv` against SMALL with encoders fit on a good training file.
fn load_err(dir: &Path, csv: &str) -> String {
    let (_, t, _) = programs(SMALL);
    let mut enc = Encoders::default();
    let good = write(
        dir,
        "good.csv",
        "image,text,num,kind,value\na.png,hello world,1 2 3,cat,0.5\na.png,hi,4 5 6,dog,\n",
    );
    mtl::data::load(&good, &t, &mut enc, true, true, &Device::Cpu).unwrap();
    let bad = write(dir, "bad.csv", csv);
    match mtl::data::load(&bad, &t, &mut enc, false, true, &Device::Cpu) {
        Ok(_) => panic!("{csv} should be rejected"),
        Err(e) => e,
    }
}

#[test]
fn broken_data_sets_name_file_row_and_column() {
    let dir = tmp("broken");
    image::GrayImage::from_pixel(4, 4, image::Luma([128]))
        .save(dir.join("a.png"))
        .unwrap();
    let cases = [
        (
            "image,num,kind,value\na.png,1 2 3,cat,1\n",
            vec!["bad.csv", "no column `text`"],
        ),
        (
            "image,text,num,kind,value\na.png,x,1 2 3,cat,1\nmissing.png,x,1 2 3,cat,1\n",
            vec!["bad.csv: row 2, column `image`", "missing.png"],
        ),
        (
            "image,text,num,kind,value\na.png,x,1 2 3,cow,1\n",
            vec!["row 1, column `kind`", "class `cow`", "cat, dog"],
        ),
        (
            "image,text,num,kind,value\na.png,x,1 2,cat,1\n",
            vec!["row 1, column `num`", "expected 3 numbers, found 2"],
        ),
        (
            "image,text,num,kind,value\na.png,x,1 NaN 3,cat,1\n",
            vec!["row 1, column `num`", "NaN"],
        ),
        (
            "image,text,num,kind,value\na.png,x,1 2 3,cat,1 2\n",
            vec!["row 1, column `value`", "expected 1 number"],
        ),
    ];
    for (csv, wants) in cases {
        let e = load_err(&dir, csv);
        for w in wants {
            assert!(
                e.contains(w),
                "error for {csv:?} should mention {w:?}:\n{e}"
            );
        }
    }
    // More classes in the training data than the head has.
    let (_, t, _) = programs(SMALL);
    let many = write(
        &dir,
        "many.csv",
        "image,text,num,kind,value\na.png,x,1 2 3,a,1\na.png,x,1 2 3,b,1\na.png,x,1 2 3,c,1\n",
    );
    let e = mtl::data::load(
        &many,
        &t,
        &mut Encoders::default(),
        true,
        true,
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(
        e.contains("has 3 classes") && e.contains("head `kind` has 2"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn jsonl_and_csv_manifests_encode_alike() {
    let dir = tmp("jsonl");
    image::GrayImage::from_pixel(4, 4, image::Luma([200]))
        .save(dir.join("a.png"))
        .unwrap();
    let csv = write(
        &dir,
        "d.csv",
        "image,text,num,kind,value\na.png,Hello world,1 2 3,cat,0.5\na.png,hello,4 5 6,dog,\n",
    );
    let jsonl = write(&dir, "d.jsonl", "{\"image\": \"a.png\", \"text\": \"Hello world\", \"num\": [1, 2, 3], \"kind\": \"cat\", \"value\": 0.5}\n{\"image\": \"a.png\", \"text\": \"hello\", \"num\": \"4 5 6\", \"kind\": \"dog\", \"value\": null}\n");
    let (_, t, _) = programs(SMALL);
    let load = |p: &Path| {
        let mut enc = Encoders::default();
        let d: Dataset = mtl::data::load(p, &t, &mut enc, true, true, &Device::Cpu).unwrap();
        (d, enc)
    };
    let ((a, ea), (b, eb)) = (load(&csv), load(&jsonl));
    assert_eq!(ea, eb);
    assert_eq!(
        ea.vocabs["text"].encode("HELLO, unknown world", 3),
        vec![2, 1, 3]
    );
    for (k, x) in &a.tensors {
        let y = &b.tensors[k];
        let (x, y) = (
            x.to_dtype(candle_core::DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            y.to_dtype(candle_core::DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
        assert!(
            x.iter()
                .zip(&y)
                .all(|(p, q)| p == q || (p.is_nan() && q.is_nan())),
            "{k}: {x:?} vs {y:?}"
        );
    }
    // The empty `value` cell is a missing label (NaN); the image is scaled to [0, 1].
    assert!(a.tensors["value"].to_vec2::<f32>().unwrap()[1][0].is_nan());
    assert!(
        (a.tensors["image"]
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            - 200.0 / 255.0)
            .abs()
            < 1e-6
    );
    let _ = Manifest::read(&csv).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cli_trains_from_a_manifest_and_predicts_class_names() {
    let bin = env!("CARGO_BIN_EXE_mtl");
    let dir = tmp("cli");
    let data = dir.join("data");
    let gen = std::process::Command::new(bin)
        .args(["data", "shapes", "--n", "64", "--out"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    let run = dir.join("run");
    let out = std::process::Command::new(bin)
        .args([
            "train",
            "models/shapes.mtl",
            "--epochs",
            "1",
            "--quiet",
            "--data",
        ])
        .arg(data.join("train.csv"))
        .arg("--out")
        .arg(&run)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        run.join("data.json").exists(),
        "vocabulary and label maps saved with the run"
    );
    let pred = dir.join("pred.csv");
    let p = std::process::Command::new(bin)
        .arg("predict")
        .arg(&run)
        .arg("--input")
        .arg(data.join("test.csv"))
        .arg("--output")
        .arg(&pred)
        .output()
        .unwrap();
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let text = std::fs::read_to_string(&pred).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "shape,shape.prob,owner,owner.prob,total"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 16);
    assert!(rows
        .iter()
        .all(|r| mtl::data::shapes::SHAPES.contains(&r.split(',').next().unwrap())));
    assert!(dir.join("pred.safetensors").exists());
    let ev = std::process::Command::new(bin)
        .arg("evaluate")
        .arg(&run)
        .arg("--data")
        .arg(data.join("test.csv"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        ev.status.success(),
        "{}",
        String::from_utf8_lossy(&ev.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A word-level Hugging Face tokenizer: lower-cased, split on whitespace.
const TOKENIZER: &str = r#"{
  "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
  "normalizer": {"type": "Lowercase"},
  "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null, "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"[PAD]": 0, "[UNK]": 1, "hello": 2, "world": 3, "big": 12}, "unk_token": "[UNK]"}
}"#;

#[test]
fn hugging_face_tokenizer_json_encodes_token_columns() {
    let dir = tmp("hf");
    image::GrayImage::from_pixel(4, 4, image::Luma([10]))
        .save(dir.join("a.png"))
        .unwrap();
    let tok = write(&dir, "tokenizer.json", TOKENIZER);
    let (_, t, _) = programs(SMALL);
    let csv = write(
        &dir,
        "d.csv",
        "image,text,num,kind,value\na.png,Hello World,1 2 3,cat,1\na.png,world what,1 2 3,dog,0\n",
    );
    let mut enc = Encoders {
        tokenizer: Some(tok.clone()),
        ..Default::default()
    };
    let d = mtl::data::load(&csv, &t, &mut enc, true, true, &Device::Cpu).unwrap();
    assert!(
        enc.vocabs.is_empty(),
        "no built-in vocabulary with a tokenizer"
    );
    assert_eq!(
        d.tensors["text"].to_vec2::<i64>().unwrap(),
        vec![vec![2, 3, 0], vec![3, 1, 0]]
    );
    // An id beyond the declared `vocab 10` names the file, row and column.
    let big = write(
        &dir,
        "big.csv",
        "image,text,num,kind,value\na.png,big,1 2 3,cat,1\n",
    );
    let e = mtl::data::load(&big, &t, &mut enc, false, true, &Device::Cpu).unwrap_err();
    assert!(
        e.contains("big.csv: row 1, column `text`") && e.contains("id 12"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
