//! The `mtl` command line: the only place that prints.

mod cli;

// Training frees and re-allocates the same large activation buffers every step;
// glibc's malloc returns each to the kernel (munmap) and page-faults it back in,
// which measured as a large share of a step. mimalloc keeps them. The
// wrapper counts the bytes in use (`mtl bench --memory`).
#[global_allocator]
static GLOBAL: cli::heap::Counting<mimalloc::MiMalloc> = cli::heap::Counting(mimalloc::MiMalloc);

/// mimalloc's `mi_option_purge_delay` (the same index in its v2 and v3 headers).
const MI_OPTION_PURGE_DELAY: i32 = 15;

fn main() {
    // Never hand freed pages back to the OS: a training step frees and
    // re-allocates the same buffers, and re-faulting them in measured
    // 12 → 17 ms per step on `shapes_mm` (benches/README.md).
    // SAFETY: sets a plain integer option; no allocation is affected.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // candle 0.11 runs element-wise ops on its own thread pool, whose idle
    // workers spin ~25k iterations after every op: beside rayon's pool (our
    // kernels, gemm) they took a third of the CPU on 2 cores. One candle
    // thread measured 11.8 → 10.0 ms per `shapes_mm` step. Set before any
    // candle op creates the pool; an explicit CANDLE_NUM_THREADS wins.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    // `mtl ... | head` closes stdout early. Rust ignores SIGPIPE, so the
    // next print panicked; end quietly on it instead, as other command-line
    // tools do. Not for `serve`: a client that closes its socket must get
    // an error on that connection, not end the server.
    #[cfg(unix)]
    if std::env::args().nth(1).as_deref() != Some("serve") {
        // SAFETY: restores the default disposition of one signal, before any
        // thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    std::process::exit(cli::main());
}
