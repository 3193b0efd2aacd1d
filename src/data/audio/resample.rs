//! Port of `torchaudio.functional.resample` with its defaults
//! (`lowpass_filter_width=6`, `rolloff=0.99`, `resampling_method="sinc_interp_hann"`):
//! the kernel of `_get_sinc_resample_kernel` applied as `_apply_sinc_resample_kernel`
//! does (zero-pad by `width` left and `width + orig` right, `conv1d` with stride
//! `orig`, interleave the `new` phases, crop to `ceil(new * length / orig)`).
//!
//! Precision: `resample` passes the waveform's dtype to `_get_sinc_resample_kernel`,
//! so for f32 audio torchaudio builds the kernel in float32 (float64 is only its
//! default when no dtype is given) and convolves in float32. The kernel argument
//! `t = (i/orig - j/new) * base_freq` cancels catastrophically in float32 (both terms
//! ≈ 1, t error ≈ 1e-5), which moves torchaudio's outputs by up to ~1e-5 from the
//! exact f64 result (measured 1.09e-5 on the 22050 Hz fixture). So we reproduce
//! those float32 roundings of `t` bit for bit and do everything else (window, sinc,
//! accumulation) in f64, rounding once to f32: what remains is torch's ~1-ulp
//! float32 noise in cos/sin/conv (≲ 1e-6 on outputs).
//!
//! One liberty, exact for practical purposes: torchaudio's kernel row for phase `j`
//! spans `2 * width + orig` taps, but every tap whose argument `t` is clamped to
//! ±`lowpass_filter_width` is `cos²(±π/2) · sin(±6π)/(±6π)` ≈ 1e-33 (≈ 5e-24 in
//! torch's float32), so we evaluate only the taps with |t| < 6 (plus one either
//! side). That makes the cost ∝ `2 * width + 1` per output instead of `orig`, which
//! matters after gcd reduction leaves `orig` large (e.g. 44100 → 16000: orig = 441).

const LOWPASS_FILTER_WIDTH: f64 = 6.0;
const ROLLOFF: f64 = 0.99;
/// Cache phase rows only while they hold at most this many weights (8 MiB of f64);
/// beyond that (absurd rate pairs) each output computes its own row.
const MAX_TABLE: usize = 1 << 20;

/// Resamples `x` from `from` Hz to `to` Hz like `torchaudio.functional.resample`.
/// Same rate → unchanged. A rate of 0 (which torchaudio rejects with ValueError)
/// gives an empty signal; `decode_wav` never returns rate 0.
pub fn resample(x: &[f32], from: u32, to: u32) -> Vec<f32> {
    resample_prefix(x, from, to, usize::MAX)
}

/// The first `max_len` samples of [`resample`]'s output, computed without the rest
/// (each output sample only depends on the input, not on the output length).
pub(super) fn resample_prefix(x: &[f32], from: u32, to: u32, max_len: usize) -> Vec<f32> {
    if from == 0 || to == 0 {
        return Vec::new();
    }
    if from == to {
        return x[..x.len().min(max_len)].to_vec();
    }
    let g = gcd(from, to);
    let (orig, new) = (i64::from(from / g), i64::from(to / g));
    // target_length = ceil(new * length / orig); torch computes it in float64, which
    // is exact here (integers far below 2^53), so integer arithmetic is identical.
    let len = x.len() as u128;
    let target = (new as u128 * len).div_ceil(orig as u128);
    let out_len = target.min(max_len as u128) as usize;
    if out_len == 0 {
        return Vec::new();
    }

    let k = Kernel::new(orig, new);
    let phases = (new as usize).min(out_len);
    let table: Option<Vec<Row>> = if phases.saturating_mul(k.max_taps()) <= MAX_TABLE {
        Some((0..phases as i64).map(|j| k.row(j)).collect())
    } else {
        None
    };

    let mut out = Vec::with_capacity(out_len);
    let n_in = x.len() as i64;
    for n in 0..out_len as i64 {
        // Output n is conv frame n / new, phase n % new (the transpose + reshape).
        let (frame, j) = (n / new, n % new);
        let owned;
        let row = match &table {
            Some(t) => &t[j as usize],
            None => {
                owned = k.row(j);
                &owned
            }
        };
        // Tap i of frame `frame` reads x[frame * orig + i]; the zero padding
        // makes out-of-range indices contribute nothing.
        let start = frame * orig + row.first;
        let lo = (-start).max(0) as usize;
        let hi = ((n_in - start).max(0) as usize).min(row.w.len());
        let mut acc = 0.0f64;
        if lo < hi {
            let xs = &x[(start + lo as i64) as usize..(start + hi as i64) as usize];
            for (&xv, &w) in xs.iter().zip(&row.w[lo..hi]) {
                acc += f64::from(xv) * w;
            }
        }
        out.push(acc as f32);
    }
    out
}

/// The nonzero part of one phase's kernel row: weights for taps `first..first+w.len()`.
struct Row {
    first: i64,
    w: Vec<f64>,
}

