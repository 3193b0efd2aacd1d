//! [`MaxPool2d`](super::cpu_ops::MaxPool2d) on CUDA. The forward is a
//! thread per output that keeps, in training, its window's first maximum
//! (the offset in the window, as the CPU code's, exact as an f32); the
//! backward a thread per input element that adds the gradients of the
//! windows whose kept maximum it is, so overlapping windows need no atomics.
//!
//! Why: off our CPU kernel a training max pool was candle's ops, with the
//! first maximum found by a product with a triangular matrix (Keras's
//! routing of ties, which candle's own backward splits): about ten kernels
//! forward and as many back, on eight of the shipped models.

use super::cuda::{launch_on, launch_tensors, missing, tensor, Arg};
use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
use candle_core::{CudaStorage, Layout, Result, Tensor};

const SOURCE: &str = r#"
extern "C" __global__ void mtl_max_pool(const float* x, float* y, float* arg, int planes, int h,
                                        int w, int oh, int ow, int kh, int kw, int sh, int sw,
                                        int keep) {
    const size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= (size_t)planes * oh * ow) return;
    const int j0 = (k % ow) * sw, i0 = ((k / ow) % oh) * sh;
    const float* xp = x + (k / ((size_t)ow * oh)) * h * w;
    float best = __int_as_float(0xff800000);
    int at = 0;
    for (int i = 0; i < kh; i++) {
        for (int j = 0; j < kw; j++) {
            const float v = xp[(i0 + i) * w + j0 + j];
            if (v > best) {
                best = v;
                at = i * kw + j;
            }
        }
    }
    y[k] = best;
    if (keep) arg[k] = (float)at;
}

// Input element (yy, xx) lies in windows (a, b) with a·sh ≤ yy < a·sh + kh
// (and the same across).
extern "C" __global__ void mtl_max_pool_grad(const float* dy, const float* arg, float* dx,
                                             int planes, int h, int w, int oh, int ow, int kh,
                                             int kw, int sh, int sw) {
    const size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= (size_t)planes * h * w) return;
    const int xx = k % w, yy = (k / w) % h;
    const size_t p = k / ((size_t)w * h);
    const int a0 = yy >= kh ? (yy - kh) / sh + 1 : 0, a1 = min(yy / sh, oh - 1);
    const int b0 = xx >= kw ? (xx - kw) / sw + 1 : 0, b1 = min(xx / sw, ow - 1);
    float acc = 0.0f;
    for (int a = a0; a <= a1; a++) {
        for (int b = b0; b <= b1; b++) {
            const size_t o = (p * oh + a) * ow + b;
            if ((int)arg[o] == (yy - a * sh) * kw + (xx - b * sw)) acc += dy[o];
        }
    }
    dx[k] = acc;
}
"#;

const MODULE: (&str, &str) = ("mtl_max_pool", SOURCE);

/// The geometry: (planes, (h, w), (oh, ow), window, stride).
pub type Geometry = (
    usize,
    (usize, usize),
    (usize, usize),
    (usize, usize),
    (usize, usize),
);

fn args((planes, (h, w), (oh, ow), (kh, kw), (sh, sw)): Geometry) -> Vec<Arg> {
    [planes, h, w, oh, ow, kh, kw, sh, sw]
        .into_iter()
        .map(|v| Arg::I32(v as i32))
        .collect()
}

fn threads(n: usize) -> LaunchConfig {
    LaunchConfig::for_num_elems(n as u32)
}

/// The pooled planes and, with `keep`, each window's first-maximum offset
/// (same shape, f32).
pub fn forward(
    x: (&CudaStorage, &Layout),
    geo: Geometry,
    keep: bool,
) -> Result<(CudaStorage, Option<Tensor>)> {
    let (planes, _, (oh, ow), ..) = geo;
    let n = planes * oh * ow;
    let mut a = args(geo);
    a.push(Arg::I32(keep as i32));
    let name = "mtl_max_pool";
    let lens = [n, if keep { n } else { 0 }];
    let outs = launch_on(MODULE, name, &[x], &lens, threads(n), &a)?;
    let [y, arg]: [CudaStorage; 2] = outs.try_into().map_err(|_| missing(name))?;
    Ok((y, keep.then(|| tensor(arg, n))))
}

/// x's gradient [planes·h·w] from the output's and the kept offsets.
pub fn backward(grad: &Tensor, arg: &Tensor, geo: Geometry) -> Result<CudaStorage> {
    let (planes, (h, w), ..) = geo;
    let n = planes * h * w;
    let name = "mtl_max_pool_grad";
    let outs = launch_tensors(MODULE, name, &[grad, arg], &[n], threads(n), &args(geo))?;
    super::cuda::first(outs, name)
}
