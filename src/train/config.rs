//! The `train { }` block of a model: optimizer, schedule, loss weighting,
//! batch size, epochs, early stopping, with Keras-like defaults. Elaboration
//! reads it from the source next to the graph; `train::fit` runs it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Adam,
    AdamW,
    Sgd,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub lr: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Schedule {
    Constant,
    Step { every: usize, gamma: f64 },
    Cosine { warmup: usize },
}

/// How the heads' losses combine (`train { weighting: ... }`): fixed weights,
/// loss-based schemes (one backward per step) or gradient methods (one
/// backward per head over the parameters two or more heads share).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weighting {
    Fixed,
    Uncertainty,
    Dwa,
    Gradnorm,
    Pcgrad,
    Cagrad { c: f64 },
    Mgda,
    Imtl,
    NashMtl { max_norm: f64 },
    Famo { lr: f64, gamma: f64 },
    Rlw,
    AlignedMtl,
}

/// Each method's name and its named arguments with the paper's defaults.
pub const WEIGHTINGS: &[(&str, &[(&str, f64)])] = &[
    ("fixed", &[]),
    ("uncertainty", &[]),
    ("dwa", &[]),
    ("gradnorm", &[]),
    ("pcgrad", &[]),
    ("cagrad", &[("c", 0.4)]),
    ("mgda", &[]),
    ("imtl", &[]),
    ("nash_mtl", &[("max_norm", 1.0)]),
    ("famo", &[("lr", 0.025), ("gamma", 0.01)]),
    ("rlw", &[]),
    ("aligned_mtl", &[]),
];

/// Why a weighting cannot be built from a name and arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightingError {
    UnknownMethod(String),
    /// (method, argument, the method's arguments).
    UnknownArgument(String, String, Vec<&'static str>),
    /// (method, argument, why).
    BadValue(String, String, &'static str),
}

impl std::fmt::Display for WeightingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightingError::UnknownMethod(m) => write!(f, "unknown loss weighting `{m}`"),
            WeightingError::UnknownArgument(m, a, known) if known.is_empty() => {
                write!(f, "`{m}` takes no arguments (found `{a}`)")
            }
            WeightingError::UnknownArgument(m, a, known) => write!(
                f,
                "`{m}` has no argument `{a}`; its arguments: {}",
                known.join(", ")
            ),
            WeightingError::BadValue(m, a, why) => write!(f, "`{m}`'s `{a}` {why}"),
        }
    }
}

