//! Audio front end for `audio[M, F] rate R` inputs: WAV bytes → mono samples →
//! resampled to R Hz (a port of `torchaudio.functional.resample`) → log-mel
//! spectrogram [M, F] (a port of `torchaudio.transforms.MelSpectrogram` with
//! n_fft=400, hop=160, HTK mel scale, power 2, then `log(x + 1e-6)`).
//!
//! Everything here is pure Rust (`hound` decodes, `realfft` transforms) and never
//! panics on input bytes: malformed files come back as an [`AudioError`].
//! The expected outputs in the tests were produced by torchaudio
//! (`make_reference.py` in the scratch crate, data in `tests/data/audio/`).

mod mel;
mod resample;
mod wav;

pub use mel::log_mel;
pub use resample::resample;
pub use wav::decode_wav;

/// Why a file could not be decoded (the caller adds the row and column).
#[derive(Debug, Clone, PartialEq)]
pub enum AudioError {
    /// Not a RIFF/WAVE file, or its header is malformed.
    NotWav(String),
    /// The file ends before its header or its data chunk does.
    Truncated(String),
    /// A well-formed file with no samples.
    Empty,
    /// A WAV encoding we do not decode (compressed, odd bit depths, …).
    Unsupported(String),
    /// An I/O error other than running out of bytes.
    Io(String),
}

impl std::fmt::Display for AudioError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AudioError::NotWav(m) => write!(f, "not a WAV file ({m})"),
            AudioError::Truncated(m) => write!(f, "truncated WAV file ({m})"),
            AudioError::Empty => write!(f, "the file has no samples"),
            AudioError::Unsupported(m) => write!(f, "unsupported WAV encoding ({m})"),
            AudioError::Io(m) => write!(f, "I/O error while reading the WAV file ({m})"),
        }
    }
}

impl std::error::Error for AudioError {}

/// All three steps: bytes of a WAV file → log-mel [n_mels × frames], row-major.
///
/// Only the samples that the first `frames` frames can see are resampled, so a
/// long file costs O(frames) after decoding; the result equals running
/// [`resample`] on the whole signal and then [`log_mel`] (see `mel::samples_needed`).
pub fn wav_to_log_mel(
    bytes: &[u8],
    rate: u32,
    n_mels: usize,
    frames: usize,
) -> Result<Vec<f32>, AudioError> {
    if rate == 0 {
        // torchaudio raises ValueError for a non-positive rate; report it as an error.
        return Err(AudioError::Unsupported("target sample rate 0 Hz".into()));
    }
    let (x, from) = decode_wav(bytes)?;
    let y = resample::resample_prefix(&x, from, rate, mel::samples_needed(frames));
    Ok(log_mel(&y, rate, n_mels, frames))
}

#[cfg(test)]
mod tests;
