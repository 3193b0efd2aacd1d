//! Dynamic batching: one worker thread owns the program and its weights;
//! requests that arrive within a small window are stacked into one batch,
//! run as one forward, and split back per request. A request's result does
//! not depend on what it was batched with beyond float summation order.

use super::response::HeadRows;
use crate::lower::planned::Inference;
use crate::lower::{head_output, Params, Program};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub type Outputs = HashMap<String, HeadRows>;

/// One request's decoded inputs and where its answer goes.
pub struct Job {
    pub inputs: HashMap<String, Tensor>,
    pub rows: usize,
    pub reply: tokio::sync::oneshot::Sender<Result<Outputs, String>>,
}

/// How requests are grouped.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// The longest a batch waits for requests still being decoded (0: it
    /// takes what is queued and never waits).
    pub window: Duration,
    /// Rows at which a batch stops taking requests (1: no batching).
    pub max_rows: usize,
}

/// Counters the server reports (`GET /v1/stats`).
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub batches: AtomicU64,
    pub rows: AtomicU64,
}

/// The worker loop: runs until every sender is gone (server shutdown).
///
/// A batch takes every request already queued; it waits (up to the window)
/// only while `arriving` says more requests are being decoded, so a lone
/// client never pays the window and concurrent clients share forwards.
pub fn work(
    prog: Program,
    params: Params,
    device: Device,
    rx: Receiver<Job>,
    b: Batching,
    arriving: Arc<AtomicUsize>,
    stats: Arc<Stats>,
) {
    // How often the worker looks again while it waits for arriving requests.
    const POLL: Duration = Duration::from_micros(100);
    let mut exec = Inference::new(&prog, &params);
    while let Ok(first) = rx.recv() {
        let mut rows = first.rows;
        let mut jobs = vec![first];
        let deadline = Instant::now() + b.window;
        while rows < b.max_rows {
            if let Ok(j) = rx.try_recv() {
                rows += j.rows;
                jobs.push(j);
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || arriving.load(Ordering::Acquire) == 0 {
                break;
            }
            match rx.recv_timeout(left.min(POLL)) {
                Ok(j) => {
                    rows += j.rows;
                    jobs.push(j);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .requests
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        stats.rows.fetch_add(rows as u64, Ordering::Relaxed);
        answer((&prog, &params, &mut exec), &device, jobs);
    }
}

/// Runs `jobs` as one batch; if that fails, each alone, so that one bad
/// request cannot fail the others. A panic in a forward is caught and
/// answered as an error: the worker keeps serving.
fn answer(
    (prog, params, exec): (&Program, &Params, &mut Inference),
    device: &Device,
    jobs: Vec<Job>,
) {
    let together = if jobs.len() == 1 {
        None
    } else {
        let stacked = stack(&jobs);
        Some(stacked.and_then(|x| guarded(|| run((prog, params, &mut *exec), device, &x))))
    };
    match together {
        Some(Ok(outs)) => {
            let mut start = 0;
            for j in jobs {
                let mine = split(&outs, start, j.rows);
                start += j.rows;
                let _ = j.reply.send(mine);
            }
        }
        _ => {
            for j in jobs {
                let r = guarded(|| run((prog, params, &mut *exec), device, &j.inputs))
                    .and_then(|o| split(&o, 0, j.rows));
                let _ = j.reply.send(r);
            }
        }
    }
}

fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err("internal error while computing the prediction".into()))
}

/// The jobs' inputs concatenated along the batch axis.
fn stack(jobs: &[Job]) -> Result<HashMap<String, Tensor>, String> {
    let mut out = HashMap::new();
    for name in jobs[0].inputs.keys() {
        let parts: Vec<&Tensor> = jobs.iter().filter_map(|j| j.inputs.get(name)).collect();
        let t = Tensor::cat(&parts, 0).map_err(|e| e.to_string())?;
        out.insert(name.clone(), t);
    }
    Ok(out)
}

/// Head outputs (probabilities for classification heads), as `predict` gives them.
fn run(
    (prog, params, exec): (&Program, &Params, &mut Inference),
    device: &Device,
    inputs: &HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>, String> {
    let prepared = prog
        .prepare_inputs(inputs, device)
        .map_err(|e| e.to_string())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let fwd = exec
        .forward(prog, params, prepared, &mut rng)
        .map_err(|e| e.to_string())?;
    let mut outs = HashMap::new();
    for (h, slot) in &prog.heads {
        let logits = fwd
            .get(*slot)
            .ok_or_else(|| format!("head `{}` not computed", h.name))?;
        let y = head_output(h.loss, logits).map_err(|e| e.to_string())?;
        outs.insert(h.name.clone(), y);
    }
    Ok(outs)
}

/// Rows `start..start + n` of every head's output.
fn split(outs: &HashMap<String, Tensor>, start: usize, n: usize) -> Result<Outputs, String> {
    outs.iter()
        .map(|(k, t)| {
            let rows = t
                .narrow(0, start, n)
                .and_then(|r| HeadRows::of(&r))
                .map_err(|e| e.to_string())?;
            Ok((k.clone(), rows))
        })
        .collect()
}
