//! `mtl serve`: predictions over HTTP (axum on tokio).
//!
//! - `GET /healthz`: 200 while serving.
//! - `GET /v1/model`: the inputs (name, kind, dtype, shape) and the heads
//!   (name, loss, output shape, classes and their names).
//! - `POST /v1/predict` with `{"inputs": {"NAME": batch-first nested arrays,
//!   or strings for a token input of a run with a vocabulary}}` answers
//!   `{"outputs": {"HEAD": nested arrays}, "labels": {"HEAD": [names]}}`:
//!   what `mtl predict` gives for the same rows.
//! - `GET /v1/stats`: requests, batches and rows served.
//!
//! Requests are decoded and checked in the handler ([`request`]); good ones
//! queue to one worker thread that batches those arriving together
//! ([`batcher`]). Bad requests get a JSON error with a 4xx status and the
//! server keeps serving; a body above the limit is refused with 413 before it
//! is read whole; at most `max_concurrent` predictions are in flight, the
//! rest wait their turn.

mod batcher;
mod request;
mod response;

pub use batcher::{Batching, Stats};
pub use request::ApiError;
pub use response::tensor_json;

use crate::data::Encoders;
use crate::ir::{Dim, InputKind, LossKind};
use crate::lower::{Params, Program};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use request::Decoder;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// A model ready to serve: its inference program, weights and the run's encoders.
pub struct Served {
    pub name: String,
    pub prog: Program,
    pub params: Params,
    pub enc: Encoders,
    pub device: candle_core::Device,
}

#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    pub batching: Batching,
    /// Larger bodies get 413 (checked while reading, before parsing).
    pub max_body_bytes: usize,
    /// Rows one request may carry.
    pub max_rows: usize,
    /// Predictions decoded and queued at once; more requests wait.
    pub max_concurrent: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            batching: Batching {
                window: std::time::Duration::from_millis(2),
                max_rows: 256,
            },
            max_body_bytes: 16 << 20,
            max_rows: 1024,
            max_concurrent: 256,
        }
    }
}

struct AppState {
    decoder: Decoder,
    model: Value,
    jobs: Sender<batcher::Job>,
    /// Requests being decoded: the worker waits for them to join a batch.
    arriving: Arc<AtomicUsize>,
    permits: Semaphore,
    stats: Arc<Stats>,
}

/// The router, its counters, and the worker thread (which ends once the
/// router and every clone of it are dropped).
pub struct App {
    pub router: Router,
    pub stats: Arc<Stats>,
    pub worker: std::thread::JoinHandle<()>,
}

/// Builds the HTTP application for `served` (an error: the run's tokenizer
/// cannot be read, or the worker thread cannot start).
pub fn app(served: Served, opts: &ServeOptions) -> std::io::Result<App> {
    let sig = served.prog.signature();
    let model = describe(&served, &sig);
    let hf = served.enc.hf_tokenizer().map_err(std::io::Error::other)?;
    let stats = Arc::new(Stats::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let arriving = Arc::new(AtomicUsize::new(0));
    let worker = {
        let (prog, params, device) = (served.prog, served.params, served.device);
        let (b, arriving, stats) = (opts.batching, arriving.clone(), stats.clone());
        std::thread::Builder::new()
            .name("mtl-serve-worker".into())
            .spawn(move || batcher::work(prog, params, device, rx, b, arriving, stats))?
    };
    let state = Arc::new(AppState {
        decoder: Decoder {
            sig,
            enc: served.enc,
            hf,
            max_rows: opts.max_rows,
        },
        model,
        jobs: tx,
        arriving,
        permits: Semaphore::new(opts.max_concurrent.max(1)),
        stats: stats.clone(),
    });
    let router = Router::new()
        .route(
            "/healthz",
            get(|| async { json_response(StatusCode::OK, &json!({"status": "ok"})) }),
        )
        .route("/v1/model", get(model_info))
        .route("/v1/stats", get(stats_info))
        .route("/v1/predict", post(predict))
        .fallback(|| async {
            error(&ApiError::new(
                404,
                "not_found",
                "no such endpoint; see GET /v1/model and POST /v1/predict",
            ))
        })
        .layer(DefaultBodyLimit::max(opts.max_body_bytes))
        .with_state(state);
    Ok(App {
        router,
        stats,
        worker,
    })
}

/// Serves `router` on `listener` until `shutdown` resolves; requests in
/// flight then finish before this returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    json_text(status, v.to_string())
}

