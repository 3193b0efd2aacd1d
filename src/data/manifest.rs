//! CSV and JSON Lines manifests: one row per sample, one column per input and
//! label. Image columns hold paths relative to the manifest, token columns raw
//! text, numeric columns numbers (vectors separated by spaces), label columns
//! class names or numbers; an empty cell is a missing label. Every problem
//! names the file, the row and the column.

use super::encoders::{classes_of, Encoders};
use super::image;
use super::Dataset;
use crate::ir::{DType as IrDType, InputKind, LossKind};
use crate::lower::Program;
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct Manifest {
    pub path: PathBuf,
    /// Paths in cells are relative to this directory.
    pub dir: PathBuf,
    pub columns: Vec<String>,
    /// Cells as text; an empty string is an empty cell.
    pub rows: Vec<Vec<String>>,
}

/// At most this many errors are listed.
const MAX_ERRORS: usize = 12;

impl Manifest {
    pub fn read(path: &Path) -> Result<Self, String> {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let (columns, rows) = if path.extension().is_some_and(|e| e == "csv") {
            parse_csv(&text, path)?
        } else {
            parse_jsonl(&text, path)?
        };
        Ok(Manifest {
            path: path.to_path_buf(),
            dir,
            columns,
            rows,
        })
    }

    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    fn at(&self, row: usize, col: &str) -> String {
        format!("{}: row {}, column `{col}`", self.path.display(), row + 1)
    }

    /// Encodes the manifest as tensors for `prog` (labels required with `labels`).
    pub fn to_dataset(
        &self,
        prog: &Program,
        enc: &Encoders,
        labels: bool,
    ) -> Result<Dataset, String> {
        let n = self.rows.len();
        let dev = Device::Cpu;
        let mut errs: Vec<String> = vec![];
        let mut tensors = HashMap::new();
        let hf = enc.hf_tokenizer()?;
        let missing = |what: &str, name: &str| {
            format!(
                "{}: no column `{name}` ({what}); columns are: {}",
                self.path.display(),
                self.columns.join(", ")
            )
        };
        for (name, _, ty) in &prog.inputs {
            let Some(col) = self.column(name) else {
                errs.push(missing(&format!("input `{name}`"), name));
                continue;
            };
            let dims = ty.dims().ok_or_else(|| {
                format!("input `{name}` has symbolic sizes; manifests need fixed ones")
            })?;
            let per: usize = dims.iter().product();
            let mut shape = vec![n];
            shape.extend(&dims);
            let t = match prog.input_kinds.get(name) {
                Some(InputKind::Image) => {
                    let decoded: Vec<Result<Vec<f32>, String>> = self
                        .rows
                        .par_iter()
                        .enumerate()
                        .map(|(i, r)| {
                            let cell = r[col].trim();
                            if cell.is_empty() {
                                return Err(format!(
                                    "{}: empty cell, expected an image path",
                                    self.at(i, name)
                                ));
                            }
                            image::decode(&self.dir.join(cell), dims[0], dims[1], dims[2])
                                .map_err(|e| format!("{}: {e}", self.at(i, name)))
                        })
                        .collect();
                    let mut data = Vec::with_capacity(n * per);
                    for d in decoded {
                        match d {
                            Ok(v) => data.extend(v),
                            Err(e) => errs.push(e),
                        }
                    }
                    (errs.is_empty()).then(|| Tensor::from_vec(data, shape, &dev))
                }
                Some(InputKind::Tokens { vocab: size }) => match &hf {
                    Some(tok) => {
                        let mut ids = Vec::with_capacity(n * dims[0]);
                        for (i, r) in self.rows.iter().enumerate() {
                            match tok.encode(r[col].as_str(), false) {
                                Ok(e) => {
                                    let mut v: Vec<i64> = e
                                        .get_ids()
                                        .iter()
                                        .take(dims[0])
                                        .map(|&x| x as i64)
                                        .collect();
                                    if let Some(bad) = v.iter().find(|&&x| x as usize >= *size) {
                                        errs.push(format!("{}: the tokenizer gives id {bad}, outside `vocab {size}`; declare a vocabulary at least as large as the tokenizer's", self.at(i, name)));
                                    }
                                    v.resize(dims[0], 0);
                                    ids.extend(v);
                                }
                                Err(e) => {
                                    errs.push(format!("{}: cannot tokenize: {e}", self.at(i, name)))
                                }
                            }
                        }
                        (errs.is_empty()).then(|| Tensor::from_vec(ids, shape, &dev))
                    }
                    None => {
                        let vocab = enc.vocabs.get(name).ok_or_else(|| {
                            format!("no vocabulary for input `{name}`: train on a manifest first")
                        })?;
                        let ids: Vec<i64> = self
                            .rows
                            .iter()
                            .flat_map(|r| vocab.encode(&r[col], dims[0]))
                            .collect();
                        Some(Tensor::from_vec(ids, shape, &dev))
                    }
                },
                _ => {
                    let mut data = Vec::with_capacity(n * per);
                    for (i, r) in self.rows.iter().enumerate() {
                        match numbers(&r[col], per) {
                            Ok(v) if v.iter().any(|x| !x.is_finite()) => errs
                                .push(format!("{}: NaN or infinite input value", self.at(i, name))),
                            Ok(v) => data.extend(v),
                            Err(e) => errs.push(format!("{}: {e}", self.at(i, name))),
                        }
                    }
                    (errs.is_empty()).then(|| Tensor::from_vec(data, shape, &dev))
                }
            };
            if let Some(t) = t {
                tensors.insert(name.clone(), t.map_err(|e| e.to_string())?);
            }
        }
        if labels {
            for (h, slot) in &prog.heads {
                let Some(lt) = &h.label_type else { continue };
                let Some(col) = self.column(&h.label) else {
                    errs.push(missing(&format!("label of head `{}`", h.name), &h.label));
                    continue;
                };
                let dims = lt.dims().unwrap_or_default();
                let per: usize = dims.iter().product();
                let mut shape = vec![n];
                shape.extend(&dims);
                let mut data: Vec<f32> = Vec::with_capacity(n * per);
                for (i, r) in self.rows.iter().enumerate() {
                    let cell = r[col].trim();
                    let at = || self.at(i, &h.label);
                    if cell.is_empty() {
                        let missing = if lt.dtype == IrDType::I64 {
                            -1.0
                        } else {
                            f32::NAN
                        };
                        data.extend(std::iter::repeat_n(missing, per));
                        continue;
                    }
                    let v: Result<Vec<f32>, String> = match (h.loss, dims.len()) {
                        (LossKind::CrossEntropy, 0) => {
                            let map = enc
                                .labels
                                .get(&h.name)
                                .ok_or_else(|| format!("no label map for head `{}`", h.name))?;
                            map.id(cell).map(|id| vec![id as f32]).ok_or_else(|| {
                                format!(
                                    "{}: class `{cell}` is not one of head `{}`'s {} classes ({})",
                                    at(),
                                    h.name,
                                    classes_of(prog, *slot),
                                    map.classes.join(", ")
                                )
                            })
                        }
                        // Per-pixel labels: a mask image (grey level = class id, or > 0.5 = 1).
                        (LossKind::CrossEntropy, 2) => {
                            image::decode_mask(&self.dir.join(cell), dims[0], dims[1])
                                .map(|m| m.iter().map(|v| (v * 255.0).round()).collect())
                                .map_err(|e| format!("{}: {e}", at()))
                        }
                        (LossKind::BinaryCrossEntropy, 3) if dims[0] == 1 => {
                            image::decode_mask(&self.dir.join(cell), dims[1], dims[2])
                                .map(|m| {
                                    m.iter().map(|v| if *v > 0.5 { 1.0 } else { 0.0 }).collect()
                                })
                                .map_err(|e| format!("{}: {e}", at()))
                        }
                        (LossKind::BinaryCrossEntropy, _) => match cell.to_lowercase().as_str() {
                            "true" | "yes" if per == 1 => Ok(vec![1.0]),
                            "false" | "no" if per == 1 => Ok(vec![0.0]),
                            _ => numbers(cell, per)
                                .and_then(|v| {
                                    if v.iter().all(|x| *x == 0.0 || *x == 1.0) {
                                        Ok(v)
                                    } else {
                                        Err("binary labels are 0 or 1".into())
                                    }
                                })
                                .map_err(|e| format!("{}: {e}", at())),
                        },
                        _ => numbers(cell, per).map_err(|e| format!("{}: {e}", at())),
                    };
                    match v {
                        Ok(v) => data.extend(v),
                        Err(e) => errs.push(e),
                    }
                }
                if errs.is_empty() {
                    let t = Tensor::from_vec(data, shape, &dev).map_err(|e| e.to_string())?;
                    let t = if lt.dtype == IrDType::I64 {
                        t.to_dtype(candle_core::DType::I64)
                            .map_err(|e| e.to_string())?
                    } else {
                        t
                    };
                    tensors.insert(h.label.clone(), t);
                }
            }
        }
        if !errs.is_empty() {
            let more = errs.len().saturating_sub(MAX_ERRORS);
            errs.truncate(MAX_ERRORS);
            if more > 0 {
                errs.push(format!("... and {more} more"));
            }
            return Err(errs.join("\n"));
        }
        Dataset::from_tensors(tensors, &self.path.display().to_string())
    }
}

