//! [`Sdpa`](super::attention::Sdpa) on CUDA: scores, mask, softmax and
//! the weighted sum in one kernel, a thread block per (sample, head, query
//! row), the row's scores in shared memory; the backward in two kernels
//! that need no atomics, one per query row (dS and dQ) and one per key row
//! (dK and dV). The mask is a [B, Tq, Tk] 0/1 tensor on the device, built
//! there from the padding masks (`lower::calls::attention`), so no step
//! waits on a copy to the host. A row's scores and its query (or output
//! gradient) row share 48 KiB of shared memory: up to 8,192 keys and rows
//! of 1,024 (`attention::fits_gpu`).
//!
//! Why: through candle's ops the GPU ran the query's scaling, a transpose
//! copy, two batched products, four mask ops and the softmax forward, and
//! as many backward, each its own launch on [B, H, Tq, Tk] tensors that at
//! the shipped models' sizes hold a few thousand values.
//!
//! Forward, per row i: s_j = scale·q_i·k_j + (a_ij − 1)·1e9 (Keras's
//! masked softmax); p = softmax(s); o_i = Σ_j p_j·v_j. Backward: dp_j =
//! do_i·v_j; ds_j = scale·p_j·(dp_j − Σ_j p_j·dp_j); dq_i = Σ_j ds_j·k_j;
//! dk_j = Σ_i ds_ij·q_i; dv_j = Σ_i p_ij·do_i.

use super::cuda::{blocks, launch_on, launch_tensors, missing, tensor, Arg};
use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
use candle_core::{CudaStorage, Layout, Result, Storage, Tensor};

const SOURCE: &str = r#"
#define THREADS 128
#define NEG_INF __int_as_float(0xff800000)

// The max or the sum of every thread's v over the block (THREADS threads).
__device__ float block_reduce(float v, float* red, bool is_max) {
    for (int o = 16; o > 0; o /= 2) {
        const float w = __shfl_xor_sync(0xffffffff, v, o);
        v = is_max ? fmaxf(v, w) : v + w;
    }
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    float r = red[0];
    for (int i = 1; i < THREADS / 32; i++) r = is_max ? fmaxf(r, red[i]) : r + red[i];
    __syncthreads();
    return r;
}

// q [BH, Tq, K], k [BH, Tk, K], v [BH, Tk, V], allowed [B, Tq, Tk] (when
// has_mask) -> out [BH, Tq, V] and, with keep, probs [BH, Tq, Tk]. A block
// per (bh, i).
extern "C" __global__ void mtl_sdpa(const float* q, const float* k, const float* v,
                                    const float* allowed, float* out, float* probs, int h, int tq,
                                    int tk, int kd, int vd, float scale, int has_mask, int keep) {
    extern __shared__ float sm[];
    __shared__ float red[THREADS / 32];
    float* p = sm;        // [tk] the row's scores, then probabilities
    float* qs = sm + tk;  // [kd] the query row
    const int row = blockIdx.x, bh = row / tq, i = row % tq, b = bh / h;
    const float* kb = k + (size_t)bh * tk * kd;
    const float* vb = v + (size_t)bh * tk * vd;
    for (int d = threadIdx.x; d < kd; d += THREADS) qs[d] = q[(size_t)row * kd + d];
    __syncthreads();
    float mx = NEG_INF;
    for (int j = threadIdx.x; j < tk; j += THREADS) {
        float s = 0.0f;
        for (int d = 0; d < kd; d++) s += qs[d] * kb[(size_t)j * kd + d];
        s *= scale;
        if (has_mask) s += (allowed[((size_t)b * tq + i) * tk + j] - 1.0f) * 1e9f;
        p[j] = s;
        mx = fmaxf(mx, s);
    }
    mx = block_reduce(mx, red, true);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < tk; j += THREADS) {
        const float e = expf(p[j] - mx);
        p[j] = e;
        sum += e;
    }
    const float inv = 1.0f / block_reduce(sum, red, false);
    for (int j = threadIdx.x; j < tk; j += THREADS) {
        p[j] *= inv;
        if (keep) probs[(size_t)row * tk + j] = p[j];
    }
    __syncthreads();
    for (int d = threadIdx.x; d < vd; d += THREADS) {
        float acc = 0.0f;
        for (int j = 0; j < tk; j++) acc += p[j] * vb[(size_t)j * vd + d];
        out[(size_t)row * vd + d] = acc;
    }
}

// Per query row (bh, i): ds [BH, Tq, Tk] and dq [BH, Tq, K].
extern "C" __global__ void mtl_sdpa_grad_rows(const float* k, const float* v, const float* probs,
                                              const float* dout, float* dq, float* ds, int tq,
                                              int tk, int kd, int vd, float scale) {
    extern __shared__ float sm[];
    __shared__ float red[THREADS / 32];
    float* dsr = sm;       // [tk] dp, then ds
    float* dos = sm + tk;  // [vd] the output row's gradient
    const int row = blockIdx.x, bh = row / tq;
    const float* kb = k + (size_t)bh * tk * kd;
    const float* vb = v + (size_t)bh * tk * vd;
    const float* pr = probs + (size_t)row * tk;
    for (int d = threadIdx.x; d < vd; d += THREADS) dos[d] = dout[(size_t)row * vd + d];
    __syncthreads();
    float dot = 0.0f;
    for (int j = threadIdx.x; j < tk; j += THREADS) {
        float dp = 0.0f;
        for (int d = 0; d < vd; d++) dp += dos[d] * vb[(size_t)j * vd + d];
        dsr[j] = dp;
        dot += dp * pr[j];
    }
    dot = block_reduce(dot, red, false);
    for (int j = threadIdx.x; j < tk; j += THREADS) {
        const float s = pr[j] * (dsr[j] - dot) * scale;
        dsr[j] = s;
        ds[(size_t)row * tk + j] = s;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < kd; d += THREADS) {
        float acc = 0.0f;
        for (int j = 0; j < tk; j++) acc += dsr[j] * kb[(size_t)j * kd + d];
        dq[(size_t)row * kd + d] = acc;
    }
}

