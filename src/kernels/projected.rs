//! A recurrence's input projections xw = x·W_ihᵀ + b [B, T, G], as the
//! recurrence reads them: rows a GEMM computed, or rows of a table projected
//! ahead of time. When the recurrence reads an embedding, an embedded token's
//! projection is that token's row of E·W_ihᵀ + b, so at inference (weights
//! fixed) the GEMM over all B·T rows becomes a lookup per step
//! (`lower::planned`'s projected tables).

/// Rows of G values, indexed as the recurrence's `b·T + t`.
#[derive(Clone, Copy)]
pub enum Projected<'a> {
    /// [rows, G], row after row.
    Rows(&'a [f32]),
    /// The table [vocab, G] and each row's token id (below vocab: the caller
    /// checks, as an embedding's gather does).
    Table { table: &'a [f32], ids: &'a [u32] },
}

impl<'a> Projected<'a> {
    /// Rows `from..from + n` as rows 0..n.
    pub fn rows(self, from: usize, n: usize, g: usize) -> Projected<'a> {
        match self {
            Projected::Rows(x) => Projected::Rows(&x[from * g..][..n * g]),
            Projected::Table { table, ids } => Projected::Table {
                table,
                ids: &ids[from..from + n],
            },
        }
    }

    /// Asks for row `r`'s lines in L2 ahead of their use: a recurrence knows
    /// its next step's rows, but they lie a sequence apart (or anywhere in
    /// a table), so the hardware's prefetchers, which follow streams, do
    /// not. (L2, not L1: the step's product streams W_hh through L1 first.)
    #[inline(always)]
    pub fn prefetch(&self, r: usize, g: usize) {
        #[cfg(target_arch = "x86_64")]
        for line in self.row(r, g).chunks(16) {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
            // SAFETY: a prefetch reads nothing; the address is in the row.
            #[allow(unused_unsafe)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T1>(line.as_ptr().cast())
            };
        }
    }

    /// Row `r`.
    #[inline(always)]
    pub fn row(&self, r: usize, g: usize) -> &'a [f32] {
        match self {
            Projected::Rows(x) => &x[r * g..][..g],
            Projected::Table { table, ids } => &table[ids[r] as usize * g..][..g],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Projected;

    #[test]
    fn a_table_row_is_the_row_of_its_id() {
        let table: Vec<f32> = (0..12).map(|v| v as f32).collect(); // [4, 3]
        let ids = [2u32, 0, 3, 3, 1];
        let gathered: Vec<f32> = ids
            .iter()
            .flat_map(|i| table[*i as usize * 3..][..3].to_vec())
            .collect();
        let (t, r) = (
            Projected::Table {
                table: &table,
                ids: &ids,
            },
            Projected::Rows(&gathered),
        );
        for (from, n) in [(0, 5), (1, 3), (4, 1)] {
            let (t, r) = (t.rows(from, n, 3), r.rows(from, n, 3));
            for k in 0..n {
                assert_eq!(t.row(k, 3), r.row(k, 3));
                assert_eq!(t.row(k, 3), &gathered[(from + k) * 3..][..3]);
            }
        }
    }
}
