//! The Gram matrix of task gradients: every weighting method in this module
//! needs only the inner products g_i·g_j, so the (possibly huge) gradient
//! vectors are reduced once to this k×k matrix and the methods work in
//! "coefficient space" (a combined gradient is Σ alpha_i g_i).

/// The k×k Gram matrix of task gradients over the shared parameters, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Gram {
    /// Number of tasks.
    pub k: usize,
    /// Row-major entries M_ij = g_i·g_j.
    pub m: Vec<f64>,
}

impl Gram {
    /// Wraps a row-major k×k matrix.
    pub fn new(k: usize, m: Vec<f64>) -> Gram {
        assert_eq!(m.len(), k * k, "Gram::new: expected {} entries", k * k);
        Gram { k, m }
    }

    /// Computes the Gram matrix of explicit gradient vectors (all of one length).
    pub fn from_vectors(g: &[Vec<f64>]) -> Gram {
        let k = g.len();
        let mut m = vec![0.0; k * k];
        for i in 0..k {
            assert_eq!(g[i].len(), g[0].len(), "Gram::from_vectors: ragged input");
            for j in i..k {
                let d: f64 = g[i].iter().zip(&g[j]).map(|(a, b)| a * b).sum();
                m[i * k + j] = d;
                m[j * k + i] = d;
            }
        }
        Gram { k, m }
    }

    /// Entry M_ij.
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.m[i * self.k + j]
    }

    /// Gram of the subset `idx` of tasks (used to drop tasks absent from a batch).
    pub fn subset(&self, idx: &[usize]) -> Gram {
        let m = idx
            .iter()
            .flat_map(|&i| idx.iter().map(move |&j| (i, j)))
            .map(|(i, j)| self.at(i, j))
            .collect();
        Gram { k: idx.len(), m }
    }

    /// The product M·a.
    pub fn mul(&self, a: &[f64]) -> Vec<f64> {
        assert_eq!(a.len(), self.k);
        (0..self.k)
            .map(|i| (0..self.k).map(|j| self.at(i, j) * a[j]).sum())
            .collect()
    }

    /// The bilinear form aᵀ M b = (Σ a_i g_i)·(Σ b_j g_j).
    pub fn quad(&self, a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(self.mul(b)).map(|(x, y)| x * y).sum()
    }

    /// Sum of the diagonal, Σ ||g_i||².
    pub fn trace(&self) -> f64 {
        (0..self.k).map(|i| self.at(i, i)).sum()
    }

    /// Largest diagonal entry, max ||g_i||² (0 for k = 0).
    pub fn max_diag(&self) -> f64 {
        (0..self.k).map(|i| self.at(i, i)).fold(0.0, f64::max)
    }

    /// The Gram matrix multiplied by `s` (used to normalise problem scale).
    pub fn scaled(&self, s: f64) -> Gram {
        Gram {
            k: self.k,
            m: self.m.iter().map(|x| x * s).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_vectors_and_subset() {
        let g = vec![vec![1.0, 2.0], vec![-3.0, 0.5], vec![0.0, 4.0]];
        let gram = Gram::from_vectors(&g);
        assert_eq!(gram.k, 3);
        assert_eq!(gram.at(0, 1), -2.0);
        assert_eq!(gram.at(1, 0), -2.0);
        assert_eq!(gram.at(2, 2), 16.0);
        let sub = gram.subset(&[2, 0]);
        assert_eq!(sub, Gram::new(2, vec![16.0, 8.0, 8.0, 5.0]));
        assert_eq!(gram.trace(), 5.0 + 9.25 + 16.0);
        assert_eq!(gram.max_diag(), 16.0);
        // aᵀMb equals the dot product of the combined vectors.
        let (a, b) = ([1.0, 2.0, -1.0], [0.5, 0.0, 1.0]);
        let va = [1.0 - 6.0, 2.0 + 1.0 - 4.0];
        let vb = [0.5, 1.0 + 4.0];
        assert!((gram.quad(&a, &b) - (va[0] * vb[0] + va[1] * vb[1])).abs() < 1e-12);
    }

    #[test]
    #[should_panic]
    fn new_checks_size() {
        Gram::new(2, vec![1.0; 3]);
    }
}
