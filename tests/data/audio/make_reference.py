#!/usr/bin/env python3
"""Make the small WAV fixtures and torchaudio's expected outputs for the Rust tests.

Run with a venv that has torch + torchaudio (matching CUDA builds) + numpy:
    /tmp/tavenv/bin/python make_reference.py
Writes into tests/data/audio/:
    NAME.wav             the input file
    NAME.dec.f32         mono samples as our scaling rules give them (f32 LE)
    NAME.rs16k.f32       torchaudio.functional.resample(dec, rate, 16000)
    NAME.mel{M}x{F}.f32  log(MelSpectrogram(...) + 1e-6), padded/truncated to F frames,
                         row-major [M, F]
    manifest.json        what was made (rates, lengths, shapes), for humans.
Samples are scaled by hand (NOT torchaudio.load) so the test is about resample + mel;
torchaudio.load is tried separately at the end when its backend (torchcodec) exists.
"""
import json
import math
import os
import struct
import wave

import numpy as np
import torch
import torchaudio
import torchaudio.functional as AF

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests", "data", "audio")
R = 16000
rng = np.random.default_rng(1234)


def write_pcm(path, ints, rate, width):
    """ints: int array [frames, channels]; width in bytes. 8-bit is written unsigned."""
    frames, ch = ints.shape
    with wave.open(path, "wb") as w:
        w.setnchannels(ch)
        w.setsampwidth(width)
        w.setframerate(rate)
        if width == 1:
            data = (ints + 128).astype(np.uint8).tobytes()
        elif width == 2:
            data = ints.astype("<i2").tobytes()
        elif width == 3:
            v = ints.astype("<i4").reshape(-1)
            b = v.view(np.uint8).reshape(-1, 4)[:, :3]  # low 3 bytes, little endian
            data = b.tobytes()
        else:
            data = ints.astype("<i4").tobytes()
        w.writeframes(data)


def write_float(path, x, rate):
    """32-bit IEEE float (format tag 3), with a LIST chunk before data to exercise skipping."""
    frames, ch = x.shape
    data = x.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, ch, rate, rate * ch * 4, ch * 4, 32)
    lst = b"INFOISFT" + struct.pack("<I", 4) + b"mtl\0"
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"LIST" + struct.pack("<I", len(lst)) + lst
    body += b"data" + struct.pack("<I", len(data)) + data
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", len(body)) + body)


def scale(ints, bits):
    # The usual scaling: divide by 2^(bits-1); done in f64 then rounded once to f32.
    return (ints.astype(np.float64) / float(2 ** (bits - 1)))


def mono(x):
    # Average the channels (f64), then one rounding to f32.
    return x.astype(np.float64).mean(axis=1).astype(np.float32)


def ref_mel(y, n_mels, frames):
    y = torch.from_numpy(y)[None]
    if y.shape[-1] < 201:
        # Our documented choice: torch's reflect pad needs length > 200, so shorter
        # signals are zero-padded at the end to 201 samples first.
        y = torch.nn.functional.pad(y, (0, 201 - y.shape[-1]))
    ms = torchaudio.transforms.MelSpectrogram(
        sample_rate=R, n_fft=400, hop_length=160, n_mels=n_mels, mel_scale="htk",
        norm=None, center=True, pad_mode="reflect", power=2.0)
    m = torch.log(ms(y)[0] + 1e-6)
    fill = torch.log(torch.tensor(1e-6, dtype=torch.float32))
    if m.shape[1] >= frames:
        m = m[:, :frames]
    else:
        m = torch.cat([m, fill.expand(n_mels, frames - m.shape[1])], dim=1)
    return m.contiguous().numpy().astype("<f4")


def save(name, arr):
    np.asarray(arr, dtype="<f4").tofile(os.path.join(OUT, name))