/// `_get_sinc_resample_kernel` for the gcd-reduced rates.
struct Kernel {
    orig: i64,
    new: i64,
    /// `width = ceil(lowpass_filter_width * orig / base_freq)`; taps run over
    /// `-width .. width + orig` in torchaudio.
    width: i64,
    base: f64,
}

impl Kernel {
    fn new(orig: i64, new: i64) -> Kernel {
        // base_freq = min(orig, new) * rolloff: the anti-aliasing cutoff.
        let base = orig.min(new) as f64 * ROLLOFF;
        let width = (LOWPASS_FILTER_WIDTH * orig as f64 / base).ceil() as i64;
        Kernel {
            orig,
            new,
            width,
            base,
        }
    }

    /// Upper bound on a row's length (the |t| < 6 support plus the ±1 margin).
    fn max_taps(&self) -> usize {
        (2.0 * LOWPASS_FILTER_WIDTH * self.orig as f64 / self.base).ceil() as usize + 3
    }

    /// Weights of phase `j` for taps i with |t| ≤ 6 (± one tap), clipped to
    /// torchaudio's tap range `-width .. width + orig`.
    fn row(&self, j: i64) -> Row {
        let (orig, new) = (self.orig as f64, self.new as f64);
        let centre = j as f64 / new; // t = (i / orig - j / new) * base
        let reach = LOWPASS_FILTER_WIDTH / self.base;
        let lo = (((centre - reach) * orig).floor() as i64 - 1).max(-self.width);
        let hi = (((centre + reach) * orig).ceil() as i64 + 1).min(self.width + self.orig - 1);
        let w = (lo..=hi).map(|i| self.weight(i, j)).collect();
        Row { first: lo, w }
    }

    /// One kernel entry, in torchaudio's order of operations:
    /// `t = (-j/new + i/orig) * base_freq`, clamped to ±lowpass_filter_width;
    /// `window = cos(t·π/lpw/2)²`; `kernel = sinc(π t) · window · base_freq/orig`.
    /// `t` is computed in f32 exactly as torch does for an f32 waveform (`arange`
    /// in f32, `/ orig`, `/ new`, `+`, `*= base_freq` with the scalar as f32).
    fn weight(&self, i: i64, j: i64) -> f64 {
        use std::f64::consts::PI;
        let idx = i as f32 / self.orig as f32;
        let t32 = (-(j as f32) / self.new as f32 + idx) * self.base as f32;
        let mut t = f64::from(t32).clamp(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH);
        let window = (t * PI / LOWPASS_FILTER_WIDTH / 2.0).cos().powi(2);
        t *= PI;
        let sinc = if t == 0.0 { 1.0 } else { t.sin() / t };
        sinc * window * (self.base / self.orig as f64)
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force over torchaudio's full tap range (no support trimming).
    fn reference(x: &[f32], from: u32, to: u32) -> Vec<f32> {
        let g = gcd(from, to);
        let (orig, new) = (i64::from(from / g), i64::from(to / g));
        let k = Kernel::new(orig, new);
        let n_out = (new as usize * x.len()).div_ceil(orig as usize);
        (0..n_out as i64)
            .map(|n| {
                let (f, j) = (n / new, n % new);
                let mut acc = 0.0;
                for i in -k.width..k.width + orig {
                    let idx = f * orig + i;
                    if idx >= 0 && (idx as usize) < x.len() {
                        acc += f64::from(x[idx as usize]) * k.weight(i, j);
                    }
                }
                acc as f32
            })
            .collect()
    }

    #[test]
    fn trimmed_support_matches_full_kernel() {
        let x: Vec<f32> = (0..700)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        for (from, to) in [
            (44100, 16000),
            (8000, 16000),
            (22050, 16000),
            (16000, 48000),
            (7, 3),
        ] {
            let (a, b) = (resample(&x, from, to), reference(&x, from, to));
            assert_eq!(a.len(), b.len());
            let err = a
                .iter()
                .zip(&b)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f32::max);
            assert!(err < 1e-6, "{from}->{to}: {err}");
        }
    }

    #[test]
    fn lengths_and_edge_cases() {
        let x = vec![0.5f32; 1000];
        assert_eq!(resample(&x, 16000, 16000), x);
        assert_eq!(resample(&x, 44100, 16000).len(), 363); // ceil(160*1000/441)
        assert_eq!(resample(&x, 8000, 16000).len(), 2000);
        assert!(resample(&[], 8000, 16000).is_empty());
        assert!(resample(&x, 0, 16000).is_empty());
        assert!(resample(&x, 16000, 0).is_empty());
        assert_eq!(
            resample_prefix(&x, 8000, 16000, 10),
            resample(&x, 8000, 16000)[..10]
        );
        // Coprime, very unequal rates take the uncached path and stay bounded.
        let y = resample(&x, 4_000_000_007, 16000);
        assert_eq!(y.len(), 1);
        let z = resample(&x[..3], 1, 100_003);
        assert_eq!(z.len(), 300_009);
        assert!(z.iter().all(|v| v.is_finite()));
    }
}
