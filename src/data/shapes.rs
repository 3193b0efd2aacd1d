//! A generated multi-modal, multi-task data set: coloured shapes on noisy
//! backgrounds (PNG files) with a caption each, in a CSV manifest. `shape` and
//! `mask` are visible only in the image, `owner` only in the caption, and
//! `total` = (shape size) + (the number the caption names) needs both.

use super::image::write_png;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;
use std::path::Path;

pub const SIZE: usize = 32;
pub const SHAPES: [&str; 3] = ["circle", "square", "triangle"];
pub const OWNERS: [&str; 4] = ["ann", "bob", "cat", "dan"];
const NUMBERS: [&str; 4] = ["one", "two", "three", "four"];
const COLOURS: [[f32; 3]; 3] = [[0.9, 0.15, 0.1], [0.1, 0.8, 0.2], [0.15, 0.25, 0.95]];
const FILLERS: [&str; 6] = ["shapes", "here", "today", "again", "very", "nicely"];

pub struct Sample {
    /// [3, SIZE, SIZE] in [0, 1].
    pub image: Vec<f32>,
    /// [SIZE, SIZE], 1 inside the shape.
    pub mask: Vec<f32>,
    pub caption: String,
    pub shape: usize,
    pub owner: usize,
    pub total: f32,
}

pub fn sample(rng: &mut StdRng) -> Sample {
    let px = SIZE * SIZE;
    let s = rng.random_range(0..3usize);
    let c = rng.random_range(0..3usize);
    let r = rng.random_range(4.0f32..10.0);
    let cx = rng.random_range(r..SIZE as f32 - r);
    let cy = rng.random_range(r..SIZE as f32 - r);
    let mut mask = vec![0f32; px];
    for y in 0..SIZE {
        for x in 0..SIZE {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            let inside = match s {
                0 => dx * dx + dy * dy <= r * r,
                1 => dx.abs() <= r * 0.8 && dy.abs() <= r * 0.8,
                _ => dy <= r * 0.8 && dy >= -r * 0.8 && dx.abs() <= (dy + r * 0.8) * 0.6,
            };
            mask[y * SIZE + x] = if inside { 1.0 } else { 0.0 };
        }
    }
    let mut image = Vec::with_capacity(3 * px);
    for colour in COLOURS[c] {
        for inside in &mask {
            let noise: f32 = rng.random_range(0.0..0.35);
            image.push(if *inside > 0.5 {
                (colour + noise * 0.2).min(1.0)
            } else {
                noise
            });
        }
    }
    let owner = rng.random_range(0..4usize);
    let number = rng.random_range(0..4usize);
    let mut words = vec![
        OWNERS[owner].to_string(),
        "drew".into(),
        NUMBERS[number].into(),
    ];
    for _ in 0..rng.random_range(0..4usize) {
        words.push(FILLERS[rng.random_range(0..FILLERS.len())].into());
    }
    // Capitalized, with punctuation: the tokenizer lower-cases and splits.
    words[0] = words[0][..1].to_uppercase() + &words[0][1..];
    let caption = words.join(" ") + ".";
    let total = (r - 4.0) / 3.0 + (number + 1) as f32;
    Sample {
        image,
        mask,
        caption,
        shape: s,
        owner,
        total,
    }
}

/// Writes `n` samples as PNGs under `dir/images`, `dir/masks` and a manifest
/// `dir/NAME.csv`. A fraction `missing` of `shape` and `owner` cells is left empty.
pub fn write_split(
    dir: &Path,
    name: &str,
    n: usize,
    seed: u64,
    missing: f64,
) -> Result<(), String> {
    for sub in ["images", "masks"] {
        std::fs::create_dir_all(dir.join(sub))
            .map_err(|e| format!("cannot create {}: {e}", dir.join(sub).display()))?;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut csv = String::from("image,caption,shape,owner,total,mask\n");
    for i in 0..n {
        let s = sample(&mut rng);
        let img = format!("images/{name}_{i:05}.png");
        let mask = format!("masks/{name}_{i:05}.png");
        write_png(&dir.join(&img), &s.image, 3, SIZE, SIZE)?;
        write_png(&dir.join(&mask), &s.mask, 1, SIZE, SIZE)?;
        let drop = |rng: &mut StdRng| rng.random_bool(missing);
        let shape = if drop(&mut rng) { "" } else { SHAPES[s.shape] };
        let owner = if drop(&mut rng) { "" } else { OWNERS[s.owner] };
        let _ = writeln!(
            csv,
            "{img},\"{}\",{shape},{owner},{:.4},{mask}",
            s.caption, s.total
        );
    }
    super::write_text_atomic(&dir.join(format!("{name}.csv")), &csv)
}

/// `train.csv` (n samples, 5% of `shape`/`owner` labels missing) and `test.csv` (n/4).
pub fn write(dir: &Path, n: usize, seed: u64) -> Result<(), String> {
    write_split(dir, "train", n, seed, 0.05)?;
    write_split(dir, "test", (n / 4).max(1), seed.wrapping_add(1), 0.0)
}

pub fn write_default(dir: &Path, seed: u64) -> Result<(), String> {
    write(dir, 2000, seed)
}