fn json_text(status: StatusCode, text: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

fn error(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &e.to_json())
}

async fn model_info(State(s): State<Arc<AppState>>) -> Response {
    json_response(StatusCode::OK, &s.model)
}

async fn stats_info(State(s): State<Arc<AppState>>) -> Response {
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let st = &s.stats;
    json_response(
        StatusCode::OK,
        &json!({"requests": n(&st.requests), "batches": n(&st.batches), "rows": n(&st.rows)}),
    )
}

async fn predict(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(&ApiError::new(
                413,
                "too_large",
                "the body is larger than this server accepts (--max-body-mb)",
            ))
        }
        Err(r) => return error(&ApiError::new(400, "bad_body", r.body_text())),
    };
    let Ok(_permit) = s.permits.acquire().await else {
        return shutting_down();
    };
    // Decoding parses and copies the whole body: off the async threads.
    let arriving = Arriving::new(&s.arriving);
    let st = s.clone();
    let decoded = match tokio::task::spawn_blocking(move || st.decoder.decode(&body)).await {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => return error(&e),
        Err(_) => {
            return error(&ApiError::new(
                500,
                "internal",
                "decoding the request failed",
            ))
        }
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job = batcher::Job {
        inputs: decoded.tensors,
        rows: decoded.rows,
        reply,
    };
    let sent = s.jobs.send(job);
    drop(arriving);
    if sent.is_err() {
        return shutting_down();
    }
    match answer.await {
        Ok(Ok(outs)) => json_text(
            StatusCode::OK,
            response::body(&s.decoder.sig, &s.decoder.enc, &outs),
        ),
        Ok(Err(e)) => error(&ApiError::new(500, "prediction_failed", e)),
        Err(_) => shutting_down(),
    }
}

/// 503: the worker or the semaphore is gone (the server is stopping).
fn shutting_down() -> Response {
    error(&ApiError::new(
        503,
        "shutting_down",
        "the server is shutting down",
    ))
}

/// Counts a request as arriving (being decoded) until dropped, whichever
/// way the handler leaves.
struct Arriving<'a>(&'a AtomicUsize);

impl<'a> Arriving<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::AcqRel);
        Arriving(n)
    }
}

impl Drop for Arriving<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `GET /v1/model`: what a client needs to build a request and read the answer.
fn describe(served: &Served, sig: &crate::signature::Signature) -> Value {
    let dims = |shape: &[Dim]| -> Vec<Value> {
        std::iter::once(Value::from("N"))
            .chain(shape.iter().map(|d| match d {
                Dim::Fixed(n) => Value::from(*n),
                Dim::Sym(s) => Value::from(s.clone()),
            }))
            .collect()
    };
    let inputs: Vec<Value> = sig
        .inputs
        .iter()
        .map(|i| {
            let (kind, vocab) = match &i.kind {
                InputKind::Image => ("image", None),
                InputKind::Tokens { vocab } => ("tokens", Some(*vocab)),
                InputKind::Audio { .. } => ("audio", None),
                InputKind::F32 => ("f32", None),
            };
            let text = vocab.is_some()
                && (served.enc.tokenizer.is_some() || served.enc.vocabs.contains_key(&i.name));
            let mut v = json!({
                "name": i.name,
                "kind": kind,
                "dtype": if vocab.is_some() { "int64" } else { "float32" },
                "shape": dims(&i.ty.shape),
                "accepts_text": text,
            });
            if let Some(n) = vocab {
                v["vocab"] = n.into();
            }
            v
        })
        .collect();
    let heads: Vec<Value> = served
        .prog
        .heads
        .iter()
        .zip(&sig.heads)
        .map(|((h, slot), hs)| {
            let shape = served
                .prog
                .steps
                .iter()
                .find(|s| s.out == *slot)
                .map(|s| s.ty.shape.clone())
                .unwrap_or_default();
            let mut v = json!({
                "name": h.name,
                "loss": h.loss.name(),
                "output": match h.loss {
                    LossKind::CrossEntropy => "probabilities (softmax over axis 1)",
                    LossKind::BinaryCrossEntropy => "probabilities (sigmoid)",
                    _ => "values",
                },
                "shape": dims(&shape),
            });
            if hs.classes > 0 {
                v["classes"] = hs.classes.into();
            }
            if let Some(m) = served.enc.labels.get(&h.name) {
                v["labels"] = m.classes.clone().into();
            }
            v
        })
        .collect();
    json!({"name": served.name, "inputs": inputs, "heads": heads})
}
