//! Reusable per-thread scratch buffers for the kernels' temporaries (im2col
//! columns, per-image products). A training step ran thousands of
//! `vec![0; n]` of a few hundred KiB each — zeroed, and fresh pages from the
//! allocator; `memset` was 7% of a `shapes_mm` step, much of it this. The
//! buffers here live as long as their thread (rayon's workers live as long as
//! the process), so a steady state allocates and zeroes nothing.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes held by every thread's pool together (they only grow).
static HELD: AtomicUsize = AtomicUsize::new(0);

/// The bytes all scratch pools hold, for `mtl bench --memory`.
pub fn held_bytes() -> usize {
    HELD.load(Ordering::Relaxed)
}

thread_local! {
    static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// `f` of `N` scratch slices of the given lengths. Their contents are
/// unspecified (whatever the last user left): callers write before they read.
/// Nested calls get buffers of their own.
pub fn with<const N: usize, R>(lens: [usize; N], f: impl FnOnce([&mut [f32]; N]) -> R) -> R {
    let mut bufs: [Vec<f32>; N] =
        std::array::from_fn(|_| POOL.with(|p| p.borrow_mut().pop().unwrap_or_default()));
    for (b, len) in bufs.iter_mut().zip(lens) {
        if b.len() < len {
            HELD.fetch_add((len - b.len()) * 4, Ordering::Relaxed);
            b.resize(len, 0.0);
        }
    }
    let mut it = bufs.iter_mut().zip(lens);
    let slices: [&mut [f32]; N] = std::array::from_fn(|_| {
        let (b, len) = it.next().expect("N buffers for N lengths");
        &mut b[..len]
    });
    let out = f(slices);
    // Back in reverse, so the next call's first buffer is this call's first:
    // each role keeps a buffer already grown to its size.
    POOL.with(|p| p.borrow_mut().extend(bufs.into_iter().rev()));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn buffers_have_the_asked_lengths_and_nest() {
        super::with([3, 5], |[a, b]| {
            assert_eq!((a.len(), b.len()), (3, 5));
            a.fill(1.0);
            super::with([4], |[c]| {
                assert_eq!(c.len(), 4);
                c.fill(2.0);
            });
            assert!(a.iter().all(|v| *v == 1.0));
        });
        super::with([2, 7, 1], |[a, b, c]| {
            assert_eq!((a.len(), b.len(), c.len()), (2, 7, 1))
        });
    }
}
