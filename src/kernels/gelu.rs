//! Exact (erf) GELU as one CPU op with its own backward, Keras's
//! `gelu(approximate=False)`: y = x·Φ(x) = ½x(1 + erf(x/√2)),
//! dy/dx = Φ(x) + x·φ(x). candle's `gelu_erf` took 7 ns a value on
//! `models/captions.mtl`; this erf is Abramowitz & Stegun 7.1.26 (|error|
//! ≤ 1.5e-7 in exact arithmetic, 3e-7 in f32), one vectorizing exp and one
//! division.

use super::host::{contiguous, host};
use super::math::exp_fast;
use super::par;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use std::f32::consts::{FRAC_1_SQRT_2, PI};

pub struct Gelu;

/// erf(x), |error| ≤ 1.5e-7 (A&S 7.1.26).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    // copysign, not signum: a bit operation, so the loop vectorizes.
    (1.0 - poly * exp_fast(-a * a)).copysign(x)
}

/// GELU (the erf form) of one value.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    x * cdf(x)
}

/// d GELU / dx of one value.
#[inline(always)]
pub fn gelu_grad(x: f32) -> f32 {
    cdf(x) + x * (1.0 / (2.0 * PI).sqrt()) * exp_fast(-0.5 * x * x)
}

#[inline(always)]
fn cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * FRAC_1_SQRT_2))
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "mtl-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = par::map(contiguous(s, l)?, |x| x * cdf(x));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let k = 1.0 / (2.0 * PI).sqrt();
        let dx = par::zip_map(&host(x)?, &host(grad)?, |x, g| {
            g * (cdf(x) + x * k * exp_fast(-0.5 * x * x))
        });
        Ok(Some(Tensor::from_vec(dx, x.dims(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{assert_same_gradients, max_abs_diff as diff};
    use candle_core::{Device, Var};

    #[test]
    fn erf_is_within_its_bound() {
        // Reference values of erf.
        for (x, e) in [
            (0.0, 0.0),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (-2.0, -0.995_322_3),
            (3.5, 0.999_999_3),
        ] {
            assert!((erf(x) - e).abs() < 3e-7, "erf({x}) = {} ≠ {e}", erf(x));
        }
    }

    #[test]
    fn matches_candle_gelu_erf_forward_and_backward() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 2.5, (7, 33), &dev).unwrap()).unwrap();
        let ours = x.as_tensor().apply_op1(Gelu).unwrap();
        let theirs = x.as_tensor().gelu_erf().unwrap();
        assert!(diff(&ours, &theirs) < 1e-6, "forward");
        assert_same_gradients(&ours, &theirs, &[&x], 1e-5, "gelu");
    }
}
