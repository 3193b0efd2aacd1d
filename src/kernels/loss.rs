//! A head's loss and its gradient with respect to the logits in one pass
//! over host memory: what the planned trainer runs instead of the dozen
//! candle element-wise ops (and their autograd) of `train::loss`. Same
//! formulas, same masking and the same reductions; the gradient is that of
//! the reduced loss, so the caller only scales it by the loss's coefficient.

use super::math::{exp_fast, ln_fast};
use rayon::prelude::*;

/// The loss of a head, as `ir::LossKind` without the IR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    CrossEntropy,
    BinaryCrossEntropy,
    Mse,
    Mae,
    Huber,
}

/// A head's labels: class ids (< 0 = missing) for cross-entropy, else
/// targets (NaN = missing).
pub enum Labels {
    Classes(Vec<i64>),
    Targets(Vec<f32>),
}

/// The reduced loss and the number of labels present (weighted by the
/// sample mask); [`head`] leaves dLoss/dlogits in its `grad`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reduced {
    pub loss: f32,
    pub present: f32,
}

/// A head's loss: the sum of its element losses over the present labels
/// (each times its sample's weight), divided by the labels present when
/// `present_only`, else by every label element (Keras's
/// `sum_over_batch_size`), and that loss's gradient into `grad`.
/// `logits` has `dims`: [B, K, S…] for cross-entropy (K classes at each of
/// the S positions; labels [B, S…]), else the targets' shape; `sample` [B]
/// scales whole samples.
pub fn head(
    kind: Kind,
    (logits, dims): (&[f32], &[usize]),
    labels: &Labels,
    sample: Option<&[f32]>,
    present_only: bool,
    grad: &mut Vec<f32>,
) -> Result<Reduced, String> {
    grad.clear();
    grad.resize(logits.len(), 0.0);
    if dims.iter().product::<usize>() != logits.len() || dims.is_empty() {
        return Err(format!("{} logits of shape {dims:?}", logits.len()));
    }
    let batch = dims[0];
    if sample.is_some_and(|s| s.len() != batch) {
        return Err(format!(
            "a sample mask of {} for a batch of {batch}",
            sample.map_or(0, <[f32]>::len)
        ));
    }
    let (sum, present, n_labels) = match (kind, labels) {
        (Kind::CrossEntropy, Labels::Classes(y)) => {
            let k = dims.get(1).copied().unwrap_or(1);
            let positions = dims.get(2..).map_or(1, |d| d.iter().product());
            if y.len() != batch * positions {
                return Err(format!(
                    "{} class ids for logits of shape {dims:?}",
                    y.len()
                ));
            }
            let weight = |i: usize| sample.map_or(1.0, |s| s[i / positions.max(1)]);
            let (sum, present) = cross_entropy(logits, y, (k, positions), &weight, grad);
            (sum, present, y.len())
        }
        (Kind::CrossEntropy, Labels::Targets(_)) => {
            return Err("cross-entropy takes class ids".into())
        }
        (_, Labels::Classes(_)) => return Err("class ids for a loss on values".into()),
        (kind, Labels::Targets(y)) => {
            if y.len() != logits.len() {
                return Err(format!("{} targets for logits of shape {dims:?}", y.len()));
            }
            let per_sample = (y.len() / batch.max(1)).max(1);
            let weight = |b: usize| sample.map_or(1.0, |s| s[b]);
            let (sum, present) = pointwise(kind, (logits, y), (per_sample, &weight), grad);
            (sum, present, y.len())
        }
    };
    let divisor = if present_only {
        present.max(1.0)
    } else {
        n_labels.max(1) as f64
    };
    let scale = (1.0 / divisor) as f32;
    if grad.len() >= super::par::MIN_ELEMENTS {
        grad.par_iter_mut().for_each(|g| *g *= scale);
    } else {
        grad.iter_mut().for_each(|g| *g *= scale);
    }
    Ok(Reduced {
        loss: (sum / divisor) as f32,
        present: present as f32,
    })
}

