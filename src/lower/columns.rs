//! A convolution trained as columns and one GEMM on the GPU path
//! ([`crate::kernels::columns`] says why), and when it pays.

use super::Pads;
use candle_core::{Result, Tensor};

/// Per sample, the multiply-adds of the transposed convolution candle's
/// backward runs for x's gradient (C_in·H·W·C_out·kh·kw) from which the
/// columns pay. Measured on an H200 at batch 32, two alternated rounds
/// (benches/README.md): with the columns on every convolution,
/// `seed_multitask` trained 1.61× faster (its 64 → 128 channel
/// convolution, 2.8·10⁸ per sample) but `digits`, `shapes` and `captions`
/// (convolutions of at most 5·10⁶) at 0.83×, 0.93× and 0.91×: at that size
/// candle's kernels are not the bottleneck and the columns add launches.
/// With this threshold: 1.55×, 1.08× and 1.03×.
const PAYS_FROM: usize = 1 << 24;

/// Whether a convolution of x [N, C, H, W] by w [C_out, C, kh, kw] trains
/// faster as columns.
pub fn pays(x: &Tensor, w: &Tensor) -> bool {
    match (x.dims4(), w.dims4()) {
        (Ok((_, c, h, wd)), Ok((cout, _, kh, kw))) => c * h * wd * cout * kh * kw >= PAYS_FROM,
        _ => false,
    }
}

/// A 2-D convolution (one group) as columns and one GEMM: candle's matmul
/// backward gives W's and the columns' gradients as two GEMMs, and the
/// columns' goes back to x only when x needs one. Then the bias, a relu
/// when `relu`, a global average pool when `mean`.
pub fn conv_columns(
    x: &Tensor,
    (w, b): (&Tensor, &Tensor),
    (stride, dilation): (&[usize], &[usize]),
    pads: &Pads,
    (relu, mean): (bool, bool),
) -> Result<Tensor> {
    let (n, _, h, wd) = x.dims4()?;
    let (cout, cin, kh, kw) = w.dims4()?;
    let p = |a: usize| pads.get(a).copied().unwrap_or((0, 0));
    // (vertical, horizontal); one value serves both axes.
    let two = |v: &[usize]| {
        let a = v.first().copied().unwrap_or(1);
        (a, v.get(1).copied().unwrap_or(a))
    };
    let op = crate::kernels::columns::Columns {
        kernel: (kh, kw),
        stride: two(stride),
        dilation: two(dilation),
        pads: [p(0).0, p(0).1, p(1).0, p(1).1],
    };
    let (ho, wo) = op.output(h, wd)?;
    let cols = x.contiguous()?.apply_op1(op)?; // [Cin·kh·kw, N·Ho·Wo]
    let y = w
        .reshape((cout, cin * kh * kw))?
        .matmul(&cols)?
        .broadcast_add(&b.reshape((cout, 1))?)?;
    let y = if relu { y.relu()? } else { y };
    let y = y.reshape((cout, n, ho, wo))?;
    if mean {
        // [Cout, N, Ho·Wo] → [N, Cout]
        y.flatten_from(2)?.mean(2)?.t()?.contiguous()
    } else {
        y.transpose(0, 1)?.contiguous()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The columns' convolution with its bias, relu and mean equals
    /// candle's (`calls::conv_candle`), values and gradients, with
    /// asymmetric `same` padding and a stride.
    #[test]
    fn equals_candle_convolution() {
        let dev = Device::Cpu;
        let var = |dims: &[usize]| {
            Var::from_tensor(&Tensor::randn(0f32, 1.0, dims, &dev).unwrap()).unwrap()
        };
        for (stride, pads, relu, mean) in [
            (1, vec![(1, 1), (1, 1)], true, false),
            (2, vec![(0, 1), (1, 0)], false, false),
            (1, vec![], true, true),
        ] {
            let (x, w, b) = (var(&[2, 3, 8, 8]), var(&[4, 3, 3, 3]), var(&[4]));
            let wb = (w.as_tensor(), b.as_tensor());
            let s = [stride, stride];
            let ours = conv_columns(x.as_tensor(), wb, (&s, &[1, 1]), &pads, (relu, mean)).unwrap();
            let theirs = super::super::calls::conv_candle(
                x.as_tensor(),
                wb,
                (&s, &[1, 1], 1),
                &pads,
                (relu, mean),
            )
            .unwrap();
            let what = format!("stride {stride}, pads {pads:?}, relu {relu}, mean {mean}");
            assert_eq!(ours.dims(), theirs.dims(), "{what}");
            let r = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
            let grads = |y: &Tensor| (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let (ga, gb) = (grads(&ours), grads(&theirs));
            let diff = |a: &Tensor, b: &Tensor| {
                (a - b)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            assert!(diff(&ours, &theirs) < 1e-5, "{what}");
            for v in [&x, &w, &b] {
                let (p, q) = (
                    ga.get(v.as_tensor()).unwrap(),
                    gb.get(v.as_tensor()).unwrap(),
                );
                assert!(diff(p, q) < 1e-4, "{what}: a gradient differs");
            }
        }
    }
}
