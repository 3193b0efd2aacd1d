//! The whole-sequence recurrences ([`super::lstm::LstmSeq`],
//! [`super::gru::GruSeq`]) on CUDA: one kernel launch runs every step
//! forward, one runs every step backward.
//!
//! Why: the step loop with [`super::lstm_cell`] still launches a GEMM, an
//! add and two cell kernels per step forward, and about three times as many
//! backward; a training step of `reviews` was thousands of launches, and
//! mtl trained it at 0.14× PyTorch's rate on an H200 (benches/README.md).
//!
//! Layout: one thread block per [`ROWS`] batch rows, which are independent
//! through the whole recurrence, so a block never waits for another. Each
//! step, a thread per gate column j computes that column for the block's rows
//! from h in shared memory and W_hhᵀ (read once per step for all the rows,
//! coalesced across the warp), then a thread per (row, unit) applies the cell.
//! The backward runs the steps in reverse the same way: dh carried to the
//! earlier step is dgates · W_hh (a thread per unit), then the cell's
//! gradient per (row, unit). W_hh's gradient is one GEMM over all steps
//! afterwards, as on the CPU. The GRU (Keras `reset_after`) runs the same
//! way over its three gates, with the recurrent bias inside the recurrent
//! projection.
//!
//! Shared memory holds at most 6·H floats per row, so the ops take
//! H ≤ [`MAX_UNITS`] (48 KiB, the default limit without opting in); wider
//! recurrences keep the step loop.

use super::cuda::{launch, launch_on, launch_tensors, missing, shared_optin, tensor, Arg};
use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
use candle_core::{CudaDevice, CudaStorage, Layout, Result, Tensor};

/// Batch rows per thread block; the `#define ROWS` of the kernels' source must agree.
const ROWS: usize = 4;

/// The widest recurrence the kernels take: 6·H floats of shared memory per row.
pub const MAX_UNITS: usize = 48 * 1024 / (4 * 6 * ROWS);

const SOURCE: &str = r#"
#define ROWS 4
__device__ __forceinline__ float sg(float x) { return 1.0f / (1.0f + expf(-x)); }

// acc[r] += Σ_q in[r·k + q] · w[q·n + col] for the block's ROWS rows: column
// `col` of the [ROWS, k] · [k, n] product, each weight read once for all rows
// (the rows from shared memory, the weights coalesced across the threads'
// columns). The forward's h·W_hhᵀ and the backward's dgates·W_hh.
__device__ __forceinline__ void rows_times(const float* in, const float* w, int k, int n, int col,
                                           float* acc) {
    for (int q = 0; q < k; ++q) {
        const float wv = w[(size_t)q * n + col];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) acc[r] += in[r * k + q] * wv;
    }
}

// The weights a kernel reads each step: with w_smem, copied once into
// shared memory after the rows' state (6·ROWS·H floats), else in place.
__device__ __forceinline__ const float* weights(const float* w, int len, float* sm, int h, int w_smem) {
    if (!w_smem) return w;
    float* ws = sm + 6 * ROWS * h;
    for (int e = threadIdx.x; e < len; e += blockDim.x) ws[e] = w[e];
    return ws;
}

extern "C" __global__ void mtl_transpose(const float* w, float* out, int rows, int cols) {
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= rows * cols) return;
    out[(size_t)(k % cols) * rows + k / cols] = w[k];
}

