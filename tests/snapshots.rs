//! IR and plan snapshots of every shipped model: elaborated (`ir-raw`),
//! optimized (`ir`), the lowered plan in both modes, the planned executor's
//! schedule and buffers (`schedule`), and which parameters
//! each head reaches (`sharing`, as `mtl compile --emit sharing`).

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
            let p = lower(g, mode).expect("lowers");
            insta::assert_snapshot!(format!("{name}.plan-{tag}"), p.render());
            if mode == Mode::Infer {
                // Which executor runs it, and the planned buffers.
                let s = mtl::lower::planned::render(&p);
                insta::assert_snapshot!(format!("{name}.schedule"), s);
            }
            if mode == Mode::Train {
                insta::assert_snapshot!(format!("{name}.sharing"), p.sharing().render());
            }
        }
    }
}
