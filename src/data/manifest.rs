//! CSV and JSON Lines manifests: one row per sample, one column per input and
//! label. Image columns hold paths relative to the manifest, token columns raw
//! text, numeric columns numbers (vectors separated by spaces), label columns
//! class names or numbers; an empty cell is a missing label. Every problem
//! names the file, the row and the column.

use super::dataset::{Column, Storage};
use super::encoders::{Encoders, Vocab};
use super::store::{fnv64, open_cache, CacheColumn, CacheMeta, DiskColumn};
use super::table::Manifest;
use super::Dataset;
use super::{audio, image};
use crate::ir::{DType as IrDType, InputKind, LossKind};
use crate::signature::Signature;
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// At most this many errors are listed.
const MAX_ERRORS: usize = 12;

impl Manifest {
    /// The columns `sig` needs (labels with `labels`), every missing one reported.
    fn targets(&self, sig: &Signature, labels: bool) -> Result<Vec<Target>, String> {
        let mut errs = vec![];
        let mut out = vec![];
        let missing = |what: &str, name: &str| {
            format!(
                "{}: no column `{name}` ({what}); columns are: {}",
                self.path.display(),
                self.columns.join(", ")
            )
        };
        for i in &sig.inputs {
            let (name, ty) = (&i.name, &i.ty);
            let Some(col) = self.column(name) else {
                errs.push(missing(&format!("input `{name}`"), name));
                continue;
            };
            let dims = ty.dims().ok_or_else(|| {
                format!("input `{name}` has symbolic sizes; manifests need fixed ones")
            })?;
            let what = match i.kind {
                InputKind::Image => What::Image,
                InputKind::Tokens { vocab } => What::Tokens(vocab),
                InputKind::Audio { rate } => What::Audio(rate),
                InputKind::F32 => What::Numbers,
            };
            out.push(Target {
                name: name.clone(),
                col,
                i64: matches!(what, What::Tokens(_)),
                dims,
                what,
                zeros_when_missing: i.policy.zeros_when_missing,
            });
        }
        if labels {
            for (hi, h) in sig.heads.iter().enumerate() {
                let Some(lt) = &h.label_type else { continue };
                let Some(col) = self.column(&h.label) else {
                    errs.push(missing(&format!("label of head `{}`", h.name), &h.label));
                    continue;
                };
                out.push(Target {
                    name: h.label.clone(),
                    col,
                    dims: lt.dims().unwrap_or_default(),
                    i64: lt.dtype == IrDType::I64,
                    what: What::Label(hi),
                    zeros_when_missing: false,
                });
            }
        }
        if errs.is_empty() {
            Ok(out)
        } else {
            Err(errs.join("\n"))
        }
    }

    /// Encodes the manifest as tensors for `sig` (labels required with
    /// `labels`). Decoded data larger than `opts.memory_limit` is streamed, a
    /// chunk of rows at a time, into a cache directory keyed by the manifest,
    /// the model's columns and the encoders, and read back per batch; a later
    /// run with the same key reuses it without decoding.
    pub fn to_dataset(
        &self,
        sig: &Signature,
        enc: &Encoders,
        labels: bool,
        opts: &LoadOptions,
    ) -> Result<Dataset, String> {
        let hf = enc.hf_tokenizer()?;
        self.to_dataset_with(sig, enc, hf.as_ref(), labels, opts)
    }