// xw [B, T, 4H], wt = W_hhᵀ [H, 4H] -> hs [B, T, H]; with `save`, also the
// gate activations (i, f, g, o) [B, T, 4H] and the cell states [B, T, H].
extern "C" __global__ void mtl_lstm_seq(const float* xw, const float* wt, float* hs, float* acts,
                                        float* cs, int b, int t, int h, int reverse, int save,
                                        int w_smem) {
    extern __shared__ float sm[];
    float* hsm = sm;                 // [ROWS, H] h of the step before
    float* csm = sm + ROWS * h;      // [ROWS, H] c of the step before
    float* gsm = sm + 2 * ROWS * h;  // [ROWS, 4H] this step's gates
    const int g4 = 4 * h;
    const int r0 = blockIdx.x * ROWS;
    const int nr = min(ROWS, b - r0);
    for (int e = threadIdx.x; e < ROWS * h; e += blockDim.x) { hsm[e] = 0.0f; csm[e] = 0.0f; }
    const float* wr = weights(wt, h * g4, sm, h, w_smem);
    __syncthreads();
    for (int k = 0; k < t; ++k) {
        const int ts = reverse ? t - 1 - k : k;
        for (int j = threadIdx.x; j < g4; j += blockDim.x) {
            float acc[ROWS];
#pragma unroll
            for (int r = 0; r < ROWS; ++r) acc[r] = 0.0f;
            rows_times(hsm, wr, h, g4, j, acc);
#pragma unroll
            for (int r = 0; r < ROWS; ++r)
                if (r < nr) gsm[r * g4 + j] = acc[r] + xw[((size_t)(r0 + r) * t + ts) * g4 + j];
        }
        __syncthreads();
        for (int e = threadIdx.x; e < nr * h; e += blockDim.x) {
            const int r = e / h, u = e % h;
            const float* g = gsm + r * g4;
            const float i = sg(g[u]), f = sg(g[h + u]), gg = tanhf(g[2 * h + u]), o = sg(g[3 * h + u]);
            const float c = f * csm[e] + i * gg;
            const float hv = o * tanhf(c);
            csm[e] = c;
            hsm[e] = hv;
            const size_t s = (size_t)(r0 + r) * t + ts;
            hs[s * h + u] = hv;
            if (save) {
                float* a = acts + s * g4;
                a[u] = i; a[h + u] = f; a[2 * h + u] = gg; a[3 * h + u] = o;
                cs[s * h + u] = c;
            }
        }
        __syncthreads();
    }
}

// w = W_hh [4H, H], grad = ∂hs [B, T, H], acts and cs from the forward
// -> the gates' pre-activation gradients dg [B, T, 4H].
extern "C" __global__ void mtl_lstm_seq_grad(const float* w, const float* grad, const float* acts,
                                             const float* cs, float* dg, int b, int t, int h, int reverse,
                                             int w_smem) {
    extern __shared__ float sm[];
    float* dgs = sm;                 // [ROWS, 4H] the later step's gate gradients
    float* dhs = sm + ROWS * 4 * h;  // [ROWS, H] dh carried from the later step
    float* dcs = dhs + ROWS * h;     // [ROWS, H] dc carried from the later step
    const int g4 = 4 * h;
    const int r0 = blockIdx.x * ROWS;
    const int nr = min(ROWS, b - r0);
    for (int e = threadIdx.x; e < ROWS * h; e += blockDim.x) { dhs[e] = 0.0f; dcs[e] = 0.0f; }
    for (int e = threadIdx.x; e < ROWS * g4; e += blockDim.x) dgs[e] = 0.0f;
    const float* wr = weights(w, g4 * h, sm, h, w_smem);
    __syncthreads();
    for (int k = t - 1; k >= 0; --k) {
        const int ts = reverse ? t - 1 - k : k;
        const int prev = k == 0 ? -1 : (reverse ? t - k : k - 1);
        if (k < t - 1) {
            for (int u = threadIdx.x; u < h; u += blockDim.x) {
                float acc[ROWS];
#pragma unroll
                for (int r = 0; r < ROWS; ++r) acc[r] = 0.0f;
                rows_times(dgs, wr, g4, h, u, acc);
#pragma unroll
                for (int r = 0; r < ROWS; ++r) dhs[r * h + u] = acc[r];
            }
            __syncthreads();
        }
        for (int e = threadIdx.x; e < nr * h; e += blockDim.x) {
            const int r = e / h, u = e % h;
            const size_t s = (size_t)(r0 + r) * t + ts;
            const float* a = acts + s * g4;
            const float i = a[u], f = a[h + u], g = a[2 * h + u], o = a[3 * h + u];
            const float c = cs[s * h + u];
            const float cp = prev < 0 ? 0.0f : cs[((size_t)(r0 + r) * t + prev) * h + u];
            const float tc = tanhf(c);
            const float dh = grad[s * h + u] + dhs[e];
            const float dc = dh * o * (1.0f - tc * tc) + dcs[e];
            const float d0 = dc * g * i * (1.0f - i);
            const float d1 = dc * cp * f * (1.0f - f);
            const float d2 = dc * i * (1.0f - g * g);
            const float d3 = dh * tc * o * (1.0f - o);
            dcs[e] = dc * f;
            float* l = dgs + r * g4;
            l[u] = d0; l[h + u] = d1; l[2 * h + u] = d2; l[3 * h + u] = d3;
            float* d = dg + s * g4;
            d[u] = d0; d[h + u] = d1; d[2 * h + u] = d2; d[3 * h + u] = d3;
        }
        __syncthreads();
    }
}
// Keras's GRU (reset_after): xw [B, T, 3H] (input projection with its bias),
// wt = W_hhᵀ [H, 3H], bias = b_hh [3H] -> hs [B, T, H]; with `save`, per
// step r, z, n and the recurrent n pre-activation hw_n [B, T, 4H].
extern "C" __global__ void mtl_gru_seq(const float* xw, const float* wt, const float* bias, float* hs,
                                       float* acts, int b, int t, int h, int reverse, int save,
                                       int w_smem) {
    extern __shared__ float sm[];
    float* hsm = sm;              // [ROWS, H] h of the step before
    float* wsm = sm + ROWS * h;   // [ROWS, 3H] this step's h·W_hhᵀ + b_hh
    const int g3 = 3 * h;
    const int r0 = blockIdx.x * ROWS;
    const int nr = min(ROWS, b - r0);
    for (int e = threadIdx.x; e < ROWS * h; e += blockDim.x) hsm[e] = 0.0f;
    const float* wr = weights(wt, h * g3, sm, h, w_smem);
    __syncthreads();
    for (int k = 0; k < t; ++k) {
        const int ts = reverse ? t - 1 - k : k;
        for (int j = threadIdx.x; j < g3; j += blockDim.x) {
            float acc[ROWS];
#pragma unroll
            for (int r = 0; r < ROWS; ++r) acc[r] = 0.0f;
            rows_times(hsm, wr, h, g3, j, acc);
#pragma unroll
            for (int r = 0; r < ROWS; ++r) wsm[r * g3 + j] = acc[r] + bias[j];
        }
        __syncthreads();
        for (int e = threadIdx.x; e < nr * h; e += blockDim.x) {
            const int r = e / h, u = e % h;
            const size_t s = (size_t)(r0 + r) * t + ts;
            const float* x = xw + s * g3;
            const float* hw = wsm + r * g3;
            const float rg = sg(x[u] + hw[u]), z = sg(x[h + u] + hw[h + u]);
            const float n = tanhf(x[2 * h + u] + rg * hw[2 * h + u]);
            const float hv = (1.0f - z) * n + z * hsm[e];
            hsm[e] = hv;
            hs[s * h + u] = hv;
            if (save) {
                float* a = acts + s * 4 * h;
                a[u] = rg; a[h + u] = z; a[2 * h + u] = n; a[3 * h + u] = hw[2 * h + u];
            }
        }
        __syncthreads();
    }
}

