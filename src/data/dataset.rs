//! Tensor data sets: one tensor per input and per label, batch first;
//! `HEAD.mask` optional. Checked against the model before training. Columns
//! live in memory or on disk ([`Column`]); training reads them a batch at a time.

use super::store::DiskColumn;
use crate::ir::{DType as IrDType, Dim, LossKind};
use crate::signature::Signature;
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a data set's decoded rows live, for the CLI to report.
#[derive(Debug, Clone, PartialEq)]
pub enum Storage {
    Memory,
    /// Read in place from a tensor file larger than the memory bound.
    File(PathBuf),
    /// Decoded once into a cache directory; `reused` when an earlier run wrote it.
    Cache {
        dir: PathBuf,
        reused: bool,
    },
}

/// One input or label: all rows in memory, or rows read from disk per batch.
#[derive(Debug, Clone)]
pub enum Column {
    Memory(Tensor),
    Disk(DiskColumn),
}

impl Column {
    /// Full shape, batch axis first.
    fn dims(&self) -> Vec<usize> {
        match self {
            Column::Memory(t) => t.dims().to_vec(),
            Column::Disk(d) => std::iter::once(d.n).chain(d.dims.iter().copied()).collect(),
        }
    }
}

/// Named columns of equal length, possibly viewed through a row selection
/// (a split or a subset), so that selecting rows never copies or reads data.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub n: usize,
    columns: BTreeMap<String, Column>,
    rows: Option<Arc<[usize]>>,
    pub storage: Storage,
}

impl Dataset {
    pub fn from_tensors(tensors: HashMap<String, Tensor>, source: &str) -> Result<Self, String> {
        let cols = tensors
            .into_iter()
            .map(|(k, t)| (k, Column::Memory(t)))
            .collect();
        Self::from_columns(cols, source, Storage::Memory)
    }

    pub fn from_columns(
        columns: Vec<(String, Column)>,
        source: &str,
        storage: Storage,
    ) -> Result<Self, String> {
        let mut n = None;
        for (k, c) in &columns {
            let len = c.dims().first().copied().ok_or_else(|| {
                format!("{source}: tensor `{k}` is a scalar; every tensor needs a batch axis")
            })?;
            match n {
                None => n = Some((len, k.clone())),
                Some((m, ref other)) if m != len => {
                    return Err(format!(
                        "{source}: tensor `{k}` has {len} samples but `{other}` has {m}"
                    ))
                }
                _ => {}
            }
        }
        Ok(Dataset {
            n: n.map_or(0, |x| x.0),
            columns: columns.into_iter().collect(),
            rows: None,
            storage,
        })
    }

    /// A safetensors file: in memory when it fits `memory_limit` bytes, else
    /// read in place, one batch at a time.
    pub fn load(path: &Path, device: &Device, memory_limit: u64) -> Result<Self, String> {
        let size = std::fs::metadata(path)
            .map_err(|e| format!("cannot read data {}: {e}", path.display()))?
            .len();
        let source = path.display().to_string();
        if size > memory_limit {
            let cols = super::store::open_safetensors(path)?
                .into_iter()
                .map(|(k, c)| (k, Column::Disk(c)))
                .collect();
            return Self::from_columns(cols, &source, Storage::File(path.to_path_buf()));
        }
        let t = candle_core::safetensors::load(path, device)
            .map_err(|e| format!("cannot read data {}: {e}", path.display()))?;
        Self::from_tensors(t, &source)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.columns.keys()
    }

    /// Whether a column of this name exists.
    pub fn has(&self, name: &str) -> bool {
        self.columns.contains_key(name)
    }

    /// A column's shape as seen through the row selection, batch axis first.
    pub fn dims(&self, name: &str) -> Option<Vec<usize>> {
        self.columns.get(name).map(|c| {
            let mut d = c.dims();
            d[0] = self.n;
            d
        })
    }

