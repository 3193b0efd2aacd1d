//! Tests of `conv.rs`: the fused pools and plane means against the
//! convolution then the pool, and forward and backward against candle's conv2d.

use super::Conv2dIm2col;
use crate::kernels::max_abs_diff as diff;
use candle_core::{Device, Tensor, Var};

/// The fused pools (inference) equal the convolution followed by the
/// pool, and the plane means taken beside the output equal the output's
/// means: small images several to a GEMM, one image over several blocks,
/// odd planes (the pool floors).
#[test]
fn fused_pools_equal_the_convolution_then_the_pool() {
    use crate::kernels::cpu_ops::MaxPool2d;
    let dev = Device::Cpu;
    // The last two direct (8 filters).
    for (b, c, h, w, f, pad) in [
        (5, 2, 8, 8, 4, [1; 4]),
        (1, 2, 40, 38, 4, [1; 4]),
        (3, 3, 9, 9, 4, [0; 4]),
        (3, 3, 10, 10, 8, [1; 4]),
        (2, 8, 11, 9, 8, [0; 4]),
        // Winograd.
        (2, 40, 10, 11, 32, [1; 4]),
    ] {
        let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (f, c, 3, 3), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, f, &dev).unwrap();
        let conv = |mean, pool| {
            let op = Conv2dIm2col {
                stride: 1,
                dilation: 1,
                pad,
                relu: true,
                mean,
                pool,
            };
            x.apply_op3(&k, &bias, op).unwrap()
        };
        let full = conv(false, false);
        let pooled = full
            .apply_op1(MaxPool2d::new((2, 2), (2, 2), false))
            .unwrap();
        let fused = conv(false, true);
        assert_eq!(fused.dims(), pooled.dims());
        assert!(diff(&fused, &pooled) == 0.0, "max pool {b}×{h}×{w}");
        let mean = full.mean((2, 3)).unwrap();
        assert!(diff(&conv(true, false), &mean) < 1e-5, "mean {b}×{h}×{w}");
        // The plane means beside the whole output.
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let op = Conv2dIm2col {
            stride: 1,
            dilation: 1,
            pad,
            relu: true,
            mean: false,
            pool: false,
        };
        let (mut o, mut means) = (vec![0f32; full.elem_count()], vec![0f32; b * f]);
        let (xd, wd) = ([b, c, h, w], [f, c, 3, 3]);
        op.forward_with_means(&v(&x), &xd, &v(&k), &wd, &v(&bias), &mut o, &mut means)
            .unwrap();
        assert_eq!(o, v(&full), "beside the means {b}×{h}×{w}");
        let far = means.iter().zip(v(&mean)).map(|(a, m)| (a - m).abs());
        assert!(far.fold(0f32, f32::max) < 1e-5, "means {b}×{h}×{w}");
    }
}

