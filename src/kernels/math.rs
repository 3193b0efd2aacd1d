//! Scalar math written so that loops over slices vectorize.

/// eˣ for f32 to about 2 ulp (0 below −87.3, where eˣ is subnormal), branch-free so loops over slices vectorize
/// (Cephes expf: x = n·ln2 + r, a degree-6 polynomial for eʳ, 2ⁿ by bits).
#[inline(always)]
pub fn exp_fast(x0: f32) -> f32 {
    // max/min rather than clamp, which vectorize; NaN is passed through below.
    #[allow(clippy::manual_clamp)]
    let x = x0.max(-87.3).min(88.7);
    // Round x·log2(e) to the nearest integer with the 1.5·2²³ trick
    // (SSE2-friendly): t = 1.5·2²³ + n exactly, so n is also t's low bits.
    let t = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = t - 12_582_912.0;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let er = p * r * r + r + 1.0;
    // 2ⁿ from n's bits in t, by integer adds and shifts: `n as i32` is a
    // saturating conversion that compiled to scalar compares and lane
    // inserts, among the hottest instructions of the LSTM's gates.
    let n_bits = t.to_bits().wrapping_sub(0x4B40_0000);
    let e = er * f32::from_bits(n_bits.wrapping_add(127) << 23);
    // Below the clamp eˣ is under the smallest normal float: 0, as a masked
    // softmax entry (a score − 1e9) must be, not the clamp's 1.2e-38.
    if x0.is_nan() {
        x0
    } else if x0 < -87.3 {
        0.0
    } else {
        e
    }
}

/// ln x for f32 to about 2 ulp on positive normal x, branch-free so loops
/// over slices vectorize (Cephes logf: x = m·2ᵉ with m in [√½, √2), a
/// degree-9 polynomial for ln m). Not for 0, subnormals, ∞ or NaN.
#[inline(always)]
pub fn ln_fast(x: f32) -> f32 {
    let bits = x.to_bits();
    // m in [½, 1) and its exponent.
    let m = f32::from_bits((bits & 0x007F_FFFF) | 0x3F00_0000);
    let e = ((bits >> 23) & 0xFF) as i32 - 126;
    let low = m < std::f32::consts::FRAC_1_SQRT_2;
    let e = (e - i32::from(low)) as f32;
    let r = if low { m + m - 1.0 } else { m - 1.0 };
    let z = r * r;
    let p = ((((((((7.037_683_6e-2 * r - 1.151_461e-1) * r + 1.167_699_9e-1) * r
        - 1.242_014_1e-1)
        * r
        + 1.424_932_3e-1)
        * r
        - 1.666_805_8e-1)
        * r
        + 2.000_071_4e-1)
        * r
        - 2.499_999_4e-1)
        * r
        + 3.333_333e-1)
        * r
        * z;
    let y = p + e * -2.121_944_4e-4 - 0.5 * z;
    r + y + e * 0.693_359_4
}

#[cfg(test)]
mod tests {
    /// 2ⁿ from t's bits equals 2ⁿ from `n as i32` on every clamped input.
    #[test]
    fn exponent_bits_equal_the_converted_integer() {
        let xs = (-90_000..90_000).map(|i| i as f32 * 1e-3).chain([
            -87.3,
            88.7,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
        ]);
        for x0 in xs {
            let x = x0.clamp(-87.3, 88.7);
            let t = x * std::f32::consts::LOG2_E + 12_582_912.0;
            let n = t - 12_582_912.0;
            let by_bits = t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23;
            assert_eq!(by_bits, ((n as i32 + 127) as u32) << 23, "x = {x0}");
        }
    }

    /// ln_fast within 2 ulp of the correctly rounded ln over [1e-30, 1e30],
    /// [1, 2] (ln(1 + e⁻ˣ), the binary cross-entropy's term) densely.
    #[test]
    fn ln_fast_is_within_two_ulp() {
        let dense = (0..200_000).map(|i| 1.0 + i as f32 / 200_000.0);
        let wide = (-300..300).map(|i| 10f32.powf(i as f32 / 10.0));
        for x in dense.chain(wide).chain([2.0, 0.5, 1.0, f32::MIN_POSITIVE]) {
            let want = f64::from(x).ln();
            let got = f64::from(super::ln_fast(x));
            let ulp = f64::from(f32::EPSILON) * want.abs().max(f64::from(f32::MIN_POSITIVE));
            assert!(
                (got - want).abs() <= 2.0 * ulp.max(1e-45),
                "ln {x}: {got} vs {want}"
            );
        }
    }
}
