//! Hugging Face checkpoint directories (`pretrained("DIR")`): `config.json`
//! read into the few numbers the expansion needs (everything else it would
//! have to honour is refused by name), `preprocessor_config.json` for ViT's
//! normalisation, `tokenizer.json` for BERT's inputs, and the weights from
//! `model.safetensors` or a sharded `model.safetensors.index.json`, keyed
//! `NAME.` + the checkpoint's own keys.

use crate::lower::Params;
use candle_core::safetensors::MmapedSafetensors;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A problem with a checkpoint directory, naming the file and, where there
/// is one, the key.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointError {
    pub file: PathBuf,
    pub key: Option<String>,
    pub message: String,
}

impl std::fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(k) = &self.key {
            write!(f, ", `{k}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

type R<T> = Result<T, CheckpointError>;

/// An activation `transformers` names in `hidden_act` that mtl computes
/// exactly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HiddenAct {
    Gelu,
    Relu,
    Silu,
    Tanh,
}

/// What a BERT or ViT encoder is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoder {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub eps: f64,
    pub act: HiddenAct,
    pub hidden_dropout: f64,
    pub attention_dropout: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Family {
    Bert {
        vocab: usize,
        positions: usize,
        token_types: usize,
    },
    Vit {
        /// (height, width): `image_size` and `patch_size` are an integer or a pair.
        image: (usize, usize),
        patch: (usize, usize),
        channels: usize,
        mean: Vec<f64>,
        std: Vec<f64>,
    },
}

/// A checkpoint directory, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub family: Family,
    pub encoder: Encoder,
    /// `tokenizer.json`, when the directory has one.
    pub tokenizer: Option<PathBuf>,
    /// The safetensors files holding the weights.
    pub weights: Vec<PathBuf>,
    /// `bert` or `vit`: a task model's checkpoint (`BertForSequenceClassification`,
    /// `ViTForImageClassification`) keys the encoder under this word.
    pub model_type: String,
}

/// `config.json` as read, with errors that name the file and key.
struct Config {
    file: PathBuf,
    v: Value,
}

