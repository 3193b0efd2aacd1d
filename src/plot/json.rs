//! `training_statistics.json` → [`Curves`].

use super::*;

/// Parses `training_statistics.json`:
/// `{"epochs": [{"epoch": 1, "train": {"loss": .., "heads": {"digit": {"loss": .., "accuracy": ..}}},
/// "val": null | {same shape}, "loss_weights": {"digit": 1.0}, ...}], "heads": ["digit"]}`.
///
/// Every key of `heads.HEAD` other than `"loss"` whose values are numbers is a
/// metric. Missing values (and JSON `null`, which is how NaN is written) become
/// NaN, which [`draw`] skips.
pub fn curves_from_json(v: &serde_json::Value) -> Result<Curves, String> {
    let top = v
        .as_object()
        .ok_or("training statistics: expected a JSON object at the top level")?;
    let epochs = top
        .get("epochs")
        .and_then(|e| e.as_array())
        .ok_or("training statistics: missing \"epochs\" array")?;
    for (i, e) in epochs.iter().enumerate() {
        if !e.is_object() {
            return Err(format!("training statistics: epochs[{i}] is not an object"));
        }
    }

    // Head order: the "heads" list if present, then any other head seen, in order.
    let mut heads: Vec<String> = Vec::new();
    if let Some(list) = top.get("heads").and_then(|h| h.as_array()) {
        for h in list {
            let name = h
                .as_str()
                .ok_or("training statistics: \"heads\" must hold strings")?;
            push_unique(&mut heads, name);
        }
    }
    for e in epochs {
        for split in ["train", "val"] {
            if let Some(hs) = e
                .get(split)
                .and_then(|s| s.get("heads"))
                .and_then(|h| h.as_object())
            {
                for name in hs.keys() {
                    push_unique(&mut heads, name);
                }
            }
        }
        if let Some(ws) = e.get("loss_weights").and_then(|w| w.as_object()) {
            for name in ws.keys() {
                push_unique(&mut heads, name);
            }
        }
    }

    let n = epochs.len();
    let epoch_numbers = epochs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            e.get("epoch")
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .unwrap_or(i + 1)
        })
        .collect();
    let head_stat = |split: &str, head: &str, key: &str| -> Vec<f64> {
        epochs
            .iter()
            .map(|e| {
                e.get(split)
                    .and_then(|s| s.get("heads"))
                    .and_then(|h| h.get(head))
                    .and_then(|h| h.get(key))
                    .and_then(|x| x.as_f64())
                    .unwrap_or(f64::NAN)
            })
            .collect()
    };
    let has_val = |head: &str, key: &str| {
        epochs.iter().any(|e| {
            e.get("val")
                .and_then(|s| s.get("heads"))
                .and_then(|h| h.get(head))
                .and_then(|h| h.get(key))
                .is_some_and(|x| x.is_number())
        })
    };

    let mut curves = Curves {
        epochs: epoch_numbers,
        ..Curves::default()
    };
    for head in &heads {
        let val = has_val(head, "loss").then(|| head_stat("val", head, "loss"));
        curves
            .loss
            .push((head.clone(), head_stat("train", head, "loss"), val));

        let mut metric_names: Vec<String> = Vec::new();
        for e in epochs {
            for split in ["train", "val"] {
                if let Some(m) = e
                    .get(split)
                    .and_then(|s| s.get("heads"))
                    .and_then(|h| h.get(head))
                    .and_then(|h| h.as_object())
                {
                    for (k, x) in m {
                        if k != "loss" && (x.is_number() || x.is_null()) {
                            push_unique(&mut metric_names, k);
                        }
                    }
                }
            }
        }
        for m in metric_names {
            let val = has_val(head, &m).then(|| head_stat("val", head, &m));
            curves
                .metrics
                .push((format!("{head} {m}"), head_stat("train", head, &m), val));
        }
    }
    if epochs
        .iter()
        .any(|e| e.get("loss_weights").is_some_and(|w| w.is_object()))
    {
        for head in &heads {
            let w = epochs
                .iter()
                .map(|e| {
                    e.get("loss_weights")
                        .and_then(|w| w.get(head))
                        .and_then(|x| x.as_f64())
                        .unwrap_or(f64::NAN)
                })
                .collect::<Vec<_>>();
            debug_assert_eq!(w.len(), n);
            curves.weights.push((head.clone(), w));
        }
    }
    Ok(curves)
}

fn push_unique(list: &mut Vec<String>, name: &str) {
    if !list.iter().any(|x| x == name) {
        list.push(name.to_string());
    }
}
