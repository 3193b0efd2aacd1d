//! A generated multi-modal, multi-task data set: coloured shapes on noisy
//! backgrounds with a caption each. Some labels are visible only in the image
//! (`shape`, `size`, `mask`), one only in the caption (`owner`), and one needs
//! both (`match`: does the caption's colour word name the shape's colour?).

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;

pub const SIZE: usize = 32;
pub const CAPTION_LEN: usize = 8;
/// Word ids: 0 is padding.
pub const WORDS: &[&str] = &[
    "<pad>", "<unk>", "a", "the", "says", "sees", "thing", "here", "red", "green", "blue", "ann",
    "bob", "cat", "dan", "very", "nice", "small", "big", "picture",
];
const COLOURS: [[f32; 3]; 3] = [[0.9, 0.15, 0.1], [0.1, 0.8, 0.2], [0.15, 0.25, 0.95]];

fn word(w: &str) -> i64 {
    WORDS.iter().position(|x| *x == w).unwrap_or(1) as i64
}

/// `n` samples as tensors keyed by the names `models/shapes.mtl` uses.
pub fn generate(n: usize, seed: u64) -> candle_core::Result<HashMap<String, Tensor>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let px = SIZE * SIZE;
    let (mut img, mut mask, mut cap) = (
        Vec::with_capacity(n * 3 * px),
        Vec::with_capacity(n * px),
        Vec::with_capacity(n * CAPTION_LEN),
    );
    let (mut shape, mut owner, mut matched, mut size) = (vec![], vec![], vec![], vec![]);
    for _ in 0..n {
        let s = rng.random_range(0..3usize); // 0 circle, 1 square, 2 triangle
        let c = rng.random_range(0..3usize);
        let r = rng.random_range(4.0f32..10.0);
        let cx = rng.random_range(r..SIZE as f32 - r);
        let cy = rng.random_range(r..SIZE as f32 - r);
        let mut m = vec![0f32; px];
        for y in 0..SIZE {
            for x in 0..SIZE {
                let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                let inside = match s {
                    0 => dx * dx + dy * dy <= r * r,
                    1 => dx.abs() <= r * 0.8 && dy.abs() <= r * 0.8,
                    _ => dy <= r * 0.8 && dy >= -r * 0.8 && dx.abs() <= (dy + r * 0.8) * 0.6,
                };
                m[y * SIZE + x] = if inside { 1.0 } else { 0.0 };
            }
        }
        for colour in COLOURS[c] {
            for inside in &m {
                let noise: f32 = rng.random_range(0.0..0.35);
                img.push(if *inside > 0.5 {
                    (colour + noise * 0.2).min(1.0)
                } else {
                    noise
                });
            }
        }
        mask.extend_from_slice(&m);
        let o = rng.random_range(0..4usize);
        let says = rng.random_bool(0.5);
        let named = if says {
            c
        } else {
            (c + rng.random_range(1..3usize)) % 3
        };
        let names = ["ann", "bob", "cat", "dan"];
        let colour = ["red", "green", "blue"];
        let fillers = ["very", "nice", "picture", "here", "the"];
        let mut words = vec![
            names[o],
            if rng.random_bool(0.5) { "says" } else { "sees" },
            "a",
            colour[named],
            "thing",
        ];
        while words.len() < CAPTION_LEN - rng.random_range(0..3usize) {
            words.push(fillers[rng.random_range(0..fillers.len())]);
        }
        let mut ids: Vec<i64> = words.iter().map(|w| word(w)).collect();
        ids.resize(CAPTION_LEN, 0);
        cap.extend(ids);
        shape.push(s as i64);
        owner.push(o as i64);
        matched.push(if says { 1f32 } else { 0.0 });
        size.push(r / 10.0);
    }
    let d = Device::Cpu;
    let mut t = HashMap::new();
    t.insert(
        "image".into(),
        Tensor::from_vec(img, (n, 3, SIZE, SIZE), &d)?,
    );
    t.insert(
        "caption".into(),
        Tensor::from_vec(cap, (n, CAPTION_LEN), &d)?,
    );
    t.insert("shape".into(), Tensor::from_vec(shape, n, &d)?);
    t.insert("owner".into(), Tensor::from_vec(owner, n, &d)?);
    t.insert("match".into(), Tensor::from_vec(matched, (n, 1), &d)?);
    t.insert("size".into(), Tensor::from_vec(size, (n, 1), &d)?);
    t.insert(
        "mask".into(),
        Tensor::from_vec(mask, (n, 1, SIZE, SIZE), &d)?,
    );
    Ok(t)
}

/// Writes `train.safetensors` (2000 samples) and `test.safetensors` (500) to `dir`.
pub fn write(dir: &Path, n: usize, seed: u64) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let n_test = (n / 4).max(1);
    let train = generate(n, seed).map_err(|e| e.to_string())?;
    let test = generate(n_test, seed.wrapping_add(1)).map_err(|e| e.to_string())?;
    crate::lower::save_atomic(&train, &dir.join("train.safetensors"))?;
    crate::lower::save_atomic(&test, &dir.join("test.safetensors"))
}

pub fn write_default(dir: &Path, seed: u64) -> Result<(), String> {
    write(dir, 2000, seed)
}