impl Config {
    fn err(&self, key: &str, message: impl Into<String>) -> CheckpointError {
        CheckpointError {
            file: self.file.clone(),
            key: Some(key.into()),
            message: message.into(),
        }
    }
    fn usize(&self, key: &str, default: Option<usize>) -> R<usize> {
        match self.v.get(key) {
            Some(x) => x
                .as_u64()
                .filter(|n| *n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| self.err(key, format!("expected a positive integer, found {x}"))),
            None => default.ok_or_else(|| self.err(key, "missing")),
        }
    }
    /// An integer `n` (as `(n, n)`) or a pair `[h, w]`.
    fn pair(&self, key: &str, default: usize) -> R<(usize, usize)> {
        match self.v.get(key) {
            Some(Value::Array(a)) => {
                match a.iter().map(Value::as_u64).collect::<Option<Vec<_>>>() {
                    Some(v) if v.len() == 2 && v.iter().all(|x| *x > 0) => {
                        Ok((v[0] as usize, v[1] as usize))
                    }
                    _ => Err(self.err(
                        key,
                        format!(
                            "expected a positive integer or two, found {}",
                            Value::Array(a.clone())
                        ),
                    )),
                }
            }
            _ => self.usize(key, Some(default)).map(|n| (n, n)),
        }
    }
    fn f64(&self, key: &str, default: f64) -> R<f64> {
        match self.v.get(key) {
            Some(x) => x
                .as_f64()
                .ok_or_else(|| self.err(key, format!("expected a number, found {x}"))),
            None => Ok(default),
        }
    }
    fn str(&self, key: &str) -> Option<&str> {
        self.v.get(key).and_then(Value::as_str)
    }
    /// `key` must be absent or one of `ok` (settings the expansion does not implement).
    fn only(&self, key: &str, ok: &[&Value]) -> R<()> {
        match self.v.get(key) {
            Some(x) if !x.is_null() && !ok.contains(&x) => Err(self.err(
                key,
                format!(
                    "{x} is not supported (mtl implements {})",
                    ok.iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            _ => Ok(()),
        }
    }
}

fn read_json(path: &Path) -> R<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| CheckpointError {
        file: path.to_path_buf(),
        key: None,
        message: format!("cannot read: {e}"),
    })?;
    serde_json::from_str(&text).map_err(|e| CheckpointError {
        file: path.to_path_buf(),
        key: None,
        message: format!("not JSON: {e}"),
    })
}

/// Reads and checks the checkpoint directory `dir`.
pub fn open(dir: &Path) -> R<Checkpoint> {
    let file = dir.join("config.json");
    let cfg = Config {
        v: read_json(&file)?,
        file: file.clone(),
    };
    let model_type = cfg.str("model_type").unwrap_or("");
    let hidden = cfg.usize("hidden_size", None)?;
    let heads = cfg.usize("num_attention_heads", None)?;
    if hidden % heads != 0 {
        return Err(cfg.err(
            "num_attention_heads",
            format!("{heads} heads do not divide hidden_size {hidden}"),
        ));
    }
    let act = match cfg.str("hidden_act").unwrap_or("gelu") {
        "gelu" => HiddenAct::Gelu,
        "relu" => HiddenAct::Relu,
        "silu" | "swish" => HiddenAct::Silu,
        "tanh" => HiddenAct::Tanh,
        other => {
            return Err(cfg.err(
                "hidden_act",
                format!("`{other}` is not supported (mtl implements gelu (erf), relu, silu, tanh)"),
            ))
        }
    };
    let encoder = Encoder {
        hidden,
        layers: cfg.usize("num_hidden_layers", None)?,
        heads,
        intermediate: cfg.usize("intermediate_size", None)?,
        eps: cfg.f64("layer_norm_eps", 1e-12)?,
        act,
        hidden_dropout: cfg.f64("hidden_dropout_prob", 0.0)?,
        attention_dropout: cfg.f64("attention_probs_dropout_prob", 0.0)?,
    };
    let family = match model_type {
        "bert" => {
            cfg.only("position_embedding_type", &[&Value::from("absolute")])?;
            cfg.only("is_decoder", &[&Value::Bool(false)])?;
            cfg.only("add_cross_attention", &[&Value::Bool(false)])?;
            // Padding masks are token id 0 throughout mtl.
            cfg.only("pad_token_id", &[&Value::from(0)])?;
            Family::Bert {
                vocab: cfg.usize("vocab_size", None)?,
                positions: cfg.usize("max_position_embeddings", Some(512))?,
                token_types: cfg.usize("type_vocab_size", Some(2))?,
            }
        }
        "vit" => {
            cfg.only("qkv_bias", &[&Value::Bool(true)])?;
            cfg.only("pooler_act", &[&Value::from("tanh")])?;
            if let Some(p) = cfg.v.get("pooler_output_size").filter(|v| !v.is_null()) {
                if p.as_u64() != Some(hidden as u64) {
                    return Err(cfg.err("pooler_output_size", "only hidden_size is supported"));
                }
            }
            let channels = cfg.usize("num_channels", Some(3))?;
            let (mean, std) = normalisation(dir, channels)?;
            Family::Vit {
                image: cfg.pair("image_size", 224)?,
                patch: cfg.pair("patch_size", 16)?,
                channels,
                mean,
                std,
            }
        }
        other => {
            return Err(cfg.err(
                "model_type",
                format!("`{other}` is not supported: mtl loads `bert` and `vit` checkpoints"),
            ))
        }
    };
    let tokenizer = Some(dir.join("tokenizer.json")).filter(|p| p.is_file());
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        family,
        encoder,
        tokenizer,
        weights: weight_files(dir)?,
        model_type: model_type.to_string(),
    })
}

/// `image_mean` / `image_std` from `preprocessor_config.json`, else 0.5 / 0.5.
fn normalisation(dir: &Path, channels: usize) -> R<(Vec<f64>, Vec<f64>)> {
    let path = dir.join("preprocessor_config.json");
    if !path.is_file() {
        return Ok((vec![0.5; channels], vec![0.5; channels]));
    }
    let cfg = Config {
        v: read_json(&path)?,
        file: path,
    };
    if cfg.v.get("do_normalize").and_then(Value::as_bool) == Some(false) {
        return Ok((vec![0.0; channels], vec![1.0; channels]));
    }
    let list = |key: &str| -> R<Vec<f64>> {
        let v = match cfg.v.get(key) {
            None => return Ok(vec![0.5; channels]),
            Some(Value::Number(n)) => vec![n.as_f64().unwrap_or(0.5); channels],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_f64).collect(),
            Some(x) => return Err(cfg.err(key, format!("expected numbers, found {x}"))),
        };
        if v.len() != channels {
            return Err(cfg.err(key, format!("{} values for {channels} channels", v.len())));
        }
        Ok(v)
    };
    let (mean, std) = (list("image_mean")?, list("image_std")?);
    if std.iter().any(|s| *s <= 0.0) {
        return Err(cfg.err("image_std", "every value must be positive"));
    }
    Ok((mean, std))
}

/// `model.safetensors`, or the shards `model.safetensors.index.json` lists.
fn weight_files(dir: &Path) -> R<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(CheckpointError {
            file: single,
            key: None,
            message: "missing (nor is there a model.safetensors.index.json); save the model with `save_pretrained(..., safe_serialization=True)`".into(),
        });
    }
    let v = read_json(&index)?;
    let Some(map) = v.get("weight_map").and_then(Value::as_object) else {
        return Err(CheckpointError {
            file: index,
            key: Some("weight_map".into()),
            message: "missing".into(),
        });
    };
    let mut files: Vec<PathBuf> = map
        .values()
        .filter_map(Value::as_str)
        .map(|f| dir.join(f))
        .collect();
    files.sort();
    files.dedup();
    if let Some(f) = files.iter().find(|f| !f.is_file()) {
        return Err(CheckpointError {
            file: f.clone(),
            key: None,
            message: format!("listed in {} but missing", index.display()),
        });
    }
    Ok(files)
}

