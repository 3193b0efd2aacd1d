//! Metrics over whole data sets, accumulated batch by batch on the host from
//! probabilities. Running counts (a confusion matrix, top-k hits, error sums)
//! keep memory independent of the data set's size; only AUC, a rank
//! statistic, keeps its (score, label) pairs, and only for heads that ask for it.

use crate::ir::{LossKind, Metric};
use std::borrow::Cow;

/// A head's predictions as [`HeadStats::add`] takes them, from its logits
/// `x` of shape `dims`, and the classes per label element: softmax over the
/// classes (axis 1) laid out [B·S…, K] for cross-entropy, the sigmoid for
/// binary cross-entropy, the values themselves otherwise. The formulas of
/// `lower::head_output`, on the host.
pub fn probabilities<'a>(loss: LossKind, x: &'a [f32], dims: &[usize]) -> (Cow<'a, [f32]>, usize) {
    match loss {
        LossKind::CrossEntropy => {
            let k = dims.get(1).copied().unwrap_or(1).max(1);
            let s: usize = dims.get(2..).map_or(1, |d| d.iter().product());
            let mut out = vec![0f32; x.len()];
            for (xb, ob) in x.chunks_exact(k * s).zip(out.chunks_exact_mut(k * s)) {
                for (p, o) in ob.chunks_exact_mut(k).enumerate() {
                    let at = |c: usize| xb[c * s + p];
                    let max = (0..k).map(at).fold(f32::NEG_INFINITY, f32::max);
                    for (c, o) in o.iter_mut().enumerate() {
                        *o = (at(c) - max).exp();
                    }
                    let sum: f32 = o.iter().sum();
                    o.iter_mut().for_each(|v| *v /= sum);
                }
            }
            (Cow::Owned(out), k)
        }
        LossKind::BinaryCrossEntropy => {
            let sig = x.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
            (Cow::Owned(sig), 1)
        }
        _ => (Cow::Borrowed(x), 1),
    }
}

/// What one head's metrics need, summed over the batches seen so far.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HeadStats {
    ce: bool,
    /// Classes per label element (cross-entropy), else 1; set by the first batch.
    k: usize,
    /// Present label elements.
    n: u64,
    /// `confusion[label * K + predicted]`, K = k (cross-entropy) or 2 (binary).
    confusion: Vec<u64>,
    /// Hits of each requested top-k.
    topk: Vec<(usize, u64)>,
    abs_err: f64,
    sq_err: f64,
    auc: Option<Vec<(f32, bool)>>,
}

impl HeadStats {
    pub fn new(loss: LossKind, metrics: &[Metric]) -> Self {
        HeadStats {
            ce: loss == LossKind::CrossEntropy,
            k: 0,
            n: 0,
            confusion: vec![],
            topk: metrics
                .iter()
                .filter_map(|m| match m {
                    Metric::TopK(k) => Some((*k, 0)),
                    _ => None,
                })
                .collect(),
            abs_err: 0.0,
            sq_err: 0.0,
            auc: metrics.contains(&Metric::Auc).then(Vec::new),
        }
    }

    /// Adds one batch: `pred` holds `k` probabilities per label element
    /// (cross-entropy) or one value; `keep(i)` says whether label element `i`
    /// is present and unmasked.
    pub fn add(&mut self, pred: &[f32], k: usize, label: &[f32], keep: impl Fn(usize) -> bool) {
        let k = if self.ce { k.max(1) } else { 1 };
        let side = if self.ce { k } else { 2 };
        if self.confusion.len() != side * side {
            self.k = k;
            self.confusion = vec![0; side * side];
        }
        for (i, &y) in label.iter().enumerate() {
            if !keep(i) {
                continue;
            }
            self.n += 1;
            if self.ce {
                let p = &pred[i * k..(i + 1) * k];
                let yc = (y.max(0.0) as usize).min(k - 1);
                let c = argmax(p);
                self.confusion[yc * k + c] += 1;
                for (top, hits) in &mut self.topk {
                    if p.iter().filter(|v| **v > p[yc]).count() < *top {
                        *hits += 1;
                    }
                }
            } else {
                let (yb, pb) = (y >= 0.5, pred[i] >= 0.5);
                self.confusion[yb as usize * 2 + pb as usize] += 1;
                let e = (pred[i] - y) as f64;
                self.abs_err += e.abs();
                self.sq_err += e * e;
                if let Some(v) = &mut self.auc {
                    v.push((pred[i], yb));
                }
            }
        }
    }