// w = W_hh [3H, H], grad = ∂hs [B, T, H], hs and acts from the forward
// -> the input projection's gradient dx [B, T, 3H] and the recurrent
// pre-activations' dhw [B, T, 3H].
extern "C" __global__ void mtl_gru_seq_grad(const float* w, const float* grad, const float* hs,
                                            const float* acts, float* dx, float* dhw,
                                            int b, int t, int h, int reverse, int w_smem) {
    extern __shared__ float sm[];
    float* dws = sm;                 // [ROWS, 3H] the later step's dhw
    float* dhs = sm + ROWS * 3 * h;  // [ROWS, H] dh carried from the later step
    float* crs = dhs + ROWS * h;     // [ROWS, H] the later step's dh·z
    const int g3 = 3 * h;
    const int r0 = blockIdx.x * ROWS;
    const int nr = min(ROWS, b - r0);
    for (int e = threadIdx.x; e < ROWS * h; e += blockDim.x) { dhs[e] = 0.0f; crs[e] = 0.0f; }
    for (int e = threadIdx.x; e < ROWS * g3; e += blockDim.x) dws[e] = 0.0f;
    const float* wr = weights(w, g3 * h, sm, h, w_smem);
    __syncthreads();
    for (int k = t - 1; k >= 0; --k) {
        const int ts = reverse ? t - 1 - k : k;
        const int prev = k == 0 ? -1 : (reverse ? t - k : k - 1);
        if (k < t - 1) {
            for (int u = threadIdx.x; u < h; u += blockDim.x) {
                float acc[ROWS];
#pragma unroll
                for (int r = 0; r < ROWS; ++r) acc[r] = crs[r * h + u];
                rows_times(dws, wr, g3, h, u, acc);
#pragma unroll
                for (int r = 0; r < ROWS; ++r) dhs[r * h + u] = acc[r];
            }
            __syncthreads();
        }
        for (int e = threadIdx.x; e < nr * h; e += blockDim.x) {
            const int r = e / h, u = e % h;
            const size_t s = (size_t)(r0 + r) * t + ts;
            const float* a = acts + s * 4 * h;
            const float rg = a[u], z = a[h + u], n = a[2 * h + u], hwn = a[3 * h + u];
            const float hp = prev < 0 ? 0.0f : hs[((size_t)(r0 + r) * t + prev) * h + u];
            const float dh = grad[s * h + u] + dhs[e];
            const float dan = dh * (1.0f - z) * (1.0f - n * n);
            const float daz = dh * (hp - n) * z * (1.0f - z);
            const float dr = dan * hwn * rg * (1.0f - rg);
            crs[e] = dh * z;
            float* l = dws + r * g3;
            l[u] = dr; l[h + u] = daz; l[2 * h + u] = dan * rg;
            float* x = dx + s * g3;
            x[u] = dr; x[h + u] = daz; x[2 * h + u] = dan;
            float* d = dhw + s * g3;
            d[u] = dr; d[h + u] = daz; d[2 * h + u] = dan * rg;
        }
        __syncthreads();
    }
}
"#;

