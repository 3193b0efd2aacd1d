//! Compile time (parse → elaborate → shape inference → optimized IR) of
//! generated models of 1k, 10k and 100k layers; it should grow about linearly.
//! Run: `cargo bench --bench compile`.

use std::fmt::Write;
use std::time::Instant;

/// `n` layers in blocks of ten: dense, relu, a shared layer applied twice,
/// an add of the two uses (merged by CSE), dropout, layer norm.
fn model(n: usize) -> String {
    let mut s = String::from("model big {\n  input x: f32[16]\n  shared enc = dense(16) -> relu\n  let v0 = x -> dense(16)\n");
    let blocks = n / 10;
    for i in 0..blocks {
        let p = i;
        let _ = writeln!(s, "  let a{i} = v{p} -> dense(16) -> relu -> enc");
        let _ = writeln!(s, "  let b{i} = v{p} -> dense(16) -> relu -> enc");
        let _ = writeln!(
            s,
            "  let v{} = add(a{i}, b{i}) -> layer_norm -> dropout(0.1) -> identity",
            i + 1
        );
    }
    let _ = writeln!(s, "  head y = v{blocks} -> dense(2) {{ loss: mse }}\n}}");
    s
}

fn main() {
    let mut last = None;
    for n in [1_000usize, 10_000, 100_000] {
        let src = model(n);
        let t = Instant::now();
        let c = mtl::compile_str("big.mtl", &src, &Default::default());
        let secs = t.elapsed().as_secs_f64();
        assert!(!c.has_errors(), "{:?}", c.diagnostics.first());
        let nodes = c.raw.as_ref().map_or(0, |g| g.g.node_count());
        let after = c.graph.as_ref().map_or(0, |g| g.g.node_count());
        let growth = last
            .map(|(m, s): (usize, f64)| format!("  ×{:.1} time for ×{} layers", secs / s, n / m))
            .unwrap_or_default();
        println!(
            "{n:>7} layers ({nodes} IR nodes → {after} optimized): {:>8.1} ms{growth}",
            secs * 1e3
        );
        last = Some((n, secs));
    }
}
