//! A prediction request's JSON decoded into batch tensors, checked against
//! the model's signature before anything is queued: every failure names the
//! input and the expected shape, and maps to an HTTP status.

use crate::data::{Encoders, LoadOptions, Manifest};
use crate::ir::{DType, InputKind};
use crate::signature::{InputSig, Signature};
use candle_core::{Device, Tensor};
use serde_json::Value;
use std::collections::HashMap;

/// A request the server refuses: the HTTP status, a machine-readable code,
/// a message, and the input it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub input: Option<String>,
    pub expected: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            input: None,
            expected: None,
        }
    }

    fn about(mut self, input: &InputSig) -> Self {
        self.input = Some(input.name.clone());
        self.expected = Some(expected(input));
        self
    }

    pub fn to_json(&self) -> Value {
        let mut e = serde_json::json!({"code": self.code, "message": self.message});
        if let Some(i) = &self.input {
            e["input"] = i.clone().into();
        }
        if let Some(x) = &self.expected {
            e["expected"] = x.clone().into();
        }
        serde_json::json!({ "error": e })
    }
}

/// `float32 [N, 3, 16, 16]`, `int64 [N, 64] (or N strings)`.
pub fn expected(input: &InputSig) -> String {
    let dims: Vec<String> = input.ty.shape.iter().map(|d| d.to_string()).collect();
    let shape = format!("[N, {}]", dims.join(", "));
    match input.ty.dtype {
        DType::F32 => format!("float32 {shape}"),
        DType::I64 => format!("int64 token ids {shape}, or N strings"),
    }
}

/// What decoding needs of the model: its signature, the run's encoders (for
/// raw text) and each token input's vocabulary size.
pub struct Decoder {
    pub sig: Signature,
    pub enc: Encoders,
    /// `enc`'s Hugging Face tokenizer, loaded once rather than per request.
    pub hf: Option<tokenizers::Tokenizer>,
    pub max_rows: usize,
}

/// Decoded inputs: one batch-first tensor per model input, and the row count.
pub struct Decoded {
    pub tensors: HashMap<String, Tensor>,
    pub rows: usize,
}

