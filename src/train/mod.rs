//! Training, evaluation and checkpoints for multi-task models.

mod checkpoint;
pub mod combine;
pub mod config;
pub mod contrastive;
mod fit;
pub mod gradnorm;
pub mod loss;
pub mod metrics;
mod modality;
pub mod optim;
mod scheme;
mod tensorboard;
pub mod weighting;

pub use fit::{evaluate, fit, EpochRecord, EvalResult, FitConfig, HeadEval, Observer, TrainError};
