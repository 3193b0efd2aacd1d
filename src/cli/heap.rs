//! The process's heap in use and its peak, counted at every allocation, for
//! `mtl bench --memory`: the peak bytes one forward adds are what it needs
//! for its activations, whatever the executor keeps them in. Two relaxed
//! atomic updates per allocation; mimalloc does the allocating.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

pub struct Counting<A>(pub A);

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the wrapped allocator unchanged.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = self.0.alloc(l);
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = self.0.alloc_zeroed(l);
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        self.0.dealloc(p, l);
        IN_USE.fetch_sub(l.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = self.0.realloc(p, l, new);
        if !q.is_null() {
            IN_USE.fetch_sub(l.size(), Relaxed);
            grew(new);
        }
        q
    }
}

fn grew(n: usize) {
    let now = IN_USE.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(now, Relaxed);
}

/// Bytes allocated and not yet freed.
pub fn in_use() -> usize {
    IN_USE.load(Relaxed)
}

/// The most bytes `f` added to the heap at any moment, above what was in use before it.
pub fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = in_use();
    let (out, peak) = peak_total_during(f);
    (out, peak.saturating_sub(base))
}

/// The most bytes in use at any moment while `f` runs, everything counted.
pub fn peak_total_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.store(in_use(), Relaxed);
    let out = f();
    (out, PEAK.load(Relaxed))
}
