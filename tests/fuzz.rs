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
