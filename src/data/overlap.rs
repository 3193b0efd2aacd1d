//! A generated two-task image data set where the tasks compete for one
//! trunk, after MultiMNIST (Sabour et al. 2017; the benchmark of Sener &
//! Koltun 2018): two shapes drawn over each other in one grey image, one
//! anchored up-left and one down-right, overlapping in the middle. `left`
//! is the class of the first, `right` of the second; features that find one
//! shape are noise for the other task. Each image has a caption naming both
//! shapes in either order ("a ring above a bar", "a bar below a ring"), for
//! image–text contrastive models.

use super::image::write_png;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;
use std::path::Path;

pub const SIZE: usize = 28;
pub const CLASSES: [&str; 6] = ["circle", "square", "triangle", "cross", "ring", "bar"];

/// Whether (dx, dy) from the centre lies in shape `s` of radius `r`.
fn inside(s: usize, dx: f32, dy: f32, r: f32) -> bool {
    match s {
        0 => dx * dx + dy * dy <= r * r,
        1 => dx.abs() <= r * 0.8 && dy.abs() <= r * 0.8,
        2 => dy <= r * 0.8 && dy >= -r * 0.8 && dx.abs() <= (dy + r * 0.8) * 0.6,
        3 => (dx.abs() <= r * 0.3 || dy.abs() <= r * 0.3) && dx.abs() <= r && dy.abs() <= r,
        4 => {
            let d = (dx * dx + dy * dy).sqrt();
            d <= r && d >= r * 0.55
        }
        _ => dx.abs() <= r && dy.abs() <= r * 0.35,
    }
}

/// One sample: the [SIZE, SIZE] image in [0, 1] and the two classes.
pub fn sample(rng: &mut StdRng) -> (Vec<f32>, usize, usize) {
    let classes = [
        rng.random_range(0..CLASSES.len()),
        rng.random_range(0..CLASSES.len()),
    ];
    let mut img: Vec<f32> = (0..SIZE * SIZE)
        .map(|_| rng.random_range(0.0..0.45))
        .collect();
    for (k, s) in classes.iter().enumerate() {
        let r = rng.random_range(4.0f32..7.5);
        // Up-left or down-right of the centre, 1.5–5 px off, so they overlap.
        let sign = if k == 0 { -1.0 } else { 1.0 };
        let cx = SIZE as f32 / 2.0 + sign * rng.random_range(1.5f32..5.0);
        let cy = SIZE as f32 / 2.0 + sign * rng.random_range(1.5f32..5.0);
        let level = rng.random_range(0.5f32..1.0);
        for y in 0..SIZE {
            for x in 0..SIZE {
                if inside(*s, x as f32 + 0.5 - cx, y as f32 + 0.5 - cy, r) {
                    let p = &mut img[y * SIZE + x];
                    *p = p.max(level);
                }
            }
        }
    }
    (img, classes[0], classes[1])
}

/// A caption naming both shapes, in a random order and wording.
pub fn caption(left: usize, right: usize, rng: &mut StdRng) -> String {
    let (l, r) = (CLASSES[left], CLASSES[right]);
    match rng.random_range(0..4) {
        0 => format!("a {l} above a {r}"),
        1 => format!("a {r} below a {l}"),
        2 => format!("{l} over {r}"),
        _ => format!("{r} under {l}"),
    }
}

fn write_split(dir: &Path, name: &str, n: usize, seed: u64) -> Result<(), String> {
    let images = dir.join("images");
    std::fs::create_dir_all(&images)
        .map_err(|e| format!("cannot create {}: {e}", images.display()))?;
    let mut rng = StdRng::seed_from_u64(seed);
    // Captions draw from their own stream: the images do not depend on them.
    let mut words = StdRng::seed_from_u64(seed ^ 0x5eed_ca97);
    let mut csv = String::from("image,caption,left,right\n");
    for i in 0..n {
        let (img, left, right) = sample(&mut rng);
        let file = format!("images/{name}_{i:05}.png");
        write_png(&dir.join(&file), &img, 1, SIZE, SIZE)?;
        let text = caption(left, right, &mut words);
        let _ = writeln!(csv, "{file},{text},{},{}", CLASSES[left], CLASSES[right]);
    }
    super::write_text_atomic(&dir.join(format!("{name}.csv")), &csv)
}

/// `train.csv` (n samples) and `test.csv` (n/4), PNGs under `images/`.
pub fn write(dir: &Path, n: usize, seed: u64) -> Result<(), String> {
    write_split(dir, "train", n, seed)?;
    write_split(dir, "test", (n / 4).max(1), seed.wrapping_add(1))
}

pub fn write_default(dir: &Path, seed: u64) -> Result<(), String> {
    write(dir, 3000, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_shapes_are_visible_and_classes_cover_the_set() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut seen = [[false; CLASSES.len()]; 2];
        for _ in 0..200 {
            let (img, l, r) = sample(&mut rng);
            seen[0][l] = true;
            seen[1][r] = true;
            // Up-left and down-right quadrants each hold bright pixels.
            let bright = |x0: usize, y0: usize| {
                (y0..y0 + SIZE / 2).any(|y| (x0..x0 + SIZE / 2).any(|x| img[y * SIZE + x] >= 0.5))
            };
            assert!(bright(0, 0) && bright(SIZE / 2, SIZE / 2));
        }
        assert!(seen.iter().all(|s| s.iter().all(|v| *v)));
    }
}