def main():
    os.makedirs(OUT, exist_ok=True)
    cases = []
    # (name, rate, builder) -> builder returns (path-writer, decoded mono f32)

    # 1. 16-bit mono 16 kHz chirp, 0.3 s (no resampling: same rate).
    n, sr = 4800, 16000
    t = np.arange(n) / sr
    chirp = 0.8 * np.sin(2 * np.pi * (100 * t + 0.5 * (7000 - 100) / 0.3 * t * t))
    ints = np.round(chirp * 32767).astype(np.int64)[:, None]
    cases.append(("chirp16k_i16", sr, 16, ints, [(40, 50), (64, 20)]))

    # 2. 8-bit unsigned mono 8 kHz tone, 0.3 s.
    n, sr = 2400, 8000
    t = np.arange(n) / sr
    ints = np.clip(np.round(100 * np.sin(2 * np.pi * 440 * t)), -128, 127).astype(np.int64)[:, None]
    cases.append(("tone8k_u8", sr, 8, ints, [(40, 50)]))

    # 3. 24-bit stereo 22050 Hz, ~0.136 s: different tones per channel, full range.
    n, sr = 3000, 22050
    t = np.arange(n) / sr
    l = 0.9 * np.sin(2 * np.pi * 1000 * t)
    r = 0.5 * np.sin(2 * np.pi * 5000 * t) + 0.3 * rng.standard_normal(n).clip(-1.5, 1.5) / 1.5
    ints = np.round(np.stack([l, r], 1) * 8388607).astype(np.int64)
    ints[0, 0], ints[1, 1] = -8388608, 8388607  # extremes
    cases.append(("stereo22k_i24", sr, 24, ints, [(40, 50)]))

    # 4. 32-bit int 44.1 kHz mono noise, 0.1 s.
    n, sr = 4410, 44100
    ints = rng.integers(-2**31, 2**31, size=(n, 1), dtype=np.int64)
    ints[:50] = ints[:50] // 1000  # a quiet start
    cases.append(("noise44k_i32", sr, 32, ints, [(40, 50)]))

    # 5. 32-bit float stereo 48 kHz, 2500 frames.
    n, sr = 2500, 48000
    t = np.arange(n) / sr
    fl = np.stack([0.7 * np.sin(2 * np.pi * 300 * t), 0.25 * rng.standard_normal(n)], 1).astype(np.float32)
    cases.append(("float48k_f32", sr, 0, fl, [(40, 50), (64, 20)]))

    # 6. Very short: 100 samples of 16-bit mono 8 kHz (200 samples after resampling,
    #    i.e. below torch's 201-sample reflect-pad limit).
    n, sr = 100, 8000
    ints = np.round(20000 * np.sin(2 * np.pi * 1000 * np.arange(n) / sr)).astype(np.int64)[:, None]
    cases.append(("short8k_i16", sr, 16, ints, [(40, 50)]))

    manifest = []
    for name, sr, bits, data, mels in cases:
        path = os.path.join(OUT, name + ".wav")
        if bits == 0:
            write_float(path, data, sr)
            dec = mono(data)
        else:
            write_pcm(path, data, sr, bits // 8)
            dec = mono(scale(data, bits))
        save(name + ".dec.f32", dec)
        y = AF.resample(torch.from_numpy(dec)[None], sr, R)[0].numpy()
        save(name + ".rs16k.f32", y)
        entry = {"name": name, "rate": sr, "bits": bits, "channels": int(data.shape[1]),
                 "samples": int(data.shape[0]), "resampled": int(y.shape[0]), "mels": []}
        for (m, f) in mels:
            save(f"{name}.mel{m}x{f}.f32", ref_mel(y, m, f))
            entry["mels"].append([m, f])
        manifest.append(entry)
        print(name, sr, data.shape, "->", y.shape, os.path.getsize(path), "bytes")

        # Separately: does torchaudio.load agree with our scaling? (Needs torchcodec.)
        try:
            wav, lsr = torchaudio.load(path)
            same = torch.equal(wav.mean(0) if wav.shape[0] > 1 else wav[0], torch.from_numpy(dec))
            maxd = (wav.double().mean(0) - torch.from_numpy(dec).double()).abs().max().item()
            print("   torchaudio.load:", lsr, tuple(wav.shape), "exact" if same else f"max diff {maxd:g}")
            entry["torchaudio_load_max_diff"] = maxd
        except Exception as e:  # noqa: BLE001
            print("   torchaudio.load unavailable:", type(e).__name__, str(e).splitlines()[0][:120])
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump({"torch": torch.__version__, "torchaudio": torchaudio.__version__,
                   "target_rate": R, "cases": manifest}, f, indent=1)
    total = sum(os.path.getsize(os.path.join(OUT, p)) for p in os.listdir(OUT))
    print("total bytes:", total)


if __name__ == "__main__":
    main()