/// Cross-entropy of softmax(logits) over the K classes at each position:
/// Σ w·(logsumexp − x_y) and Σ w, and w·(softmax − onehot) in `grad`.
fn cross_entropy(
    x: &[f32],
    y: &[i64],
    (k, positions): (usize, usize),
    weight: &(impl Fn(usize) -> f32 + Sync),
    grad: &mut [f32],
) -> (f64, f64) {
    // One sample's K×S block at a time: its classes are S apart.
    let block = k * positions;
    let sample = |(b, (x, g)): (usize, (&[f32], &mut [f32]))| -> (f64, f64) {
        let (mut sum, mut present) = (0.0f64, 0.0f64);
        for s in 0..positions {
            let i = b * positions + s;
            let class = y[i];
            let w = weight(i);
            if class < 0 || w == 0.0 {
                continue;
            }
            // Out-of-range ids are clamped, as the candle path gathers them.
            let class = (class as usize).min(k - 1);
            let at = |c: usize| c * positions + s;
            let max = (0..k).map(|c| x[at(c)]).fold(f32::NEG_INFINITY, f32::max);
            let z: f32 = (0..k).map(|c| exp_fast(x[at(c)] - max)).sum();
            let lse = max + ln_fast(z);
            sum += f64::from(w * (lse - x[at(class)]));
            present += f64::from(w);
            for c in 0..k {
                let p = exp_fast(x[at(c)] - lse);
                g[at(c)] = w * (p - if c == class { 1.0 } else { 0.0 });
            }
        }
        (sum, present)
    };
    let add = |a: (f64, f64), b: (f64, f64)| (a.0 + b.0, a.1 + b.1);
    if x.len() >= super::par::MIN_ELEMENTS / 4 {
        x.par_chunks(block)
            .zip(grad.par_chunks_mut(block))
            .enumerate()
            .map(sample)
            .reduce(|| (0.0, 0.0), add)
    } else {
        x.chunks(block)
            .zip(grad.chunks_mut(block))
            .enumerate()
            .map(sample)
            .fold((0.0, 0.0), add)
    }
}

/// The element-wise losses, a sample (`per_sample` values of weight
/// `weight(b)`) at a time: Σ w·l and Σ w, and w·dl/dx in `grad`.
fn pointwise(
    kind: Kind,
    xy: (&[f32], &[f32]),
    per_sample: (usize, &(impl Fn(usize) -> f32 + Sync)),
    grad: &mut [f32],
) -> (f64, f64) {
    match kind {
        // max(x,0) − x·y + ln(1 + e^{−|x|}); dl/dx = σ(x) − y.
        Kind::BinaryCrossEntropy => by_sample(xy, per_sample, grad, |x, y| {
            let e = exp_fast(-x.abs());
            let inv = 1.0 / (1.0 + e);
            let sigmoid = if x >= 0.0 { inv } else { e * inv };
            (x.max(0.0) - x * y + ln_fast(1.0 + e), sigmoid - y)
        }),
        Kind::Mse => by_sample(xy, per_sample, grad, |x, y| {
            let d = x - y;
            (d * d, 2.0 * d)
        }),
        // The sign at 0 is +1, as candle's |x| backward takes it.
        Kind::Mae => by_sample(xy, per_sample, grad, |x, y| {
            let d = x - y;
            (d.abs(), if d >= 0.0 { 1.0 } else { -1.0 })
        }),
        // Huber with δ = 1 (Keras's default); cross-entropy never comes here.
        Kind::Huber | Kind::CrossEntropy => by_sample(xy, per_sample, grad, |x, y| {
            let a = (x - y).abs();
            let q = a.min(1.0);
            (0.5 * q * q + (a - q), (x - y).clamp(-1.0, 1.0))
        }),
    }
}

/// A sample's index, values, targets and gradient.
type Row<'a> = (usize, ((&'a [f32], &'a [f32]), &'a mut [f32]));