/// Output and both gradients equal candle's own conv2d (whose backward we replace).
#[test]
fn matches_candle_conv2d_forward_and_backward() {
    let dev = Device::Cpu;
    for (b, c, h, w, f, k, s, d, pad) in [
        (2, 3, 7, 6, 4, 3, 1, 1, [0; 4]),
        (3, 2, 9, 9, 5, 3, 2, 1, [0; 4]),
        // Unpadded strided (the strided gather): patches, dilated.
        (2, 3, 8, 8, 4, 4, 4, 1, [0; 4]),
        // Patches of a kernel width with no constant-length copy.
        (2, 2, 11, 11, 3, 5, 3, 1, [0; 4]),
        (1, 2, 9, 9, 2, 3, 2, 2, [0; 4]),
        (1, 4, 8, 7, 2, 2, 1, 2, [0; 4]),
        (2, 1, 5, 5, 3, 1, 1, 1, [0; 4]),
        (2, 3, 7, 6, 4, 3, 1, 1, [1, 1, 1, 1]),
        (2, 2, 8, 8, 3, 3, 2, 1, [0, 1, 0, 1]),
        (1, 2, 6, 8, 3, 3, 2, 2, [2, 1, 3, 0]),
        (2, 1, 3, 3, 2, 5, 1, 1, [2, 2, 2, 2]),
        (2, 2, 6, 8, 3, 3, 1, 2, [2, 2, 2, 2]),
        (1, 3, 5, 7, 2, 3, 1, 1, [1, 0, 2, 0]),
        (2, 2, 4, 9, 3, 3, 1, 1, [0, 2, 1, 1]),
        // Several blocks of output rows (block_rows < oh), both im2col forms.
        (1, 2, 20, 20, 3, 3, 1, 1, [1, 1, 1, 1]),
        (2, 2, 22, 21, 2, 3, 1, 1, [0; 4]),
        // Pointwise (the image is its own columns), one filter and several;
        // 1×1 kernels that are not pointwise (padded, strided).
        (2, 5, 6, 7, 3, 1, 1, 1, [0; 4]),
        (3, 4, 5, 5, 1, 1, 1, 1, [0; 4]),
        (1, 5, 6, 7, 3, 1, 1, 1, [0; 4]),
        (1, 4, 5, 5, 1, 1, 1, 1, [0; 4]),
        (2, 3, 4, 4, 2, 1, 1, 1, [1, 1, 1, 1]),
        (2, 3, 6, 6, 2, 1, 2, 1, [0; 4]),
        // Small images three to a GEMM, the last group shorter (3, 3, 1).
        (7, 4, 9, 9, 2, 3, 1, 1, [1; 4]),
        // Direct (`direct`: stride 1, filters in eights): `same` and
        // unpadded, uneven padding, rows narrower and wider than a
        // vector, a 5×5 kernel, a 2×2 one, 3 channels (no dx grid: the
        // im2col backward) and 8 (dx on a grid); 12 groups of 3, 3, …, 1.
        // Outputs of more than 64 positions, or the backward is im2col's.
        (3, 3, 9, 8, 8, 3, 1, 1, [1; 4]),
        (2, 8, 15, 7, 16, 3, 1, 1, [0; 4]),
        (2, 8, 5, 20, 8, 2, 1, 1, [0, 1, 1, 0]),
        (1, 8, 9, 8, 8, 3, 1, 1, [1, 2, 0, 2]),
        (2, 8, 11, 37, 16, 5, 1, 1, [2; 4]),
        (1, 16, 9, 8, 24, 3, 1, 1, [1; 4]),
        (12, 8, 9, 8, 8, 3, 1, 1, [1; 4]),
        // Small outputs: direct forward, im2col backward.
        (1, 8, 4, 4, 8, 3, 1, 1, [1, 2, 0, 2]),
        (12, 8, 3, 3, 8, 3, 1, 1, [1; 4]),
        // Winograd (`winograd`: 3×3, stride 1, 32 or more channels each
        // way, more taps than direct takes): `same`, unpadded, uneven
        // padding and odd planes (partial tiles), 9 images in groups of 2.
        (2, 40, 9, 10, 32, 3, 1, 1, [1; 4]),
        (3, 36, 8, 7, 40, 3, 1, 1, [0; 4]),
        (1, 40, 7, 9, 33, 3, 1, 1, [2, 0, 1, 2]),
        (9, 36, 6, 6, 32, 3, 1, 1, [1; 4]),
    ] {
        for relu in [false, true] {
            let x =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap()).unwrap();
            let k4 =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (f, c, k, k), &dev).unwrap()).unwrap();
            let bias = Var::from_tensor(&Tensor::randn(0f32, 1.0, f, &dev).unwrap()).unwrap();
            let op = Conv2dIm2col {
                stride: s,
                dilation: d,
                pad,
                relu,
                mean: false,
                pool: false,
            };
            let ours = x
                .as_tensor()
                .apply_op3(k4.as_tensor(), bias.as_tensor(), op)
                .unwrap();
            let bias4 = bias.as_tensor().reshape((1, f, 1, 1)).unwrap();
            let theirs = x
                .as_tensor()
                .pad_with_zeros(2, pad[0], pad[1])
                .unwrap()
                .pad_with_zeros(3, pad[2], pad[3])
                .unwrap()
                .conv2d(k4.as_tensor(), 0, s, d, 1)
                .unwrap()
                .broadcast_add(&bias4)
                .unwrap();
            let theirs = if relu { theirs.relu().unwrap() } else { theirs };
            assert_eq!(ours.dims(), theirs.dims());
            let weights = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
            assert!(diff(&ours, &theirs) < 1e-4, "forward");
            let ga = (ours * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gb = (theirs * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [&x, &k4, &bias] {
                let (p, q) = (
                    ga.get(v.as_tensor()).unwrap(),
                    gb.get(v.as_tensor()).unwrap(),
                );
                assert!(
                    diff(p, q) < 1e-3,
                    "gradient differs by {} for case {:?}",
                    diff(p, q),
                    (b, c, h, w, f, k, s, d, pad, relu)
                );
            }
        }
    }
}

