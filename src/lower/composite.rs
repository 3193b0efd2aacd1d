//! The candle-op forms of ops that our kernels serve on the CPU and on
//! CUDA (`kernels::both_paths`): what a Metal device runs, with candle's
//! autograd for the backward, and batch norm's inference everywhere. No
//! training run on a CPU or a CUDA device reaches the training forms, so
//! their tests here compare them with our ops.

use candle_core::{Result, Tensor, D};

/// Training layer norm over the last axis (biased variance, as Keras).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(w)?
        .broadcast_add(b)
}

/// Batch norm over axis 1 of [N, C, ...]: with `running` (mean, variance)
/// the inference form; without, the training form, which also returns the
/// batch (mean, biased variance), [C] each and detached, for the running
/// averages.
pub fn batch_norm(
    x: &Tensor,
    (w, b): (&Tensor, &Tensor),
    running: Option<(&Tensor, &Tensor)>,
    eps: f64,
) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    let c = x.dim(1)?;
    let mut bshape = vec![1, c];
    bshape.extend(std::iter::repeat_n(1, x.rank() - 2));
    let (mean, var, stats) = match running {
        Some((rm, rv)) => (
            rm.reshape(bshape.clone())?,
            rv.reshape(bshape.clone())?,
            None,
        ),
        None => {
            let flat = x.transpose(0, 1)?.flatten_from(1)?; // [C, B·N]
            let mean = flat.mean_keepdim(1)?;
            let var = flat.broadcast_sub(&mean)?.sqr()?.mean_keepdim(1)?;
            let (m, v) = (mean.flatten_all()?, var.flatten_all()?);
            (
                m.reshape(bshape.clone())?,
                v.reshape(bshape.clone())?,
                Some((m.detach(), v.detach())),
            )
        }
    };
    let y = x
        .broadcast_sub(&mean)?
        .broadcast_div(&(var + eps)?.sqrt()?)?;
    let y = y
        .broadcast_mul(&w.reshape(bshape.clone())?)?
        .broadcast_add(&b.reshape(bshape)?)?;
    Ok((y, stats))
}

#[cfg(test)]
mod tests {
    use crate::kernels::batch_norm::{BatchNormTrain, Stats};
    use crate::kernels::layer_norm::LayerNormTrain;
    use crate::kernels::{assert_same_gradients, max_abs_diff};
    use candle_core::{Device, Tensor, Var};

    fn var(shape: &[usize], lo: f32) -> Var {
        Var::from_tensor(&Tensor::rand(lo, 2.0, shape, &Device::Cpu).unwrap()).unwrap()
    }

    #[test]
    fn layer_norm_equals_our_op() {
        for shape in [vec![4, 6], vec![2, 5, 8], vec![3, 1]] {
            let d = shape[shape.len() - 1];
            let (x, g, b) = (var(&shape, -2.0), var(&[d], 0.5), var(&[d], -1.0));
            let (xt, gt, bt) = (x.as_tensor(), g.as_tensor(), b.as_tensor());
            let ours = xt.apply_op3(gt, bt, LayerNormTrain { eps: 1e-3 }).unwrap();
            let theirs = super::layer_norm(xt, gt, bt, 1e-3).unwrap();
            assert!(max_abs_diff(&ours, &theirs) < 1e-5, "forward {shape:?}");
            let what = format!("layer norm {shape:?}");
            assert_same_gradients(&theirs, &ours, &[&x, &g, &b], 1e-4, &what);
        }
    }

    /// The training form's output, gradients and batch statistics.
    #[test]
    fn batch_norm_training_equals_our_op() {
        for shape in [vec![4, 3, 5, 6], vec![8, 5], vec![3, 2, 7]] {
            let c = shape[1];
            let (x, g, b) = (var(&shape, -2.0), var(&[c], 0.5), var(&[c], -1.0));
            let (xt, gt, bt) = (x.as_tensor(), g.as_tensor(), b.as_tensor());
            let stats = Stats::default();
            let op = BatchNormTrain {
                eps: 1e-3,
                stats: stats.clone(),
            };
            let ours = xt.apply_op3(gt, bt, op).unwrap();
            let (theirs, batch) = super::batch_norm(xt, (gt, bt), None, 1e-3).unwrap();
            assert!(max_abs_diff(&ours, &theirs) < 1e-4, "forward {shape:?}");
            let (m0, v0) = stats.lock().unwrap().take().unwrap();
            let (m1, v1) = batch.unwrap();
            assert!(max_abs_diff(&m0, &m1) < 1e-5 && max_abs_diff(&v0, &v1) < 1e-5);
            let what = format!("batch norm {shape:?}");
            assert_same_gradients(&theirs, &ours, &[&x, &g, &b], 1e-3, &what);
        }
    }
}
