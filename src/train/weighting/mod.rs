//! Multi-task gradient weighting: each method turns the per-task gradients
//! g_1..g_k over the shared parameters (through their Gram matrix, or the
//! task losses for FAMO/RLW) into coefficients alpha such that the shared
//! update is Σ alpha_i g_i. All functions are pure math on small vectors.

pub mod aligned_mtl;
pub mod cagrad;
pub mod famo;
pub mod gram;
pub mod imtl;
pub mod mgda;
pub mod nash_mtl;
pub mod pcgrad;
pub mod rlw;
pub mod simplex;

pub use gram::Gram;

#[cfg(test)]
mod properties;
#[cfg(test)]
mod testutil;
