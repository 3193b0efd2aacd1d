//! Checks against torchaudio's numbers (made by `make_reference.py`, stored in
//! `tests/data/audio/`) and against broken inputs.

use super::*;

macro_rules! data {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/audio/",
            $name
        ))
    };
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

struct Case {
    name: &'static str,
    rate: u32,
    wav: &'static [u8],
    dec: &'static [u8],
    rs: &'static [u8],
    /// (n_mels, frames, expected log-mel)
    mels: Vec<(usize, usize, &'static [u8])>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "chirp16k_i16",
            rate: 16000,
            wav: data!("chirp16k_i16.wav"),
            dec: data!("chirp16k_i16.dec.f32"),
            rs: data!("chirp16k_i16.rs16k.f32"),
            mels: vec![
                (40, 50, data!("chirp16k_i16.mel40x50.f32")),
                (64, 20, data!("chirp16k_i16.mel64x20.f32")),
            ],
        },
        Case {
            name: "tone8k_u8",
            rate: 8000,
            wav: data!("tone8k_u8.wav"),
            dec: data!("tone8k_u8.dec.f32"),
            rs: data!("tone8k_u8.rs16k.f32"),
            mels: vec![(40, 50, data!("tone8k_u8.mel40x50.f32"))],
        },
        Case {
            name: "stereo22k_i24",
            rate: 22050,
            wav: data!("stereo22k_i24.wav"),
            dec: data!("stereo22k_i24.dec.f32"),
            rs: data!("stereo22k_i24.rs16k.f32"),
            mels: vec![(40, 50, data!("stereo22k_i24.mel40x50.f32"))],
        },
        Case {
            name: "noise44k_i32",
            rate: 44100,
            wav: data!("noise44k_i32.wav"),
            dec: data!("noise44k_i32.dec.f32"),
            rs: data!("noise44k_i32.rs16k.f32"),
            mels: vec![(40, 50, data!("noise44k_i32.mel40x50.f32"))],
        },
        Case {
            name: "float48k_f32",
            rate: 48000,
            wav: data!("float48k_f32.wav"),
            dec: data!("float48k_f32.dec.f32"),
            rs: data!("float48k_f32.rs16k.f32"),
            mels: vec![
                (40, 50, data!("float48k_f32.mel40x50.f32")),
                (64, 20, data!("float48k_f32.mel64x20.f32")),
            ],
        },
        Case {
            name: "short8k_i16",
            rate: 8000,
            wav: data!("short8k_i16.wav"),
            dec: data!("short8k_i16.dec.f32"),
            rs: data!("short8k_i16.rs16k.f32"),
            mels: vec![(40, 50, data!("short8k_i16.mel40x50.f32"))],
        },
    ]
}

#[test]
fn decode_scaling_is_exact() {
    for c in cases() {
        let (x, rate) = decode_wav(c.wav).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(rate, c.rate, "{}", c.name);
        let want = f32s(c.dec);
        assert_eq!(x.len(), want.len(), "{}", c.name);
        for (i, (a, b)) in x.iter().zip(&want).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{} sample {i}: {a} vs {b}",
                c.name
            );
        }
    }
}

#[test]
fn resample_matches_torchaudio() {
    for c in cases() {
        let x = f32s(c.dec);
        let y = resample(&x, c.rate, 16000);
        let want = f32s(c.rs);
        assert_eq!(y.len(), want.len(), "{}", c.name);
        let err = y
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        eprintln!("{:>14}: resample max abs err {err:.3e}", c.name);
        assert!(err <= 1e-5, "{}: {err}", c.name);
    }
}

#[test]
fn log_mel_matches_torchaudio() {
    for c in cases() {
        for &(m, f, want) in &c.mels {
            let got = wav_to_log_mel(c.wav, 16000, m, f).unwrap();
            let want = f32s(want);
            assert_eq!(got.len(), m * f);
            assert_eq!(want.len(), m * f);
            // Compared on the power scale: |e^a - e^b| ≤ 1e-3·e^b + 1e-6.
            let mut worst = 0.0f64; // largest error as a fraction of the allowance
            let mut rel = 0.0f64; // largest relative error where power > 1e-4
            for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                let (pa, pb) = (f64::from(a).exp(), f64::from(b).exp());
                let allowed = 1e-3 * pb + 1e-6;
                assert!(
                    (pa - pb).abs() <= allowed,
                    "{} {m}x{f} [{i}]: {pa} vs {pb}",
                    c.name
                );
                worst = worst.max((pa - pb).abs() / allowed);
                if pb > 1e-4 {
                    rel = rel.max((pa - pb).abs() / pb);
                }
            }
            eprintln!(
                "{:>14} {m}x{f}: max rel err {rel:.3e} (power > 1e-4), worst {worst:.3} of allowance",
                c.name
            );
            // The prefix shortcut in wav_to_log_mel equals the plain composition.
            let (x, rate) = decode_wav(c.wav).unwrap();
            assert_eq!(got, log_mel(&resample(&x, rate, 16000), 16000, m, f));
        }
    }
}

