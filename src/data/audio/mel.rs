//! Log-mel spectrogram, a port of
//! `torchaudio.transforms.MelSpectrogram(sample_rate=R, n_fft=400, hop_length=160,
//! n_mels=M, mel_scale="htk", norm=None, center=True, pad_mode="reflect", power=2.0)`
//! (→ `torchaudio.functional.spectrogram` → `torch.stft`, then `MelScale` with
//! `torchaudio.functional.melscale_fbanks`), followed by `log(x + 1e-6)` and
//! padding with `log(1e-6)` / truncation to F frames.
//!
//! torch works in float32; we work in f64 and round the final log to f32. The
//! remaining differences are torch's own float32 noise: its FFT (and its f32 Hann
//! window, ≤ 2.5e-7 off) leak ~1e-7 of a frame's peak into every bin, so quiet bins
//! next to loud ones differ by up to ~1.5e-3 relative (also between torch's own f32
//! and f64 runs); loud bins agree to ~1e-5. Copying torch's f32 window did not help.
//!
//! Short signals: `torch.stft(center=True, pad_mode="reflect")` needs more than
//! n_fft/2 = 200 samples (reflect padding requires pad < length) and raises
//! otherwise. We zero-pad such signals at the END to 201 samples first (an empty
//! signal becomes 201 zeros), i.e. we compute what torchaudio gives for
//! `F.pad(x, (0, 201 - len))`. This yields 2 frames (1 + 201 // 160) instead of
//! the 1 + len // 160 that the unpadded signal would have had.

use realfft::{RealFftPlanner, RealToComplex};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

const N_FFT: usize = 400;
const HOP: usize = 160;
const N_FREQS: usize = N_FFT / 2 + 1;
/// The smallest length torch's reflect padding by N_FFT/2 accepts.
const MIN_LEN: usize = N_FFT / 2 + 1;
const EPS: f64 = 1e-6;

/// The log-mel spectrogram [n_mels, frames], row-major (frames = F after padding/truncation).
pub fn log_mel(x: &[f32], rate: u32, n_mels: usize, frames: usize) -> Vec<f32> {
    let total = n_mels.saturating_mul(frames);
    if total == 0 {
        return Vec::new();
    }
    let floor = EPS.ln() as f32;
    let mut out = vec![floor; total];

    let mut padded = Vec::new();
    let x = if x.len() < MIN_LEN {
        padded.extend_from_slice(x);
        padded.resize(MIN_LEN, 0.0);
        &padded[..]
    } else {
        x
    };
    // torch.stft with center=True yields 1 + len // hop frames; frames past F
    // would be truncated anyway, so they are not computed.
    let computed = (1 + x.len() / HOP).min(frames);

    let bank = bank(rate, n_mels);
    let mut input = bank.fft.make_input_vec();
    let mut spec = bank.fft.make_output_vec();
    let mut scratch = bank.fft.make_scratch_vec();
    let mut power = [0.0f64; N_FREQS];
    for t in 0..computed {
        for (k, (v, w)) in input.iter_mut().zip(&bank.window).enumerate() {
            *v = f64::from(x[reflect(t * HOP + k, x.len())]) * w;
        }
        // Lengths come from the plan itself, so this cannot fail.
        if bank
            .fft
            .process_with_scratch(&mut input, &mut spec, &mut scratch)
            .is_err()
        {
            continue;
        }
        for (p, c) in power.iter_mut().zip(&spec) {
            *p = c.re * c.re + c.im * c.im; // |X|^power with power = 2
        }
        for (m, row) in bank.fb.chunks_exact(N_FREQS).enumerate() {
            let e: f64 = row.iter().zip(&power).map(|(a, b)| a * b).sum();
            out[m * frames + t] = (e + EPS).ln() as f32;
        }
    }
    out
}

/// How many resampled samples `log_mel(.., frames)` can see: frame t reads padded
/// positions [t·160, t·160 + 400), i.e. samples up to t·160 + 199, so the first
/// `frames` frames only need (frames-1)·160 + 200 samples and never reach the right
/// reflection if that many exist. At least 201 so that truncating a long signal
/// never triggers the short-signal zero padding.
pub(super) fn samples_needed(frames: usize) -> usize {
    frames
        .saturating_sub(1)
        .saturating_mul(HOP)
        .saturating_add(N_FFT / 2)
        .max(MIN_LEN)
}

/// Index into x of position `p` of the reflect-padded signal (pad = 200 each
/// side, `torch.nn.functional.pad(mode="reflect")`: the edge sample is not
/// repeated). Requires len ≥ 201, which `log_mel` guarantees.
fn reflect(p: usize, len: usize) -> usize {
    let s = p as i64 - (N_FFT / 2) as i64;
    let last = len as i64 - 1;
    let i = if s < 0 {
        -s
    } else if s > last {
        2 * last - s
    } else {
        s
    };
    i.clamp(0, last) as usize
}

/// Window, filterbank and FFT plan for one (rate, n_mels).
struct Bank {
    /// `torch.hann_window(400)`: periodic, 0.5 − 0.5·cos(2πn/400).
    window: Vec<f64>,
    /// Mel filterbank, [n_mels][N_FREQS] row-major (torchaudio's fb transposed).
    fb: Vec<f64>,
    fft: Arc<dyn RealToComplex<f64>>,
}

type BankCache = HashMap<(u32, usize), Arc<Bank>>;

