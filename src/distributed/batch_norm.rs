//! Training batch norm over a batch split across ranks (synchronized batch
//! norm): the mean and variance are those of the whole batch, so the
//! normalized values, the running statistics and the gradients equal one
//! process's. Two passes (the mean, then the squared deviations), each one
//! all-reduce of C values; the backward flows through the sums
//! ([`super::all_reduce`]).

use super::all_reduce::all_reduce;
use super::Part;
use candle_core::{DType, Result, Tensor};

/// `x` [B, C, …] normalized with the whole batch's statistics, the affine
/// `w`, `b` [C] applied; also the batch mean and (biased) variance [C] for
/// the running averages. `part` says how many rows the whole batch has.
pub fn batch_norm(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
    part: &Part,
) -> Result<(Tensor, (Tensor, Tensor))> {
    let Some(comm) = part.comm else {
        candle_core::bail!("synchronized batch norm on a batch that is not split")
    };
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let c = x.dim(1)?;
    let mut bshape = vec![1, c];
    bshape.extend(std::iter::repeat_n(1, x.rank() - 2));
    let flat = x.transpose(0, 1)?.flatten_from(1)?; // [C, b·N]
                                                    // Elements per channel in the whole batch: rows × positions.
    let per_row = flat.dim(1)? / part.len.max(1);
    let n = (part.total * per_row).max(1) as f64;
    let mean = (all_reduce(&flat.sum_keepdim(1)?, comm)? / n)?;
    let dev = flat.broadcast_sub(&mean)?;
    let var = (all_reduce(&dev.sqr()?.sum_keepdim(1)?, comm)? / n)?;
    let y = x
        .broadcast_sub(&mean.reshape(bshape.clone())?)?
        .broadcast_div(&(var.reshape(bshape.clone())? + eps)?.sqrt()?)?;
    let y = y
        .broadcast_mul(&w.to_dtype(DType::F32)?.reshape(bshape.clone())?)?
        .broadcast_add(&b.to_dtype(DType::F32)?.reshape(bshape)?)?;
    let stats = (mean.flatten_all()?.detach(), var.flatten_all()?.detach());
    Ok((y.to_dtype(dtype)?, stats))
}

#[cfg(test)]
mod tests {
    use super::super::{local, Comm, Part};
    use super::*;
    use candle_core::{Device, Var};
    use std::sync::Arc;

    /// Output, batch mean and variance, gradients of x and of the weight.
    type Outcome = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

    /// Loss Σ y·r over a batch, in one process and split over two rank
    /// threads: equal outputs, statistics and summed gradients.
    #[test]
    fn split_batch_norm_equals_the_whole_batch() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (6, 3, 4), &dev).unwrap();
        let r = Tensor::randn(0f32, 1.0, (6, 3, 4), &dev).unwrap();
        let w = Tensor::new(&[1.5f32, 0.5, -1.0], &dev).unwrap();
        let b = Tensor::new(&[0.1f32, 0.0, 0.2], &dev).unwrap();
        let run = |x: &Tensor, r: &Tensor, part: Option<Part>| -> Outcome {
            let (xv, wv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(&w).unwrap());
            let (y, (m, v)) = match part {
                Some(p) => batch_norm(xv.as_tensor(), wv.as_tensor(), &b, 1e-3, &p).unwrap(),
                None => {
                    let (y, s) = crate::lower::calls::batch_norm(
                        xv.as_tensor(),
                        wv.as_tensor(),
                        &b,
                        &b,
                        &b,
                        1e-3,
                        true,
                    )
                    .unwrap();
                    (y, s.unwrap())
                }
            };
            let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
            let v2 = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (
                v2(&y),
                v2(&m),
                v2(&v),
                v2(g.get(xv.as_tensor()).unwrap()),
                v2(g.get(wv.as_tensor()).unwrap()),
            )
        };
        let whole = run(&x, &r, None);
        let comms: Vec<Comm> = local::group(2)
            .into_iter()
            .map(|c| Arc::new(c) as Comm)
            .collect();
        let parts: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = comms
                .iter()
                .map(|c| {
                    let (x, r) = (&x, &r);
                    s.spawn(move || {
                        let p = Part::of(6, Some(c));
                        let rows = p.range();
                        let xs = x.narrow(0, rows.start, rows.len()).unwrap();
                        let rs = r.narrow(0, rows.start, rows.len()).unwrap();
                        run(&xs, &rs, Some(p))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let close = |a: &[f32], b: &[f32]| {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
            }
        };
        let cat = |f: fn(&Outcome) -> &Vec<f32>| {
            parts
                .iter()
                .flat_map(|p| f(p).clone())
                .collect::<Vec<f32>>()
        };
        close(&cat(|p| &p.0), &whole.0);
        close(&cat(|p| &p.3), &whole.3);
        for p in &parts {
            close(&p.1, &whole.1);
            close(&p.2, &whole.2);
            // The weight's gradient is each rank's share: they add up.
        }
        let wsum: Vec<f32> = parts[0]
            .4
            .iter()
            .zip(&parts[1].4)
            .map(|(a, b)| a + b)
            .collect();
        close(&wsum, &whole.4);
    }
}
