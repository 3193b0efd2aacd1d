//! Metrics on whole data sets, computed on the host from probabilities.

use crate::ir::{LossKind, Metric};

/// Predictions and labels of one head, flattened; `valid` marks present labels.
#[derive(Debug, Clone, Default)]
pub struct HeadData {
    /// Probabilities (classification) or values (regression), per label element;
    /// for cross-entropy `k` class probabilities per label element.
    pub pred: Vec<f32>,
    pub label: Vec<f32>,
    pub valid: Vec<bool>,
    pub k: usize,
}

pub fn compute(m: Metric, loss: LossKind, d: &HeadData) -> f64 {
    let idx: Vec<usize> = (0..d.label.len()).filter(|i| d.valid[*i]).collect();
    if idx.is_empty() {
        return f64::NAN;
    }
    let n = idx.len() as f64;
    let class = |i: usize| -> usize {
        let p = &d.pred[i * d.k..(i + 1) * d.k];
        p.iter()
            .enumerate()
            .fold(
                (0, f32::MIN),
                |b, (j, v)| if *v > b.1 { (j, *v) } else { b },
            )
            .0
    };
    let binary = |i: usize| -> bool { d.pred[i] >= 0.5 };
    match (m, loss) {
        (Metric::Accuracy, LossKind::CrossEntropy) => {
            idx.iter()
                .filter(|&&i| class(i) == d.label[i] as usize)
                .count() as f64
                / n
        }
        (Metric::Accuracy, _) => {
            idx.iter()
                .filter(|&&i| binary(i) == (d.label[i] >= 0.5))
                .count() as f64
                / n
        }
        (Metric::TopK(k), _) => {
            idx.iter()
                .filter(|&&i| {
                    let p = &d.pred[i * d.k..(i + 1) * d.k];
                    let y = d.label[i] as usize;
                    p.iter().filter(|v| **v > p[y.min(d.k - 1)]).count() < k
                })
                .count() as f64
                / n
        }
        (Metric::F1, LossKind::CrossEntropy) => {
            // Macro F1 over classes present in labels or predictions.
            let mut f1s = vec![];
            for c in 0..d.k {
                let tp = idx
                    .iter()
                    .filter(|&&i| class(i) == c && d.label[i] as usize == c)
                    .count() as f64;
                let fp = idx
                    .iter()
                    .filter(|&&i| class(i) == c && d.label[i] as usize != c)
                    .count() as f64;
                let fneg = idx
                    .iter()
                    .filter(|&&i| class(i) != c && d.label[i] as usize == c)
                    .count() as f64;
                if tp + fp + fneg > 0.0 {
                    f1s.push(2.0 * tp / (2.0 * tp + fp + fneg));
                }
            }
            f1s.iter().sum::<f64>() / f1s.len().max(1) as f64
        }
        (Metric::F1, _) => {
            let tp = idx
                .iter()
                .filter(|&&i| binary(i) && d.label[i] >= 0.5)
                .count() as f64;
            let fp = idx
                .iter()
                .filter(|&&i| binary(i) && d.label[i] < 0.5)
                .count() as f64;
            let fneg = idx
                .iter()
                .filter(|&&i| !binary(i) && d.label[i] >= 0.5)
                .count() as f64;
            if tp + fp + fneg == 0.0 {
                1.0
            } else {
                2.0 * tp / (2.0 * tp + fp + fneg)
            }
        }
        (Metric::Auc, _) => {
            // Rank statistic (Mann-Whitney U), ties averaged.
            let mut v: Vec<(f32, bool)> = idx
                .iter()
                .map(|&i| (d.pred[i], d.label[i] >= 0.5))
                .collect();
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
        (Metric::Iou, LossKind::CrossEntropy) => {
            let mut ious = vec![];
            for c in 0..d.k {
                let inter = idx
                    .iter()
                    .filter(|&&i| class(i) == c && d.label[i] as usize == c)
                    .count() as f64;
                let union = idx
                    .iter()
                    .filter(|&&i| class(i) == c || d.label[i] as usize == c)
                    .count() as f64;
                if union > 0.0 {
                    ious.push(inter / union);
                }
            }
            ious.iter().sum::<f64>() / ious.len().max(1) as f64
        }
        (Metric::Iou, _) => {
            let inter = idx
                .iter()
                .filter(|&&i| binary(i) && d.label[i] >= 0.5)
                .count() as f64;
            let union = idx
                .iter()
                .filter(|&&i| binary(i) || d.label[i] >= 0.5)
                .count() as f64;
            if union == 0.0 {
                1.0
            } else {
                inter / union
            }
        }
        (Metric::Mae, _) => {
            idx.iter()
                .map(|&i| (d.pred[i] - d.label[i]).abs() as f64)
                .sum::<f64>()
                / n
        }
        (Metric::Rmse, _) => (idx
            .iter()
            .map(|&i| ((d.pred[i] - d.label[i]) as f64).powi(2))
            .sum::<f64>()
            / n)
            .sqrt(),
    }
}
