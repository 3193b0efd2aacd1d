//! Columns kept on disk: raw little-endian rows in a file, read a batch at a
//! time. Backs safetensors files larger than the memory bound (read in place)
//! and the decoded-sample cache of manifests (written once, then reused).

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One column of a data set in a file: `n` rows of `dims` values of `dtype`
/// starting at `offset`.
#[derive(Debug, Clone)]
pub struct DiskColumn {
    path: PathBuf,
    file: Arc<Mutex<File>>,
    offset: u64,
    pub dtype: DType,
    /// Per-sample shape.
    pub dims: Vec<usize>,
    pub n: usize,
}

impl DiskColumn {
    pub fn open(
        path: &Path,
        offset: u64,
        dtype: DType,
        dims: Vec<usize>,
        n: usize,
    ) -> Result<Self, String> {
        let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let col = DiskColumn {
            path: path.to_path_buf(),
            file: Arc::new(Mutex::new(file)),
            offset,
            dtype,
            dims,
            n,
        };
        let len = col
            .file
            .lock()
            .map_err(|_| "data file lock poisoned".to_string())?
            .metadata()
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .len();
        // Checked: the sizes come from a file header, which may be corrupt.
        let want = col
            .dims
            .iter()
            .try_fold(dtype.size_in_bytes() as u64, |a, d| {
                a.checked_mul(*d as u64)
            })
            .and_then(|row| row.checked_mul(n as u64))
            .and_then(|b| b.checked_add(offset));
        match want {
            Some(want) if want <= len => Ok(col),
            Some(want) => Err(format!(
                "{}: {len} bytes, but {n} rows need {want}; the file is truncated",
                path.display()
            )),
            None => Err(format!(
                "{}: {n} rows of shape {:?} do not fit any file; its header is corrupt",
                path.display(),
                col.dims
            )),
        }
    }

    pub fn row_bytes(&self) -> usize {
        self.dims.iter().product::<usize>() * self.dtype.size_in_bytes()
    }

    /// The rows `idx` as one CPU tensor; runs of consecutive rows are read at once.
    pub fn rows(&self, idx: &[usize]) -> candle_core::Result<Tensor> {
        let rb = self.row_bytes();
        let mut buf = vec![0u8; rb * idx.len()];
        let io = |e: std::io::Error| {
            candle_core::Error::Msg(format!("cannot read {}: {e}", self.path.display()))
        };
        let mut f = self
            .file
            .lock()
            .map_err(|_| candle_core::Error::Msg("data file lock poisoned".into()))?;
        let mut i = 0;
        while i < idx.len() {
            let mut j = i + 1;
            while j < idx.len() && idx[j] == idx[j - 1] + 1 {
                j += 1;
            }
            if idx[i] + (j - i) > self.n {
                return Err(candle_core::Error::Msg(format!(
                    "row {} is past the end of {} ({} rows)",
                    idx[j - 1],
                    self.path.display(),
                    self.n
                )));
            }
            f.seek(SeekFrom::Start(self.offset + (idx[i] * rb) as u64))
                .map_err(io)?;
            f.read_exact(&mut buf[i * rb..j * rb]).map_err(io)?;
            i = j;
        }
        let mut shape = vec![idx.len()];
        shape.extend(&self.dims);
        Tensor::from_raw_buffer(&buf, self.dtype, &shape, &Device::Cpu)
    }
}

#[derive(Deserialize)]
struct StEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

fn st_dtype(s: &str) -> Option<DType> {
    Some(match s {
        "F32" => DType::F32,
        "F64" => DType::F64,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "I64" => DType::I64,
        "U32" => DType::U32,
        "U8" => DType::U8,
        _ => return None,
    })
}

