//! WAV decoding with `hound`, scaled to [-1, 1] and mixed down to mono.
//!
//! hound yields integer samples as `i32` already sign-corrected: 8-bit WAV data is
//! unsigned on disk and hound returns it as `x - 128` (its `signed_from_u8`), 24-bit
//! (3- or 4-byte containers) is sign-extended, and 32-bit float comes back as `f32`.
//! So every integer depth is scaled by 2^(bits-1): 8-bit ÷ 128, 16-bit ÷ 32768,
//! 24-bit ÷ 8388608, 32-bit ÷ 2147483648 (computed in f64 and rounded once to f32,
//! which equals the f32 division for every depth).

use super::AudioError;
use hound::{SampleFormat, WavReader};
use std::io::Cursor;

/// Mono samples in [-1, 1] and the file's sample rate.
pub fn decode_wav(bytes: &[u8]) -> Result<(Vec<f32>, u32), AudioError> {
    // Check the magic ourselves for clearer messages than hound's.
    if bytes.len() >= 4 && (&bytes[..4] == b"RIFX" || &bytes[..4] == b"RF64") {
        return Err(AudioError::Unsupported(
            "big-endian RIFX and 64-bit RF64 files are not supported".into(),
        ));
    }
    if bytes.len() < 4 || &bytes[..4] != b"RIFF" {
        return Err(AudioError::NotWav("no RIFF header".into()));
    }
    if bytes.len() >= 12 && &bytes[8..12] != b"WAVE" {
        return Err(AudioError::NotWav("RIFF file without a WAVE tag".into()));
    }
    let mut reader = WavReader::new(Cursor::new(bytes)).map_err(|e| map_err(e, "header"))?;
    let spec = reader.spec();
    let channels = spec.channels as usize;
    // hound already rejects 0 channels; keep the check so a change there cannot
    // turn into a division by zero here.
    if channels == 0 {
        return Err(AudioError::NotWav("the file declares 0 channels".into()));
    }
    if spec.sample_rate == 0 {
        return Err(AudioError::NotWav(
            "the file declares a sample rate of 0 Hz".into(),
        ));
    }
    let total = reader.len() as usize;
    if total == 0 {
        return Err(AudioError::Empty);
    }
    // The header's sample count is not trusted for allocation (it may claim 4 GiB);
    // a file cannot hold more frames than it has bytes.
    let frames = (total / channels).min(bytes.len());
    let mono = match (spec.sample_format, spec.bits_per_sample) {
        (SampleFormat::Int, bits @ (8 | 16 | 24 | 32)) => {
            let scale = 1.0 / f64::from(1u32 << (bits - 1));
            mix(
                reader
                    .samples::<i32>()
                    .map(|s| s.map(|v| f64::from(v) * scale)),
                channels,
                frames,
            )?
        }
        (SampleFormat::Float, 32) => mix(
            reader.samples::<f32>().map(|s| s.map(f64::from)),
            channels,
            frames,
        )?,
        (SampleFormat::Int, bits) => {
            return Err(AudioError::Unsupported(format!("{bits}-bit integer PCM")));
        }
        (SampleFormat::Float, bits) => {
            return Err(AudioError::Unsupported(format!("{bits}-bit float")));
        }
    };
    Ok((mono, spec.sample_rate))
}

/// Averages each group of `channels` interleaved samples (in f64, one rounding to f32).
fn mix<I>(samples: I, channels: usize, capacity: usize) -> Result<Vec<f32>, AudioError>
where
    I: Iterator<Item = hound::Result<f64>>,
{
    let mut out = Vec::with_capacity(capacity);
    let (mut acc, mut k) = (0.0f64, 0usize);
    for s in samples {
        acc += s.map_err(|e| map_err(e, "data"))?;
        k += 1;
        if k == channels {
            out.push((acc / channels as f64) as f32);
            acc = 0.0;
            k = 0;
        }
    }
    // hound checks that the data length is a multiple of the channel count, so
    // there is no partial frame left; an empty result cannot happen (total > 0).
    Ok(out)
}

/// hound's errors → ours. The reader is an in-memory slice, so every I/O error
/// means the bytes ran out (hound reports EOF as a generic "Failed to read enough bytes").
fn map_err(e: hound::Error, part: &str) -> AudioError {
    match e {
        hound::Error::IoError(io) => AudioError::Truncated(format!("the {part} ends early: {io}")),
        hound::Error::FormatError(m) => AudioError::NotWav(format!("malformed {part}: {m}")),
        hound::Error::Unsupported => AudioError::Unsupported(
            "only PCM integer (8/16/24/32-bit) and 32-bit float are decoded".into(),
        ),
        hound::Error::TooWide | hound::Error::InvalidSampleFormat => {
            AudioError::Unsupported("sample width does not match its container".into())
        }
        other => AudioError::NotWav(format!("{part}: {other}")),
    }
}
