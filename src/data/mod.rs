//! Data sources: safetensors tensor files, CSV / JSON Lines manifests (images,
//! text, numbers, class names), and the built-in generated `shapes` data set.
//! Everything becomes a [`Dataset`] of tensors keyed by input and label names.

pub mod audio;
pub mod audit;
mod dataset;
pub mod encoders;
mod image;
pub mod manifest;
pub mod mmoe;
pub mod overlap;
pub mod predictions;
pub mod shapes;
mod store;
mod table;
pub mod tones;

pub use dataset::{Column, Dataset, Storage};
pub use encoders::Encoders;
pub use manifest::LoadOptions;
pub use table::Manifest;

use crate::signature::Signature;
use candle_core::Device;
use std::path::Path;

pub type Generator = fn(&Path, u64) -> Result<(), String>;
/// A generator of `n` training samples (and n/4 test samples) with a seed.
pub type SizedGenerator = fn(&Path, usize, u64) -> Result<(), String>;

/// The generator for a model named after a built-in data set.
pub fn generated_for(model: &str) -> Option<Generator> {
    match model {
        "shapes" => Some(shapes::write_default),
        "mmoe" => Some(mmoe::write_default),
        "overlap" => Some(overlap::write_default),
        "tones" => Some(tones::write_default),
        _ => None,
    }
}

/// Writes `text` to `path` through a temporary file and a rename, so a
/// reader never sees half a file.
pub fn write_text_atomic(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Whether a path names a manifest (CSV or JSON Lines) rather than tensors.
pub fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("csv" | "jsonl" | "ndjson")
    )
}

/// Loads a data set for a model of signature `sig`. Manifests are encoded
/// with `enc`; when `fit` is set, vocabularies and label maps are first built
/// from this data (the training split). With `labels`, every head's label
/// column is required. `opts` bounds what is kept in memory (see
/// [`LoadOptions`]).
pub fn load(
    path: &Path,
    sig: &Signature,
    enc: &mut Encoders,
    fit: bool,
    labels: bool,
    device: &Device,
    opts: &LoadOptions,
) -> Result<Dataset, String> {
    if is_manifest(path) {
        let m = Manifest::read(path)?;
        if fit {
            let special_tokens = enc.special_tokens;
            *enc = Encoders::fit(sig, &m, enc.tokenizer.clone())?;
            enc.special_tokens = special_tokens;
        }
        m.to_dataset(sig, enc, labels, opts)
    } else {
        Dataset::load(path, device, opts.memory_limit)
    }
}
