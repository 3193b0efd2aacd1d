//! Which graph fusions pay on candle's CPU backend? Each case times the
//! unfused and the fused form of the same computation in one run.
//! Run: `cargo bench --bench fusions`.

use candle_core::{DType, Device, Tensor};
use std::time::Instant;

fn time(f: &mut dyn FnMut() -> Tensor) -> f64 {
    for _ in 0..5 {
        f();
    }
    let mut v: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..20 {
                let _ = f().sum_all().unwrap().to_scalar::<f32>().unwrap();
            }
            t.elapsed().as_secs_f64() / 20.0 * 1e6
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[3]
}

fn report(name: &str, unfused: f64, fused: f64) {
    println!(
        "{name:<44} unfused {unfused:>9.1} µs   fused {fused:>9.1} µs   speed-up {:.2}×",
        unfused / fused
    );
}

fn main() {
    let d = Device::Cpu;
    let r = |s: &[usize]| Tensor::randn(0f32, 1.0, s, &d).unwrap();
    for b in [32usize, 256] {
        // (2) batch norm after a conv, at inference: scale/shift pass vs folded weights.
        let x = r(&[b, 16, 16, 16]);
        let w = r(&[32, 16, 3, 3]);
        let (m, v, g, beta) = (
            r(&[1, 32, 1, 1]),
            r(&[1, 32, 1, 1]).abs().unwrap(),
            r(&[1, 32, 1, 1]),
            r(&[1, 32, 1, 1]),
        );
        let scale = (g.broadcast_div(&(v.clone() + 1e-3).unwrap().sqrt().unwrap())).unwrap();
        let wf = w
            .broadcast_mul(&scale.reshape((32, 1, 1, 1)).unwrap())
            .unwrap();
        let shift = (beta.clone() - m.broadcast_mul(&scale).unwrap()).unwrap();
        let unfused = time(&mut || {
            let y = x.conv2d(&w, 1, 1, 1, 1).unwrap();
            y.broadcast_sub(&m)
                .unwrap()
                .broadcast_div(&(v.clone() + 1e-3).unwrap().sqrt().unwrap())
                .unwrap()
                .broadcast_mul(&g)
                .unwrap()
                .broadcast_add(&beta)
                .unwrap()
        });
        let fused = time(&mut || {
            x.conv2d(&wf, 1, 1, 1, 1)
                .unwrap()
                .broadcast_add(&shift)
                .unwrap()
        });
        report(
            &format!("conv2d(32,3)+batch_norm, batch {b}"),
            unfused,
            fused,
        );

        // (3) dense over a concat vs one GEMM per operand.
        let (a, c) = (r(&[b, 32]), r(&[b, 96]));
        let w = r(&[64, 128]);
        let (w1, w2) = (
            w.narrow(1, 0, 32).unwrap().contiguous().unwrap(),
            w.narrow(1, 32, 96).unwrap().contiguous().unwrap(),
        );
        let unfused = time(&mut || {
            Tensor::cat(&[&a, &c], 1)
                .unwrap()
                .matmul(&w.t().unwrap())
                .unwrap()
        });
        let fused = time(&mut || {
            (a.matmul(&w1.t().unwrap()).unwrap() + c.matmul(&w2.t().unwrap()).unwrap()).unwrap()
        });
        report(
            &format!("dense(64) over concat([32],[96]), batch {b}"),
            unfused,
            fused,
        );

        // (4) sibling dense heads: three GEMMs vs one merged GEMM and narrows.
        let h = r(&[b, 64]);
        let ws = [r(&[10, 64]), r(&[1, 64]), r(&[1, 64])];
        let wm = Tensor::cat(&ws, 0).unwrap();
        let unfused = time(&mut || {
            let ys: Vec<Tensor> = ws
                .iter()
                .map(|w| h.matmul(&w.t().unwrap()).unwrap())
                .collect();
            Tensor::cat(&ys, 1).unwrap()
        });
        let fused = time(&mut || {
            let y = h.matmul(&wm.t().unwrap()).unwrap();
            Tensor::cat(
                &[
                    y.narrow(1, 0, 10).unwrap(),
                    y.narrow(1, 10, 1).unwrap(),
                    y.narrow(1, 11, 1).unwrap(),
                ],
                1,
            )
            .unwrap()
        });
        report(
            &format!("3 sibling dense heads (10,1,1) on [64], batch {b}"),
            unfused,
            fused,
        );

        // (5) element-wise chain bias + relu: two candle ops vs one pass.
        let y = r(&[b, 32, 16, 16]);
        let bias = r(&[1, 32, 1, 1]);
        let unfused = time(&mut || y.broadcast_add(&bias).unwrap().relu().unwrap());
        let fused = time(&mut || {
            // The best one pass can do: a single map over the data (host loop).
            let (dims, bv) = (
                y.dims().to_vec(),
                bias.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            let mut v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let plane = dims[2] * dims[3];
            for (i, x) in v.iter_mut().enumerate() {
                *x = (*x + bv[(i / plane) % dims[1]]).max(0.0);
            }
            Tensor::from_vec(v, dims, &d).unwrap()
        });
        report(
            &format!("bias + relu on [32,16,16], batch {b}"),
            unfused,
            fused,
        );
        let _ = DType::F32;
    }
}
