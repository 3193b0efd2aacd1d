//! A convolution's input as columns, for a convolution trained as one GEMM
//! on the GPU path (`lower::calls::conv_columns`): x [N, C, H, W] →
//! cols [C·kh·kw, N·Ho·Wo], row (c, i, j) holding tap (i, j) of channel c
//! for every output position, zero where the tap falls in the padding.
//! Then y = W [Cout, C·kh·kw] · cols, and candle's matmul backward gives
//! W's gradient and the columns' as two GEMMs; the columns' gradient goes
//! back to x through [`Columns`]' backward, which sums each input element's
//! taps.
//!
//! Why: candle's convolution backward on CUDA runs the input's gradient as
//! its direct transposed-convolution kernel and the weight's as a
//! convolution whose kernel is the whole output plane, and always both
//! (also for the input image). `seed_multitask` (two 3×3 convolutions of
//! 64 and 128 channels) spent 5.6 of its 12.6 ms training step in the
//! backward on an H200 and trained at 0.16× PyTorch's rate.
//!
//! Rows are output positions in (n, ho, wo) order, columns-major in memory,
//! so a CUDA thread per element reads and writes neighbours along wo: the
//! gather and the sum are both coalesced. CPU code (what `--kernels candle`
//! runs, tested against candle's convolution) and CUDA code (NVRTC) compute
//! the same values.

use crate::kernels::host::contiguous;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// The geometry of the columns of a 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Columns {
    /// (kh, kw).
    pub kernel: (usize, usize),
    /// (vertical, horizontal).
    pub stride: (usize, usize),
    pub dilation: (usize, usize),
    /// Zeros (top, bottom, left, right).
    pub pads: [usize; 4],
}

/// ∂cols [C·kh·kw, N·Ho·Wo] → ∂x [N, C, H, W] for an input of `input` dims.
struct ColumnsGrad {
    geo: Columns,
    input: (usize, usize, usize, usize),
}

impl Columns {
    /// The output's (Ho, Wo) for an input plane of H × W.
    pub fn output(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let [pt, pb, pl, pr] = self.pads;
        let axis = |len: usize, pads: usize, k: usize, s: usize, d: usize| {
            let span = d * (k - 1) + 1;
            (len + pads >= span && s > 0).then(|| (len + pads - span) / s + 1)
        };
        let (kh, kw) = self.kernel;
        match (
            axis(h, pt + pb, kh, self.stride.0, self.dilation.0),
            axis(w, pl + pr, kw, self.stride.1, self.dilation.1),
        ) {
            (Some(ho), Some(wo)) => Ok((ho, wo)),
            _ => candle_core::bail!("columns: a {kh}×{kw} kernel does not fit a {h}×{w} input"),
        }
    }

    /// The input row and column tap (i, j) of output (oh, ow) reads, if
    /// inside the input.
    #[inline]
    fn source(
        &self,
        (oh, ow): (usize, usize),
        (i, j): (usize, usize),
        (h, w): (usize, usize),
    ) -> Option<(usize, usize)> {
        let y = (oh * self.stride.0 + i * self.dilation.0).checked_sub(self.pads[0])?;
        let x = (ow * self.stride.1 + j * self.dilation.1).checked_sub(self.pads[2])?;
        (y < h && x < w).then_some((y, x))
    }