const MODULE: (&str, &str) = ("mtl_recurrence", SOURCE);

/// A recurrence's grid: a block per [`ROWS`] rows, a thread per gate
/// column (`gates`·H of them, at most 1,024, looping over the rest), 6·H
/// floats per row of shared memory (the most any kernel here takes); and
/// W_hh's `gates`·H² floats after them where the device lets a block have
/// that much (227 KiB on an H100 or H200: up to 117 LSTM units, 135 GRU
/// units), so that every step reads the weights from shared memory rather
/// than from L2. The flag is the kernels' last argument.
fn grid(dev: &CudaDevice, b: usize, h: usize, gates: usize) -> Result<(LaunchConfig, i32)> {
    let state = 4 * 6 * ROWS * h;
    let weights = 4 * gates * h * h;
    let in_smem = state + weights <= shared_optin(dev)?;
    let config = LaunchConfig {
        grid_dim: (b.div_ceil(ROWS) as u32, 1, 1),
        block_dim: ((gates * h).next_multiple_of(32).min(1024) as u32, 1, 1),
        shared_mem_bytes: (state + if in_smem { weights } else { 0 }) as u32,
    };
    Ok((config, in_smem as i32))
}

/// W_hh [G·H, H] → W_hhᵀ [H, G·H], which the forward kernels read a row
/// of per hidden unit, coalesced across the gate columns.
fn transposed(
    (w, wl): (&CudaStorage, &Layout),
    gh: usize,
    h: usize,
) -> Result<(CudaStorage, Layout)> {
    let args = [Arg::I32(gh as i32), Arg::I32(h as i32)];
    let wt = launch(MODULE, "mtl_transpose", &[(w, wl)], gh * h, gh * h, &args)?;
    Ok((wt, Layout::contiguous((h, gh))))
}

/// The kernels' trailing arguments: (B, T, H, reverse) and any more.
fn dims((b, t, h): (usize, usize, usize), reverse: bool, more: &[i32]) -> Vec<Arg> {
    [b as i32, t as i32, h as i32, reverse as i32]
        .into_iter()
        .chain(more.iter().copied())
        .map(Arg::I32)
        .collect()
}

/// The LSTM forward from `xw` [B, T, 4H] and W_hh [4H, H]: the hidden
/// states [B, T, H] and, with `save`, the (activations, cell states) its
/// backward reads.
pub fn lstm_forward(
    xw: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
    (b, t, h): (usize, usize, usize),
    reverse: bool,
    save: bool,
) -> Result<(CudaStorage, Option<(Tensor, Tensor)>)> {
    let (wt, wtl) = transposed(w, 4 * h, h)?;
    let n = b * t * h;
    let lens = if save { [n, n * 4, n] } else { [n, 0, 0] };
    let (config, w_smem) = grid(&xw.0.device, b, h, 4)?;
    let args = dims((b, t, h), reverse, &[save as i32, w_smem]);
    let name = "mtl_lstm_seq";
    let operands = [xw, (&wt, &wtl)];
    let mut outs = launch_on(MODULE, name, &operands, &lens, config, &args)?.into_iter();
    let hs = outs.next().ok_or_else(|| missing(name))?;
    let kept = match (save, outs.next(), outs.next()) {
        (true, Some(acts), Some(cs)) => Some((tensor(acts, (b, t, 4 * h)), tensor(cs, (b, t, h)))),
        (true, _, _) => return Err(missing(name)),
        (false, _, _) => None,
    };
    Ok((hs, kept))
}