/// A canonical 44-byte-header WAV: fmt tag, channels, rate, bits, data as given,
/// with the data chunk claiming `claimed` bytes.
fn wav(tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8], claimed: u32) -> Vec<u8> {
    let align = channels.wrapping_mul(bits / 8);
    let mut v = b"RIFF".to_vec();
    v.extend((36 + data.len() as u32).to_le_bytes());
    v.extend(b"WAVEfmt ");
    v.extend(16u32.to_le_bytes());
    v.extend(tag.to_le_bytes());
    v.extend(channels.to_le_bytes());
    v.extend(rate.to_le_bytes());
    v.extend(rate.wrapping_mul(u32::from(align)).to_le_bytes());
    v.extend(align.to_le_bytes());
    v.extend(bits.to_le_bytes());
    v.extend(b"data");
    v.extend(claimed.to_le_bytes());
    v.extend(data);
    v
}

#[test]
fn broken_inputs_are_errors() {
    let ok = wav(1, 1, 8000, 16, &[0, 1, 2, 3], 4);
    assert_eq!(
        decode_wav(&ok).unwrap(),
        (vec![256.0 / 32768.0, 770.0 / 32768.0], 8000)
    );

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("RIFF only", b"RIFF".to_vec()),
        (
            "RIFF + garbage",
            b"RIFF\x10\0\0\0garbage garbage garbage".to_vec(),
        ),
        ("RIFF....WAVE only", b"RIFF\x04\0\0\0WAVE".to_vec()),
        ("not RIFF", b"OggS\0\0\0\0\0\0\0\0\0\0\0\0".to_vec()),
        ("RF64", b"RF64\xff\xff\xff\xffWAVE".to_vec()),
        (
            "more data claimed",
            wav(1, 1, 8000, 16, &[0, 1, 2, 3], 1000),
        ),
        (
            "huge data claimed",
            wav(1, 2, 8000, 16, &[0; 8], u32::MAX - 3),
        ),
        ("zero channels", wav(1, 0, 8000, 16, &[0; 4], 4)),
        ("sample rate 0", wav(1, 1, 0, 16, &[0; 4], 4)),
        ("zero-length data", wav(1, 1, 8000, 16, &[], 0)),
        ("12-bit", wav(1, 1, 8000, 12, &[0; 4], 4)),
        ("ADPCM", wav(2, 1, 8000, 16, &[0; 4], 4)),
        ("64-bit float", wav(3, 1, 8000, 64, &[0; 8], 8)),
        ("odd data length", wav(1, 1, 8000, 16, &[0; 3], 3)),
        ("header cut", ok[..30].to_vec()),
    ];
    for (what, bytes) in &cases {
        let e = decode_wav(bytes).expect_err(what);
        assert!(!e.to_string().is_empty());
        assert!(wav_to_log_mel(bytes, 16000, 40, 50).is_err(), "{what}");
        eprintln!("{what:>20}: {e}");
    }
    assert_eq!(
        decode_wav(&[]),
        Err(AudioError::NotWav("no RIFF header".into()))
    );
    assert_eq!(decode_wav(&cases[10].1), Err(AudioError::Empty));
    assert!(matches!(
        decode_wav(&cases[6].1),
        Err(AudioError::Truncated(_))
    ));
    assert!(matches!(
        decode_wav(&cases[12].1),
        Err(AudioError::Unsupported(_))
    ));
    assert_eq!(
        wav_to_log_mel(&ok, 0, 40, 50),
        Err(AudioError::Unsupported("target sample rate 0 Hz".into()))
    );
}

#[test]
fn absurd_but_valid_rates_stay_bounded() {
    // 8-bit mono at 1 Hz and at 4 GHz: byte rate = rate, so hound accepts both.
    let data: Vec<u8> = (0..200u32).map(|i| (i * 37 % 256) as u8).collect();
    for rate in [1, 3, 4_000_000_000] {
        let m = wav_to_log_mel(&wav(1, 1, rate, 8, &data, 200), 16000, 40, 50).unwrap();
        assert_eq!(m.len(), 2000);
        assert!(m.iter().all(|v| v.is_finite()), "{rate}");
    }
}

#[test]
fn corrupted_files_never_panic() {
    // Every byte of the short file's header set to a few values, and every
    // truncation of it; decoding and the full pipeline must return, not panic.
    let base = data!("short8k_i16.wav");
    for len in 0..base.len() {
        let _ = wav_to_log_mel(&base[..len], 16000, 40, 50);
    }
    for pos in 0..base.len().min(64) {
        for v in [0u8, 1, 2, 3, 0x7f, 0x80, 0xfe, 0xff] {
            let mut b = base.to_vec();
            b[pos] = v;
            let _ = wav_to_log_mel(&b, 16000, 40, 50);
        }
    }
    // Truncations of every fixture at a spread of lengths.
    for c in cases() {
        for len in (0..c.wav.len())
            .step_by(97)
            .chain(c.wav.len() - 3..c.wav.len())
        {
            assert!(
                decode_wav(&c.wav[..len]).is_err(),
                "{} cut at {len}",
                c.name
            );
        }
    }
}
