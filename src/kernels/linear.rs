//! `y = x·Wᵀ + b` as one CPU op with its own backward. Through candle's
//! autograd the bias gradient is a sum over the batch axis, which candle's CPU
//! reduction runs element by element with a division per element: on the
//! hoisted LSTM projection ([2048, 512] per step) it was the largest single
//! cost of `reviews`'s backward. Here the three products are GEMMs and the
//! bias gradient a row sum, and the data gradient is skipped for inputs that
//! need none.

use super::cpu_ops::relu_grad;
use super::gemm::{matmul, transposed, View};
use super::host::{contiguous, host};
use super::lanes::copy_short;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

pub struct Linear {
    /// Apply max(0, ·) after the bias (a fused relu).
    pub relu: bool,
}

/// `y` [n, o] = `x` [n, i] · `wt` [i, o] + `b`, then max(0, ·) with `relu`.
pub fn forward_into(
    y: &mut [f32],
    x: &[f32],
    wt: &[f32],
    b: &[f32],
    (n, i, o): (usize, usize, usize),
    relu: bool,
) {
    for row in y.chunks_mut(o).take(n) {
        copy_short(row, b);
    }
    let xv = View {
        data: x,
        rows: n,
        cols: i,
        rs: i,
        cs: 1,
    };
    let w_t = View {
        data: wt,
        rows: i,
        cols: o,
        rs: o,
        cs: 1,
    };
    matmul(y, o, true, xv, w_t);
    if relu {
        y.iter_mut().for_each(|v| *v = v.max(0.0));
    }
}

/// The backward of `y = x·Wᵀ + b` (`w` [o, i] row-major), added to `dx`
/// (when given), `dw` and `db`: dx += dy·W, dW += dyᵀ·x, db += Σₙ dy.
pub fn backward_into(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    (n, i, o): (usize, usize, usize),
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    db: &mut [f32],
) {
    let dy_view = View {
        data: dy,
        rows: n,
        cols: o,
        rs: o,
        cs: 1,
    };
    if let Some(dx) = dx {
        let wm = View {
            data: w,
            rows: o,
            cols: i,
            rs: i,
            cs: 1,
        };
        matmul(dx, i, true, dy_view, wm);
    }
    let dy_t = View {
        data: dy,
        rows: o,
        cols: n,
        rs: 1,
        cs: o,
    };
    let xm = View {
        data: x,
        rows: n,
        cols: i,
        rs: i,
        cs: 1,
    };
    matmul(dw, i, true, dy_t, xm);
    // In row order (deterministic).
    for row in dy.chunks(o) {
        db.iter_mut().zip(row).for_each(|(a, v)| *a += v);
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "mtl-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ((n, i), (o, i2), o2) = (
            l1.shape().dims2()?,
            l2.shape().dims2()?,
            l3.shape().dims1()?,
        );
        if i != i2 || o != o2 {
            candle_core::bail!(
                "linear op: input {:?}, weight {:?} and bias {:?} do not fit",
                l1.shape(),
                l2.shape(),
                l3.shape()
            )
        }
        let (x, w, b) = (
            contiguous(s1, l1)?,
            contiguous(s2, l2)?,
            contiguous(s3, l3)?,
        );
        let wt = transposed(w, o, i);
        let mut y = vec![0f32; n * o];
        forward_into(&mut y, x, &wt, b, (n, i, o), self.relu);
        Ok((CpuStorage::F32(y), Shape::from((n, o))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let ((n, i), (o, _)) = (x.dims2()?, w.dims2()?);
        let (xv, wv, dy) = (host(x)?, host(w)?, host(grad)?);
        let masked;
        let dy: &[f32] = if self.relu {
            masked = relu_grad(&dy, &host(res)?);
            &masked
        } else {
            &dy
        };
        let dev = x.device();
        let mut dx = vec![0f32; if x.track_op() { n * i } else { 0 }];
        let (mut dw, mut db) = (vec![0f32; o * i], vec![0f32; o]);
        let want_dx = x.track_op().then_some(dx.as_mut_slice());
        backward_into(&xv, &wv, dy, (n, i, o), want_dx, &mut dw, &mut db);
        let dx = x
            .track_op()
            .then(|| Tensor::from_vec(dx, (n, i), dev))
            .transpose()?;
        Ok((
            dx,
            Some(Tensor::from_vec(dw, (o, i), dev)?),
            Some(Tensor::from_vec(db, o, dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::Linear;
    use candle_core::{Device, Tensor, Var};

    use crate::kernels::{assert_same_gradients, max_abs_diff as diff};

    /// Output and the three gradients equal candle's matmul + broadcast add.
    #[test]
    fn matches_candle_matmul_plus_bias_forward_and_backward() {
        let dev = Device::Cpu;
        for (n, i, o, relu) in [
            (1, 1, 1, false),
            (5, 3, 4, false),
            (64, 33, 17, false),
            (300, 64, 512, false),
            (5, 3, 4, true),
            (64, 33, 17, true),
        ] {
            let var = |s: &[usize]| {
                Var::from_tensor(&Tensor::randn(0f32, 1.0, s, &dev).unwrap()).unwrap()
            };
            let (x, w, b) = (var(&[n, i]), var(&[o, i]), var(&[o]));
            let ours = x
                .as_tensor()
                .apply_op3(w.as_tensor(), b.as_tensor(), Linear { relu })
                .unwrap();
            let theirs = x
                .as_tensor()
                .matmul(&w.as_tensor().t().unwrap())
                .unwrap()
                .broadcast_add(b.as_tensor())
                .unwrap();
            let theirs = if relu { theirs.relu().unwrap() } else { theirs };
            assert!(diff(&ours, &theirs) < 1e-4, "forward {:?}", (n, i, o, relu));
            assert_same_gradients(
                &ours,
                &theirs,
                &[&x, &w, &b],
                1e-3,
                &format!("linear {:?}", (n, i, o)),
            );
        }
    }

    #[test]
    fn untracked_input_gets_no_gradient() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (4, 3), &dev).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3), &dev).unwrap()).unwrap();
        let b =
            Var::from_tensor(&Tensor::zeros(2, candle_core::DType::F32, &dev).unwrap()).unwrap();
        let g = x
            .apply_op3(w.as_tensor(), b.as_tensor(), Linear { relu: false })
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(g.get(&x).is_none() && g.get(w.as_tensor()).is_some());
    }
}