    /// The rows `idx` of this data set (a view: nothing is read).
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        let rows: Arc<[usize]> = match &self.rows {
            Some(r) => idx.iter().map(|&i| r[i]).collect(),
            None => idx.into(),
        };
        Dataset {
            n: idx.len(),
            columns: self.columns.clone(),
            rows: Some(rows),
            storage: self.storage.clone(),
        }
    }

    /// The rows `idx` of every column as tensors on the CPU, read from disk
    /// for disk columns.
    pub fn batch(&self, idx: &[usize]) -> candle_core::Result<HashMap<String, Tensor>> {
        let idx = self.checked(idx)?;
        self.columns
            .iter()
            .map(|(k, c)| Ok((k.clone(), Self::column_rows(c, &idx)?)))
            .collect()
    }

    /// Rows `idx` of one column, None when there is no such column: what
    /// reads a few columns (labels) need, without the rest of the batch.
    pub fn rows_of(&self, name: &str, idx: &[usize]) -> candle_core::Result<Option<Tensor>> {
        let idx = self.checked(idx)?;
        self.columns
            .get(name)
            .map(|c| Self::column_rows(c, &idx))
            .transpose()
    }

    /// `idx` bounds-checked and mapped through the view.
    fn checked(&self, idx: &[usize]) -> candle_core::Result<Vec<usize>> {
        if let Some(&bad) = idx.iter().find(|&&i| i >= self.n) {
            candle_core::bail!("row {bad} is past the end of the data ({} rows)", self.n);
        }
        Ok(self.absolute(idx))
    }

    /// Row numbers of the view in the underlying columns.
    fn absolute(&self, idx: &[usize]) -> Vec<usize> {
        match &self.rows {
            Some(r) => idx.iter().map(|&i| r[i]).collect(),
            None => idx.to_vec(),
        }
    }

    /// Rows `idx` (already mapped through the view) of one column.
    fn column_rows(c: &Column, idx: &[usize]) -> candle_core::Result<Tensor> {
        match c {
            Column::Memory(t) => {
                let contiguous = idx.windows(2).all(|w| w[1] == w[0] + 1);
                match idx.first() {
                    Some(&s) if contiguous => t.narrow(0, s, idx.len()),
                    _ => {
                        let ids: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
                        let ids = Tensor::from_vec(ids, idx.len(), t.device())?;
                        t.index_select(&ids, 0)
                    }
                }
            }
            Column::Disk(d) => d.rows(idx),
        }
    }

    /// Every row of every column, as tensors (reads disk columns whole).
    pub fn tensors(&self) -> candle_core::Result<HashMap<String, Tensor>> {
        self.batch(&(0..self.n).collect::<Vec<_>>())
    }

    /// Adds or replaces an in-memory column of `n` rows (not on a row view).
    pub fn insert(&mut self, name: &str, t: Tensor) -> Result<(), String> {
        if self.rows.is_some() {
            return Err("cannot add a column to a row view of a data set".into());
        }
        if t.dims().first() != Some(&self.n) {
            return Err(format!(
                "column `{name}` has shape {:?}, the data set has {} rows",
                t.dims(),
                self.n
            ));
        }
        self.columns.insert(name.to_string(), Column::Memory(t));
        Ok(())
    }

    /// Batches of consecutive rows, in order.
    pub fn chunks(
        &self,
        size: usize,
    ) -> impl Iterator<Item = candle_core::Result<(usize, HashMap<String, Tensor>)>> + '_ {
        (0..self.n).step_by(size.max(1)).map(move |s| {
            let idx: Vec<usize> = (s..(s + size.max(1)).min(self.n)).collect();
            self.batch(&idx).map(|b| (idx.len(), b))
        })
    }

    /// Checks that every input (and, with `labels`, every head's label) is
    /// present with the right shape; class ids must fit the head.
    pub fn check(&self, sig: &Signature, labels: bool, source: &str) -> Result<(), String> {
        let mut errs = vec![];
        for i in &sig.inputs {
            let (name, ty) = (&i.name, &i.ty);
            match self.dims(name) {
                None => errs.push(format!(
                    "{source}: no tensor `{name}` for input `{name}` (expected [N, {}])",
                    dims(&ty.shape)
                )),
                Some(d) if !fits(&d, &ty.shape) => errs.push(format!(
                    "{source}: tensor `{name}` has shape {d:?}, input `{name}` expects [N, {}]",
                    dims(&ty.shape)
                )),
                _ => {}
            }
        }
        if labels {
            for h in &sig.heads {
                let Some(lt) = &h.label_type else { continue };
                let Some(d) = self.dims(&h.label) else {
                    errs.push(format!("{source}: no tensor `{}` for the label of head `{}` (expected [N, {}]); add it, or a `{}.mask` of zeros", h.label, h.name, dims(&lt.shape), h.name));
                    continue;
                };
                let want = &lt.shape;
                // Class ids may come as [N] or [N, 1].
                let ok = fits(&d, want)
                    || (lt.dtype == IrDType::I64 && want.is_empty() && d.len() == 2 && d[1] == 1);
                if !ok {
                    errs.push(format!(
                        "{source}: tensor `{}` has shape {d:?}, head `{}` expects labels [N, {}]",
                        h.label,
                        h.name,
                        dims(want)
                    ));
                    continue;
                }
                if h.loss == LossKind::CrossEntropy {
                    let k = h.classes;
                    if let Some(e) = self.bad_class(&h.label, k) {
                        errs.push(format!("{source}: tensor `{}` {e}, but head `{}` has {k} classes (0..{}; -1 or NaN = missing)", h.label, h.name, k.saturating_sub(1)));
                    }
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("\n"))
        }
    }
}

impl Dataset {
    /// The first row of column `name` holding something other than a class
    /// id below `k` or a missing mark; read in chunks of about 8 MiB, so disk
    /// columns stream.
    fn bad_class(&self, name: &str, k: usize) -> Option<String> {
        let col = self.columns.get(name)?;
        let per: usize = col.dims()[1..].iter().product::<usize>().max(1);
        let step = ((8 << 20) / (per * 8)).max(1);
        for start in (0..self.n).step_by(step) {
            let idx: Vec<usize> = (start..(start + step).min(self.n)).collect();
            let v = Self::column_rows(col, &self.absolute(&idx))
                .and_then(|t| t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>())
                .ok()?;
            if let Some((i, bad)) = v
                .iter()
                .enumerate()
                .find(|(_, x)| x.is_finite() && (**x >= k as f64 || x.fract() != 0.0 || **x < -1.0))
            {
                return Some(format!("row {} holds class {bad}", start + i / per));
            }
        }
        None
    }
}

fn fits(actual: &[usize], per_sample: &[Dim]) -> bool {
    actual.len() == per_sample.len() + 1
        && per_sample
            .iter()
            .zip(&actual[1..])
            .all(|(d, a)| d.fixed().is_none_or(|f| f == *a))
}

fn dims(d: &[Dim]) -> String {
    d.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