/// `per` numbers separated by spaces or commas.
fn numbers(cell: &str, per: usize) -> Result<Vec<f32>, String> {
    let v: Vec<f32> = cell
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<f32>()
                .map_err(|_| format!("`{s}` is not a number"))
        })
        .collect::<Result<_, _>>()?;
    if v.len() != per {
        return Err(format!(
            "expected {per} number{}, found {}",
            if per == 1 { "" } else { "s" },
            v.len()
        ));
    }
    Ok(v)
}

fn parse_csv(text: &str, path: &Path) -> Result<(Vec<String>, Vec<Vec<String>>), String> {
    let mut rd = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(text.as_bytes());
    let columns: Vec<String> = rd
        .headers()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .iter()
        .map(|s| s.trim().to_string())
        .collect();
    let mut rows = vec![];
    for (i, rec) in rd.records().enumerate() {
        let rec = rec.map_err(|e| format!("{}: row {}: {e}", path.display(), i + 1))?;
        rows.push(rec.iter().map(str::to_string).collect());
    }
    Ok((columns, rows))
}

fn parse_jsonl(text: &str, path: &Path) -> Result<(Vec<String>, Vec<Vec<String>>), String> {
    let mut objs = vec![];
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
            .map_err(|e| format!("{}: line {}: {e}", path.display(), i + 1))?;
        objs.push(v);
    }
    let mut columns: Vec<String> = vec![];
    for o in &objs {
        for k in o.keys() {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
    }
    let cell = |v: Option<&serde_json::Value>| -> String {
        match v {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            Some(x) => x.to_string(),
        }
    };
    let rows = objs
        .iter()
        .map(|o| columns.iter().map(|c| cell(o.get(c))).collect())
        .collect();
    Ok((columns, rows))
}