impl Checkpoint {
    fn open_weights(&self) -> R<MmapedSafetensors> {
        // SAFETY: the files are only read; a file changed while mapped is the
        // same hazard as for every other safetensors reader.
        unsafe { MmapedSafetensors::multi(&self.weights) }.map_err(|e| CheckpointError {
            file: self.weights.first().cloned().unwrap_or_default(),
            key: None,
            message: format!("cannot read the weights: {e}"),
        })
    }

    /// Every tensor's shape, by the checkpoint's own key.
    pub fn shapes(&self) -> R<BTreeMap<String, Vec<usize>>> {
        Ok(shapes_of(&self.open_weights()?))
    }

    /// The key in the file holding the encoder's tensor `key`: as is (a
    /// `BertModel` / `ViTModel` checkpoint), under `bert.` / `vit.` (a task
    /// model's), and with the old `gamma`/`beta` names of layer norms (as
    /// `transformers` renames them on load).
    fn stored_key(&self, key: &str, shapes: &BTreeMap<String, Vec<usize>>) -> Option<String> {
        let old = key
            .strip_suffix("LayerNorm.weight")
            .map(|k| format!("{k}LayerNorm.gamma"))
            .or_else(|| {
                key.strip_suffix("LayerNorm.bias")
                    .map(|k| format!("{k}LayerNorm.beta"))
            });
        let base = format!("{}.", self.model_type);
        [Some(key.to_string()), old]
            .into_iter()
            .flatten()
            .flat_map(|k| [k.clone(), format!("{base}{k}")])
            .find(|k| shapes.contains_key(k))
    }

    /// The file holding `key` (for messages).
    fn file_of(&self, _key: &str) -> PathBuf {
        match self.weights.as_slice() {
            [one] => one.clone(),
            _ => self.dir.join("model.safetensors.index.json"),
        }
    }

    /// Compares `declared` (key without the prefix → shape) with the
    /// checkpoint: every declared tensor present with its shape.
    pub fn check(&self, declared: &BTreeMap<String, Vec<usize>>) -> Vec<CheckpointError> {
        let shapes = match self.shapes() {
            Ok(s) => s,
            Err(e) => return vec![e],
        };
        let mut out = vec![];
        for (key, want) in declared {
            let stored = self.stored_key(key, &shapes);
            match stored.as_ref().and_then(|k| shapes.get(k)) {
                None => out.push(CheckpointError {
                    file: self.file_of(key),
                    key: Some(key.clone()),
                    message: "missing from the checkpoint".into(),
                }),
                Some(have) if have != want => out.push(CheckpointError {
                    file: self.file_of(key),
                    key: Some(key.clone()),
                    message: format!(
                        "shape {have:?} in the checkpoint, but the model needs {want:?}"
                    ),
                }),
                _ => {}
            }
        }
        out
    }

    /// Copies the checkpoint's tensors into `params` under `prefix.`;
    /// returns how many were loaded.
    pub fn load_into(&self, params: &Params, prefix: &str) -> R<usize> {
        self.load_matching(params, prefix, |_| true)
    }

    /// [`Checkpoint::load_into`] for the parameters `wanted` accepts (by
    /// full key) only.
    pub fn load_matching(
        &self,
        params: &Params,
        prefix: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> R<usize> {
        let st = self.open_weights()?;
        let shapes = shapes_of(&st);
        let mut n = 0;
        for (key, var) in params.vars.iter().filter(|(k, _)| wanted(k)) {
            let Some(own) = key.strip_prefix(prefix).and_then(|k| k.strip_prefix('.')) else {
                continue;
            };
            let err = |m: String| CheckpointError {
                file: self.file_of(own),
                key: Some(own.to_string()),
                message: m,
            };
            let stored = self
                .stored_key(own, &shapes)
                .ok_or_else(|| err("missing from the checkpoint".into()))?;
            let t = st
                .load(&stored, var.device())
                .map_err(|e| err(format!("cannot load: {e}")))?;
            let t = t.to_dtype(var.dtype()).map_err(|e| err(e.to_string()))?;
            if t.dims() != var.dims() {
                return Err(err(format!(
                    "shape {:?} in the checkpoint, but the model needs {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t).map_err(|e| err(e.to_string()))?;
            n += 1;
        }
        Ok(n)
    }
}

/// Every tensor's shape in open weight files, by the file's own key.
fn shapes_of(st: &MmapedSafetensors) -> BTreeMap<String, Vec<usize>> {
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, v.shape().to_vec()))
        .collect()
}
