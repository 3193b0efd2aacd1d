//! A generated multi-task data set where the tasks conflict: the synthetic
//! data of the MMoE paper (Ma et al., KDD 2018, §3.2). Two regression
//! targets of the same input x ~ N(0, I₁₆),
//!   yₜ = wₜᵀx + Σᵢ sin(αᵢ wₜᵀx + βᵢ) + ε,  ε ~ N(0, 0.01),
//! with w₁ = u₁ and w₂ = ρ·u₁ + √(1 − ρ²)·u₂ for orthonormal u₁, u₂: the
//! tasks' linear parts have cosine similarity ρ = 0 here, so one shared
//! bottom has to serve two unrelated functions.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;
use std::path::Path;

pub const DIM: usize = 16;
/// The cosine similarity of the two tasks' weight vectors.
pub const CORRELATION: f64 = 0.0;
const SINES: usize = 10;

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// The two tasks' parameters, fixed by the seed of the data set.
struct Tasks {
    w: [Vec<f64>; 2],
    alpha: Vec<f64>,
    beta: Vec<f64>,
}

impl Tasks {
    fn new(rng: &mut StdRng) -> Self {
        // Orthonormal u1, u2 by Gram–Schmidt on two Gaussian vectors.
        let unit = |v: Vec<f64>| {
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.into_iter().map(|x| x / n).collect::<Vec<_>>()
        };
        let u1 = unit((0..DIM).map(|_| normal(rng)).collect());
        let v: Vec<f64> = (0..DIM).map(|_| normal(rng)).collect();
        let dot: f64 = v.iter().zip(&u1).map(|(a, b)| a * b).sum();
        let u2 = unit(v.iter().zip(&u1).map(|(a, b)| a - dot * b).collect());
        let r = CORRELATION;
        let w2 = u1
            .iter()
            .zip(&u2)
            .map(|(a, b)| r * a + (1.0 - r * r).sqrt() * b)
            .collect();
        Tasks {
            w: [u1, w2],
            alpha: (0..SINES).map(|_| normal(rng)).collect(),
            beta: (0..SINES).map(|_| normal(rng)).collect(),
        }
    }

    fn target(&self, t: usize, x: &[f64], rng: &mut StdRng) -> f64 {
        let z: f64 = self.w[t].iter().zip(x).map(|(a, b)| a * b).sum();
        let waves: f64 = self
            .alpha
            .iter()
            .zip(&self.beta)
            .map(|(a, b)| (a * z + b).sin())
            .sum();
        z + waves + 0.1 * normal(rng)
    }
}

fn write_split(
    dir: &Path,
    name: &str,
    tasks: &Tasks,
    n: usize,
    rng: &mut StdRng,
) -> Result<(), String> {
    let mut csv = String::from("x,y1,y2\n");
    for _ in 0..n {
        let x: Vec<f64> = (0..DIM).map(|_| normal(rng)).collect();
        let (y1, y2) = (tasks.target(0, &x, rng), tasks.target(1, &x, rng));
        let xs: Vec<String> = x.iter().map(|v| format!("{v:.4}")).collect();
        let _ = writeln!(csv, "{},{y1:.4},{y2:.4}", xs.join(" "));
    }
    super::write_text_atomic(&dir.join(format!("{name}.csv")), &csv)
}

/// `train.csv` (n samples) and `test.csv` (n/4), one task pair per seed.
pub fn write(dir: &Path, n: usize, seed: u64) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let tasks = Tasks::new(&mut rng);
    write_split(dir, "train", &tasks, n, &mut rng)?;
    write_split(dir, "test", &tasks, (n / 4).max(1), &mut rng)
}

pub fn write_default(dir: &Path, seed: u64) -> Result<(), String> {
    write(dir, 8000, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tasks_are_uncorrelated_in_their_linear_parts() {
        let t = Tasks::new(&mut StdRng::seed_from_u64(3));
        let dot: f64 = t.w[0].iter().zip(&t.w[1]).map(|(a, b)| a * b).sum();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm(&t.w[0]) - 1.0).abs() < 1e-9 && (norm(&t.w[1]) - 1.0).abs() < 1e-9);
        assert!((dot - CORRELATION).abs() < 1e-9);
    }
}