    /// [`Manifest::to_dataset`] with `enc`'s Hugging Face tokenizer already
    /// loaded (a server encodes many small manifests with one).
    pub fn to_dataset_with(
        &self,
        sig: &Signature,
        enc: &Encoders,
        hf: Option<&tokenizers::Tokenizer>,
        labels: bool,
        opts: &LoadOptions,
    ) -> Result<Dataset, String> {
        let targets = self.targets(sig, labels)?;
        let cx = Cx {
            m: self,
            sig,
            enc,
            hf,
        };
        let row_bytes: usize = targets.iter().map(Target::row_bytes).sum();
        let total = (row_bytes * self.rows.len()) as u64;
        let source = self.path.display().to_string();
        match &opts.cache_dir {
            Some(dir) if total > opts.memory_limit => {
                let key = self.cache_key(&targets, enc)?;
                let stem = self
                    .path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let dir = dir.join(format!("{stem}-{key}"));
                if let Some(cols) = open_cache(&dir, &key) {
                    let cols = cols
                        .into_iter()
                        .map(|(k, c)| (k, Column::Disk(c)))
                        .collect();
                    let storage = Storage::Cache { dir, reused: true };
                    return Dataset::from_columns(cols, &source, storage);
                }
                // Chunks of at most CHUNK_BYTES decoded, so memory stays bounded.
                let chunk = (CHUNK_BYTES / row_bytes.max(1)).max(1);
                let cols = cx.write_cache(&targets, &dir, &key, chunk)?;
                let cols = cols
                    .into_iter()
                    .map(|(k, c)| (k, Column::Disk(c)))
                    .collect();
                Dataset::from_columns(cols, &source, Storage::Cache { dir, reused: false })
            }
            _ => {
                let mut errs = Errors::default();
                let n = self.rows.len();
                let mut tensors = HashMap::new();
                for t in &targets {
                    let v = cx.encode(t, 0..n, &mut errs)?;
                    if errs.0.is_empty() {
                        tensors.insert(t.name.clone(), v.tensor(n, &t.dims)?);
                    }
                }
                errs.result()?;
                Dataset::from_tensors(tensors, &source)
            }
        }
    }

    /// What decides the decoded values: the rows, the columns encoded and how,
    /// the vocabularies, label maps and tokenizer.
    fn cache_key(&self, targets: &[Target], enc: &Encoders) -> Result<String, String> {
        let mut parts: Vec<Vec<u8>> = vec![self.columns.join("\u{1}").into_bytes()];
        for r in &self.rows {
            parts.push(r.join("\u{1}").into_bytes());
        }
        for t in targets {
            parts.push(
                format!("{}:{}:{:?}:{}:{:?}", t.name, t.col, t.dims, t.i64, t.what).into_bytes(),
            );
        }
        parts.push(serde_json::to_vec(enc).map_err(|e| e.to_string())?);
        if let Some(p) = &enc.tokenizer {
            parts.push(std::fs::read(p).unwrap_or_default());
        }
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        Ok(format!("{:016x}", fnv64(&refs)))
    }
}

/// Decoded bytes per chunk when streaming to the disk cache.
const CHUNK_BYTES: usize = 64 << 20;

/// Where to keep decoded data.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Decoded data (or a tensor file) larger than this many bytes stays on disk.
    pub memory_limit: u64,
    /// Where decoded manifests larger than the bound are cached; None keeps
    /// everything in memory.
    pub cache_dir: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            memory_limit: u64::MAX,
            cache_dir: None,
        }
    }
}

/// One encoded column: where it comes from and what it becomes.
struct Target {
    name: String,
    col: usize,
    /// Per-sample shape.
    dims: Vec<usize>,
    i64: bool,
    what: What,
    /// An empty cell of an input becomes zeros (`missing: zeros`) instead of an error.
    zeros_when_missing: bool,
}

impl Target {
    fn row_bytes(&self) -> usize {
        self.dims.iter().product::<usize>() * if self.i64 { 8 } else { 4 }
    }
}

#[derive(Debug)]
enum What {
    Image,
    /// WAV files as log-mel spectrograms at this sample rate.
    Audio(usize),
    Tokens(usize),
    Numbers,
    /// The label of head `sig.heads[i]`.
    Label(usize),
}

enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Values {
    fn tensor(self, n: usize, dims: &[usize]) -> Result<Tensor, String> {
        let mut shape = vec![n];
        shape.extend(dims);
        match self {
            Values::F32(v) => Tensor::from_vec(v, shape, &Device::Cpu),
            Values::I64(v) => Tensor::from_vec(v, shape, &Device::Cpu),
        }
        .map_err(|e| e.to_string())
    }

    fn write(&self, w: &mut impl Write) -> std::io::Result<()> {
        match self {
            Values::F32(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
            Values::I64(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
        }
    }
}

/// Errors of a whole pass, the first MAX_ERRORS kept.
#[derive(Default)]
struct Errors(Vec<String>, usize);

impl Errors {
    fn push(&mut self, e: String) {
        if self.0.len() < MAX_ERRORS {
            self.0.push(e);
        } else {
            self.1 += 1;
        }
    }

    fn full(&self) -> bool {
        self.0.len() >= MAX_ERRORS
    }

    fn result(self) -> Result<(), String> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut e = self.0;
        if self.1 > 0 {
            e.push(format!("... and {} more", self.1));
        }
        Err(e.join("\n"))
    }
}

/// What encoding a row range needs.
struct Cx<'a> {
    m: &'a Manifest,
    sig: &'a Signature,
    enc: &'a Encoders,
    hf: Option<&'a tokenizers::Tokenizer>,
}

