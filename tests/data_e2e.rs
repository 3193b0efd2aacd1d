//! The data front door: training from a CSV manifest of PNG images, captions,
//! class-name labels and empty label cells; broken data sets rejected with the
//! file, row and column; JSON Lines; predictions as CSV with class names.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{graph, graph_and_train, options, root};
use mtl::data::{Dataset, Encoders, LoadOptions, Manifest, Storage};
use mtl::lower::{init_params, lower, Program};
use mtl::pipeline::Mode;
use mtl::train::config::TrainConfig;
use mtl::train::{EvalResult, FitConfig, Observer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

struct Quiet;
impl Observer for Quiet {}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mtl-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn programs(src: &str) -> (TrainConfig, Program, Program) {
    let (g, cfg) = graph_and_train(mtl::compile_str("m.mtl", src, &options(Mode::Train)));
    let t = lower(&g, Mode::Train).expect("lowers");
    let i = lower(
        &graph(mtl::compile_str("m.mtl", src, &options(Mode::Infer))),
        Mode::Infer,
    )
    .expect("lowers");
    (cfg, t, i)
}

/// Loads `path` for program `t` (labels included) on the CPU in memory;
/// `fit` builds the vocabularies and label maps into `enc` first.
fn load(path: &Path, t: &Program, enc: &mut Encoders, fit: bool) -> Result<Dataset, String> {
    mtl::data::load(
        path,
        &t.signature(),
        enc,
        fit,
        true,
        &Device::Cpu,
        &LoadOptions::default(),
    )
}

/// Equal keys and bit-equal values (NaN equal to NaN).
fn assert_same_tensors(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>, what: &str) {
    let mut ka: Vec<_> = a.keys().collect();
    let mut kb: Vec<_> = b.keys().collect();
    ka.sort();
    kb.sort();
    assert_eq!(ka, kb, "{what}: columns");
    let flat = |t: &Tensor| -> Vec<f64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    for (k, x) in a {
        let y = &b[k];
        assert_eq!((x.dims(), x.dtype()), (y.dims(), y.dtype()), "{what}: {k}");
        let (x, y) = (flat(x), flat(y));
        assert!(
            x.iter()
                .zip(&y)
                .all(|(p, q)| p == q || (p.is_nan() && q.is_nan())),
            "{what}: {k}: {x:?} vs {y:?}"
        );
    }
}

/// Trains `src` on `train.csv` and evaluates on `test.csv` of `data`.
fn train_eval(src: &str, data: &Path, epochs: usize) -> EvalResult {
    let (mut cfg, t, i) = programs(src);
    let dev = Device::Cpu;
    let mut enc = Encoders::default();
    let train = load(&data.join("train.csv"), &t, &mut enc, true).unwrap();
    let test = load(&data.join("test.csv"), &t, &mut enc, false).unwrap();
    cfg.epochs = epochs;
    cfg.val_split = 0.0;
    let dir = data.join(format!("run-{}", src.len()));
    let fc = FitConfig {
        train: cfg,
        run_dir: dir,
        resume: false,
        device: dev.clone(),
        tensorboard: None,
        comm: None,
        planned: true,
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
    load(&good, &t, &mut enc, true).unwrap();
    let bad = write(dir, "bad.csv", csv);
    match load(&bad, &t, &mut enc, false) {
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
    let e = load(&many, &t, &mut Encoders::default(), true).unwrap_err();
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
        let d: Dataset = load(p, &t, &mut enc, true).unwrap();
        (d, enc)
    };
    let ((a, ea), (b, eb)) = (load(&csv), load(&jsonl));
    assert_eq!(ea, eb);
    assert_eq!(
        ea.vocabs["text"].encode("HELLO, unknown world", 3),
        vec![2, 1, 3]
    );
    let (a, b) = (a.tensors().unwrap(), b.tensors().unwrap());
    assert_same_tensors(&a, &b, "csv vs jsonl");
    // The empty `value` cell is a missing label (NaN); the image is scaled to [0, 1].
    assert!(a["value"].to_vec2::<f32>().unwrap()[1][0].is_nan());
    assert!(
        (a["image"].max_all().unwrap().to_scalar::<f32>().unwrap() - 200.0 / 255.0).abs() < 1e-6
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
    // The same predictions with the decoded inputs streamed through a disk cache.
    let pred_disk = dir.join("pred_disk.csv");
    let p = std::process::Command::new(bin)
        .arg("predict")
        .arg(&run)
        .arg("--input")
        .arg(data.join("test.csv"))
        .arg("--output")
        .arg(&pred_disk)
        .args(["--memory-limit", "0", "--cache-dir"])
        .arg(dir.join("cache"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&p.stderr);
    assert!(p.status.success() && err.contains("cached in"), "{err}");
    assert_eq!(std::fs::read_to_string(&pred_disk).unwrap(), text);
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
    let d = load(&csv, &t, &mut enc, true).unwrap();
    assert!(
        enc.vocabs.is_empty(),
        "no built-in vocabulary with a tokenizer"
    );
    assert_eq!(
        d.tensors().unwrap()["text"].to_vec2::<i64>().unwrap(),
        vec![vec![2, 3, 0], vec![3, 1, 0]]
    );
    // An id beyond the declared `vocab 10` names the file, row and column.
    let big = write(
        &dir,
        "big.csv",
        "image,text,num,kind,value\na.png,big,1 2 3,cat,1\n",
    );
    let e = load(&big, &t, &mut enc, false).unwrap_err();
    assert!(
        e.contains("big.csv: row 1, column `text`") && e.contains("id 12"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn decoded_data_above_the_memory_limit_streams_to_a_reused_disk_cache() {
    let data = tmp("cache");
    mtl::data::shapes::write(&data, 40, 3).unwrap();
    let src = std::fs::read_to_string(root().join("models/shapes.mtl")).unwrap();
    let (base, t, i) = programs(&src);
    let dev = Device::Cpu;
    let csv = data.join("train.csv");
    let mut enc = Encoders::default();
    let mem = load(&csv, &t, &mut enc, true).unwrap();
    assert_eq!(mem.storage, Storage::Memory);
    let cache = data.join("cache");
    let disk_opts = LoadOptions {
        memory_limit: 0,
        cache_dir: Some(cache.clone()),
    };
    let disk = |enc: &mut Encoders| {
        mtl::data::load(&csv, &t.signature(), enc, false, true, &dev, &disk_opts).unwrap()
    };
    let d1 = disk(&mut enc);
    let Storage::Cache { dir, reused: false } = d1.storage.clone() else {
        panic!("expected a fresh disk cache, got {:?}", d1.storage)
    };
    // Rows read from disk equal the decoded rows, in any order and through views.
    let idx = [17usize, 3, 4, 5, 39, 0, 22];
    assert_same_tensors(
        &mem.batch(&idx).unwrap(),
        &d1.batch(&idx).unwrap(),
        "disk batch",
    );
    let view = [9usize, 30, 31, 2];
    assert_same_tensors(
        &mem.subset(&view).batch(&[3, 1, 2]).unwrap(),
        &d1.subset(&view).batch(&[3, 1, 2]).unwrap(),
        "disk view",
    );
    assert!(d1.batch(&[40]).is_err(), "a row past the end is an error");
    // A second load reuses the cache: no decoding.
    let d2 = disk(&mut enc);
    assert_eq!(
        d2.storage,
        Storage::Cache {
            dir: dir.clone(),
            reused: true
        }
    );
    // A truncated cache is not trusted: it is decoded again.
    let col = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "bin"))
        .unwrap();
    let bytes = std::fs::read(&col).unwrap();
    std::fs::write(&col, &bytes[..bytes.len() / 2]).unwrap();
    let d3 = disk(&mut enc);
    assert_eq!(
        d3.storage,
        Storage::Cache {
            dir: dir.clone(),
            reused: false
        }
    );
    assert_same_tensors(
        &mem.tensors().unwrap(),
        &d3.tensors().unwrap(),
        "re-decoded",
    );
    // Nor is one changed in place (same size, other bytes): its checksum
    // differs, so it is decoded again rather than read as garbage.
    let mut bytes = std::fs::read(&col).unwrap();
    bytes.iter_mut().take(64).for_each(|b| *b ^= 0x5a);
    std::fs::write(&col, &bytes).unwrap();
    drop(d3);
    let d3 = disk(&mut enc);
    assert!(matches!(&d3.storage, Storage::Cache { reused: false, .. }));
    assert_same_tensors(
        &mem.tensors().unwrap(),
        &d3.tensors().unwrap(),
        "re-decoded after damage",
    );
    // A writer killed mid-cache leaves `.NAME.tmpPID`; the next writer removes
    // it once that process is gone (pid 1 << 30 exceeds Linux's pid range).
    let stale = cache.join(".shapes-0.tmp1073741824");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("col0.bin"), [0u8; 16]).unwrap();
    // Other encoders (another vocabulary) give another cache, not a stale one.
    let mut other = enc.clone();
    if let Some(v) = other.vocabs.values_mut().next() {
        v.tokens.swap(2, 3);
    }
    let d4 = disk(&mut other);
    assert!(matches!(&d4.storage, Storage::Cache { dir: d, reused: false } if *d != dir));
    assert!(!stale.exists(), "the stale temporary directory is removed");
    // Training reads the same batches from disk as from memory: same weights.
    let trained = |ds: &Dataset, name: &str| {
        let mut cfg = base.clone();
        cfg.epochs = 2;
        cfg.val_split = 0.0;
        let fc = FitConfig {
            train: cfg,
            run_dir: data.join(name),
            resume: false,
            device: dev.clone(),
            tensorboard: None,
            comm: None,
            planned: true,
        };
        let mut params = init_params(&t, 0, &dev).unwrap();
        mtl::train::fit(&fc, &t, &i, &mut params, ds, None, &mut Quiet).unwrap();
        params
    };
    common::assert_same_params(&trained(&mem, "m"), &trained(&d3, "d"), "disk vs memory");
    // A broken manifest leaves no cache behind.
    let bad = data.join("bad.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    std::fs::write(&bad, text.replacen("images/", "images/missing_", 1)).unwrap();
    let e = mtl::data::load(
        &bad,
        &t.signature(),
        &mut enc,
        false,
        true,
        &dev,
        &disk_opts,
    )
    .unwrap_err();
    assert!(e.contains("bad.csv: row 1, column `image`"), "{e}");
    let left: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("bad") || n.starts_with(".bad"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn tensor_files_above_the_memory_limit_are_read_in_place() {
    let p = root().join("../shared/data/digits/test.safetensors");
    let dev = Device::Cpu;
    let mem = Dataset::load(&p, &dev, u64::MAX).unwrap();
    let disk = Dataset::load(&p, &dev, 0).unwrap();
    assert_eq!(disk.storage, Storage::File(p.clone()));
    assert_eq!(mem.n, disk.n);
    let idx: Vec<usize> = (0..mem.n).rev().step_by(7).collect();
    assert_same_tensors(
        &mem.batch(&idx).unwrap(),
        &disk.batch(&idx).unwrap(),
        "tensor file",
    );
    // Checks run on disk columns too, streaming.
    let g = common::compile(&root().join("models/digits.mtl"), Mode::Infer);
    let sig = lower(&g, Mode::Infer).expect("lowers").signature();
    disk.check(&sig, true, "digits").unwrap();
}

/// An empty input cell is an error naming the row unless the input is
/// declared `{ missing: zeros }` (or `{ dropout: P }`), which feeds zeros.
#[test]
fn empty_input_cells_are_errors_unless_declared_missing_zeros() {
    let dir = tmp("missing-input");
    std::fs::write(dir.join("m.csv"), "a,b,y\n1 2,3 4,0.5\n5 6,,1.5\n").unwrap();
    let m = Manifest::read(&dir.join("m.csv")).unwrap();
    let load = |decl: &str| {
        let src = format!(
            "model m {{\n input a: f32[2]\n input b: f32[2]{decl}\n head y = concat(a, b) -> dense(1) {{ loss: mse }}\n}}"
        );
        let (_, t, _) = programs(&src);
        let sig = t.signature();
        let enc = Encoders::fit(&sig, &m, None).unwrap();
        m.to_dataset(&sig, &enc, true, &LoadOptions::default())
    };
    let err = load("").unwrap_err();
    assert!(
        err.contains("row 2, column `b`") && err.contains("missing: zeros"),
        "{err}"
    );
    for decl in [" { missing: zeros }", " { dropout: 0.2 }"] {
        let ds = load(decl).unwrap();
        let b = ds.tensors().unwrap()["b"].to_vec2::<f32>().unwrap();
        assert_eq!(b, [[3.0, 4.0], [0.0, 0.0]], "{decl}");
    }
}

/// An infinite or NaN regression target is refused at load, with its row.
#[test]
fn infinite_labels_are_located_errors() {
    let dir = tmp("inf-label");
    std::fs::write(dir.join("m.csv"), "a,y\n1 2,0.5\n3 4,inf\n5 6,NaN\n7 8,\n").unwrap();
    let m = Manifest::read(&dir.join("m.csv")).unwrap();
    let (_, t, _) =
        programs("model m {\n input a: f32[2]\n head y = a -> dense(1) { loss: mse }\n}");
    let sig = t.signature();
    let enc = Encoders::fit(&sig, &m, None).unwrap();
    let err = m
        .to_dataset(&sig, &enc, true, &LoadOptions::default())
        .unwrap_err();
    assert!(
        err.contains("row 2, column `y`") && err.contains("infinite"),
        "{err}"
    );
    assert!(err.contains("row 3, column `y`"), "{err}");
    // The empty cell (row 4) is a missing label, not an error.
    assert!(!err.contains("row 4"), "{err}");
}

/// A manifest that is not UTF-8 names the row and column of the first bad byte.
#[test]
fn non_utf8_manifests_name_row_and_column() {
    let dir = tmp("latin1");
    std::fs::write(dir.join("m.csv"), b"a,caption,y\n1,ok,2\n3,caf\xe9,4\n").unwrap();
    let err = Manifest::read(&dir.join("m.csv")).err().unwrap();
    assert!(
        err.contains("row 2, column `caption`") && err.contains("UTF-8"),
        "{err}"
    );
    std::fs::write(dir.join("m.jsonl"), b"{\"a\": 1}\n{\"a\": \"\xff\"}\n").unwrap();
    let err = Manifest::read(&dir.join("m.jsonl")).err().unwrap();
    assert!(err.contains("line 2") && err.contains("UTF-8"), "{err}");
}

/// A manifest with a header and no rows is an error, not a run on nothing.
#[test]
fn a_header_only_manifest_does_not_train() {
    let dir = tmp("header-only");
    std::fs::write(dir.join("m.csv"), "a,y\n").unwrap();
    let (cfg, t, i) =
        programs("model m {\n input a: f32[1]\n head y = a -> dense(1) { loss: mse }\n}");
    let mut enc = Encoders::default();
    let ds = load(&dir.join("m.csv"), &t, &mut enc, true).unwrap();
    let fc = FitConfig {
        train: cfg,
        run_dir: dir.join("run"),
        resume: false,
        device: Device::Cpu,
        tensorboard: None,
        comm: None,
        planned: true,
    };
    let mut params = init_params(&t, 0, &Device::Cpu).unwrap();
    let err = mtl::train::fit(&fc, &t, &i, &mut params, &ds, None, &mut Quiet).unwrap_err();
    assert!(err.to_string().contains("no samples"), "{err}");
    assert!(!dir.join("run/state.json").exists());
}
