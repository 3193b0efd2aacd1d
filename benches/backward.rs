//! Where does a training step's backward go? Forward+backward time of single
//! ops at the shapes of `shapes_mm` (batch 32), candle's autograd.
//! Run: `cargo bench --bench backward`.

use candle_core::{Device, Tensor, Var};
use std::time::Instant;

fn time(name: &str, x: &Var, f: &dyn Fn(&Tensor) -> Tensor) {
    let w = Tensor::randn(0f32, 1.0, f(x.as_tensor()).dims(), &Device::Cpu).unwrap();
    let run = || {
        let t0 = Instant::now();
        let y = f(x.as_tensor());
        let t1 = Instant::now();
        let _ = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        (t1 - t0, t1.elapsed())
    };
    for _ in 0..3 {
        run();
    }
    let mut v: Vec<(f64, f64)> = (0..15)
        .map(|_| run())
        .map(|(a, b)| (a.as_secs_f64() * 1e3, b.as_secs_f64() * 1e3))
        .collect();
    v.sort_by(|a, b| (a.0 + a.1).total_cmp(&(b.0 + b.1)));
    println!(
        "{name:<48} forward {:>7.3} ms   backward {:>7.3} ms",
        v[7].0, v[7].1
    );
}

fn main() {
    let d = Device::Cpu;
    let var = |s: &[usize]| Var::from_tensor(&Tensor::randn(0f32, 1.0, s, &d).unwrap()).unwrap();
    let x = var(&[32, 16, 32, 32]);
    let bias = Tensor::randn(0f32, 1.0, (1, 16, 1, 1), &d).unwrap();
    time("(objective only: y = x) [32,16,32,32]", &x, &|t| t.clone());
    time("relu [32,16,32,32]", &x, &|t| t.relu().unwrap());
    time("broadcast_add bias [32,16,32,32]", &x, &|t| {
        t.broadcast_add(&bias).unwrap()
    });
    time("max_pool2d(2) [32,16,32,32]", &x, &|t| {
        t.max_pool2d(2).unwrap()
    });
    time(
        "flatten + matmul [32,2048]x[2048,64]",
        &var(&[32, 32, 8, 8]),
        &|t| {
            let w = Tensor::randn(0f32, 1.0, (64, 2048), &Device::Cpu).unwrap();
            t.flatten_from(1).unwrap().matmul(&w.t().unwrap()).unwrap()
        },
    );
    let f = var(&[32, 32, 16, 16]);
    time("global mean pool [32,32,16,16]", &f, &|t| {
        t.flatten_from(2).unwrap().mean(2).unwrap()
    });
    time("global max pool [32,32,16,16]", &f, &|t| {
        t.flatten_from(2).unwrap().max(2).unwrap()
    });
    let logits = var(&[32, 1, 32, 32]);
    let y = Tensor::rand(0f32, 1.0, (32, 1, 32, 32), &d)
        .unwrap()
        .round()
        .unwrap();
    time(
        "binary cross-entropy from logits [32,1,32,32]",
        &logits,
        &|x| {
            (x.relu().unwrap() - (x * &y).unwrap())
                .unwrap()
                .add(
                    &(x.abs().unwrap().neg().unwrap().exp().unwrap() + 1.0)
                        .unwrap()
                        .log()
                        .unwrap(),
                )
                .unwrap()
        },
    );
    let emb = var(&[1000, 32]);
    let ids = Tensor::zeros(32 * 16, candle_core::DType::U32, &d).unwrap();
    time("embedding index_select [1000,32] x 512 ids", &emb, &|t| {
        t.index_select(&ids, 0).unwrap()
    });
    let w = Tensor::randn(0f32, 1.0, (16, 3, 3, 3), &d).unwrap();
    time(
        "candle conv2d(16,3) [32,3,32,32] (input grad)",
        &var(&[32, 3, 34, 34]),
        &|t| t.conv2d(&w, 0, 1, 1, 1).unwrap(),
    );
}
