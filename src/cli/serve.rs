//! `serve`: a model behind HTTP until SIGTERM or Ctrl-C.

use super::{load_trained, DeviceArgs, Fail};
use clap::Args;
use mtl::serve::{Batching, ServeOptions, Served};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    /// A model file, or a run directory written by `mtl train` (its
    /// vocabularies let clients send raw text; its label maps name classes).
    model: PathBuf,
    /// Weights (safetensors); defaults to the run directory's weights.
    #[arg(long)]
    weights: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The longest a batch waits for requests still being decoded (0: it
    /// runs what is queued at once; a lone client never waits).
    #[arg(long, default_value_t = 2.0, value_name = "MS")]
    batch_window_ms: f64,
    /// Rows at which a batch stops taking requests (1: no batching).
    #[arg(long, default_value_t = 256)]
    max_batch: usize,
    /// Larger request bodies are refused with 413.
    #[arg(long, default_value_t = 16, value_name = "MIB")]
    max_body_mb: usize,
    /// Rows one request may carry.
    #[arg(long, default_value_t = 1024)]
    max_rows: usize,
    /// Requests decoded and queued at once; more wait their turn.
    #[arg(long, default_value_t = 256)]
    max_concurrent: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn serve(a: ServeArgs) -> Result<i32, Fail> {
    if !(a.batch_window_ms.is_finite() && (0.0..=10_000.0).contains(&a.batch_window_ms)) {
        return Err(Fail::usage(
            "error: --batch-window-ms is a number of milliseconds in [0, 10000]",
        ));
    }
    if a.max_batch == 0 || a.max_rows == 0 || a.max_concurrent == 0 || a.max_body_mb == 0 {
        return Err(Fail::usage(
            "error: --max-batch, --max-rows, --max-concurrent and --max-body-mb are at least 1",
        ));
    }
    let device = a.device.open()?;
    let t = load_trained(&a.model, a.weights.clone(), &device, Some(&a.device), true)?;
    let opts = ServeOptions {
        batching: Batching {
            window: Duration::from_secs_f64(a.batch_window_ms / 1e3),
            max_rows: a.max_batch,
        },
        max_body_bytes: a.max_body_mb << 20,
        max_rows: a.max_rows,
        max_concurrent: a.max_concurrent,
    };
    let name = t.graph.name.clone();
    let served = Served {
        name: name.clone(),
        prog: t.prog,
        params: t.params,
        enc: t.enc,
        device,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Fail::usage(format!("error: cannot start the runtime: {e}")))?;
    rt.block_on(async move {
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| Fail::usage(format!("error: cannot listen on {addr}: {e}")))?;
        let local = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
        let app = mtl::serve::app(served, &opts)
            .map_err(|e| Fail::usage(format!("error: cannot start serving: {e}")))?;
        let shutdown = shutdown_signal();
        eprintln!(
            "serving `{}` on http://{local} (GET /healthz, GET /v1/model, POST /v1/predict); SIGTERM or Ctrl-C stops",
            name
        );
        mtl::serve::serve(listener, app.router, shutdown)
            .await
            .map_err(|e| Fail::usage(format!("error: {e}")))?;
        eprintln!("stopped after {} requests", app.stats.requests.load(std::sync::atomic::Ordering::Relaxed));
        Ok(0)
    })
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT). The handlers are installed
/// here, before the address is announced: installed on the future's first
/// poll (axum polls it from a task of its own), a SIGTERM sent right after
/// the first answer could still find the default action and kill the
/// process (`tests/serve.rs` saw it once). Inside the runtime.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let recv = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let (term, int) = handlers;
            tokio::select! {
                _ = recv(term) => {},
                _ = recv(int) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
