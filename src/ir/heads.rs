//! Heads and auxiliary losses against the typed graph: each head's label
//! type (class ids for cross-entropy, the logits' shape otherwise), whether
//! its metrics suit its loss, and whether an auxiliary loss compares values
//! of one shape.

use super::ops::cx::operand_labels;
use super::*;
use crate::diagnostics::Diagnostic;

/// Label types and metric checks for each head; shape checks for aux losses.
pub fn check(g: &mut Graph, errs: &mut Vec<Diagnostic>) {
    for hi in 0..g.heads.len() {
        let h = g.heads[hi].clone();
        let Some(t) = g.g[h.node].ty.clone() else {
            continue;
        };
        let vspan = g.g[h.node].span;
        let label = match h.loss {
            LossKind::CrossEntropy => {
                if t.rank() == 0 || t.shape[0] == Dim::Fixed(1) {
                    errs.push(
                        Diagnostic::error("mtl::head-shape", format!("head `{}`: cross_entropy needs at least two classes, found logits of shape {}", h.name, shape_str(&t)))
                            .label(vspan, "one logit per sample")
                            .label(h.span, "head declared here")
                            .help("for a yes/no task use `loss: binary_cross_entropy` with `dense(1)`"),
                    );
                    continue;
                }
                if t.rank() == 2 {
                    errs.push(
                        Diagnostic::error("mtl::head-shape", format!("head `{}`: cross_entropy logits must be [K] or per-pixel [K, H, W], found {}", h.name, shape_str(&t)))
                            .label(vspan, "logits here")
                            .help("pool or flatten the value first, then `dense(K)`"),
                    );
                    continue;
                }
                Type {
                    dtype: DType::I64,
                    shape: t.shape[1..].to_vec(),
                }
            }
            _ => t.clone(),
        };
        g.heads[hi].label_type = Some(label);
        if h.metrics.is_empty() {
            // A head that declares no metric gets its loss's usual one, as
            // Keras users expect to see something beside the loss.
            g.heads[hi].metrics = vec![default_metric(h.loss, &t)];
            g.heads[hi].metric_spans = vec![h.span];
        }
        for (m, span) in h.metrics.iter().zip(&h.metric_spans) {
            // top_k on a head of K ≤ k classes is always 1: say that, not "use top_k".
            let classes = (h.loss == LossKind::CrossEntropy && t.rank() == 1)
                .then(|| t.shape[0].fixed())
                .flatten();
            if let (Metric::TopK(k), Some(c)) = (m, classes) {
                if *k >= c {
                    errs.push(
                        Diagnostic::error(
                            "mtl::metric-loss",
                            format!("metric `top_k({k})` on head `{}`, which has {c} classes: it would always be 1", h.name),
                        )
                        .label(*span, format!("k must be below {c}"))
                        .help(format!("use `top_k(k)` with k < {c}, or `accuracy` (top_k(1))")),
                    );
                    continue;
                }
            }
            let ok = match m {
                Metric::Accuracy | Metric::F1 => h.loss.is_classification(),
                Metric::TopK(k) => {
                    h.loss == LossKind::CrossEntropy
                        && t.rank() == 1
                        && t.shape[0].fixed().is_none_or(|c| *k < c)
                }
                Metric::Auc => h.loss == LossKind::BinaryCrossEntropy,
                Metric::Iou => {
                    h.loss == LossKind::BinaryCrossEntropy
                        || (h.loss == LossKind::CrossEntropy && t.rank() == 3)
                }
                Metric::Mae | Metric::Rmse => !h.loss.is_classification(),
            };
            if !ok {
                errs.push(
                    Diagnostic::error(
                        "mtl::metric-loss",
                        format!(
                            "metric `{}` does not suit head `{}` with loss {}",
                            m.name(),
                            h.name,
                            h.loss.name()
                        ),
                    )
                    .label(*span, "this metric")
                    .help(metric_help(h.loss)),
                );
            }
        }
    }
    for l in g.losses.clone() {
        let tys: Option<Vec<Type>> = l.operands.iter().map(|o| g.g[*o].ty.clone()).collect();
        let Some(tys) = tys else { continue };
        let contrastive = matches!(l.kind, crate::ir::AuxKind::Contrastive { .. });
        let (message, help) = if contrastive && tys[0].rank() != 1 {
            (
                "contrasts vectors: both values must be [D]",
                "pool first, e.g. `global_avg_pool(x)`, then `dense(D)` on each side",
            )
        } else if tys[0] != tys[1] {
            (
                "compares values of different shapes",
                "project one of them with `dense` or a 1×1 conv",
            )
        } else {
            continue;
        };
        let d = Diagnostic::error("mtl::fusion-shape", format!("loss `{}` {message}", l.name))
            .label(l.span, "here");
        errs.push(operand_labels(g, &l.operands, &tys, d).help(help));
    }
}

/// Accuracy for classification, IoU for masks (per-position outputs), MAE for regression.
fn default_metric(loss: LossKind, logits: &Type) -> Metric {
    match loss {
        LossKind::CrossEntropy if logits.rank() >= 3 => Metric::Iou,
        LossKind::BinaryCrossEntropy if logits.rank() >= 2 => Metric::Iou,
        l if l.is_classification() => Metric::Accuracy,
        _ => Metric::Mae,
    }
}

fn metric_help(l: LossKind) -> String {
    match l {
        LossKind::CrossEntropy => {
            "for cross_entropy heads use accuracy, top_k(k), f1 (and iou per pixel)".into()
        }
        LossKind::BinaryCrossEntropy => {
            "for binary_cross_entropy heads use accuracy, f1, auc or iou".into()
        }
        _ => "for regression heads use mae or rmse".into(),
    }
}

#[cfg(test)]
mod tests {
    use crate::ir::Metric;

    #[test]
    fn heads_without_metrics_get_their_losses_usual_one() {
        let src = "model m {\n input x: image[1, 4, 4]\n let f = x -> conv2d(2, 1)\n head c = f -> flatten -> dense(3) { loss: cross_entropy }\n head b = f -> flatten -> dense(1) { loss: binary_cross_entropy }\n head r = f -> flatten -> dense(1) { loss: mse }\n head m = f -> conv2d(1, 1) { loss: binary_cross_entropy }\n head p = f -> conv2d(3, 1) { loss: cross_entropy }\n head d = f -> flatten -> dense(2) { loss: mae, metrics: [rmse] }\n}";
        let c = crate::compile_str("m.mtl", src, &crate::Options::default());
        assert!(!c.has_errors(), "{:?}", c.diagnostics);
        let g = c.graph.unwrap();
        let got: Vec<(&str, &[Metric])> = g
            .heads
            .iter()
            .map(|h| (h.name.as_str(), h.metrics.as_slice()))
            .collect();
        assert_eq!(
            got,
            [
                ("c", &[Metric::Accuracy][..]),
                ("b", &[Metric::Accuracy][..]),
                ("r", &[Metric::Mae][..]),
                ("m", &[Metric::Iou][..]),
                ("p", &[Metric::Iou][..]),
                ("d", &[Metric::Rmse][..]),
            ]
        );
    }
}
