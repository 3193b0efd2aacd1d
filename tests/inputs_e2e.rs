//! Audio inputs and absent inputs end to end, through the CLI: generated
//! WAV data trains; `mtl data decode` writes what the model sees; `predict`
//! with an input column missing answers the heads that do not need it.

mod common;

use common::root;
use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mtl-audio-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn mtl(args: &[&str], cwd: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mtl"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn ok(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    err
}

#[test]
fn tones_decode_and_predict_without_the_sound() {
    let dir = tmp("tones");
    let d = dir.to_str().unwrap();
    let model = root().join("models/tones.mtl");
    let model = model.to_str().unwrap();
    ok(&mtl(
        &["data", "tones", "--out", d, "--n", "64"],
        dir.parent().unwrap(),
    ));
    // What the model sees: [rows, 40, 50] spectrograms, [rows, 1, 28, 28] images.
    let decoded = format!("{d}/decoded.safetensors");
    let train = format!("{d}/train.csv");
    ok(&mtl(
        &[
            "data", "decode", model, "--data", &train, "--output", &decoded, "--rows", "5",
        ],
        &dir,
    ));
    let t = candle_core::safetensors::load(&decoded, &candle_core::Device::Cpu).unwrap();
    assert_eq!(t["sound"].dims(), [5, 40, 50]);
    assert_eq!(t["image"].dims(), [5, 1, 28, 28]);
    let s: Vec<f32> = t["sound"].flatten_all().unwrap().to_vec1().unwrap();
    let floor = (1e-6f32).ln();
    assert!(s.iter().all(|v| v.is_finite() && *v >= floor - 1e-3));
    assert!(
        s.iter().any(|v| *v > floor + 5.0),
        "spectrograms carry signal"
    );

    let run = format!("{d}/run");
    ok(&mtl(
        &[
            "train", model, "--data", &train, "--epochs", "1", "--quiet", "--out", &run,
        ],
        &dir,
    ));
    // Only the image column: `shape` is answered, `sound_class` and `agree` skipped.
    let text = std::fs::read_to_string(&train).unwrap();
    let only_image: String = text
        .lines()
        .map(|l| l.split(',').nth(1).unwrap().to_string() + "\n")
        .collect();
    let partial = format!("{d}/image_only.csv");
    std::fs::write(&partial, only_image).unwrap();
    let out_path = format!("{d}/pred.safetensors");
    let err = ok(&mtl(
        &["predict", &run, "--input", &partial, "--output", &out_path],
        &dir,
    ));
    assert!(
        err.contains("skipped head `sound_class`") && err.contains("`sound`"),
        "{err}"
    );
    assert!(err.contains("skipped head `agree`"), "{err}");
    let p = candle_core::safetensors::load(&out_path, &candle_core::Device::Cpu).unwrap();
    assert_eq!(p.keys().collect::<Vec<_>>(), ["shape"]);
    assert_eq!(p["shape"].dims(), [64, 3]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A broken WAV is an error naming the row and the column, never a panic.
#[test]
fn a_broken_wav_is_a_located_error() {
    let dir = tmp("broken");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bad.wav"), b"RIFF\x10\x00\x00\x00WAVEfmt garbage").unwrap();
    std::fs::write(dir.join("empty.wav"), b"").unwrap();
    std::fs::write(
        dir.join("m.csv"),
        "sound,image,sound_class,shape,agree\nbad.wav,x.png,tone,circle,1\nempty.wav,x.png,tone,circle,1\n",
    )
    .unwrap();
    let model = root().join("models/tones.mtl");
    let out = mtl(
        &[
            "data",
            "decode",
            model.to_str().unwrap(),
            "--data",
            "m.csv",
            "--output",
            "o.safetensors",
        ],
        &dir,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("row 1") && err.contains("`sound`") && err.contains("bad.wav"),
        "{err}"
    );
    assert!(err.contains("row 2") && err.contains("empty.wav"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The case: `models/shapes.mtl` given only captions answers `owner`
/// (which reads only the caption) and names the heads that need the image.
#[test]
fn shapes_answers_owner_from_the_caption_alone() {
    let dir = tmp("shapes");
    let d = dir.to_str().unwrap();
    let model = root().join("models/shapes.mtl");
    ok(&mtl(
        &["data", "shapes", "--out", d, "--n", "40"],
        &std::env::temp_dir(),
    ));
    let run = format!("{d}/run");
    let train = format!("{d}/train.csv");
    ok(&mtl(
        &[
            "train",
            model.to_str().unwrap(),
            "--data",
            &train,
            "--epochs",
            "1",
            "--quiet",
            "--out",
            &run,
        ],
        &dir,
    ));
    let m = mtl::data::Manifest::read(&dir.join("test.csv")).unwrap();
    let col = m.column("caption").unwrap();
    let mut text = String::from("caption\n");
    for r in &m.rows {
        text += &format!("\"{}\"\n", r[col]);
    }
    std::fs::write(dir.join("captions.csv"), text).unwrap();
    let out = format!("{d}/pred.csv");
    let err = ok(&mtl(
        &["predict", &run, "--input", "captions.csv", "--output", &out],
        &dir,
    ));
    for head in ["shape", "total", "mask"] {
        assert!(
            err.contains(&format!("skipped head `{head}`: it needs input `image`")),
            "{err}"
        );
    }
    let csv = std::fs::read_to_string(&out).unwrap();
    assert!(csv.starts_with("owner,owner.prob\n"), "{csv}");
    assert_eq!(csv.lines().count(), 1 + m.rows.len());
    // An output file of unknown kind is refused before anything runs.
    let txt = mtl(
        &[
            "predict",
            &run,
            "--input",
            "captions.csv",
            "--output",
            "out.txt",
        ],
        &dir,
    );
    assert_eq!(txt.status.code(), Some(2));
    assert!(!dir.join("out.txt").exists());
    // Nothing at all to answer from: an error, not an empty file.
    std::fs::write(dir.join("nothing.csv"), "unrelated\n1\n").unwrap();
    let none = mtl(
        &[
            "predict",
            &run,
            "--input",
            "nothing.csv",
            "--output",
            "n.csv",
        ],
        &dir,
    );
    assert_eq!(none.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}