/// [`pointwise`] with the element's loss and derivative `element(x, y)`:
/// one instance per kind, branch-free, 16 lanes at a time, compiled for the
/// widest vectors (`par::widest`) so that it vectorizes.
#[inline(always)]
fn by_sample(
    (x, y): (&[f32], &[f32]),
    (per_sample, weight): (usize, &(impl Fn(usize) -> f32 + Sync)),
    grad: &mut [f32],
    element: impl Fn(f32, f32) -> (f32, f32) + Sync + Copy,
) -> (f64, f64) {
    const LANES: usize = 16;
    #[inline(always)]
    fn lanes<const N: usize>(
        (x, y, g): (&[f32; N], &[f32; N], &mut [f32; N]),
        w: f32,
        (sum, present): (&mut [f32; N], &mut [f32; N]),
        element: impl Fn(f32, f32) -> (f32, f32),
    ) {
        for j in 0..N {
            // NaN ≠ NaN: a missing target adds nothing.
            let valid = !y[j].is_nan();
            let (l, dl) = element(x[j], if valid { y[j] } else { 0.0 });
            sum[j] += if valid { l } else { 0.0 };
            present[j] += if valid { 1.0 } else { 0.0 };
            g[j] = if valid { w * dl } else { 0.0 };
        }
    }
    let sample = |(b, ((x, y), g)): Row| -> (f64, f64) {
        let w = weight(b);
        if w == 0.0 {
            return (0.0, 0.0);
        }
        let (mut sum, mut present) = ([0f32; LANES], [0f32; LANES]);
        super::par::widest(
            #[inline(always)]
            || {
                let (xs, ys, mut gs) = (
                    x.chunks_exact(LANES),
                    y.chunks_exact(LANES),
                    g.chunks_exact_mut(LANES),
                );
                let (xr, yr) = (xs.remainder(), ys.remainder());
                for ((x, y), g) in xs.zip(ys).zip(&mut gs) {
                    if let (Ok(x), Ok(y), Ok(g)) = (x.try_into(), y.try_into(), g.try_into()) {
                        lanes((x, y, g), w, (&mut sum, &mut present), element);
                    }
                }
                // The last few, one at a time.
                for ((x, y), g) in xr.iter().zip(yr).zip(gs.into_remainder()) {
                    let (mut s, mut p, mut one) = ([0f32], [0f32], [0f32]);
                    lanes((&[*x], &[*y], &mut one), w, (&mut s, &mut p), element);
                    (*g, sum[0], present[0]) = (one[0], sum[0] + s[0], present[0] + p[0]);
                }
            },
        );
        let total = |v: [f32; LANES]| v.iter().map(|s| f64::from(*s)).sum::<f64>();
        (f64::from(w) * total(sum), f64::from(w) * total(present))
    };
    let add = |a: (f64, f64), b: (f64, f64)| (a.0 + b.0, a.1 + b.1);
    let rows = x.chunks(per_sample).zip(y.chunks(per_sample));
    if x.len() >= super::par::MIN_ELEMENTS / 8 {
        let rows = x.par_chunks(per_sample).zip(y.par_chunks(per_sample));
        rows.zip(grad.par_chunks_mut(per_sample))
            .enumerate()
            .map(sample)
            .reduce(|| (0.0, 0.0), add)
    } else {
        rows.zip(grad.chunks_mut(per_sample))
            .enumerate()
            .map(sample)
            .fold((0.0, 0.0), add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::LossKind;
    use crate::train::loss::{head_loss, Reduction};
    use candle_core::{Device, Tensor, Var};
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// The candle path's loss and gradient (autograd through
    /// `train::loss::head_loss`) against ours, per kind and reduction, with
    /// missing labels, a sample mask that drops a sample, and spatial
    /// cross-entropy ([B, K, H, W] logits).
    #[test]
    fn fused_losses_equal_the_candle_path() {
        let dev = Device::Cpu;
        let mut rng = StdRng::seed_from_u64(3);
        let kinds = [
            (LossKind::CrossEntropy, Kind::CrossEntropy),
            (LossKind::BinaryCrossEntropy, Kind::BinaryCrossEntropy),
            (LossKind::Mse, Kind::Mse),
            (LossKind::Mae, Kind::Mae),
            (LossKind::Huber, Kind::Huber),
        ];
        for (ir_kind, kind) in kinds {
            let shapes: &[&[usize]] = match kind {
                Kind::CrossEntropy => &[&[6, 5], &[6, 4, 3, 2]],
                // 40 000 values: the parallel split too.
                _ => &[&[6, 3], &[6, 2, 3, 4], &[8, 5000]],
            };
            for dims in shapes {
                let n: usize = dims.iter().product();
                let x: Vec<f32> = (0..n).map(|_| rng.random_range(-3.0..3.0)).collect();
                let b = dims[0];
                let (labels, label) = if kind == Kind::CrossEntropy {
                    let mut ldims = vec![b];
                    ldims.extend(&dims[2..]);
                    let k = dims[1] as i64;
                    let ids: Vec<i64> = (0..n / dims[1])
                        .map(|i| {
                            if i % 5 == 1 {
                                -1
                            } else {
                                rng.random_range(0..k)
                            }
                        })
                        .collect();
                    let t = Tensor::from_slice(&ids, ldims, &dev).unwrap();
                    (Labels::Classes(ids), t)
                } else {
                    let y: Vec<f32> = (0..n)
                        .map(|i| {
                            if i % 7 == 2 {
                                f32::NAN
                            } else if kind == Kind::BinaryCrossEntropy {
                                rng.random_range(0.0..1.0)
                            } else {
                                rng.random_range(-3.0..3.0)
                            }
                        })
                        .collect();
                    let t = Tensor::from_slice(&y, *dims, &dev).unwrap();
                    (Labels::Targets(y), t)
                };
                let mask: Vec<f32> = (0..b).map(|i| if i == 1 { 0.0 } else { 1.0 }).collect();
                for (sample, present_only) in
                    [(None, false), (Some(&mask), false), (Some(&mask), true)]
                {
                    let v =
                        Var::from_tensor(&Tensor::from_slice(&x, *dims, &dev).unwrap()).unwrap();
                    let st = sample.map(|m| Tensor::from_slice(m, b, &dev).unwrap());
                    let red = if present_only {
                        Reduction::Present
                    } else {
                        Reduction::Batch
                    };
                    let want = head_loss(ir_kind, v.as_tensor(), &label, st.as_ref(), red).unwrap();
                    let want_grad = want.backward().unwrap();
                    let want_grad: Vec<f32> = want_grad
                        .get(v.as_tensor())
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    let want = want.to_scalar::<f32>().unwrap();
                    let mut grad = vec![];
                    let got = head(
                        kind,
                        (&x, dims),
                        &labels,
                        sample.map(|m| m.as_slice()),
                        present_only,
                        &mut grad,
                    )
                    .unwrap();
                    let what = format!(
                        "{kind:?} {dims:?} mask {} present {present_only}",
                        sample.is_some()
                    );
                    assert!(
                        (got.loss - want).abs() <= 1e-5 * want.abs().max(1.0),
                        "{what}: loss {} vs {want}",
                        got.loss
                    );
                    let scale = want_grad.iter().fold(0f32, |m, g| m.max(g.abs()));
                    assert!(scale > 0.0, "{what}");
                    for (i, (a, w)) in grad.iter().zip(&want_grad).enumerate() {
                        assert!((a - w).abs() <= 1e-5 * scale, "{what}: dx[{i}] {a} vs {w}");
                    }
                    let dropped =
                        sample.is_some() && grad[n / b..2 * n / b].iter().any(|g| *g != 0.0);
                    assert!(!dropped, "{what}: the masked sample has a gradient");
                }
            }
        }
    }

    #[test]
    fn fused_losses_refuse_mismatched_labels() {
        let mut g = vec![];
        let x = [0.0f32; 6];
        let short = Labels::Targets(vec![0.0; 5]);
        let e = head(Kind::Mse, (&x, &[2, 3]), &short, None, false, &mut g).unwrap_err();
        assert!(e.contains("5 targets"), "{e}");
        let ids = Labels::Classes(vec![0; 3]);
        let e = head(Kind::CrossEntropy, (&x, &[2, 3]), &ids, None, false, &mut g).unwrap_err();
        assert!(e.contains("3 class ids"), "{e}");
        let e = head(
            Kind::Mse,
            (&x, &[2, 3]),
            &Labels::Targets(vec![0.0; 6]),
            Some(&[1.0]),
            false,
            &mut g,
        )
        .unwrap_err();
        assert!(e.contains("sample mask"), "{e}");
    }
}