    /// Adds the counts of another part of the same data (another rank's
    /// rows in data-parallel training).
    pub fn merge(&mut self, o: &HeadStats) {
        if o.confusion.is_empty() {
            return;
        }
        if self.confusion.is_empty() {
            self.k = o.k;
            self.confusion = vec![0; o.confusion.len()];
        }
        self.n += o.n;
        for (a, b) in self.confusion.iter_mut().zip(&o.confusion) {
            *a += b;
        }
        for ((_, a), (_, b)) in self.topk.iter_mut().zip(&o.topk) {
            *a += b;
        }
        self.abs_err += o.abs_err;
        self.sq_err += o.sq_err;
        if let (Some(a), Some(b)) = (&mut self.auc, &o.auc) {
            a.extend_from_slice(b);
        }
    }

    pub fn value(&self, m: Metric) -> f64 {
        if self.n == 0 {
            return f64::NAN;
        }
        let n = self.n as f64;
        let side = if self.ce { self.k } else { 2 };
        let at = |y: usize, p: usize| self.confusion[y * side + p] as f64;
        let row = |y: usize| (0..side).map(|p| at(y, p)).sum::<f64>();
        let col = |p: usize| (0..side).map(|y| at(y, p)).sum::<f64>();
        // Per class: true positives, false positives, false negatives.
        let counts = |c: usize| (at(c, c), col(c) - at(c, c), row(c) - at(c, c));
        match m {
            Metric::Accuracy => (0..side).map(|c| at(c, c)).sum::<f64>() / n,
            Metric::TopK(k) => self
                .topk
                .iter()
                .find(|t| t.0 == k)
                .map_or(f64::NAN, |t| t.1 as f64 / n),
            Metric::F1 if self.ce => {
                // Macro F1 over classes present in labels or predictions.
                mean((0..side).filter_map(|c| {
                    let (tp, fp, fneg) = counts(c);
                    (tp + fp + fneg > 0.0).then(|| 2.0 * tp / (2.0 * tp + fp + fneg))
                }))
            }
            Metric::F1 => {
                let (tp, fp, fneg) = counts(1);
                if tp + fp + fneg == 0.0 {
                    1.0
                } else {
                    2.0 * tp / (2.0 * tp + fp + fneg)
                }
            }
            Metric::Iou if self.ce => mean((0..side).filter_map(|c| {
                let (tp, fp, fneg) = counts(c);
                let union = tp + fp + fneg;
                (union > 0.0).then(|| tp / union)
            })),
            Metric::Iou => {
                let (tp, fp, fneg) = counts(1);
                let union = tp + fp + fneg;
                if union == 0.0 {
                    1.0
                } else {
                    tp / union
                }
            }
            Metric::Mae => self.abs_err / n,
            Metric::Rmse => (self.sq_err / n).sqrt(),
            Metric::Auc => self.auc.as_deref().map_or(f64::NAN, auc),
        }
    }
}

fn argmax(p: &[f32]) -> usize {
    p.iter()
        .enumerate()
        .fold(
            (0, f32::MIN),
            |b, (j, v)| if *v > b.1 { (j, *v) } else { b },
        )
        .0
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, c) = v.fold((0.0, 0usize), |(s, c), x| (s + x, c + 1));
    s / c.max(1) as f64
}

