//! This machine's f32 GEMM peak through our GEMM front (`kernels::gemm`, the
//! `gemm` crate underneath): the reference for "share of the GEMM-bound
//! limit" in benches/README.md. `cargo bench --bench gemm_peak`.

use mtl::kernels::gemm::{matmul, View};
use std::time::Instant;

fn main() {
    for n in [1024usize, 2048] {
        let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..n * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut c = vec![0f32; n * n];
        let view = |data| View {
            data,
            rows: n,
            cols: n,
            rs: n,
            cs: 1,
        };
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            matmul(&mut c, n, false, view(&a), view(&b));
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "sgemm {n}³ on {} threads: {:.1} GFLOP/s (best of 5)",
            rayon::current_num_threads(),
            2.0 * (n * n * n) as f64 / best / 1e9
        );
    }
}
