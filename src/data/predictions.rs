//! Predictions as CSV: class names for classification heads (with their
//! probability), probabilities for binary heads, values for regression.
//! Heads with per-pixel outputs are left to the safetensors file.

use super::Encoders;
use crate::ir::LossKind;
use crate::signature::Signature;
use candle_core::Tensor;
use std::collections::HashMap;

pub fn to_csv(
    sig: &Signature,
    enc: &Encoders,
    out: &HashMap<String, Tensor>,
) -> candle_core::Result<String> {
    let mut cols: Vec<(String, Vec<String>)> = vec![];
    for h in &sig.heads {
        let Some(t) = out.get(&h.name) else { continue };
        if t.rank() > 2 {
            continue;
        }
        let rows = t.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
        match h.loss {
            LossKind::CrossEntropy => {
                let names = enc.labels.get(&h.name);
                let (mut class, mut prob) = (vec![], vec![]);
                for r in &rows {
                    let (i, p) = r.iter().enumerate().fold((0, f32::MIN), |b, (i, v)| {
                        if *v > b.1 {
                            (i, *v)
                        } else {
                            b
                        }
                    });
                    class.push(
                        names
                            .and_then(|m| m.classes.get(i).cloned())
                            .unwrap_or_else(|| i.to_string()),
                    );
                    prob.push(format!("{p:.6}"));
                }
                cols.push((h.name.clone(), class));
                cols.push((format!("{}.prob", h.name), prob));
            }
            _ => cols.push((
                h.name.clone(),
                rows.iter()
                    .map(|r| {
                        r.iter()
                            .map(|v| format!("{v:.6}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .collect(),
            )),
        }
    }
    let n = cols.first().map_or(0, |c| c.1.len());
    let mut w = csv::Writer::from_writer(vec![]);
    let io = |e: csv::Error| candle_core::Error::Msg(e.to_string());
    w.write_record(cols.iter().map(|c| c.0.as_str()))
        .map_err(io)?;
    for i in 0..n {
        w.write_record(cols.iter().map(|c| c.1[i].as_str()))
            .map_err(io)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