/// The LSTM's gates' pre-activation gradients [B, T, 4H] (also the input
/// projections') from W_hh [4H, H], ∂hs [B, T, H] and what [`lstm_forward`]
/// kept.
pub fn lstm_backward(
    w: &Tensor,
    grad: &Tensor,
    (acts, cs): (&Tensor, &Tensor),
    reverse: bool,
) -> Result<Tensor> {
    let (b, t, h) = grad.dims3()?;
    let name = "mtl_lstm_seq_grad";
    let mut outs = on_tensors(
        name,
        &[w, grad, acts, cs],
        &[b * t * 4 * h],
        (b, t, h, 4),
        reverse,
    )?;
    Ok(tensor(
        outs.pop().ok_or_else(|| missing(name))?,
        (b, t, 4 * h),
    ))
}

/// The GRU forward from `xw` [B, T, 3H], W_hh [3H, H] and b_hh [3H]: the
/// hidden states [B, T, H] and, with `save`, the activations [B, T, 4H]
/// (r, z, n, hw_n) its backward reads.
pub fn gru_forward(
    xw: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
    bias: (&CudaStorage, &Layout),
    (b, t, h): (usize, usize, usize),
    reverse: bool,
    save: bool,
) -> Result<(CudaStorage, Option<Tensor>)> {
    let (wt, wtl) = transposed(w, 3 * h, h)?;
    let n = b * t * h;
    let lens = if save { [n, n * 4] } else { [n, 0] };
    let (config, w_smem) = grid(&xw.0.device, b, h, 3)?;
    let args = dims((b, t, h), reverse, &[save as i32, w_smem]);
    let name = "mtl_gru_seq";
    let operands = [xw, (&wt, &wtl), bias];
    let mut outs = launch_on(MODULE, name, &operands, &lens, config, &args)?.into_iter();
    let hs = outs.next().ok_or_else(|| missing(name))?;
    let kept = match (save, outs.next()) {
        (true, Some(acts)) => Some(tensor(acts, (b, t, 4 * h))),
        (true, None) => return Err(missing(name)),
        (false, _) => None,
    };
    Ok((hs, kept))
}

/// The GRU's input-projection gradient and recurrent pre-activation
/// gradient, both [B, T, 3H], from W_hh [3H, H], ∂hs, the hidden states
/// and what [`gru_forward`] kept.
pub fn gru_backward(
    w: &Tensor,
    grad: &Tensor,
    (hs, acts): (&Tensor, &Tensor),
    reverse: bool,
) -> Result<(Tensor, Tensor)> {
    let (b, t, h) = grad.dims3()?;
    let n = b * t * 3 * h;
    let name = "mtl_gru_seq_grad";
    let outs = on_tensors(name, &[w, grad, hs, acts], &[n, n], (b, t, h, 3), reverse)?;
    match <[CudaStorage; 2]>::try_from(outs) {
        Ok([dx, dhw]) => Ok((tensor(dx, (b, t, 3 * h)), tensor(dhw, (b, t, 3 * h)))),
        Err(_) => Err(missing(name)),
    }
}

/// Runs a backward kernel on tensors (made contiguous) that live on a CUDA
/// device.
fn on_tensors(
    name: &str,
    operands: &[&Tensor],
    out_lens: &[usize],
    (b, t, h, gates): (usize, usize, usize, usize),
    reverse: bool,
) -> Result<Vec<CudaStorage>> {
    let dev = operands
        .first()
        .ok_or_else(|| missing(name))?
        .device()
        .as_cuda_device()?;
    let (config, w_smem) = grid(dev, b, h, gates)?;
    let args = dims((b, t, h), reverse, &[w_smem]);
    launch_tensors(MODULE, name, operands, out_lens, config, &args)
}

/// The hidden state before each step's, [B, T, H]: `hs` shifted one step
/// in the direction of the recurrence, zero before its first step (what
/// W_hh's gradient multiplies).
pub fn previous_states(hs: &Tensor, reverse: bool) -> Result<Tensor> {
    let (b, t, h) = hs.dims3()?;
    if t <= 1 {
        return hs.zeros_like();
    }
    let zero = Tensor::zeros((b, 1, h), hs.dtype(), hs.device())?;
    match reverse {
        false => Tensor::cat(&[&zero, &hs.narrow(1, 0, t - 1)?], 1),
        true => Tensor::cat(&[&hs.narrow(1, 1, t - 1)?, &zero], 1),
    }
}
