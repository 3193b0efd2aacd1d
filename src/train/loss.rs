//! Per-head losses from logits, numerically stable, with missing labels masked.

use crate::ir::LossKind;
use candle_core::{DType, Result, Tensor, D};

/// How a head's element losses become one number when labels are missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// Keras's `sum_over_batch_size` with zero sample weights: the sum over
    /// present labels divided by all elements. Used for training, so a head
    /// with half its labels missing pulls on shared layers half as hard.
    Batch,
    /// The mean over present labels only: the loss reported by evaluation.
    Present,
}

/// Σ l·m over `reduction`'s count; exactly 0 when no label is present.
pub fn masked_mean(l: &Tensor, m: &Tensor, reduction: Reduction) -> Result<Tensor> {
    let count = match reduction {
        Reduction::Batch => Tensor::new(m.elem_count().max(1) as f32, m.device())?,
        Reduction::Present => m.sum_all()?.maximum(1.0)?,
    };
    (l * m)?.sum_all()?.div(&count)
}

/// Element-wise loss and mask for one head. `label` is i64 class ids (−1 =
/// missing) for cross-entropy, else f32 (NaN = missing). `sample_mask` [B]
/// drops whole samples.
pub fn head_loss(
    kind: LossKind,
    logits: &Tensor,
    label: &Tensor,
    sample_mask: Option<&Tensor>,
    reduction: Reduction,
) -> Result<Tensor> {
    let (l, m) = elements(kind, logits, label, sample_mask)?;
    masked_mean(&l, &m, reduction)
}

/// [`head_loss`] and the number of labels present (0: the head has none in
/// this batch, so gradient methods leave it out).
pub fn head_loss_counted(
    kind: LossKind,
    logits: &Tensor,
    label: &Tensor,
    sample_mask: Option<&Tensor>,
    reduction: Reduction,
) -> Result<(Tensor, f32)> {
    let (l, m) = elements(kind, logits, label, sample_mask)?;
    let count = m.sum_all()?.to_scalar::<f32>()?;
    Ok((masked_mean(&l, &m, reduction)?, count))
}

/// Element losses and the 0/1 mask of present labels.
fn elements(
    kind: LossKind,
    logits: &Tensor,
    label: &Tensor,
    sample_mask: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let (l, m) = match kind {
        LossKind::CrossEntropy => {
            let k = logits.dim(1)?;
            // [B, K, ...] → [B·…, K]
            let flat = if logits.rank() == 2 {
                logits.clone()
            } else {
                logits.flatten_from(2)?.transpose(1, 2)?.reshape(((), k))?
            };
            let y = label.flatten_all()?.to_dtype(DType::I64)?;
            let valid = y.ge(0i64)?.to_dtype(DType::F32)?;
            let safe = y
                .maximum(0i64)?
                .minimum((k - 1) as i64)?
                .to_dtype(DType::U32)?;
            let logp = candle_nn::ops::log_softmax(&flat, D::Minus1)?;
            let nll = logp.gather(&safe.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
            (nll.reshape(label.dims())?, valid.reshape(label.dims())?)
        }
        _ => {
            let y = label.to_dtype(DType::F32)?;
            let valid = y.eq(&y)?.to_dtype(DType::F32)?; // NaN ≠ NaN
            let y = valid.where_cond_f(&y)?;
            let l = match kind {
                // max(x,0) − x·y + log(1 + e^{−|x|})
                LossKind::BinaryCrossEntropy => {
                    ((logits.relu()? - (logits * &y)?)?
                        + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?
                }
                LossKind::Mse => (logits - &y)?.sqr()?,
                LossKind::Mae => (logits - &y)?.abs()?,
                _ => {
                    // Huber with delta 1 (Keras default).
                    let a = (logits - &y)?.abs()?;
                    let quad = a.minimum(1.0)?;
                    ((quad.sqr()? * 0.5)? + (a - &quad)?)?
                }
            };
            (l, valid)
        }
    };
    let m = match sample_mask {
        Some(s) => {
            let mut shape = vec![s.dim(0)?];
            shape.extend(std::iter::repeat_n(1, m.rank() - 1));
            m.broadcast_mul(&s.to_dtype(DType::F32)?.reshape(shape)?)?
        }
        None => m,
    };
    Ok((l, m))
}

trait WhereF {
    fn where_cond_f(&self, y: &Tensor) -> Result<Tensor>;
}

impl WhereF for Tensor {
    /// y where self is 1, else 0 (NaN-safe: no multiplication by NaN).
    fn where_cond_f(&self, y: &Tensor) -> Result<Tensor> {
        self.to_dtype(DType::U8)?.where_cond(y, &y.zeros_like()?)
    }
}
