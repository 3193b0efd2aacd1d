//! Head outputs as JSON: batch-first nested arrays written straight from
//! the tensor's values (f32 printed in its shortest round-trip form), and
//! class names where the run has a label map.

use crate::data::Encoders;
use crate::ir::LossKind;
use crate::signature::Signature;
use candle_core::Tensor;
use serde::ser::{Serialize, SerializeSeq, Serializer};
use std::collections::{BTreeMap, HashMap};

/// Row-major values viewed as nested arrays of shape `dims`.
pub struct Nested<'a> {
    pub data: &'a [f32],
    pub dims: &'a [usize],
}

impl Serialize for Nested<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some((&n, rest)) = self.dims.split_first() else {
            return self.data.first().copied().unwrap_or(0.0).serialize(s);
        };
        let mut seq = s.serialize_seq(Some(n))?;
        if rest.is_empty() {
            for x in &self.data[..n.min(self.data.len())] {
                seq.serialize_element(x)?;
            }
        } else {
            let per: usize = rest.iter().product();
            for i in 0..n {
                let data = &self.data
                    [(i * per).min(self.data.len())..((i + 1) * per).min(self.data.len())];
                seq.serialize_element(&Nested { data, dims: rest })?;
            }
        }
        seq.end()
    }
}

/// A tensor as batch-first nested JSON arrays: what a client sends in
/// `{"inputs": {...}}` (values widened to f64, so f32 inputs arrive exact).
pub fn tensor_json(t: &Tensor) -> candle_core::Result<serde_json::Value> {
    fn nest(d: &[f64], dims: &[usize]) -> serde_json::Value {
        match dims.split_first() {
            None => d.first().copied().into(),
            Some((&n, rest)) => {
                let per: usize = rest.iter().product();
                (0..n)
                    .map(|i| nest(&d[i * per..(i + 1) * per], rest))
                    .collect()
            }
        }
    }
    let data = t
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    Ok(nest(&data, t.dims()))
}

/// One head's output rows.
pub struct HeadRows {
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

impl HeadRows {
    pub fn of(t: &Tensor) -> candle_core::Result<Self> {
        Ok(HeadRows {
            dims: t.dims().to_vec(),
            data: t.flatten_all()?.to_vec1::<f32>()?,
        })
    }
}

/// The answer to one request, serialized straight to text (through a
/// `serde_json::Value` an f32 would print as the f64 it widens to).
#[derive(serde::Serialize)]
struct Body<'a> {
    outputs: BTreeMap<&'a str, Nested<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<&'a str, Vec<Option<&'a str>>>,
}

/// `{"outputs": {...}, "labels": {...}}` for one request.
pub fn body(sig: &Signature, enc: &Encoders, outs: &HashMap<String, HeadRows>) -> String {
    let mut b = Body {
        outputs: BTreeMap::new(),
        labels: BTreeMap::new(),
    };
    for h in &sig.heads {
        let Some(r) = outs.get(&h.name) else { continue };
        b.outputs.insert(
            &h.name,
            Nested {
                data: &r.data,
                dims: &r.dims,
            },
        );
        // Per-sample classes: the arg-max of each row, named.
        let names = enc
            .labels
            .get(&h.name)
            .filter(|_| h.loss == LossKind::CrossEntropy && r.dims.len() == 2);
        if let Some(map) = names {
            let k = r.dims[1].max(1);
            let rows = r
                .data
                .chunks(k)
                .map(|row| {
                    let best = row
                        .iter()
                        .enumerate()
                        .fold(0, |b, (i, x)| if *x > row[b] { i } else { b });
                    map.classes.get(best).map(String::as_str)
                })
                .collect();
            b.labels.insert(&h.name, rows);
        }
    }
    serde_json::to_string(&b).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_arrays_keep_shape_and_shortest_floats() {
        let data = [0.1f32, 2.0, -3.5, 4.25, 5.0, 6.0];
        let j = serde_json::to_string(&Nested {
            data: &data,
            dims: &[2, 3],
        })
        .unwrap();
        assert_eq!(j, "[[0.1,2.0,-3.5],[4.25,5.0,6.0]]");
        let j = serde_json::to_string(&Nested {
            data: &data,
            dims: &[3, 1, 2],
        })
        .unwrap();
        assert_eq!(j, "[[[0.1,2.0]],[[-3.5,4.25]],[[5.0,6.0]]]");
    }
}
