//! Our convolution kernel's three products at the shapes of the shipped
//! image models (batch 32), in GFLOP/s of the useful work (2 per
//! multiply-add; dx is the full backward's time less dW's). Run:
//! `cargo bench --bench conv [-- WORDS]` (`RAYON_NUM_THREADS=1` for one
//! core; WORDS pick the shapes whose names contain one, e.g. `patches`).

use mtl::kernels::conv::Conv2dIm2col;

/// The least seconds of `f` over 60 runs, after 5 warm-ups: the machine
/// is shared, and the fastest run is the one least disturbed.
fn fastest(mut f: impl FnMut()) -> f64 {
    for _ in 0..5 {
        f();
    }
    let mut t: Vec<f64> = (0..60)
        .map(|_| {
            let t0 = std::time::Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[0]
}

fn main() {
    let mut rng = 1u32;
    let mut rand = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                rng = rng.wrapping_mul(1664525).wrapping_add(1013904223);
                (rng >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect()
    };
    // Words after `--` pick the shapes whose names contain one of them.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    println!(
        "{:<34} {:>9} {:>9} {:>9}",
        "conv (batch 32)", "forward", "dW", "dx"
    );
    for (name, c, h, f, k, pad, stride) in [
        ("3→16, 32×32, 3×3 same", 3, 32, 16, 3, 1, 1),
        ("16→32, 16×16, 3×3 same", 16, 16, 32, 3, 1, 1),
        ("32→32, 8×8, 3×3 same", 32, 8, 32, 3, 1, 1),
        ("3→64, 32×32, 3×3 valid", 3, 32, 64, 3, 0, 1),
        ("64→128, 30×30, 3×3 valid", 64, 30, 128, 3, 0, 1),
        ("16→32, 16×16, 4×4/4 patches", 16, 16, 32, 4, 0, 4),
    ] {
        let b = 32;
        let (xd, wd) = ([b, c, h, h], [f, c, k, k]);
        let op = Conv2dIm2col {
            stride,
            dilation: 1,
            pad: [pad; 4],
            relu: false,
            mean: false,
            pool: false,
        };
        let (x, w, bias) = (rand(b * c * h * h), rand(f * c * k * k), rand(f));
        let out_len = op.out_len(&xd, &wd).unwrap();
        let mut y = vec![0f32; b * out_len];
        let dy = rand(b * out_len);
        let (mut dw, mut db, mut dx) = (vec![0f32; w.len()], vec![0f32; f], vec![0f32; x.len()]);
        let flops = 2.0 * (b * out_len * c * k * k) as f64;
        if !filters.is_empty() && !filters.iter().any(|a| name.contains(a.as_str())) {
            continue;
        }
        let fwd = fastest(|| op.forward_into(&x, &xd, &w, &wd, &bias, &mut y).unwrap());
        let dwt = fastest(|| {
            op.backward_into((&x, &xd), (&w, &wd), &dy, None, &mut dw, &mut db)
                .unwrap()
        });
        let both = fastest(|| {
            op.backward_into((&x, &xd), (&w, &wd), &dy, Some(&mut dx), &mut dw, &mut db)
                .unwrap()
        });
        let g = |t: f64| flops / t / 1e9;
        println!(
            "{name:<34} {:>9.1} {:>9.1} {:>9.1}",
            g(fwd),
            g(dwt),
            g((both - dwt).max(1e-9))
        );
    }
    // The planned training step's form: relu and a 2×2 max pool fused, the
    // backward from the pooled gradient and the saved maxima.
    println!(
        "\n{:<34} {:>9} {:>9}",
        "fused relu + pool (batch 32)", "fwd ms", "bwd ms"
    );
    for (name, c, h, f, dx) in [
        ("3→16, 32×32 (shapes_mm conv1)", 3, 32, 16, false),
        ("16→32, 16×16 (shapes_mm conv2)", 16, 16, 32, true),
    ] {
        if !filters.is_empty() && !filters.iter().any(|a| name.contains(a.as_str())) {
            continue;
        }
        let b = 32;
        let (xd, wd) = ([b, c, h, h], [f, c, 3, 3]);
        let op = Conv2dIm2col {
            stride: 1,
            dilation: 1,
            pad: [1; 4],
            relu: true,
            mean: false,
            pool: true,
        };
        let (x, w, bias) = (rand(b * c * h * h), rand(f * c * 9), rand(f));
        let mut y = vec![0f32; b * op.out_len(&xd, &wd).unwrap()];
        let mut arg = vec![0u16; y.len()];
        // The padded images the forward keeps for the backward, as the
        // planned step does.
        let mut grids = vec![0f32; op.grids_len(&xd, &wd).unwrap()];
        let gy = rand(y.len());
        let (mut dw, mut db, mut dxv) = (vec![0f32; w.len()], vec![0f32; f], vec![0f32; x.len()]);
        let fwd = fastest(|| {
            op.forward_train_into(
                (&x, &xd),
                (&w, &wd),
                &bias,
                &mut y,
                (Some(&mut arg), Some(&mut grids)),
            )
            .unwrap()
        });
        let bwd = fastest(|| {
            let dx = dx.then_some(&mut dxv[..]);
            let x = ((&x[..], &xd[..]), Some(&grids[..]));
            op.backward_pooled_into(x, (&w, &wd), (&gy, &arg), dx, &mut dw, &mut db)
                .unwrap()
        });
        println!("{name:<34} {:>9.3} {:>9.3}", fwd * 1e3, bwd * 1e3);
    }
}
