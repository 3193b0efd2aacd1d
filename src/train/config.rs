//! The `train { }` block of a model: optimizer, schedule, loss weighting,
//! batch size, epochs, early stopping, with Keras-like defaults. Elaboration
//! reads it from the source next to the graph; `train::fit` runs it.

use serde::Serialize;

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

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Weighting {
    Fixed,
    Uncertainty,
    Dwa,
    Gradnorm,
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
            seed: 0,
        }
    }
}
