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
}