/// Banks are cached per (rate, n_mels) in a process-wide `Mutex<HashMap>`: building
/// one costs an FFT plan plus M·201 filter weights, and decoding threads share them
/// through `Arc` (the lock is held only for the lookup). A program uses a handful
/// of (rate, n_mels) pairs, so the map stays tiny.
fn bank(rate: u32, n_mels: usize) -> Arc<Bank> {
    static CACHE: OnceLock<Mutex<BankCache>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    // A panic elsewhere while holding the lock cannot corrupt the map; keep using it.
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    map.entry((rate, n_mels))
        .or_insert_with(|| {
            let window = (0..N_FFT)
                .map(|n| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos())
                .collect();
            Arc::new(Bank {
                window,
                fb: melscale_fbanks(rate, n_mels),
                fft: RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT),
            })
        })
        .clone()
}

/// `torchaudio.functional.melscale_fbanks(n_freqs=201, f_min=0, f_max=R // 2,
/// n_mels, sample_rate=R, norm=None, mel_scale="htk")` with
/// `_create_triangular_filterbank`, returned transposed as [n_mels][201].
/// (MelScale's default f_max is `float(sample_rate // 2)`: integer division.)
fn melscale_fbanks(rate: u32, n_mels: usize) -> Vec<f64> {
    let f_max = f64::from(rate / 2);
    // all_freqs = linspace(0, sample_rate // 2, n_freqs)
    let all_freqs = linspace(0.0, f_max, N_FREQS);
    // m_pts = linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2); f_min = 0
    let m_pts = linspace(hz_to_mel(0.0), hz_to_mel(f_max), n_mels + 2);
    let f_pts: Vec<f64> = m_pts.iter().map(|&m| mel_to_hz(m)).collect();
    let f_diff: Vec<f64> = f_pts.windows(2).map(|w| w[1] - w[0]).collect();
    let mut fb = vec![0.0; n_mels * N_FREQS];
    for m in 0..n_mels {
        for (i, &f) in all_freqs.iter().enumerate() {
            // slopes = f_pts - all_freqs; down = -slopes[m] / f_diff[m];
            // up = slopes[m + 2] / f_diff[m + 1]; fb = max(0, min(down, up)).
            let down = -(f_pts[m] - f) / f_diff[m];
            let up = (f_pts[m + 2] - f) / f_diff[m + 1];
            let v = down.min(up).max(0.0);
            // Only with absurd n_mels can f_diff be 0 (torch would give NaN); keep 0.
            fb[m * N_FREQS + i] = if v.is_finite() { v } else { 0.0 };
        }
    }
    fb
}

/// `_hz_to_mel(freq, "htk")`.
fn hz_to_mel(f: f64) -> f64 {
    2595.0 * (1.0 + f / 700.0).log10()
}

/// `_mel_to_hz(mels, "htk")`.
fn mel_to_hz(m: f64) -> f64 {
    700.0 * (10f64.powf(m / 2595.0) - 1.0)
}

/// `torch.linspace(start, end, steps)` (evaluated in f64).
fn linspace(start: f64, end: f64, steps: usize) -> Vec<f64> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f64;
    (0..steps).map(|i| start + step * i as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_matches_torch_padding() {
        // len 201: padded[0] = x[200], padded[199] = x[1], padded[200] = x[0],
        // padded[400] = x[200], padded[401] = x[199].
        assert_eq!(reflect(0, 201), 200);
        assert_eq!(reflect(199, 201), 1);
        assert_eq!(reflect(200, 201), 0);
        assert_eq!(reflect(400, 201), 200);
        assert_eq!(reflect(401, 201), 199);
    }

    #[test]
    fn filterbank_shape_and_peaks() {
        let fb = melscale_fbanks(16000, 40);
        assert_eq!(fb.len(), 40 * N_FREQS);
        assert!(fb.iter().all(|v| (0.0..=1.0).contains(v)));
        // Every band has some weight at 16 kHz with 40 mels.
        assert!(fb.chunks_exact(N_FREQS).all(|r| r.iter().any(|&v| v > 0.0)));
    }

    #[test]
    fn shapes_padding_and_degenerate_inputs() {
        let floor = (1e-6f64).ln() as f32;
        // Silence → log(1e-6) everywhere, in every shape.
        let z = log_mel(&[0.0; 1000], 16000, 8, 10);
        assert_eq!(z.len(), 80);
        assert!(z.iter().all(|&v| v == floor));
        assert!(log_mel(&[], 16000, 8, 0).is_empty());
        assert!(log_mel(&[0.1; 10], 16000, 0, 5).is_empty());
        assert_eq!(log_mel(&[], 16000, 4, 3), vec![floor; 12]);
        // 1000 samples → 7 frames; frames 7.. are padding.
        let y: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.3).sin()).collect();
        let m = log_mel(&y, 16000, 8, 10);
        for row in m.chunks_exact(10) {
            assert!(row[..7].iter().all(|&v| v > floor));
            assert!(row[7..].iter().all(|&v| v == floor));
        }
        // Odd and tiny rates and many mels stay finite.
        assert!(log_mel(&y, 1, 128, 4).iter().all(|v| v.is_finite()));
        assert!(log_mel(&y, 22051, 300, 4).iter().all(|v| v.is_finite()));
    }

    #[test]
    fn prefix_equals_full_signal() {
        let y: Vec<f32> = (0..5000)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect();
        for frames in [1, 2, 5, 20] {
            let n = samples_needed(frames);
            assert_eq!(
                log_mel(&y[..n], 16000, 16, frames),
                log_mel(&y, 16000, 16, frames)
            );
        }
    }
}
