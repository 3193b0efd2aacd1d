//! Rows of floats a few vectors long, handled so the compiler sees their
//! lengths as constants: a block of [`LANES`] at a time.
//!
//! Why: `copy_from_slice` on a row of 16 or 32 floats is a call to libc's
//! `memmove`, a call per short row (`memmove` was 8% of `shapes_mm`'s
//! one-thread training step in `perf`, half of it the direct convolution's
//! padding); and a loop over several slices at once may vectorize only
//! behind runtime checks that they do not overlap, which can fall back to
//! scalar code.

/// Floats per block: one AVX-512 vector.
pub const LANES: usize = 16;

/// Runs `f(j0, true)` on each whole block of [`LANES`] lanes of `0..n`, then
/// `f(j, false)` on each lane of the tail: `f` gives a whole block's length
/// as a constant, so its loops compile to vector moves and arithmetic.
#[inline(always)]
pub fn lane_blocks(n: usize, mut f: impl FnMut(usize, bool)) {
    let whole = n / LANES * LANES;
    for j0 in (0..whole).step_by(LANES) {
        f(j0, true);
    }
    for j in whole..n {
        f(j, false);
    }
}

/// `dst` ← `src[..dst.len()]`, as fixed-size moves of 16, 8 and 4 floats and
/// at most three single ones, never a `memmove` call.
#[inline(always)]
pub fn copy_short(dst: &mut [f32], src: &[f32]) {
    let src = &src[..dst.len()];
    let mut at = copy_blocks::<LANES>(dst, src);
    at += copy_blocks::<8>(&mut dst[at..], &src[at..]);
    at += copy_blocks::<4>(&mut dst[at..], &src[at..]);
    for (d, s) in dst[at..].iter_mut().zip(&src[at..]) {
        *d = *s;
    }
}

/// Copies the whole blocks of `K` floats of `src` into `dst` (equal
/// lengths); returns how many floats that was.
#[inline(always)]
fn copy_blocks<const K: usize>(dst: &mut [f32], src: &[f32]) -> usize {
    let mut done = 0;
    for (d, s) in dst.chunks_exact_mut(K).zip(src.chunks_exact(K)) {
        if let (Some(d), Some(s)) = (d.first_chunk_mut::<K>(), s.first_chunk::<K>()) {
            *d = *s;
        }
        done += K;
    }
    done
}

#[cfg(test)]
mod tests {
    #[test]
    fn copy_short_copies_every_length() {
        for n in 0..70 {
            let src: Vec<f32> = (0..n + 3).map(|i| i as f32 + 0.5).collect();
            let mut dst = vec![-1f32; n];
            super::copy_short(&mut dst, &src);
            assert_eq!(dst, src[..n], "length {n}");
        }
    }

    #[test]
    fn lane_blocks_cover_each_lane_once() {
        for n in 0..50 {
            let mut seen = vec![0; n];
            super::lane_blocks(n, |j, whole| {
                let m = if whole { super::LANES } else { 1 };
                seen[j..j + m].iter_mut().for_each(|s| *s += 1);
            });
            assert!(seen.iter().all(|&s| s == 1), "n = {n}: {seen:?}");
        }
    }
}