impl Weighting {
    /// The method `name` with named arguments (positional ones name the
    /// method's arguments in order); the rest take the paper's defaults.
    pub fn build(name: &str, args: &[(Option<String>, f64)]) -> Result<Self, WeightingError> {
        let spec = WEIGHTINGS
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| WeightingError::UnknownMethod(name.into()))?
            .1;
        let mut vals: Vec<f64> = spec.iter().map(|(_, d)| *d).collect();
        for (i, (k, v)) in args.iter().enumerate() {
            let at = match k {
                Some(k) => spec.iter().position(|(n, _)| n == k),
                None => (i < spec.len()).then_some(i),
            };
            let Some(at) = at else {
                return Err(WeightingError::UnknownArgument(
                    name.into(),
                    k.clone().unwrap_or_else(|| format!("argument {}", i + 1)),
                    spec.iter().map(|(n, _)| *n).collect(),
                ));
            };
            if !v.is_finite() || *v < 0.0 {
                return Err(WeightingError::BadValue(
                    name.into(),
                    spec[at].0.into(),
                    "must be a finite number ≥ 0",
                ));
            }
            vals[at] = *v;
        }
        Ok(match name {
            "fixed" => Weighting::Fixed,
            "uncertainty" => Weighting::Uncertainty,
            "dwa" => Weighting::Dwa,
            "gradnorm" => Weighting::Gradnorm,
            "pcgrad" => Weighting::Pcgrad,
            "cagrad" => Weighting::Cagrad { c: vals[0] },
            "mgda" => Weighting::Mgda,
            "imtl" => Weighting::Imtl,
            "nash_mtl" => Weighting::NashMtl { max_norm: vals[0] },
            "famo" => Weighting::Famo {
                lr: vals[0],
                gamma: vals[1],
            },
            "rlw" => Weighting::Rlw,
            _ => Weighting::AlignedMtl,
        })
    }

    /// `NAME` or `NAME(k = v, ...)`, as `--weighting` takes it.
    pub fn parse(text: &str) -> Result<Self, WeightingError> {
        let text = text.trim();
        let (name, rest) = match text.split_once('(') {
            Some((n, r)) => (n.trim(), r.trim().strip_suffix(')').unwrap_or(r)),
            None => (text, ""),
        };
        let mut args = vec![];
        for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = match part.split_once('=') {
                Some((k, v)) => (Some(k.trim().to_string()), v.trim()),
                None => (None, part),
            };
            let v: f64 = v.parse().map_err(|_| {
                WeightingError::BadValue(
                    name.into(),
                    k.clone().unwrap_or_default(),
                    "must be a number",
                )
            })?;
            args.push((k, v));
        }
        Self::build(name, &args)
    }

    /// Its name in the language.
    pub fn name(&self) -> &'static str {
        let i = match self {
            Weighting::Fixed => 0,
            Weighting::Uncertainty => 1,
            Weighting::Dwa => 2,
            Weighting::Gradnorm => 3,
            Weighting::Pcgrad => 4,
            Weighting::Cagrad { .. } => 5,
            Weighting::Mgda => 6,
            Weighting::Imtl => 7,
            Weighting::NashMtl { .. } => 8,
            Weighting::Famo { .. } => 9,
            Weighting::Rlw => 10,
            Weighting::AlignedMtl => 11,
        };
        WEIGHTINGS[i].0
    }

    /// Combines per-task gradients over the shared parameters (one backward
    /// per head) rather than weighting losses (one backward per step).
    pub fn is_gradient_method(&self) -> bool {
        matches!(
            self,
            Weighting::Pcgrad
                | Weighting::Cagrad { .. }
                | Weighting::Mgda
                | Weighting::Imtl
                | Weighting::NashMtl { .. }
                | Weighting::AlignedMtl
        )
    }
}

/// The `train { }` block with Keras-like defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainConfig {
    pub optimizer: OptimizerConfig,
    pub batch_size: usize,
    pub epochs: usize,
    pub schedule: Schedule,
    pub weighting: Weighting,
    pub clip_norm: Option<f64>,
    /// Stop after this many epochs without improvement of `monitor`.
    pub patience: Option<usize>,
    /// `val_loss`, or `HEAD.METRIC`.
    pub monitor: String,
    pub val_split: f64,
    pub seed: u64,
    /// Checkpoint prefixes whose weights stay fixed (`train { freeze }`,
    /// `--freeze`): every layer whose prefix starts with one.
    pub freeze: Vec<String>,
}

impl TrainConfig {
    /// What is wrong with the settings (after command-line overrides), all at once.
    pub fn problems(&self) -> Vec<String> {
        let mut out = vec![];
        let lr = self.optimizer.lr;
        if !(lr.is_finite() && lr > 0.0) {
            out.push(format!(
                "the learning rate must be a finite number > 0 (found {lr})"
            ));
        }
        if self.batch_size == 0 {
            out.push("the batch size must be at least 1".into());
        }
        if self.epochs == 0 {
            out.push("the number of epochs must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.val_split) {
            out.push(format!(
                "the validation split must be in [0, 1) (found {})",
                self.val_split
            ));
        }
        out
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            optimizer: OptimizerConfig {
                kind: OptimizerKind::Adam,
                lr: 1e-3,
                weight_decay: 0.0,
                momentum: 0.0,
                nesterov: false,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-7,
            },
            batch_size: 32,
            epochs: 10,
            schedule: Schedule::Constant,
            weighting: Weighting::Fixed,
            clip_norm: None,
            patience: None,
            monitor: "val_loss".into(),
            val_split: 0.0,
            freeze: vec![],
            seed: 0,
        }
    }
}
