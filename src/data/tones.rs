//! A generated audio + image data set with three tasks. Each sample is a
//! short sound (WAV) and a picture of a shape (PNG):
//! - `sound`: what the clip is — a steady tone, a rising chirp, a noise burst
//!   or two beeps (audio only);
//! - `shape`: the shape in the picture — circle, square or triangle (image only);
//! - `agree`: whether the pitch (high or low) agrees with the shape's
//!   roundness (high with a circle, low with a square or triangle): both.
//!   A noise burst has no audible pitch, so for those a quarter of the
//!   samples `agree` is a coin flip: 87.5% is the best expected accuracy.
//!
//! The WAV files vary as field data does: 8, 16 and 22.05 kHz, 8- and 16-bit
//! PCM and 32-bit float, mono and stereo, so the model's `audio[M, F] rate R`
//! input resamples and mixes down.

use super::image::write_png;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::f32::consts::TAU;
use std::fmt::Write as _;
use std::path::Path;

pub const SOUNDS: [&str; 4] = ["tone", "chirp", "noise", "beeps"];
pub const SHAPES: [&str; 3] = ["circle", "square", "triangle"];
pub const SIZE: usize = 28;
/// Clip length in seconds.
const SECONDS: f32 = 0.5;

/// One clip at `rate` Hz in [-1, 1]: the class's waveform at pitch `f0`.
fn clip(sound: usize, f0: f32, rate: u32, rng: &mut StdRng) -> Vec<f32> {
    let n = (SECONDS * rate as f32) as usize;
    let amp = rng.random_range(0.3f32..0.8);
    let onset = rng.random_range(0.0f32..0.1);
    (0..n)
        .map(|i| {
            let t = i as f32 / rate as f32;
            let on = t >= onset && t < onset + 0.35;
            let s = match sound {
                0 => (TAU * f0 * t).sin() * f32::from(on),
                // f0 → 2·f0 over the clip: phase is the integral of the frequency.
                1 => (TAU * f0 * (t + t * t / (2.0 * SECONDS))).sin(),
                2 => rng.random_range(-1.0f32..1.0) * f32::from(on),
                _ => {
                    let beep =
                        (t >= onset && t < onset + 0.08) || (t >= onset + 0.2 && t < onset + 0.28);
                    (TAU * f0 * t).sin() * f32::from(beep)
                }
            };
            amp * s + rng.random_range(-0.02f32..0.02)
        })
        .collect()
}

/// Writes `x` (mono) as a WAV in one of the formats field data comes in.
fn write_wav(path: &Path, x: &[f32], rate: u32, format: usize) -> Result<(), String> {
    let (channels, bits, float) = match format {
        0 => (1, 16, false),
        1 => (2, 16, false),
        2 => (1, 8, false),
        _ => (2, 32, true),
    };
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: if float {
            hound::SampleFormat::Float
        } else {
            hound::SampleFormat::Int
        },
    };
    let err = |e: hound::Error| format!("cannot write {}: {e}", path.display());
    let mut w = hound::WavWriter::create(path, spec).map_err(err)?;
    for &v in x {
        for _ in 0..channels {
            match (bits, float) {
                (_, true) => w.write_sample(v).map_err(err)?,
                (8, _) => w.write_sample((v * 127.0).round() as i8).map_err(err)?,
                _ => w.write_sample((v * 32767.0).round() as i16).map_err(err)?,
            }
        }
    }
    w.finalize().map_err(err)
}

/// A grey picture of shape `s` with noise.
fn picture(s: usize, rng: &mut StdRng) -> Vec<f32> {
    let r = rng.random_range(6.0f32..10.0);
    let cx = rng.random_range(r..SIZE as f32 - r);
    let cy = rng.random_range(r..SIZE as f32 - r);
    (0..SIZE * SIZE)
        .map(|p| {
            let (dx, dy) = ((p % SIZE) as f32 + 0.5 - cx, (p / SIZE) as f32 + 0.5 - cy);
            let inside = match s {
                0 => dx * dx + dy * dy <= r * r,
                1 => dx.abs() <= r * 0.8 && dy.abs() <= r * 0.8,
                _ => dy <= r * 0.8 && dy >= -r * 0.8 && dx.abs() <= (dy + r * 0.8) * 0.6,
            };
            let noise: f32 = rng.random_range(0.0..0.3);
            if inside {
                0.8 + noise * 0.5
            } else {
                noise
            }
        })
        .collect()
}

fn write_split(dir: &Path, name: &str, n: usize, seed: u64) -> Result<(), String> {
    for sub in ["sounds", "images"] {
        std::fs::create_dir_all(dir.join(sub))
            .map_err(|e| format!("cannot create {}: {e}", dir.join(sub).display()))?;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut csv = String::from("sound,image,sound_class,shape,agree\n");
    const RATES: [u32; 3] = [8000, 16000, 22050];
    for i in 0..n {
        let sound = rng.random_range(0..SOUNDS.len());
        let shape = rng.random_range(0..SHAPES.len());
        let high = rng.random_bool(0.5);
        let f0 = if high {
            rng.random_range(1000.0f32..1800.0)
        } else {
            rng.random_range(250.0f32..500.0)
        };
        let rate = RATES[rng.random_range(0..RATES.len())];
        let format = rng.random_range(0..4usize);
        let wav = format!("sounds/{name}_{i:05}.wav");
        write_wav(
            &dir.join(&wav),
            &clip(sound, f0, rate, &mut rng),
            rate,
            format,
        )?;
        let png = format!("images/{name}_{i:05}.png");
        write_png(&dir.join(&png), &picture(shape, &mut rng), 1, SIZE, SIZE)?;
        // High pitch goes with the round shape, low with the angular ones.
        let agree = u8::from(high == (shape == 0));
        let _ = writeln!(
            csv,
            "{wav},{png},{},{},{agree}",
            SOUNDS[sound], SHAPES[shape]
        );
    }
    super::write_text_atomic(&dir.join(format!("{name}.csv")), &csv)
}

/// `train.csv` (n samples) and `test.csv` (n/4), WAVs under `sounds/`, PNGs under `images/`.
pub fn write(dir: &Path, n: usize, seed: u64) -> Result<(), String> {
    write_split(dir, "train", n, seed)?;
    write_split(dir, "test", (n / 4).max(1), seed.wrapping_add(1))
}

pub fn write_default(dir: &Path, seed: u64) -> Result<(), String> {
    write(dir, 2000, seed)
}
