//! ONNX export without a runtime: every fixture, reference case and shipped
//! model exports, reads back whole and passes the structural check; `heads`
//! prunes; the check itself catches broken graphs. (Numbers are compared with
//! ONNX Runtime by `benches/peers/onnx_check.py`, which needs Python.)

mod common;

use candle_core::Device;
use common::graph;
use mtl::export::onnx::{self, check, proto, ExportOptions};
use mtl::lower::{init_params, lower};
use mtl::pipeline::Mode;
use prost::Message;
use std::path::Path;

/// The exported bytes of `path` with fresh weights.
fn export(path: &Path, heads: &[&str]) -> Result<onnx::Exported, String> {
    export_with(path, heads, false)
}

fn export_with(path: &Path, heads: &[&str], unroll: bool) -> Result<onnx::Exported, String> {
    let c = mtl::compile_file(path, &mtl::Options::default()).map_err(|e| e.to_string())?;
    let g = graph(c);
    let prog = lower(&g, Mode::Infer).map_err(|d| format!("{d:?}"))?;
    let params = init_params(&prog, 0, &Device::Cpu).map_err(|e| e.to_string())?;
    let opts = ExportOptions {
        heads: heads.iter().map(|h| h.to_string()).collect(),
        name: g.name.clone(),
        unroll_recurrences: unroll,
    };
    onnx::export(&prog, &params, &opts).map_err(|e| e.to_string())
}

#[test]
fn every_model_exports_a_well_formed_graph() {
    let mut n = 0;
    for dir in [
        "../shared/fixtures",
        "tests/reference",
        "models",
        "benches/peers",
    ] {
        for path in common::mtl_files(dir) {
            let out = export(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let s = check::check(&out.bytes)
                .unwrap_or_else(|e| panic!("{}: structural check:\n{e}", path.display()));
            assert_eq!(s.opset, onnx::OPSET);
            // One output per head, named as the head; inputs named as the model's.
            let c = mtl::compile_file(&path, &mtl::Options::default()).unwrap();
            let g = graph(c);
            let heads: Vec<String> = g.heads.iter().map(|h| h.name.clone()).collect();
            assert_eq!(s.outputs, heads, "{}", path.display());
            assert_eq!(s.inputs, out.inputs, "{}", path.display());
            n += 1;
        }
    }
    assert!(n >= 20, "only {n} models exported");
}

/// The exported graph's operators of `path`, one "Op × count" a line.
fn op_counts(path: &str) -> String {
    let out = export(Path::new(path), &[]).unwrap();
    let s = check::check(&out.bytes).unwrap();
    let ops: Vec<String> = s.ops.iter().map(|(o, n)| format!("{o} × {n}")).collect();
    ops.join("\n")
}

#[test]
fn the_graph_of_a_transformer_fixture() {
    insta::assert_snapshot!(op_counts("../shared/fixtures/text_transformer.mtl"));
}

/// A CNN's graph keeps its pools: inference folds conv → relu → max_pool
/// into one step, and the exporter writes the pool back out (it once
/// dropped it, which only ONNX Runtime's shape inference noticed).
#[test]
fn the_graph_of_a_cnn_fixture() {
    insta::assert_snapshot!(op_counts("../shared/fixtures/shapes_mm.mtl"));
}

#[test]
fn heads_prune_what_they_do_not_need() {
    let path = Path::new("benches/peers/onnx_ops.mtl");
    std::env::set_current_dir(common::root()).unwrap();
    let all = export(path, &[]).unwrap();
    let reg = export(path, &["reg"]).unwrap();
    let s = check::check(&reg.bytes).unwrap();
    assert_eq!(s.outputs, ["reg"]);
    // `reg` reads the signal and the text only.
    assert_eq!(s.inputs, ["signal", "text"]);
    assert!(
        reg.nodes < all.nodes / 2,
        "{} of {} nodes",
        reg.nodes,
        all.nodes
    );
    let err = export(path, &["nope"]).unwrap_err();
    assert!(
        err.contains("no head `nope`") && err.contains("cls, bin, reg"),
        "{err}"
    );
}

/// The graph of `bytes`, changed by `f`, encoded again.
fn altered(bytes: &[u8], f: impl FnOnce(&mut proto::GraphProto)) -> Vec<u8> {
    let mut m = proto::ModelProto::decode(bytes).unwrap();
    f(m.graph.as_mut().unwrap());
    m.encode_to_vec()
}

#[test]
fn the_check_finds_broken_graphs() {
    std::env::set_current_dir(common::root()).unwrap();
    let good = export(Path::new("models/reviews.mtl"), &[]).unwrap().bytes;
    assert!(check::check(&good).is_ok());
    // A node gone: its users read an undefined value.
    let e = check::check(&altered(&good, |g| {
        g.node.remove(1);
    }))
    .unwrap_err();
    assert!(e.contains("before it is defined"), "{e}");
    // Token ids fed to a float-only operator.
    let e = check::check(&altered(&good, |g| {
        let lstm = g.node.iter_mut().find(|n| n.op_type == "LSTM").unwrap();
        lstm.input[0] = "text".into();
    }))
    .unwrap_err();
    assert!(e.contains("expected 1"), "{e}");
    // An initializer whose bytes do not fill its shape.
    let e = check::check(&altered(&good, |g| {
        g.initializer[0].raw_data.pop();
    }))
    .unwrap_err();
    assert!(e.contains("needs"), "{e}");
    // A head that nothing computes.
    let e = check::check(&altered(&good, |g| {
        g.output[0].name = "ghost".into();
    }))
    .unwrap_err();
    assert!(e.contains("`ghost` is never produced"), "{e}");
    assert!(check::check(b"not protobuf at all").is_err());
}

#[test]
fn export_on_the_command_line() {
    let dir = std::env::temp_dir().join(format!("mtl-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = common::root().join("../shared/fixtures");
    let out = dir.join("digits.onnx");
    let run = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mtl"))
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&[
        "export".as_ref(),
        f.join("digits_mt.mtl").as_os_str(),
        "--weights".as_ref(),
        f.join("digits_mt.weights.safetensors").as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
        "--heads".as_ref(),
        "digit,parity".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = check::check(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(s.outputs, ["digit", "parity"]);
    // A model file without weights is a usage error.
    let o = run(&[
        "export".as_ref(),
        f.join("digits_mt.mtl").as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--weights"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn recurrences_unroll_for_converters_without_lstm() {
    std::env::set_current_dir(common::root()).unwrap();
    let path = Path::new("benches/peers/onnx_ops.mtl");
    let ops = |unroll| {
        let out = export_with(path, &[], unroll).unwrap();
        check::check(&out.bytes).unwrap().ops
    };
    let has = |ops: &[(String, usize)], op: &str| ops.iter().any(|(o, _)| o == op);
    let (fused, unrolled) = (ops(false), ops(true));
    assert!(has(&fused, "LSTM") && has(&fused, "GRU"));
    assert!(
        !has(&unrolled, "LSTM") && !has(&unrolled, "GRU"),
        "{unrolled:?}"
    );
}
