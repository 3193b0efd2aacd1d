//! Numeric code only: our CPU kernels as candle custom ops with their own
//! backward, and their helpers. Nothing here knows the IR; the lowering
//! (`crate::lower`) decides which kernel runs each step.

pub mod attention;
pub mod batch_norm;
pub mod conv;
pub mod cpu_ops;
pub mod gelu;
pub mod gemm;
pub mod gru;
pub mod host;
pub mod layer_norm;
pub mod linear;
pub mod lstm;
pub mod math;
pub mod par;
pub mod softmax;

/// The largest absolute difference of two tensors, for the kernels' unit tests.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
        .unwrap_or(f32::INFINITY)
}
