//! What `mtl check MODEL --data D` reports once the data has loaded (loading
//! has already checked every cell, file and decode, with its row and
//! column): per input, the tensor the model will be fed; per head, how many
//! labels are present and missing, which classes occur against the head's
//! width, the range of the targets — and what makes a head untrainable.

use super::Dataset;
use crate::ir::LossKind;
use crate::signature::Signature;
use candle_core::{DType, Tensor};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Audit {
    pub samples: usize,
    pub inputs: Vec<InputAudit>,
    pub heads: Vec<HeadAudit>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct InputAudit {
    pub name: String,
    pub dtype: String,
    /// Per sample.
    pub shape: Vec<usize>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct HeadAudit {
    pub name: String,
    pub loss: String,
    pub label: String,
    /// Label values present and missing (per pixel for masks).
    pub present: u64,
    pub missing: u64,
    /// Cross-entropy heads: samples per class id, as wide as the head.
    pub class_counts: Vec<u64>,
    /// Other heads: the smallest and largest target.
    pub range: Option<(f64, f64)>,
    /// What makes the head untrainable or its labels wrong (errors).
    pub problems: Vec<String>,
}

impl Audit {
    pub fn has_errors(&self) -> bool {
        self.heads.iter().any(|h| !h.problems.is_empty())
    }
}

/// Rows read per pass: bounded memory whatever the data set's size.
const CHUNK: usize = 4096;

pub fn audit(ds: &Dataset, sig: &Signature) -> Result<Audit, String> {
    let mut heads: Vec<HeadAudit> = sig
        .heads
        .iter()
        .map(|h| HeadAudit {
            name: h.name.clone(),
            loss: h.loss.name().to_string(),
            label: h.label.clone(),
            present: 0,
            missing: 0,
            class_counts: vec![0; h.classes],
            range: None,
            problems: vec![],
        })
        .collect();
    let mut inputs = vec![];
    let mut start = 0;
    while start < ds.n {
        let idx: Vec<usize> = (start..(start + CHUNK).min(ds.n)).collect();
        let rows = |name: &str, idx: &[usize]| ds.rows_of(name, idx).map_err(|e| e.to_string());
        if start == 0 {
            // The inputs' tensors from one row: only the labels are read whole.
            for i in &sig.inputs {
                if let Some(t) = rows(&i.name, &idx[..1])? {
                    inputs.push(InputAudit {
                        name: i.name.clone(),
                        dtype: format!("{:?}", t.dtype()).to_lowercase(),
                        shape: t.dims()[1..].to_vec(),
                    });
                }
            }
        }
        for (h, a) in sig.heads.iter().zip(&mut heads) {
            let Some(t) = rows(&h.label, &idx)? else {
                if start == 0 {
                    a.problems
                        .push(format!("no column or tensor `{}` for its labels", h.label));
                }
                continue;
            };
            count(&t, h.loss, a).map_err(|e| format!("labels of head `{}`: {e}", h.name))?;
        }
        start += CHUNK;
    }
    for (h, a) in sig.heads.iter().zip(&mut heads) {
        if a.present == 0 && a.problems.is_empty() {
            a.problems
                .push("every label is missing: the head cannot learn".into());
        }
        if h.loss == LossKind::BinaryCrossEntropy {
            if let Some((lo, hi)) = a.range.filter(|(lo, hi)| *lo < 0.0 || *hi > 1.0) {
                a.problems.push(format!(
                    "binary targets must lie in [0, 1]; found [{lo}, {hi}]"
                ));
            }
        }
    }
    Ok(Audit {
        samples: ds.n,
        inputs,
        heads,
    })
}

/// Adds one chunk's labels to `a`.
fn count(t: &Tensor, loss: LossKind, a: &mut HeadAudit) -> candle_core::Result<()> {
    if loss == LossKind::CrossEntropy {
        // Class ids; −1 is a missing label.
        let ids = t.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
        let k = a.class_counts.len();
        let mut outside = None;
        for id in ids {
            match usize::try_from(id) {
                Err(_) => a.missing += 1,
                Ok(c) => {
                    a.present += 1;
                    match a.class_counts.get_mut(c) {
                        Some(n) => *n += 1,
                        None if k > 0 => outside = outside.max(Some(c)),
                        None => {}
                    }
                }
            }
        }
        if let Some(c) = outside {
            let msg = format!(
                "class id {c} is outside the head's {k} logits: widen its `dense({k})` or fix the labels"
            );
            if !a.problems.contains(&msg) {
                a.problems.push(msg);
            }
        }
        return Ok(());
    }
    // Targets; NaN is a missing label.
    for v in t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()? {
        if v.is_nan() {
            a.missing += 1;
        } else {
            a.present += 1;
            a.range = Some(match a.range {
                Some((lo, hi)) => (lo.min(v), hi.max(v)),
                None => (v, v),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::HeadSig;
    use candle_core::Device;
    use std::collections::HashMap;

    fn head(name: &str, loss: LossKind, classes: usize) -> HeadSig {
        HeadSig {
            name: name.into(),
            loss,
            label: name.into(),
            label_type: None,
            classes,
        }
    }

    #[test]
    fn counts_classes_missing_labels_and_ranges_and_names_problems() {
        let dev = Device::Cpu;
        let mut t: HashMap<String, Tensor> = HashMap::new();
        t.insert("x".into(), Tensor::zeros((5, 2), DType::F32, &dev).unwrap());
        t.insert("c".into(), Tensor::new(&[0i64, 2, -1, 2, 5], &dev).unwrap());
        t.insert(
            "r".into(),
            Tensor::new(&[[1f32], [f32::NAN], [-3.0], [2.5], [0.0]], &dev).unwrap(),
        );
        t.insert(
            "b".into(),
            Tensor::new(&[[0f32], [1.0], [2.0], [1.0], [0.0]], &dev).unwrap(),
        );
        t.insert("gone".into(), Tensor::new(&[[f32::NAN]; 5], &dev).unwrap());
        let ds = Dataset::from_tensors(t, "t").unwrap();
        let sig = Signature {
            inputs: vec![],
            heads: vec![
                head("c", LossKind::CrossEntropy, 3),
                head("r", LossKind::Mse, 0),
                head("b", LossKind::BinaryCrossEntropy, 0),
                head("gone", LossKind::Mse, 0),
            ],
        };
        let a = audit(&ds, &sig).unwrap();
        let [c, r, b, gone] = &a.heads[..] else {
            panic!()
        };
        assert_eq!(
            (c.present, c.missing, c.class_counts.clone()),
            (4, 1, vec![1, 0, 2])
        );
        assert!(c.problems[0].contains("class id 5"), "{:?}", c.problems);
        assert_eq!((r.present, r.missing, r.range), (4, 1, Some((-3.0, 2.5))));
        assert!(r.problems.is_empty());
        assert!(b.problems[0].contains("[0, 1]"), "{:?}", b.problems);
        assert!(gone.problems[0].contains("every label is missing"));
        assert!(a.has_errors());
    }
}