impl Cx<'_> {
    /// Streams every target, a chunk of rows at a time, into column files in
    /// a temporary directory renamed to `dir` when complete.
    fn write_cache(
        &self,
        targets: &[Target],
        dir: &Path,
        key: &str,
        chunk: usize,
    ) -> Result<Vec<(String, DiskColumn)>, String> {
        let parent = dir.parent().unwrap_or(Path::new("."));
        let tmp = parent.join(format!(
            ".{}.tmp{}",
            dir.file_name()
                .map(|s| s.to_string_lossy())
                .unwrap_or_default(),
            std::process::id()
        ));
        let io = |p: &Path, e: std::io::Error| {
            format!(
                "cannot write the data cache {}: {e}; pass --cache-dir with a writable directory, or raise --memory-limit",
                p.display()
            )
        };
        super::store::remove_stale_temporaries(parent);
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
        let result = (|| {
            let meta = CacheMeta {
                key: key.to_string(),
                n: self.m.rows.len(),
                columns: targets
                    .iter()
                    .map(|t| CacheColumn {
                        name: t.name.clone(),
                        dtype: if t.i64 { "i64" } else { "f32" }.into(),
                        dims: t.dims.clone(),
                        stamp: None,
                    })
                    .collect(),
            };
            let mut files = meta
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let p = c.file(&tmp, i);
                    std::fs::File::create(&p)
                        .map(std::io::BufWriter::new)
                        .map_err(|e| io(&p, e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut errs = Errors::default();
            let n = self.m.rows.len();
            let mut start = 0;
            while start < n && !errs.full() {
                let end = (start + chunk).min(n);
                for (t, f) in targets.iter().zip(&mut files) {
                    let v = self.encode(t, start..end, &mut errs)?;
                    if errs.0.is_empty() {
                        v.write(f).map_err(|e| io(&tmp, e))?;
                    }
                }
                start = end;
            }
            errs.result()?;
            for f in files {
                f.into_inner()
                    .map_err(|e| io(&tmp, e.into_error()))?
                    .sync_all()
                    .map_err(|e| io(&tmp, e))?;
            }
            let mut meta = meta;
            for (i, c) in meta.columns.iter_mut().enumerate() {
                let p = c.file(&tmp, i);
                c.stamp = Some(crate::files::Stamp::of(&p).map_err(|e| io(&p, e))?);
            }
            let text = serde_json::to_string(&meta).map_err(|e| e.to_string())?;
            std::fs::write(tmp.join("meta.json"), text).map_err(|e| io(&tmp, e))?;
            let _ = std::fs::remove_dir_all(dir);
            std::fs::rename(&tmp, dir).map_err(|e| io(dir, e))
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        open_cache(dir, key)
            .ok_or_else(|| format!("the data cache {} could not be read back", dir.display()))
    }

    /// The values of target `t` for `rows`; problems go to `errs`, each
    /// naming the file, the row and the column.
    fn encode(&self, t: &Target, rows: Range<usize>, errs: &mut Errors) -> Result<Values, String> {
        let m = self.m;
        let name = &t.name;
        let col = t.col;
        let dims = &t.dims;
        let per: usize = dims.iter().product();
        let base = rows.start;
        let slice = &m.rows[rows];
        // Inputs: an empty cell is zeros where the model allows it, else an error.
        let empty = |i: usize, r: &Vec<String>| -> Option<Result<Vec<f32>, String>> {
            if !r[col].trim().is_empty() || matches!(t.what, What::Label(_)) {
                return None;
            }
            Some(if t.zeros_when_missing {
                Ok(vec![0.0; per])
            } else {
                Err(format!(
                    "{}: empty cell; the input is required (declare `input {name}: ... {{ missing: zeros }}` to feed zeros instead)",
                    m.at(base + i, name)
                ))
            })
        };
        Ok(match &t.what {
            What::Image => files(slice, per, errs, |i, r| {
                if let Some(v) = empty(i, r) {
                    return v;
                }
                image::decode(&m.dir.join(r[col].trim()), dims[0], dims[1], dims[2])
                    .map_err(|e| format!("{}: {e}", m.at(base + i, name)))
            }),
            What::Audio(rate) => files(slice, per, errs, |i, r| {
                if let Some(v) = empty(i, r) {
                    return v;
                }
                let at = || m.at(base + i, name);
                let path = m.dir.join(r[col].trim());
                let bytes = std::fs::read(&path)
                    .map_err(|e| format!("{}: cannot read {}: {e}", at(), path.display()))?;
                audio::wav_to_log_mel(&bytes, *rate as u32, dims[0], dims[1])
                    .map_err(|e| format!("{}: {}: {e}", at(), path.display()))
            }),
            What::Tokens(_) if slice.iter().enumerate().any(|(i, r)| empty(i, r).is_some()) => {
                let mut ids = Vec::with_capacity(slice.len() * per);
                for (i, r) in slice.iter().enumerate() {
                    match empty(i, r) {
                        Some(Ok(_)) => ids.extend(std::iter::repeat_n(0i64, per)),
                        Some(Err(e)) => errs.push(e),
                        None => {
                            let one = self.encode(t, base + i..base + i + 1, errs)?;
                            if let Values::I64(v) = one {
                                ids.extend(v);
                            }
                        }
                    }
                }
                Values::I64(ids)
            }
            What::Tokens(size) => match self.hf {
                Some(tok) => {
                    let mut ids = Vec::with_capacity(slice.len() * dims[0]);
                    for (i, r) in slice.iter().enumerate() {
                        match tok.encode(r[col].as_str(), self.enc.special_tokens) {
                            Ok(e) => {
                                let mut v: Vec<i64> = e
                                    .get_ids()
                                    .iter()
                                    .take(dims[0])
                                    .map(|&x| x as i64)
                                    .collect();
                                if let Some(bad) = v.iter().find(|&&x| x as usize >= *size) {
                                    errs.push(format!("{}: the tokenizer gives id {bad}, outside `vocab {size}`; declare a vocabulary at least as large as the tokenizer's", m.at(base + i, name)));
                                }
                                v.resize(dims[0], 0);
                                ids.extend(v);
                            }
                            Err(e) => {
                                errs.push(format!("{}: cannot tokenize: {e}", m.at(base + i, name)))
                            }
                        }
                    }
                    Values::I64(ids)
                }
                None => {
                    let vocab = self.enc.vocabs.get(name).ok_or_else(|| {
                        format!("no vocabulary for input `{name}`: train on a manifest first")
                    })?;
                    let index = vocab.index();
                    Values::I64(
                        slice
                            .iter()
                            .flat_map(|r| Vocab::encode_with(&index, &r[col], dims[0]))
                            .collect(),
                    )
                }
            },
            What::Numbers => {
                let mut data = Vec::with_capacity(slice.len() * per);
                for (i, r) in slice.iter().enumerate() {
                    if let Some(v) = empty(i, r) {
                        match v {
                            Ok(z) => data.extend(z),
                            Err(e) => errs.push(e),
                        }
                        continue;
                    }
                    match numbers(&r[col], per) {
                        Ok(v) if v.iter().any(|x| !x.is_finite()) => errs.push(format!(
                            "{}: NaN or infinite input value",
                            m.at(base + i, name)
                        )),
                        Ok(v) => data.extend(v),
                        Err(e) => errs.push(format!("{}: {e}", m.at(base + i, name))),
                    }
                }
                Values::F32(data)
            }
            What::Label(hi) => {
                let h = &self.sig.heads[*hi];
                let mut data: Vec<f32> = Vec::with_capacity(slice.len() * per);
                for (i, r) in slice.iter().enumerate() {
                    let cell = r[col].trim();
                    let at = || m.at(base + i, name);
                    if cell.is_empty() {
                        let missing = if t.i64 { -1.0 } else { f32::NAN };
                        data.extend(std::iter::repeat_n(missing, per));
                        continue;
                    }
                    let v: Result<Vec<f32>, String> = match (h.loss, dims.len()) {
                        (LossKind::CrossEntropy, 0) => {
                            let map = self
                                .enc
                                .labels
                                .get(&h.name)
                                .ok_or_else(|| format!("no label map for head `{}`", h.name))?;
                            map.id(cell).map(|id| vec![id as f32]).ok_or_else(|| {
                                format!(
                                    "{}: class `{cell}` is not one of head `{}`'s {} classes ({})",
                                    at(),
                                    h.name,
                                    h.classes,
                                    map.classes.join(", ")
                                )
                            })
                        }
                        // Per-pixel labels: a mask image (grey level = class id, or > 0.5 = 1).
                        (LossKind::CrossEntropy, 2) => {
                            image::decode_mask(&m.dir.join(cell), dims[0], dims[1])
                                .map(|v| v.iter().map(|v| (v * 255.0).round()).collect())
                                .map_err(|e| format!("{}: {e}", at()))
                        }
                        (LossKind::BinaryCrossEntropy, 3) if dims[0] == 1 => {
                            image::decode_mask(&m.dir.join(cell), dims[1], dims[2])
                                .map(|v| {
                                    v.iter().map(|v| if *v > 0.5 { 1.0 } else { 0.0 }).collect()
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
                        // An infinite or NaN target would turn the loss into NaN
                        // mid-run; a missing label is an empty cell.
                        _ => numbers(cell, per)
                            .and_then(|v| match v.iter().any(|x| !x.is_finite()) {
                                true => Err("NaN or infinite label (leave the cell empty for a missing label)".into()),
                                false => Ok(v),
                            })
                            .map_err(|e| format!("{}: {e}", at())),
                    };
                    match v {
                        Ok(v) => data.extend(v),
                        Err(e) => errs.push(e),
                    }
                }
                if t.i64 {
                    Values::I64(data.into_iter().map(|x| x as i64).collect())
                } else {
                    Values::F32(data)
                }
            }
        })
    }
}

/// One file per row (an image, a sound) decoded in parallel by `decode`
/// (row index in the slice, the row's cells); failures go to `errs`.
fn files(
    slice: &[Vec<String>],
    per: usize,
    errs: &mut Errors,
    decode: impl Fn(usize, &Vec<String>) -> Result<Vec<f32>, String> + Sync,
) -> Values {
    let decoded: Vec<Result<Vec<f32>, String>> = slice
        .par_iter()
        .enumerate()
        .map(|(i, r)| decode(i, r))
        .collect();
    let mut data = Vec::with_capacity(slice.len() * per);
    for d in decoded {
        match d {
            Ok(v) => data.extend(v),
            Err(e) => errs.push(e),
        }
    }
    Values::F32(data)
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
