//! Buffer assignment ahead of time: every value the schedule writes gets an
//! offset in one arena, and two values share bytes only when their lifetimes
//! (the steps from the one that writes a value to the last that reads it) do
//! not meet. This is the greedy-by-size heap of XLA's buffer assignment and
//! TFLite's arena planner: place the largest buffers first, each at the
//! lowest offset where it overlaps no placed buffer that is live with it.
//!
//! Sizes are per sample: every buffer of a batch of N is N times its
//! per-sample size, so one assignment serves every batch size (offsets scale
//! by N with the sizes and the lifetimes do not change).

/// One buffer: its size in floats per sample and its lifetime, the steps
/// `first..=last` (inclusive) during which it must hold its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub size: usize,
    pub first: usize,
    pub last: usize,
}

impl Interval {
    fn meets(&self, o: &Interval) -> bool {
        self.first <= o.last && o.first <= self.last
    }
}

/// Buffers start on this many floats (64 bytes: one cache line, one AVX-512
/// vector) per sample, so they start aligned at any batch size.
pub const ALIGN: usize = 16;

/// The assignment: each buffer's offset, and the arena's size, per sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub offsets: Vec<usize>,
    pub arena: usize,
}

/// Assigns offsets to `bufs` (greedy by size, lowest fitting gap).
pub fn assign(bufs: &[Interval]) -> Assignment {
    let mut order: Vec<usize> = (0..bufs.len()).collect();
    // Largest first; ties by first use, so the result does not depend on the sort.
    order.sort_by_key(|&i| (std::cmp::Reverse(bufs[i].size), bufs[i].first, i));
    let mut offsets = vec![0; bufs.len()];
    let mut placed: Vec<usize> = vec![];
    let mut arena = 0;
    for i in order {
        let size = bufs[i].size.div_ceil(ALIGN) * ALIGN;
        // The placed buffers live at the same time as this one, by offset.
        let mut live: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| bufs[j].meets(&bufs[i]))
            .map(|&j| (offsets[j], bufs[j].size.div_ceil(ALIGN) * ALIGN))
            .collect();
        live.sort_unstable();
        let mut at = 0;
        for (off, len) in live {
            if off >= at + size {
                break;
            }
            at = at.max(off + len);
        }
        offsets[i] = at;
        arena = arena.max(at + size);
        placed.push(i);
    }
    Assignment { offsets, arena }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(size: usize, first: usize, last: usize) -> Interval {
        Interval { size, first, last }
    }

    /// No two buffers live at one step share a float.
    fn check(bufs: &[Interval], a: &Assignment) {
        for (i, p) in bufs.iter().enumerate() {
            assert!(a.offsets[i].is_multiple_of(ALIGN));
            assert!(a.offsets[i] + p.size <= a.arena);
            for (j, q) in bufs.iter().enumerate().skip(i + 1) {
                let apart =
                    a.offsets[i] + p.size <= a.offsets[j] || a.offsets[j] + q.size <= a.offsets[i];
                assert!(!p.meets(q) || apart, "buffers {i} and {j} overlap");
            }
        }
    }

    #[test]
    fn a_chain_reuses_two_buffers() {
        // x0 → x1 → x2 → x3, each read only by the next step.
        let bufs: Vec<Interval> = (0..4).map(|k| iv(64, k, k + 1)).collect();
        let a = assign(&bufs);
        check(&bufs, &a);
        assert_eq!(a.arena, 128, "a chain needs two buffers, not four");
    }

    #[test]
    fn live_buffers_never_overlap() {
        // A pseudo-random mix of sizes and lifetimes.
        let mut s = 7u64;
        let mut next = |m: u64| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) % m
        };
        let bufs: Vec<Interval> = (0..200)
            .map(|_| {
                let first = next(50) as usize;
                iv(1 + next(300) as usize, first, first + next(8) as usize)
            })
            .collect();
        let a = assign(&bufs);
        check(&bufs, &a);
        let total: usize = bufs.iter().map(|b| b.size.div_ceil(ALIGN) * ALIGN).sum();
        assert!(a.arena < total / 2, "arena {} of {total}", a.arena);
    }

    #[test]
    fn a_small_buffer_fills_a_gap() {
        // A (64) and C (64) live at step 1, B (32) after A dies: B takes A's place.
        let bufs = [iv(64, 0, 1), iv(64, 1, 3), iv(32, 2, 3)];
        let a = assign(&bufs);
        check(&bufs, &a);
        assert_eq!(a.arena, 128);
    }
}