    /// Calls `f(column index, input index)` for every tap inside the input.
    fn each_tap(
        &self,
        (n, c, h, w): (usize, usize, usize, usize),
        mut f: impl FnMut(usize, usize),
    ) -> Result<()> {
        let (ho, wo) = self.output(h, w)?;
        let (kh, kw) = self.kernel;
        let nhw = n * ho * wo;
        for ch in 0..c {
            for i in 0..kh {
                for j in 0..kw {
                    let row = ((ch * kh + i) * kw + j) * nhw;
                    for b in 0..n {
                        for oh in 0..ho {
                            for ow in 0..wo {
                                if let Some((y, x)) = self.source((oh, ow), (i, j), (h, w)) {
                                    f(
                                        row + (b * ho + oh) * wo + ow,
                                        ((b * c + ch) * h + y) * w + x,
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The output's (rows, columns) = (C·kh·kw, N·Ho·Wo).
    fn shape(&self, (n, c, h, w): (usize, usize, usize, usize)) -> Result<(usize, usize)> {
        let (ho, wo) = self.output(h, w)?;
        Ok((c * self.kernel.0 * self.kernel.1, n * ho * wo))
    }
}

impl CustomOp1 for Columns {
    fn name(&self) -> &'static str {
        "mtl-columns"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims4()?;
        let x = contiguous(s, l)?;
        let (rows, cols) = self.shape(dims)?;
        let mut out = vec![0f32; rows * cols];
        self.each_tap(dims, |o, i| out[o] = x[i])?;
        Ok((CpuStorage::F32(out), Shape::from((rows, cols))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dims = l.shape().dims4()?;
        let (rows, cols) = self.shape(dims)?;
        let out = cuda::launch(self, "mtl_im2col", (s, l), dims, rows * cols)?;
        Ok((out, Shape::from((rows, cols))))
    }

    fn bwd(&self, x: &Tensor, _cols: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = ColumnsGrad {
            geo: *self,
            input: x.dims4()?,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

impl CustomOp1 for ColumnsGrad {
    fn name(&self) -> &'static str {
        "mtl-columns-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = contiguous(s, l)?;
        let (n, c, h, w) = self.input;
        let mut dx = vec![0f32; n * c * h * w];
        self.geo.each_tap(self.input, |o, i| dx[i] += g[o])?;
        Ok((CpuStorage::F32(dx), Shape::from(self.input)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, h, w) = self.input;
        let out = cuda::launch(&self.geo, "mtl_col2im", (s, l), self.input, n * c * h * w)?;
        Ok((out, Shape::from(self.input)))
    }
}

/// The CUDA side: a thread per column element (the gather) or per input
/// element (the sum of its taps, no atomics).
#[cfg(feature = "cuda")]
mod cuda {
    use super::Columns;
    use crate::kernels::cuda::{launch as run, Arg};
    use candle_core::{CudaStorage, Layout, Result};

    const SOURCE: &str = r#"
extern "C" __global__ void mtl_im2col(const float* x, float* cols, int n, int c, int h, int w,
                                      int kh, int kw, int ho, int wo, int sh, int sw, int dh, int dw,
                                      int pt, int pl) {
    const size_t nhw = (size_t)n * ho * wo;
    const size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= nhw * c * kh * kw) return;
    const size_t pos = k % nhw, tap = k / nhw;
    const int j = tap % kw, i = (tap / kw) % kh, ch = tap / (kw * kh);
    const int ow = pos % wo, oh = (pos / wo) % ho, b = pos / ((size_t)wo * ho);
    const int y = oh * sh + i * dh - pt, xx = ow * sw + j * dw - pl;
    cols[k] = (y >= 0 && y < h && xx >= 0 && xx < w) ? x[(((size_t)b * c + ch) * h + y) * w + xx] : 0.0f;
}

extern "C" __global__ void mtl_col2im(const float* cols, float* dx, int n, int c, int h, int w,
                                      int kh, int kw, int ho, int wo, int sh, int sw, int dh, int dw,
                                      int pt, int pl) {
    const size_t nhw = (size_t)n * ho * wo;
    const size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= (size_t)n * c * h * w) return;
    const int xx = k % w, y = (k / w) % h, ch = (k / ((size_t)w * h)) % c;
    const int b = k / ((size_t)w * h * c);
    float acc = 0.0f;
    for (int i = 0; i < kh; ++i) {
        const int t = y + pt - i * dh;
        if (t < 0 || t % sh) continue;
        const int oh = t / sh;
        if (oh >= ho) continue;
        for (int j = 0; j < kw; ++j) {
            const int u = xx + pl - j * dw;
            if (u < 0 || u % sw) continue;
            const int ow = u / sw;
            if (ow >= wo) continue;
            acc += cols[(((size_t)ch * kh + i) * kw + j) * nhw + ((size_t)b * ho + oh) * wo + ow];
        }
    }
    dx[k] = acc;
}
"#;

    /// `name` over `threads` elements, for an input of `dims` (N, C, H, W).
    pub fn launch(
        geo: &Columns,
        name: &str,
        operand: (&CudaStorage, &Layout),
        (n, c, h, w): (usize, usize, usize, usize),
        threads: usize,
    ) -> Result<CudaStorage> {
        let (ho, wo) = geo.output(h, w)?;
        let args = [
            n,
            c,
            h,
            w,
            geo.kernel.0,
            geo.kernel.1,
            ho,
            wo,
            geo.stride.0,
            geo.stride.1,
            geo.dilation.0,
            geo.dilation.1,
            geo.pads[0],
            geo.pads[2],
        ]
        .map(|v| Arg::I32(v as i32));
        run(
            ("mtl_columns", SOURCE),
            name,
            &[operand],
            threads,
            threads,
            &args,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Columns and one GEMM give candle's convolution and its gradients
    /// (of x and W) for strides, dilations and asymmetric padding.
    #[test]
    fn columns_times_weights_is_candle_convolution() {
        let dev = Device::Cpu;
        // (n, c, h, w, cout, k, stride, dilation, pads [t, b, l, r])
        for (n, c, h, w, co, k, s, d, pads) in [
            (2, 3, 7, 6, 4, 3, 1, 1, [1, 1, 1, 1]),
            // Square once padded: candle's own backward takes the output
            // padding of a strided convolution from the height alone.
            (1, 2, 9, 9, 3, 3, 2, 1, [0, 1, 1, 0]),
            (2, 2, 8, 9, 2, 2, 1, 2, [0, 0, 0, 0]),
            (1, 1, 5, 5, 2, 1, 2, 1, [0, 0, 0, 0]),
        ] {
            let x =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap()).unwrap();
            let wt =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (co, c, k, k), &dev).unwrap()).unwrap();
            let geo = Columns {
                kernel: (k, k),
                stride: (s, s),
                dilation: (d, d),
                pads,
            };
            let (ho, wo) = geo.output(h, w).unwrap();
            let cols = x.as_tensor().apply_op1(geo).unwrap();
            let ours = wt
                .as_tensor()
                .reshape((co, c * k * k))
                .unwrap()
                .matmul(&cols)
                .unwrap()
                .reshape((co, n, ho, wo))
                .unwrap()
                .transpose(0, 1)
                .unwrap()
                .contiguous()
                .unwrap();
            let padded = x
                .as_tensor()
                .pad_with_zeros(2, pads[0], pads[1])
                .unwrap()
                .pad_with_zeros(3, pads[2], pads[3])
                .unwrap();
            let theirs = padded.conv2d(wt.as_tensor(), 0, s, d, 1).unwrap();
            let what = format!("{n}×{c}×{h}×{w}, k {k}, stride {s}, dilation {d}, pads {pads:?}");
            assert_eq!(ours.dims(), theirs.dims(), "{what}");
            assert!(super::super::max_abs_diff(&ours, &theirs) < 1e-5, "{what}");
            super::super::assert_same_gradients(&ours, &theirs, &[&x, &wt], 1e-4, &what);
        }
    }
}