// Per key row (bh, j): dk [BH, Tk, K] and dv [BH, Tk, V], summed over the
// query rows in order.
extern "C" __global__ void mtl_sdpa_grad_keys(const float* q, const float* probs, const float* ds,
                                              const float* dout, float* dk, float* dv, int tq,
                                              int tk, int kd, int vd) {
    const int row = blockIdx.x, bh = row / tk, j = row % tk;
    const size_t r0 = (size_t)bh * tq;
    for (int d = threadIdx.x; d < vd; d += blockDim.x) {
        float acc = 0.0f;
        for (int i = 0; i < tq; i++) acc += probs[(r0 + i) * tk + j] * dout[(r0 + i) * vd + d];
        dv[(size_t)row * vd + d] = acc;
    }
    for (int d = threadIdx.x; d < kd; d += blockDim.x) {
        float acc = 0.0f;
        for (int i = 0; i < tq; i++) acc += ds[(r0 + i) * tk + j] * q[(r0 + i) * kd + d];
        dk[(size_t)row * kd + d] = acc;
    }
}
"#;

const MODULE: (&str, &str) = ("mtl_attention", SOURCE);
const THREADS: u32 = 128;

/// Block geometry: (B, H, Tq, Tk, K, V).
pub type Dims = (usize, usize, usize, usize, usize, usize);

/// A block per row of `rows`, with `floats` of dynamic shared memory.
fn per_row(rows: usize, floats: usize) -> LaunchConfig {
    LaunchConfig {
        shared_mem_bytes: (4 * floats) as u32,
        ..blocks(rows, THREADS)
    }
}

fn ints(v: &[usize]) -> Vec<Arg> {
    v.iter().map(|&x| Arg::I32(x as i32)).collect()
}

/// The output [B, H, Tq, V] and, with `keep`, the probabilities
/// [B, H, Tq, Tk] from contiguous q, k, v and the mask `allowed`
/// [B, Tq, Tk] (on the same device).
pub fn forward(
    qkv: [(&CudaStorage, &Layout); 3],
    allowed: Option<&Tensor>,
    dims: Dims,
    scale: f32,
    keep: bool,
) -> Result<(CudaStorage, Option<Tensor>)> {
    let (b, h, tq, tk, kd, vd) = dims;
    let name = "mtl_sdpa";
    let guard = allowed.map(|a| a.storage_and_layout());
    let mask = match guard.as_ref().map(|(s, l)| (&**s, *l)) {
        Some((Storage::Cuda(c), l)) if l.shape().elem_count() == b * tq * tk => (c, l),
        Some(_) => candle_core::bail!("attention: the mask is not [{b}, {tq}, {tk}] on the device"),
        None => qkv[0],
    };
    let mut args = ints(&[h, tq, tk, kd, vd]);
    args.extend([
        Arg::F32(scale),
        Arg::I32(allowed.is_some() as i32),
        Arg::I32(keep as i32),
    ]);
    let rows = b * h * tq;
    let lens = [rows * vd, if keep { rows * tk } else { 0 }];
    let operands = [qkv[0], qkv[1], qkv[2], mask];
    let outs = launch_on(
        MODULE,
        name,
        &operands,
        &lens,
        per_row(rows, tk + kd),
        &args,
    )?;
    let [out, probs]: [CudaStorage; 2] = outs.try_into().map_err(|_| missing(name))?;
    Ok((out, keep.then(|| tensor(probs, (b, h, tq, tk)))))
}

/// (dq, dk, dv) from the operands, the kept probabilities and the output's
/// gradient.
pub fn backward(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    probs: &Tensor,
    grad: &Tensor,
    dims: Dims,
    scale: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, h, tq, tk, kd, vd) = dims;
    let name = "mtl_sdpa_grad_rows";
    let rows = b * h * tq;
    let mut args = ints(&[tq, tk, kd, vd]);
    args.push(Arg::F32(scale));
    let grid = per_row(rows, tk + vd);
    let lens = [rows * kd, rows * tk];
    let outs = launch_tensors(MODULE, name, &[k, v, probs, grad], &lens, grid, &args)?;
    let [dq, ds]: [CudaStorage; 2] = outs.try_into().map_err(|_| missing(name))?;
    let ds = tensor(ds, (b, h, tq, tk));
    let name = "mtl_sdpa_grad_keys";
    let keys = b * h * tk;
    let lens = [keys * kd, keys * vd];
    let grid = blocks(keys, 64);
    let args = ints(&[tq, tk, kd, vd]);
    let outs = launch_tensors(MODULE, name, &[q, probs, &ds, grad], &lens, grid, &args)?;
    let [dk, dv]: [CudaStorage; 2] = outs.try_into().map_err(|_| missing(name))?;
    Ok((
        tensor(dq, q.shape()),
        tensor(dk, k.shape()),
        tensor(dv, v.shape()),
    ))
}
