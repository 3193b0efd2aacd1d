//! Text vocabularies and label maps, built from the training split and saved
//! in the run directory (`data.json`) so evaluate and predict encode alike.

use super::table::Manifest;
use crate::ir::{InputKind, LossKind};
use crate::signature::Signature;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const PAD: &str = "<pad>";
pub const UNK: &str = "<unk>";

/// Token ids: 0 is padding, 1 unknown, then words by falling frequency.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Vocab {
    pub tokens: Vec<String>,
}

impl Vocab {
    /// The most frequent words of `texts`, capped at `size` ids in all.
    pub fn build<'a>(texts: impl Iterator<Item = &'a str>, size: usize) -> Self {
        let mut freq: HashMap<String, usize> = HashMap::new();
        for t in texts {
            for w in tokenize(t) {
                *freq.entry(w).or_default() += 1;
            }
        }
        let mut words: Vec<(String, usize)> = freq.into_iter().collect();
        words.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut tokens = vec![PAD.to_string(), UNK.to_string()];
        tokens.extend(
            words
                .into_iter()
                .map(|(w, _)| w)
                .take(size.saturating_sub(2)),
        );
        Vocab { tokens }
    }

    /// Ids of `text`, padded with 0 or truncated to `len`.
    pub fn encode(&self, text: &str, len: usize) -> Vec<i64> {
        Self::encode_with(&self.index(), text, len)
    }

    /// Word → id, built once per column rather than once per row.
    pub fn index(&self) -> HashMap<&str, usize> {
        self.tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect()
    }

    pub fn encode_with(index: &HashMap<&str, usize>, text: &str, len: usize) -> Vec<i64> {
        let mut ids: Vec<i64> = tokenize(text)
            .iter()
            .map(|w| index.get(w.as_str()).copied().unwrap_or(1) as i64)
            .take(len)
            .collect();
        ids.resize(len, 0);
        ids
    }
}

/// The built-in tokenizer: lower-case words (letters, digits, apostrophes).
pub fn tokenize(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Class names of a cross-entropy head; the id is the position.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelMap {
    pub classes: Vec<String>,
}

impl LabelMap {
    pub fn id(&self, name: &str) -> Option<usize> {
        self.classes.iter().position(|c| c == name)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Encoders {
    /// Per token input (the built-in word tokenizer).
    pub vocabs: BTreeMap<String, Vocab>,
    /// Per cross-entropy head (by head name).
    pub labels: BTreeMap<String, LabelMap>,
    /// A Hugging Face `tokenizer.json` for every token input instead of the
    /// built-in tokenizer; relative paths are relative to `data.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<std::path::PathBuf>,
    /// Whether that tokenizer adds its special tokens (`[CLS] … [SEP]`), as
    /// `transformers` does by default: set for a `pretrained` BERT's own
    /// tokenizer, whose pooler reads the first position.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub special_tokens: bool,
}

impl Encoders {
    /// Vocabularies (capped at each input's `vocab`) and label maps from a
    /// training manifest. Integer labels in [0, K) are used as ids directly.
    pub fn fit(
        sig: &Signature,
        m: &Manifest,
        tokenizer: Option<std::path::PathBuf>,
    ) -> Result<Self, String> {
        let mut e = Encoders {
            tokenizer,
            ..Default::default()
        };
        for i in &sig.inputs {
            if e.tokenizer.is_some() {
                break;
            }
            let (InputKind::Tokens { vocab: v }, true) = (&i.kind, i.embedded) else {
                continue;
            };
            if let Some(col) = m.column(&i.name) {
                e.vocabs.insert(
                    i.name.clone(),
                    Vocab::build(m.rows.iter().map(|r| r[col].as_str()), *v),
                );
            }
        }
        for h in &sig.heads {
            let per_sample = h.label_type.as_ref().is_some_and(|t| t.rank() == 0);
            if h.loss != LossKind::CrossEntropy || !per_sample {
                continue;
            }
            let Some(col) = m.column(&h.label) else {
                continue;
            };
            let k = h.classes;
            let mut names: Vec<&str> = m
                .rows
                .iter()
                .map(|r| r[col].trim())
                .filter(|c| !c.is_empty())
                .collect();
            names.sort_unstable();
            names.dedup();
            let numeric = names
                .iter()
                .all(|n| n.parse::<usize>().is_ok_and(|i| i < k));
            let classes: Vec<String> = if numeric {
                (0..k).map(|i| i.to_string()).collect()
            } else {
                if names.len() > k {
                    return Err(format!(
                        "{}: column `{}` has {} classes ({}{}) but head `{}` has {k}; widen the head's dense layer",
                        m.path.display(),
                        h.label,
                        names.len(),
                        names.iter().take(8).copied().collect::<Vec<_>>().join(", "),
                        if names.len() > 8 { ", ..." } else { "" },
                        h.name
                    ));
                }
                names.iter().map(|s| s.to_string()).collect()
            };
            e.labels.insert(h.name.clone(), LabelMap { classes });
        }
        Ok(e)
    }

    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// Reads `data.json`; a missing file means no encoders (tensor data).
    pub fn load(path: &Path) -> Result<Self, String> {
        let mut e: Encoders = match std::fs::read_to_string(path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(_) => return Ok(Encoders::default()),
        };
        if let (Some(t), Some(dir)) = (e.tokenizer.as_mut(), path.parent()) {
            if t.is_relative() {
                *t = dir.join(&*t);
            }
        }
        Ok(e)
    }

    pub fn is_empty(&self) -> bool {
        self.vocabs.is_empty() && self.labels.is_empty() && self.tokenizer.is_none()
    }

    /// The Hugging Face tokenizer, when one is set.
    pub fn hf_tokenizer(&self) -> Result<Option<tokenizers::Tokenizer>, String> {
        self.tokenizer
            .as_ref()
            .map(|p| {
                tokenizers::Tokenizer::from_file(p)
                    .map_err(|e| format!("cannot load tokenizer {}: {e}", p.display()))
            })
            .transpose()
    }
}