impl Decoder {
    pub fn decode(&self, body: &[u8]) -> Result<Decoded, ApiError> {
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::new(400, "invalid_json", format!("the body is not JSON: {e}"))
        })?;
        let Some(inputs) = v.get("inputs").and_then(Value::as_object) else {
            return Err(ApiError::new(
                422,
                "no_inputs",
                "expected {\"inputs\": {\"NAME\": [...]}} with one entry per model input",
            ));
        };
        if let Some(unknown) = inputs
            .keys()
            .find(|k| !self.sig.inputs.iter().any(|i| &i.name == *k))
        {
            let names: Vec<&str> = self.sig.inputs.iter().map(|i| i.name.as_str()).collect();
            return Err(ApiError::new(
                422,
                "unknown_input",
                format!(
                    "the model has no input `{unknown}`; its inputs: {}",
                    names.join(", ")
                ),
            ));
        }
        let mut tensors = HashMap::new();
        let mut rows: Option<(usize, &str)> = None;
        for input in &self.sig.inputs {
            let Some(value) = inputs.get(&input.name) else {
                return Err(ApiError::new(
                    422,
                    "missing_input",
                    format!("input `{}` is missing", input.name),
                )
                .about(input));
            };
            let t = self.tensor(input, value).map_err(|e| e.about(input))?;
            let n = t.dims()[0];
            if n > self.max_rows {
                return Err(ApiError::new(
                    413,
                    "too_many_rows",
                    format!(
                        "input `{}` has {n} rows; this server takes at most {} per request",
                        input.name, self.max_rows
                    ),
                )
                .about(input));
            }
            match rows {
                Some((m, other)) if m != n => {
                    return Err(ApiError::new(
                        422,
                        "batch_mismatch",
                        format!("input `{}` has {n} rows but `{other}` has {m}", input.name),
                    )
                    .about(input))
                }
                _ => rows = Some((n, &input.name)),
            }
            tensors.insert(input.name.clone(), t);
        }
        let rows = rows.map_or(0, |r| r.0);
        if rows == 0 {
            return Err(ApiError::new(
                422,
                "empty_batch",
                "the request holds no rows",
            ));
        }
        Ok(Decoded { tensors, rows })
    }

    /// One input's value: nested arrays of numbers, or strings for tokens.
    fn tensor(&self, input: &InputSig, value: &Value) -> Result<Tensor, ApiError> {
        let texts = value
            .as_array()
            .filter(|a| !a.is_empty() && a.iter().all(Value::is_string));
        if let Some(texts) = texts {
            return self.text(input, texts);
        }
        let mut shape = vec![];
        let mut data = vec![];
        flatten(value, 0, &mut shape, &mut data)?;
        let want = &input.ty.shape;
        let fits = shape.len() == want.len() + 1
            && want
                .iter()
                .zip(&shape[1..])
                .all(|(d, a)| d.fixed().is_none_or(|f| f == *a));
        if !fits {
            return Err(ApiError::new(
                422,
                "wrong_shape",
                format!("input `{}` has shape {shape:?}", input.name),
            ));
        }
        let err = |e: candle_core::Error| ApiError::new(500, "internal", e.to_string());
        match input.ty.dtype {
            DType::F32 => {
                let v: Vec<f32> = data.iter().map(|x| *x as f32).collect();
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(ApiError::new(
                        422,
                        "not_finite",
                        format!("input `{}` holds a value beyond float32", input.name),
                    ));
                }
                Tensor::from_vec(v, shape, &Device::Cpu).map_err(err)
            }
            DType::I64 => {
                let vocab = match input.kind {
                    InputKind::Tokens { vocab } => vocab,
                    _ => usize::MAX,
                };
                let mut ids = Vec::with_capacity(data.len());
                for x in data {
                    if x.fract() != 0.0 || x < 0.0 || x >= vocab as f64 {
                        return Err(ApiError::new(
                            422,
                            "bad_token",
                            format!(
                                "input `{}` holds {x}; token ids are integers in [0, {vocab})",
                                input.name
                            ),
                        ));
                    }
                    ids.push(x as i64);
                }
                Tensor::from_vec(ids, shape, &Device::Cpu).map_err(err)
            }
        }
    }

    /// Raw strings for a token input, encoded exactly as `mtl predict`
    /// encodes a manifest column: the run's vocabulary or tokenizer.
    fn text(&self, input: &InputSig, texts: &[Value]) -> Result<Tensor, ApiError> {
        if input.ty.dtype != DType::I64 {
            return Err(ApiError::new(
                422,
                "wrong_type",
                format!("input `{}` takes numbers, not strings", input.name),
            ));
        }
        if self.enc.tokenizer.is_none() && !self.enc.vocabs.contains_key(&input.name) {
            return Err(ApiError::new(
                422,
                "no_vocabulary",
                format!("input `{}` has no vocabulary here (serve a run directory trained on text, or send token ids)", input.name),
            ));
        }
        let m = Manifest {
            path: "request".into(),
            dir: ".".into(),
            columns: vec![input.name.clone()],
            rows: texts
                .iter()
                .map(|t| vec![t.as_str().unwrap_or_default().to_string()])
                .collect(),
        };
        let sig = Signature {
            inputs: vec![input.clone()],
            heads: vec![],
        };
        let opts = LoadOptions {
            memory_limit: u64::MAX,
            cache_dir: None,
        };
        let bad = |e: String| ApiError::new(422, "bad_text", e);
        let ds = m
            .to_dataset_with(&sig, &self.enc, self.hf.as_ref(), false, &opts)
            .map_err(bad)?;
        let all: Vec<usize> = (0..ds.n).collect();
        let mut b = ds.batch(&all).map_err(|e| bad(e.to_string()))?;
        b.remove(&input.name)
            .ok_or_else(|| bad("no tensor decoded".into()))
    }
}

/// Nested arrays of numbers into (shape, row-major values); ragged arrays,
/// non-numbers and empty axes are errors.
fn flatten(
    v: &Value,
    depth: usize,
    shape: &mut Vec<usize>,
    out: &mut Vec<f64>,
) -> Result<(), ApiError> {
    const MAX_RANK: usize = 8;
    match v {
        Value::Number(n) => {
            if depth != shape.len() {
                return Err(ApiError::new(
                    422,
                    "wrong_shape",
                    "a number where an array was expected (ragged arrays)",
                ));
            }
            out.push(n.as_f64().unwrap_or(f64::NAN));
            Ok(())
        }
        Value::Array(a) => {
            if depth == shape.len() {
                if !out.is_empty() || depth >= MAX_RANK {
                    return Err(ApiError::new(
                        422,
                        "wrong_shape",
                        "ragged or too deeply nested arrays",
                    ));
                }
                shape.push(a.len());
            } else if shape[depth] != a.len() {
                return Err(ApiError::new(
                    422,
                    "wrong_shape",
                    format!(
                        "ragged arrays: {} elements where {} were expected at depth {depth}",
                        a.len(),
                        shape[depth]
                    ),
                ));
            }
            a.iter().try_for_each(|x| flatten(x, depth + 1, shape, out))
        }
        other => Err(ApiError::new(
            422,
            "wrong_type",
            format!(
                "expected numbers, found {}",
                match other {
                    Value::String(_) => "a string",
                    Value::Bool(_) => "a boolean",
                    Value::Null => "null",
                    _ => "an object",
                }
            ),
        )),
    }
}
