//! Numeric code only: our CPU kernels as candle custom ops with their own
//! backward, and their helpers. Nothing here knows the IR; the lowering
//! (`crate::lower`) decides which kernel runs each step.

pub mod adam;
pub mod attention;
#[cfg(feature = "cuda")]
mod attention_cuda;
pub mod batch_norm;
pub mod columns;
pub mod conv;
mod conv_fused;
pub mod cpu_ops;
#[cfg(feature = "cuda")]
pub mod cuda;
mod direct;
pub mod gelu;
pub mod gemm;
pub mod gemm_small;
pub mod gru;
pub mod gru_cell;
pub mod host;
mod im2col;
pub mod lanes;
pub mod layer_norm;
pub mod linear;
pub mod loss;
pub mod lstm;
pub mod lstm_cell;
pub mod math;
#[cfg(feature = "cuda")]
mod max_pool_cuda;
pub mod par;
pub mod projected;
#[cfg(feature = "cuda")]
pub mod recurrence_cuda;
pub mod scratch;
pub mod softmax;
mod winograd;

use std::cell::Cell;

thread_local! {
    static PORTABLE: Cell<bool> = const { Cell::new(false) };
}

/// Whether our own kernels serve tensors on `device`. They are CPU code, so
/// any other device takes candle's ops; `--kernels candle` (see
/// [`set_portable`]) makes the CPU take them too, which is how the path every
/// GPU run takes is tested on a machine without one.
pub fn native_device(device: &candle_core::Device) -> bool {
    device.is_cpu() && !PORTABLE.with(Cell::get)
}

/// Whether our own kernels compute `t`: f32 (they know no other dtype) on a
/// [`native_device`].
pub fn native(t: &candle_core::Tensor) -> bool {
    t.dtype() == candle_core::DType::F32 && native_device(t.device())
}

/// Whether a recurrence over `x` runs as one whole-sequence op (an
/// unmasked, hoisted one: the caller checks that) rather than step by step:
/// always on a CPU (our fused kernels; under `--kernels candle` too, since
/// that is the GPU's path), and on a CUDA device up to the widest its
/// sequence kernels (`recurrence_cuda`) take. The op computes in f32: other
/// dtypes (a bf16 run) go through casts around it (`lower::calls::rnn`).
pub fn sequence_op(x: &candle_core::Tensor, units: usize) -> bool {
    if !x.dtype().is_float() {
        return false;
    }
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return units <= recurrence_cuda::MAX_UNITS;
    }
    let _ = units;
    x.device().is_cpu()
}

/// Whether the GPU path's own ops (CPU and CUDA code, such as
/// [`columns`]) serve `x`: f32 off our CPU kernels, on CUDA or on a CPU
/// running candle's ops (`--kernels candle`, which is how CI runs the GPU's
/// path); Metal has no code of ours.
pub fn gpu_path(x: &candle_core::Tensor) -> bool {
    x.dtype() == candle_core::DType::F32 && !native(x) && !x.device().is_metal()
}

/// Whether one of our ops that has CPU and CUDA code (norms, the
/// attention's softmax, the max pool, the recurrences) serves `x`: on our
/// CPU kernels' path or on the GPU path ([`native`] or [`gpu_path`]).
pub fn both_paths(x: &candle_core::Tensor) -> bool {
    native(x) || gpu_path(x)
}

/// Candle's ops instead of ours on this thread (the one that runs the
/// program: lowering and execution never leave it).
pub fn set_portable(on: bool) {
    PORTABLE.with(|p| p.set(on));
}

/// Backpropagates the same random projection of `ours` and `theirs` (an op
/// and its candle reference) and checks the gradients of `vars` agree.
#[cfg(test)]
pub(crate) fn assert_same_gradients(
    ours: &candle_core::Tensor,
    theirs: &candle_core::Tensor,
    vars: &[&candle_core::Var],
    tol: f32,
    what: &str,
) {
    let r = candle_core::Tensor::randn(0f32, 1.0, ours.dims(), ours.device()).unwrap();
    let grads = |y: &candle_core::Tensor| (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let (ga, gb) = (grads(ours), grads(theirs));
    for (i, v) in vars.iter().enumerate() {
        let (p, q) = (
            ga.get(v.as_tensor()).unwrap(),
            gb.get(v.as_tensor()).unwrap(),
        );
        let d = max_abs_diff(p, q);
        assert!(d < tol, "{what}: gradient {i} differs by {d}");
    }
}

/// The largest absolute difference of two tensors, for the kernels' unit tests.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
        .unwrap_or(f32::INFINITY)
}
