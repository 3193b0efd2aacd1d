//! When our CPU kernels use rayon's pool. Handing work to the pool and waking
//! its threads costs ~10–20 µs, more than a whole small op takes (a relu of
//! 2,048 values measured 20 µs in parallel); below a threshold the calling
//! thread does the work itself.

use rayon::prelude::*;

/// Element-wise passes over at least this many values run in parallel.
pub const MIN_ELEMENTS: usize = 1 << 17;
/// Kernels with at least this many multiply-adds run in parallel.
pub const MIN_MACS: usize = 1 << 20;

/// Runs `f` on one of rayon's threads. Called from another thread, each
/// parallel loop inside `f` would hand its work to the pool and put the
/// caller to sleep until it is done: a wake-up and a sleep per loop, which
/// with a training step's dozens of loops was 9% of `shapes_mm`'s step at
/// one thread (`perf`: the scheduler's functions). From a pool thread the
/// loops split where they run, and the caller sleeps once.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// Makes the calling thread worker 0 of rayon's global pool, `threads` in
/// all (by default `RAYON_NUM_THREADS` or the cores, as before: the caller
/// takes one spawned worker's place). Its parallel loops then split where
/// they run, with no hand-over and no sleep per loop ([`on_pool`] runs in
/// place; the A/Bs are in benches/README.md, fifteenth session), and one
/// thread fewer keeps a gemm slab. For a thread that computes; not for one
/// that blocks in another runtime (`serve`'s), which would leave its share
/// of the pool idle. Does nothing once the pool exists.
pub fn adopt_caller(threads: Option<usize>) {
    let b = rayon::ThreadPoolBuilder::new().use_current_thread();
    let b = match threads {
        Some(n) => b.num_threads(n),
        None => b,
    };
    let _ = b.build_global();
}

/// Calls shorter than this stay on their thread ([`Handover`]).
pub const POOL_CALL: std::time::Duration = std::time::Duration::from_micros(500);

/// Whether an executor's calls go [`on_pool`]. Handing a call over costs
/// two wake-ups and moves it to another core's caches, which a short call
/// has too few parallel loops to win back: on the pool, `digits_mt`'s and
/// `siamese`'s inference (0.1–0.4 ms a batch) fell below the candle path's.
/// So a call goes to the pool when the two before it each took
/// [`POOL_CALL`] or more. Two, not one: a first call is slow whatever the
/// model (fresh buffers, cold caches), and every thread that runs a packed
/// GEMM keeps the gemm crate's L2-sized slab (1 MiB here) for good, so one
/// slow call sent the tiny models' steps to the pool and their training
/// heap up to 1.7 MiB above the candle path's. Which thread runs a kernel never
/// changes its result.
#[derive(Debug, Default, Clone, Copy)]
pub struct Handover {
    /// Calls of [`POOL_CALL`] or more in a row, up to [`LONG_CALLS`].
    long: u8,
}

/// Long calls in a row before the next goes to the pool.
const LONG_CALLS: u8 = 2;

impl Handover {
    /// `f`, on the pool after [`LONG_CALLS`] long calls; times this one.
    pub fn run<R: Send>(&mut self, f: impl FnOnce() -> R + Send) -> R {
        let t0 = std::time::Instant::now();
        let r = if self.long >= LONG_CALLS {
            on_pool(f)
        } else {
            f()
        };
        self.long = if t0.elapsed() >= POOL_CALL {
            (self.long + 1).min(LONG_CALLS)
        } else {
            0
        };
        r
    }
}

/// `f(i, chunk)` over the `size`-long chunks of `data`, in parallel when `par`.
pub fn chunks_mut<T: Send>(
    data: &mut [T],
    size: usize,
    par: bool,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    if par {
        data.par_chunks_mut(size)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    } else {
        data.chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// `f` of every element.
pub fn map(src: &[f32], f: impl Fn(f32) -> f32 + Sync + Send) -> Vec<f32> {
    if src.len() >= MIN_ELEMENTS {
        src.par_iter().map(|x| f(*x)).collect()
    } else {
        src.iter().map(|x| f(*x)).collect()
    }
}

/// `f` of every pair of elements.
pub fn zip_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Vec<f32> {
    if a.len() >= MIN_ELEMENTS {
        a.par_iter()
            .zip(b.par_iter())
            .map(|(x, y)| f(*x, *y))
            .collect()
    } else {
        a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect()
    }
}

/// `f` of every item: on rayon's pool when `par` and there are several.
pub fn each<T: Send>(items: Vec<T>, par: bool, f: impl Fn(T) + Sync + Send) {
    if par && items.len() > 1 {
        items.into_par_iter().for_each(f);
    } else {
        items.into_iter().for_each(f);
    }
}

/// Σ f(i) for i < len in 8 independent f32 lanes, so the loop vectorizes (one
/// f32 accumulator may not be reordered by the compiler); the order is fixed,
/// so is the result. Returns the lanes and the sum of the tail.
#[inline(always)]
fn lane_parts(len: usize, f: impl Fn(usize) -> f32) -> ([f32; 8], f32) {
    let mut acc = [0f32; 8];
    let full = len / 8 * 8;
    for i in (0..full).step_by(8) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(i + l);
        }
    }
    (acc, (full..len).map(&f).sum())
}

/// Σ of a slice, in lanes.
#[inline(always)]
pub fn lane_sum(v: &[f32]) -> f32 {
    let (acc, tail) = lane_parts(v.len(), |k| v[k]);
    acc.iter().sum::<f32>() + tail
}

/// The largest value of a slice (−∞ when empty), in lanes so it vectorizes.
#[inline(always)]
pub fn lane_max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut blocks = v.chunks_exact(8);
    for b in &mut blocks {
        for (a, x) in acc.iter_mut().zip(b) {
            *a = a.max(*x);
        }
    }
    let tail = blocks.remainder().iter().copied();
    acc.into_iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Σ f(i) for i < len, in f32 lanes added up in f64.
pub fn lane_sum_f64(len: usize, f: impl Fn(usize) -> f32) -> f64 {
    let (acc, tail) = lane_parts(len, f);
    acc.iter().map(|v| *v as f64).sum::<f64>() + tail as f64
}

/// Whether the CPU has AVX2 and FMA, for kernels with a variant compiled
/// for them (element-wise loops 8 lanes wide instead of the baseline's 4).
/// Rust never fuses a·b + c on its own, so both variants give identical bits.
#[inline(always)]
pub fn wide() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has AVX-512 (F), for the kernels whose element-wise work
/// dominates (the LSTM's gates): a variant compiled for it runs 16 lanes.
/// Same operations in the same order as the other variants, so identical bits.
#[inline(always)]
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && wide()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Runs `f` compiled for the widest vector unit this CPU has (AVX-512, else
/// AVX2 + FMA, else the baseline's SSE2): the crate builds for baseline
/// x86-64, where element-wise loops ran 4 lanes wide (GELU's erf measured
/// 1.4 ns a value on `captions`). `f` is inlined into a function compiled
/// with the features, so its loops vectorize for them; identical bits (see
/// [`wide`]).
#[inline(always)]
pub fn widest<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        fn on_512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        fn on_avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if avx512() {
            // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked).
            return unsafe { on_512(f) };
        }
        if wide() {
            // SAFETY: the CPU has AVX2 and FMA (checked).
            return unsafe { on_avx2(f) };
        }
    }
    f()
}
