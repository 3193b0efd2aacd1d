//! IR and plan snapshots of every shipped model: elaborated (`ir-raw`),
//! optimized (`ir`), and the lowered plan in both modes.

mod common;

use common::mtl_files;
use mtl::lower::lower;
use mtl::pipeline::Mode;

#[test]
fn ir_snapshots() {
    for m in mtl_files("models") {
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
            insta::assert_snapshot!(
                format!("{name}.plan-{tag}"),
                lower(g, mode).expect("lowers").render()
            );
        }
    }
}
