//! IR and plan snapshots of every shipped model: elaborated (`ir-raw`),
//! optimized (`ir`), and the lowered plan in both modes.

use mtl::lower::lower;
use mtl::passes::Mode;
use std::path::Path;

fn models() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::set_current_dir(root).unwrap();
    let mut v: Vec<_> = std::fs::read_dir("models")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "mtl"))
        .collect();
    v.sort();
    v
}

#[test]
fn ir_snapshots() {
    for m in models() {
        let name = m.file_stem().unwrap().to_string_lossy().to_string();
        for mode in [Mode::Infer, Mode::Train] {
            let c = mtl::compile_file(
                &m,
                &mtl::Options {
                    mode,
                    ..Default::default()
                },
            )
            .unwrap();
            assert!(!c.has_errors(), "{name}");
            let raw = c.raw.as_ref().unwrap();
            let g = c.graph.as_ref().unwrap();
            mtl::ir::verify(raw, true).unwrap();
            mtl::ir::verify(g, true).unwrap();
            let tag = if mode == Mode::Train {
                "train"
            } else {
                "infer"
            };
            if mode == Mode::Infer {
                insta::assert_snapshot!(format!("{name}.ir-raw"), mtl::ir::print_ir(raw));
                insta::assert_snapshot!(format!("{name}.ir"), mtl::ir::print_ir(g));
            }
            insta::assert_snapshot!(format!("{name}.plan-{tag}"), lower(g, mode).render());
        }
    }
}
