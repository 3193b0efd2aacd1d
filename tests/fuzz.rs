//! No panics on any input: random bytes and randomly mutated shipped models
//! go through the whole front end (parse, elaborate, infer, passes, lower).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;

fn run(text: &str) {
    let c = mtl::compile_str("fuzz.mtl", text, &Default::default());
    let _ = mtl::render::render_all(&c.diagnostics, &c.sources, false, 80);
    if let Some(g) = c.graph.as_ref().filter(|_| !c.has_errors()) {
        // Training may be refused (with diagnostics), never panic.
        if let Ok(p) = mtl::lower::lower(g, mtl::pipeline::Mode::Train) {
            let _ = p.render();
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..300 {
        let n = rng.random_range(0..200);
        let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
        run(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn mutated_models_never_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut srcs = vec![];
    for dir in ["models", "tests/ui", "../shared/fixtures"] {
        if let Ok(rd) = std::fs::read_dir(root.join(dir)) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "mtl") {
                    srcs.push(std::fs::read_to_string(e.path()).unwrap());
                }
            }
        }
    }
    let tokens = [
        "(",
        ")",
        "->",
        ",",
        "=",
        "{",
        "}",
        "[",
        "]",
        "0",
        "-1",
        "99999999999999999999",
        "1e309",
        "x",
        "dense",
        "concat(",
        "as",
        "+",
        "relu",
        "lstm(3)",
        "\"",
        "#",
        "block",
        "shared s = relu",
        "\n",
        "tokens[0] vocab 0",
        "image[0,1]",
        "reshape(-1, -1)",
        "permute(9)",
    ];
    let mut rng = StdRng::seed_from_u64(7);
    for src in &srcs {
        for _ in 0..60 {
            let mut s: Vec<char> = src.chars().collect();
            for _ in 0..rng.random_range(1..4) {
                let pos = rng.random_range(0..=s.len());
                match rng.random_range(0..3) {
                    0 if !s.is_empty() => {
                        let end = (pos + rng.random_range(1..12)).min(s.len());
                        s.drain(pos.min(s.len())..end);
                    }
                    1 => {
                        let t = tokens[rng.random_range(0..tokens.len())];
                        for (i, c) in t.chars().enumerate() {
                            s.insert((pos + i).min(s.len()), c);
                        }
                    }
                    _ if !s.is_empty() => {
                        let i = rng.random_range(0..s.len());
                        let j = rng.random_range(0..s.len());
                        s.swap(i, j);
                    }
                    _ => {}
                }
            }
            run(&s.into_iter().collect::<String>());
        }
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for depth in [200, 5_000, 200_000] {
        let src = format!("model m {{\n  input x: f32[4]\n  let a = {}x{}\n  head y = a -> dense(1) {{ loss: mse }}\n}}", "(".repeat(depth), ")".repeat(depth));
        let c = mtl::compile_str("deep.mtl", &src, &Default::default());
        assert!(
            c.diagnostics.iter().any(|d| d.code == "mtl::too-deep"),
            "depth {depth}"
        );
    }
    // Long flat chains are fine.
    let src = format!("model m {{\n  input x: f32[4]\n  let a = x{}\n  head y = a -> dense(1) {{ loss: mse }}\n}}", " -> relu".repeat(20_000));
    assert!(!mtl::compile_str("long.mtl", &src, &Default::default()).has_errors());
}

/// A model reading every kind of manifest cell: numbers, text, an image path,
/// a class name and a number label.
const MANIFEST_MODEL: &str = r#"
model m {
  input v: f32[2]
  input text: tokens[4] vocab 20
  input img: image[1, 4, 4]
  let t = text -> embedding(3) -> global_avg_pool(axis = 1)
  let i = img -> flatten
  head c = concat(v, t, i) -> dense(3) { loss: cross_entropy }
  head r = v -> dense(1) { loss: mse }
}
"#;

/// A cell as data goes wrong: empty, huge, non-finite, wrong type, quotes,
/// separators, control bytes, a missing or undecodable file.
fn random_cell(rng: &mut StdRng) -> String {
    let cells = [
        "",
        "0",
        "-1",
        "1.5",
        "nan",
        "inf",
        "-inf",
        "1e309",
        "99999999999999999999",
        "a b c",
        "\"",
        "\"unterminated",
        ",",
        ";",
        "\t",
        "\u{0}",
        "é ü 中",
        "1 2",
        "1 2 3 4 5",
        "img.png",
        "missing.png",
        "garbage.png",
        "../../etc/passwd",
        "cat",
        "dog",
        "bird",
    ];
    match rng.random_range(0..4) {
        0 => (0..rng.random_range(0..300))
            .map(|_| rng.random_range(' '..'~'))
            .collect(),
        _ => cells[rng.random_range(0..cells.len())].to_string(),
    }
}

/// Random manifests (CSV and JSON Lines: random cells, invalid UTF-8,
/// truncations at any byte, ragged rows, a BOM) load or fail with a message,
/// never panic; so do image files that are not images.
#[test]
fn mutated_manifests_never_panic() {
    let dir = std::env::temp_dir().join(format!("mtl-fuzz-manifest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let img = image::GrayImage::from_fn(4, 4, |x, y| image::Luma([(x * 60 + y) as u8]));
    img.save(dir.join("img.png")).unwrap();
    std::fs::write(dir.join("garbage.png"), b"\x89PNG\r\n\x1a\n not really").unwrap();
    let c = mtl::compile_str("m.mtl", MANIFEST_MODEL, &Default::default());
    let g = c.graph.expect("the model compiles");
    let sig = mtl::lower::lower(&g, mtl::pipeline::Mode::Train)
        .unwrap()
        .signature();
    let good = "v,text,img,c,r\n1 2,the cat sat,img.png,cat,0.5\n3 4,a dog,img.png,dog,1.5\n0 1,bird song,img.png,bird,-2\n";
    let mut rng = StdRng::seed_from_u64(7);
    for round in 0..250 {
        let mut bytes: Vec<u8> = match rng.random_range(0..4) {
            // Random cells in a well-formed frame.
            0 => {
                let mut s = String::from("v,text,img,c,r\n");
                for _ in 0..rng.random_range(0..5) {
                    let row: Vec<String> = (0..rng.random_range(3..7))
                        .map(|_| random_cell(&mut rng))
                        .collect();
                    s += &row.join(",");
                    s.push('\n');
                }
                s.into_bytes()
            }
            // A good manifest cut at any byte.
            1 => good.as_bytes()[..rng.random_range(0..good.len())].to_vec(),
            // A good manifest with random bytes overwritten (invalid UTF-8 too).
            2 => {
                let mut b = good.as_bytes().to_vec();
                for _ in 0..rng.random_range(1..6) {
                    let i = rng.random_range(0..b.len());
                    b[i] = rng.random();
                }
                b
            }
            // JSON Lines with random values.
            _ => {
                let mut s = String::new();
                for _ in 0..rng.random_range(0..4) {
                    let v = serde_json::json!({"v": random_cell(&mut rng), "text": random_cell(&mut rng), "img": random_cell(&mut rng), "c": random_cell(&mut rng), "r": random_cell(&mut rng)});
                    s += &v.to_string();
                    s.push('\n');
                }
                if rng.random_bool(0.3) {
                    s.truncate(rng.random_range(0..s.len().max(1)));
                }
                s.into_bytes()
            }
        };
        if rng.random_bool(0.1) {
            bytes.splice(0..0, [0xEF, 0xBB, 0xBF]);
        }
        let ext = if bytes.first() == Some(&b'{') {
            "jsonl"
        } else {
            "csv"
        };
        let path = dir.join(format!("m{round}.{ext}"));
        std::fs::write(&path, &bytes).unwrap();
        let mut enc = mtl::data::Encoders::default();
        let opts = mtl::data::LoadOptions {
            memory_limit: u64::MAX,
            cache_dir: None,
        };
        let dev = candle_core::Device::Cpu;
        if let Err(e) = mtl::data::load(&path, &sig, &mut enc, true, true, &dev, &opts) {
            assert!(
                !e.is_empty(),
                "an empty error message for {:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Numeric flags of the CLI, any text: a usage error or a run, never a panic.
#[test]
fn numeric_flags_never_panic() {
    let dir = std::env::temp_dir().join(format!("mtl-fuzz-flags-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("m.mtl");
    std::fs::write(
        &model,
        "model m {\n  input x: f32[2]\n  head y = x -> dense(1) { loss: mse }\n}\n",
    )
    .unwrap();
    std::fs::write(dir.join("d.csv"), "x,y\n1 2,3\n2 1,0\n0 0,1\n1 1,2\n").unwrap();
    let values = [
        "0",
        "1",
        "-1",
        "2",
        "0.5",
        "1.0",
        "-0.0",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "1e309",
        "1e-320",
        "99999999999999999999",
        "18446744073709551616",
        "abc",
        "",
        " 1",
        "0x10",
        "1_000",
    ];
    let flags = [
        "--epochs",
        "--batch-size",
        "--lr",
        "--val-split",
        "--seed",
        "--memory-limit",
    ];
    let mut rng = StdRng::seed_from_u64(3);
    for i in 0..40 {
        let (flag, value) = (
            flags[rng.random_range(0..flags.len())],
            values[rng.random_range(0..values.len())],
        );
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mtl"));
        cmd.arg("train")
            .arg(&model)
            .arg("--data")
            .arg(dir.join("d.csv"))
            .arg("--quiet");
        if flag != "--epochs" {
            cmd.args(["--epochs", "1"]); // keep the runs short
        }
        let out = cmd
            .arg(format!("{flag}={value}"))
            .arg("--out")
            .arg(dir.join(format!("run{i}")))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        assert!(
            matches!(code, Some(0..=2)) && !err.contains("panicked"),
            "{flag}={value}: exit {code:?}\n{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
