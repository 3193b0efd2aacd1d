//! The diagnostics contract: every bad model in tests/ui fails `check` with a
//! located, rendered diagnostic (insta snapshot, no colour, fixed width).

mod common;

use common::mtl_files;
use std::path::Path;

#[test]
fn ui_diagnostics() {
    let files = mtl_files("tests/ui");
    assert!(files.len() >= 15, "at least 15 bad models");
    for f in files {
        let c = mtl::compile_file(&f, &Default::default()).unwrap();
        assert!(c.has_errors(), "{} should fail to check", f.display());
        for d in c.diagnostics.iter().filter(|d| d.is_error()) {
            assert!(
                d.primary_span().is_some(),
                "{}: `{}` has no location",
                f.display(),
                d.message
            );
        }
        let text = mtl::render::render_all(&c.diagnostics, &c.sources, false, 100);
        let name = f.file_stem().unwrap().to_string_lossy().to_string();
        insta::assert_snapshot!(name, text);
    }
}

#[test]
fn shipped_models_check_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for e in std::fs::read_dir(root.join("models")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "mtl") {
            let c = mtl::compile_file(&p, &Default::default()).unwrap();
            let errs: Vec<_> = c.diagnostics.iter().filter(|d| d.is_error()).collect();
            assert!(errs.is_empty(), "{}: {errs:?}", p.display());
        }
    }
}

#[test]
fn check_cli_exit_codes() {
    let bin = env!("CARGO_BIN_EXE_mtl");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |args: &[&str]| {
        std::process::Command::new(bin)
            .args(args)
            .current_dir(root)
            .output()
            .unwrap()
    };
    assert_eq!(
        run(&["check", "models/digits.mtl", "models/shapes.mtl"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        run(&["check", "tests/ui/unknown_name.mtl"]).status.code(),
        Some(1)
    );
    assert_eq!(run(&["check", "no/such/model.mtl"]).status.code(), Some(2));
    let out = run(&["check", "--format", "json", "tests/ui/unknown_name.mtl"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &v[0]["diagnostics"][0];
    assert_eq!(d["code"], "mtl::unknown-name");
    assert_eq!(d["labels"][0]["line"], 3);
    assert_eq!(d["labels"][0]["column"], 11);
}

/// `mtl ... | head`: output cut short ends the command quietly, no panic.
#[test]
fn closed_stdout_is_not_a_panic() {
    let bin = env!("CARGO_BIN_EXE_mtl");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = std::process::Command::new(bin)
        .args(["compile", "models/captions.mtl", "--emit", "ir"])
        .current_dir(root)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read nothing: the pipe's reader goes away at once.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