/// Opens every tensor of a safetensors file as a disk column, reading only
/// its header (the format: u64 header length, JSON header, raw data).
pub fn open_safetensors(path: &Path) -> Result<Vec<(String, DiskColumn)>, String> {
    let shown = path.display();
    let mut f = File::open(path).map_err(|e| format!("cannot read data {shown}: {e}"))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| format!("{shown}: not a safetensors file ({e})"))?;
    let hlen = u64::from_le_bytes(len);
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    if hlen > size.saturating_sub(8) || hlen > 100 << 20 {
        return Err(format!(
            "{shown}: not a safetensors file (header length {hlen})"
        ));
    }
    let mut header = vec![0u8; hlen as usize];
    f.read_exact(&mut header)
        .map_err(|e| format!("{shown}: truncated header ({e})"))?;
    let entries: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| format!("{shown}: bad safetensors header: {e}"))?;
    let mut cols = vec![];
    for (name, v) in entries {
        if name == "__metadata__" {
            continue;
        }
        let e: StEntry = serde_json::from_value(v)
            .map_err(|e| format!("{shown}: bad header entry `{name}`: {e}"))?;
        let dtype = st_dtype(&e.dtype).ok_or_else(|| {
            format!(
                "{shown}: tensor `{name}` has dtype {}; store inputs and labels as F32, F64, F16, BF16, I64, U32 or U8",
                e.dtype
            )
        })?;
        let Some((&n, dims)) = e.shape.split_first() else {
            return Err(format!(
                "{shown}: tensor `{name}` is a scalar; every tensor needs a batch axis"
            ));
        };
        let bytes = e
            .shape
            .iter()
            .try_fold(dtype.size_in_bytes() as u64, |a, d| {
                a.checked_mul(*d as u64)
            });
        if e.data_offsets[1] < e.data_offsets[0]
            || Some(e.data_offsets[1] - e.data_offsets[0]) != bytes
        {
            return Err(format!(
                "{shown}: tensor `{name}`: its data offsets do not match its shape {:?}",
                e.shape
            ));
        }
        let offset = (8 + hlen)
            .checked_add(e.data_offsets[0])
            .ok_or_else(|| format!("{shown}: tensor `{name}`: its data offset is out of range"))?;
        cols.push((
            name,
            DiskColumn::open(path, offset, dtype, dims.to_vec(), n)?,
        ));
    }
    Ok(cols)
}

/// What a finished cache directory holds; written last, so its presence
/// means every column file is complete.
#[derive(Serialize, Deserialize)]
pub struct CacheMeta {
    pub key: String,
    pub n: usize,
    pub columns: Vec<CacheColumn>,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct CacheColumn {
    pub name: String,
    /// `f32` or `i64`.
    pub dtype: String,
    pub dims: Vec<usize>,
    /// The column file's size and CRC-32C, checked when the cache is reused:
    /// a file changed in place (same size, other bytes) is decoded again.
    #[serde(default)]
    pub stamp: Option<crate::files::Stamp>,
}

impl CacheColumn {
    pub fn dtype(&self) -> DType {
        if self.dtype == "i64" {
            DType::I64
        } else {
            DType::F32
        }
    }

    pub fn file(&self, dir: &Path, i: usize) -> PathBuf {
        dir.join(format!("col{i}.bin"))
    }
}

/// Opens a finished cache directory whose key is `key`; None when it is
/// missing, unfinished, written for other data, truncated, or changed
/// since it was written (its stamps).
pub fn open_cache(dir: &Path, key: &str) -> Option<Vec<(String, DiskColumn)>> {
    let text = std::fs::read_to_string(dir.join("meta.json")).ok()?;
    let meta: CacheMeta = serde_json::from_str(&text).ok()?;
    if meta.key != key {
        return None;
    }
    meta.columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let file = c.file(dir, i);
            let intact = crate::files::Stamp::of(&file).ok() == c.stamp;
            intact.then_some(())?;
            DiskColumn::open(&file, 0, c.dtype(), c.dims.clone(), meta.n)
                .ok()
                .map(|d| (c.name.clone(), d))
        })
        .collect()
}

/// Removes the temporary directories that writers of a cache in `root` left
/// when they were killed (`.NAME.tmpPID` whose process is gone).
pub fn remove_stale_temporaries(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once(".tmp"))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !process_alive(pid) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Whether process `pid` runs (Linux's /proc; elsewhere assumed alive, so
/// nothing of a live writer is ever removed).
fn process_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

/// A stable 64-bit FNV-1a hash, for cache keys that must not change between builds.
pub fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(&[0xff]) {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_columns_read_the_rows_candle_reads() {
        let dir = std::env::temp_dir().join(format!("mtl-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.safetensors");
        let a = Tensor::arange(0f32, 24.0, &Device::Cpu)
            .unwrap()
            .reshape((6, 2, 2))
            .unwrap();
        let b = Tensor::arange(0i64, 6, &Device::Cpu).unwrap();
        candle_core::safetensors::save(
            &[("a".to_string(), a.clone()), ("b".to_string(), b.clone())]
                .into_iter()
                .collect(),
            &p,
        )
        .unwrap();
        let cols = open_safetensors(&p).unwrap();
        let idx = [4usize, 0, 1, 2, 5];
        let ids = Tensor::new(&[4u32, 0, 1, 2, 5], &Device::Cpu).unwrap();
        for (name, c) in cols {
            let want = if name == "a" { &a } else { &b };
            let got = c.rows(&idx).unwrap();
            let want = want.index_select(&ids, 0).unwrap();
            assert_eq!(got.dims(), want.dims());
            assert_eq!(
                got.to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap(),
                want.to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
            );
            assert!(c.rows(&[6]).is_err(), "reading past the end is an error");
        }
        // A truncated file is refused when opened, not when read.
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        let e = open_safetensors(&p).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