/// A fused max pool in training (the planned executor's): the outputs
/// equal the inference forward's, and the gradients from the saved
/// maxima equal candle's autograd through the convolution, relu and a
/// separate pool; direct (8 filters) and im2col (4), odd planes; on
/// the direct path also from the padded images the forward kept.
#[test]
fn pooled_training_backward_equals_the_convolution_then_the_pool() {
    use crate::kernels::cpu_ops::{relu_grad, MaxPool2d};
    use crate::kernels::host::host;
    let dev = Device::Cpu;
    // With and without dx: 3 → 16 runs direct only without (no dx grid for
    // 3 channels); 16 → 24 fills one vector of dW's filters and half another.
    let cases = [
        (3, 8, 10, 9, 8),
        (2, 3, 9, 11, 4),
        (5, 2, 4, 4, 8),
        (2, 3, 12, 10, 16),
        (2, 16, 8, 11, 24),
    ];
    let runs = cases.into_iter().flat_map(|c| [(c, true), (c, false)]);
    for (((b, c, h, w, f), with_dx), keep) in runs.flat_map(|r| [(r, false), (r, true)]) {
        let op = |pool| Conv2dIm2col {
            stride: 1,
            dilation: 1,
            pad: [1; 4],
            relu: true,
            mean: false,
            pool,
        };
        let var =
            |d: &[usize]| Var::from_tensor(&Tensor::randn(0f32, 1.0, d, &dev).unwrap()).unwrap();
        let (x, k, bias) = (var(&[b, c, h, w]), var(&[f, c, 3, 3]), var(&[f]));
        let y = x
            .as_tensor()
            .apply_op3(k.as_tensor(), bias.as_tensor(), op(false))
            .unwrap()
            .apply_op1(MaxPool2d::new((2, 2), (2, 2), true))
            .unwrap();
        let r = Tensor::randn(0f32, 1.0, y.dims(), &dev).unwrap();
        let want = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let (xv, kv, bv) = (host(&x).unwrap(), host(&k).unwrap(), host(&bias).unwrap());
        let (xd, kd) = ([b, c, h, w], [f, c, 3, 3]);
        let mut out = vec![0f32; y.elem_count()];
        let mut arg = vec![0u16; out.len()];
        let mut grids = vec![f32::NAN; op(true).grids_len(&xd, &kd).unwrap()];
        let kept = (Some(&mut arg[..]), keep.then_some(&mut grids[..]));
        op(true)
            .forward_train_into((&xv, &xd), (&kv, &kd), &bv, &mut out, kept)
            .unwrap();
        assert_eq!(out, host(&y).unwrap().to_vec(), "{b}×{c}×{h}×{w} → {f}");
        let gy = relu_grad(&host(&r).unwrap(), &out);
        let (mut dx, mut dw, mut db) = (vec![0f32; xv.len()], vec![0f32; kv.len()], vec![0f32; f]);
        op(true)
            .backward_pooled_into(
                ((&xv, &xd), keep.then_some(&grids[..])),
                (&kv, &kd),
                (&gy, &arg),
                with_dx.then_some(&mut dx[..]),
                &mut dw,
                &mut db,
            )
            .unwrap();
        let checked = [(&x, dx), (&k, dw), (&bias, db)];
        for (v, got) in checked.into_iter().skip(usize::from(!with_dx)) {
            let theirs = host(want.get(v.as_tensor()).unwrap()).unwrap();
            let d = got
                .iter()
                .zip(theirs.iter())
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                d < 1e-4,
                "{b}×{c}×{h}×{w} → {f} ({with_dx}): a gradient differs by {d}"
            );
        }
    }
}

/// Data that needs no gradient gets none, and the kernel's gradient is unchanged.
#[test]
fn untracked_input_gets_no_gradient_and_the_same_weight_gradient() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (2, 3, 6, 6), &dev).unwrap();
    let xv = Var::from_tensor(&x).unwrap();
    let k = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::zeros(4, candle_core::DType::F32, &dev).unwrap()).unwrap();
    let grads = |x: &Tensor| {
        let op = Conv2dIm2col {
            stride: 1,
            dilation: 1,
            pad: [0; 4],
            relu: false,
            mean: false,
            pool: false,
        };
        x.apply_op3(k.as_tensor(), b.as_tensor(), op)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    };
    let (plain, tracked) = (grads(&x), grads(xv.as_tensor()));
    assert!(plain.get(&x).is_none());
    assert!(tracked.get(xv.as_tensor()).is_some());
    let d = (plain.get(k.as_tensor()).unwrap() - tracked.get(k.as_tensor()).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0);
}