/// Rank statistic (Mann-Whitney U), ties averaged.
fn auc(pairs: &[(f32, bool)]) -> f64 {
    let mut v = pairs.to_vec();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let avg = (i + j + 1) as f64 / 2.0;
        rank_sum += v[i..j].iter().filter(|x| x.1).count() as f64 * avg;
        i = j;
    }
    let pos = v.iter().filter(|x| x.1).count() as f64;
    let neg = v.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        f64::NAN
    } else {
        (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host probabilities equal candle's `head_output`, laid out as the
    /// metrics read them ([B·S, K] for cross-entropy over positions).
    #[test]
    fn probabilities_equal_the_head_outputs() {
        use candle_core::{Device, Tensor};
        let dev = Device::Cpu;
        for (loss, dims) in [
            (LossKind::CrossEntropy, vec![4, 5]),
            (LossKind::CrossEntropy, vec![3, 4, 2, 3]),
            (LossKind::BinaryCrossEntropy, vec![3, 1, 4, 4]),
            (LossKind::Mse, vec![5, 2]),
        ] {
            let t = Tensor::randn(0f32, 3.0, dims.as_slice(), &dev).unwrap();
            let x: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let (got, k) = probabilities(loss, &x, &dims);
            let want = crate::lower::head_output(loss, &t).unwrap();
            let want = if loss == LossKind::CrossEntropy && dims.len() > 2 {
                let w = want.flatten_from(2).unwrap().transpose(1, 2).unwrap();
                w.reshape(((), dims[1])).unwrap()
            } else {
                want
            };
            let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(
                k,
                if loss == LossKind::CrossEntropy {
                    dims[1]
                } else {
                    1
                }
            );
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() < 1e-6, "{loss:?} {dims:?} [{i}]: {a} vs {b}");
            }
        }
    }

    #[test]
    fn metrics_from_running_counts_match_hand_counts() {
        // 3 classes; labels 0, 1, 2, 2, missing; predictions 0, 2, 2, 1, 0.
        let mut s = HeadStats::new(
            LossKind::CrossEntropy,
            &[Metric::Accuracy, Metric::F1, Metric::Iou, Metric::TopK(2)],
        );
        let pred = [
            0.8, 0.1, 0.1, /* */ 0.1, 0.3, 0.6, /* */ 0.2, 0.2, 0.6, /* */ 0.1, 0.5,
            0.4, /* */ 0.9, 0.05, 0.05,
        ];
        let label = [0.0, 1.0, 2.0, 2.0, -1.0];
        // Two batches give what one does.
        s.add(&pred[..6], 3, &label[..2], |i| label[i] >= 0.0);
        s.add(&pred[6..], 3, &label[2..], |i| label[2 + i] >= 0.0);
        assert_eq!(s.value(Metric::Accuracy), 2.0 / 4.0);
        // Class 0: tp 1; class 1: fp 1, fn 1; class 2: tp 1, fp 1, fn 1.
        let f1 = (1.0 + 0.0 + 2.0 / 4.0) / 3.0;
        assert!((s.value(Metric::F1) - f1).abs() < 1e-12);
        let iou = (1.0 + 0.0 + 1.0 / 3.0) / 3.0;
        assert!((s.value(Metric::Iou) - iou).abs() < 1e-12);
        // Every present label is within its sample's two highest scores.
        assert_eq!(s.value(Metric::TopK(2)), 1.0);

        let mut b = HeadStats::new(
            LossKind::BinaryCrossEntropy,
            &[Metric::Auc, Metric::Mae, Metric::Accuracy],
        );
        b.add(&[0.9, 0.2, 0.6, 0.4], 1, &[1.0, 0.0, 0.0, 1.0], |_| true);
        assert_eq!(b.value(Metric::Accuracy), 0.5);
        assert!((b.value(Metric::Mae) - (0.1 + 0.2 + 0.6 + 0.6) / 4.0).abs() < 1e-6);
        // Positives 0.9, 0.4 vs negatives 0.2, 0.6: 3 of 4 pairs ordered.
        assert_eq!(b.value(Metric::Auc), 0.75);
        assert!(HeadStats::new(LossKind::Mse, &[Metric::Mae])
            .value(Metric::Mae)
            .is_nan());
    }

    #[test]
    fn merged_parts_give_the_whole_data_sets_metrics() {
        let metrics = [Metric::Auc, Metric::Mae, Metric::Accuracy, Metric::F1];
        let (pred, label) = ([0.9, 0.2, 0.6, 0.4, 0.7], [1.0, 0.0, 0.0, 1.0, 1.0]);
        let mut whole = HeadStats::new(LossKind::BinaryCrossEntropy, &metrics);
        whole.add(&pred, 1, &label, |_| true);
        let mut a = HeadStats::new(LossKind::BinaryCrossEntropy, &metrics);
        let mut b = a.clone();
        let empty = a.clone();
        a.add(&pred[..2], 1, &label[..2], |_| true);
        b.add(&pred[2..], 1, &label[2..], |_| true);
        // A part with no rows (a rank that saw no labels) changes nothing.
        a.merge(&empty);
        let mut c = empty.clone();
        c.merge(&a);
        c.merge(&b);
        for m in metrics {
            assert_eq!(c.value(m), whole.value(m), "{m:?}");
        }
    }
}
