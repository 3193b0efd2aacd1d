//! One Adam step of one parameter as one op: (w, g, mv = [m; v]) →
//! [w′; m′; v′], the same f32 expressions in the same order as the
//! optimizer's host form. On a GPU it is one kernel where candle's ops take a
//! dozen launches and allocations per parameter (the optimizer was a third
//! of a training step's time on an H200).

use crate::kernels::host::contiguous;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};

/// β₁, 1 − β₁, β₂, 1 − β₂, the step's α (bias corrections folded in), ε.
pub struct AdamStep(pub [f32; 6]);

/// The output's shape: the parameter's, three deep.
fn stacked(l: &Layout) -> Shape {
    let mut dims = vec![3];
    dims.extend(l.dims());
    Shape::from(dims)
}

impl CustomOp3 for AdamStep {
    fn name(&self) -> &'static str {
        "mtl-adam"
    }

    fn cpu_fwd(
        &self,
        w: &CpuStorage,
        wl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
        mv: &CpuStorage,
        mvl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [b1, c1, b2, c2, alpha, eps] = self.0;
        let (w, g, mv) = (contiguous(w, wl)?, contiguous(g, gl)?, contiguous(mv, mvl)?);
        let n = w.len();
        let mut out = vec![0f32; 3 * n];
        for k in 0..n {
            let m = mv[k] * b1 + g[k] * c1;
            let v = mv[n + k] * b2 + g[k] * g[k] * c2;
            out[k] = w[k] - (m * alpha) / (v.sqrt() + eps);
            out[n + k] = m;
            out[2 * n + k] = v;
        }
        Ok((CpuStorage::F32(out), stacked(wl)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        w: &candle_core::CudaStorage,
        wl: &Layout,
        g: &candle_core::CudaStorage,
        gl: &Layout,
        mv: &candle_core::CudaStorage,
        mvl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use crate::kernels::cuda::{launch, Arg};
        const SOURCE: &str = r#"
extern "C" __global__ void mtl_adam(const float* w, const float* g, const float* mv, float* out,
                                    int n, float b1, float c1, float b2, float c2, float alpha, float eps) {
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n) return;
    float gk = g[k];
    float m = __fadd_rn(__fmul_rn(mv[k], b1), __fmul_rn(gk, c1));
    float v = __fadd_rn(__fmul_rn(mv[n + k], b2), __fmul_rn(__fmul_rn(gk, gk), c2));
    out[k] = __fsub_rn(w[k], __fdiv_rn(__fmul_rn(m, alpha), __fadd_rn(sqrtf(v), eps)));
    out[n + k] = m;
    out[2 * n + k] = v;
}
"#;
        let n = wl.shape().elem_count();
        let mut args = vec![Arg::I32(n as i32)];
        args.extend(self.0.iter().map(|x| Arg::F32(*x)));
        let operands = [(w, wl), (g, gl), (mv, mvl)];
        let out = launch(("mtl_adam", SOURCE), "mtl_adam", &operands, 3 * n, n, &args)?;
        Ok((out, stacked(wl)))
    }
}
