//! Training, evaluation and checkpoints for multi-task models.

pub mod config;
mod fit;
pub mod gradnorm;
pub mod loss;
pub mod metrics;
pub mod optim;

pub use fit::{evaluate, fit, EpochRecord, EvalResult, FitConfig, HeadEval, Observer, TrainError};
