//! Load test of `mtl serve`: requests/s and p50/p99 latency at 1, 16 and 64
//! concurrent clients, with dynamic batching (the default: queued requests
//! share a forward, waiting up to 2 ms for ones being decoded) and without
//! (`--max-batch 1`: one forward per request), and batching what is queued
//! without ever waiting (`--batch-window-ms 0`), on
//! two fixture models; one sample per request, rows cycled from the
//! fixture's inputs. The server is the release binary, started per
//! configuration on an ephemeral port; the clients are hyper's, on the same
//! machine (they share its cores with the server).
//!
//!     cargo bench --bench serve_load [-- --seconds 3]

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

/// One JSON body per fixture row (one sample each).
fn bodies(model: &str) -> Vec<String> {
    let inputs = candle_core::safetensors::load(
        fixtures().join(format!("{model}.inputs.safetensors")),
        &candle_core::Device::Cpu,
    )
    .expect("fixture inputs");
    let n = inputs.values().next().map_or(0, |t| t.dim(0).unwrap_or(0));
    (0..n)
        .map(|r| {
            let mut obj = serde_json::Map::new();
            for (name, t) in &inputs {
                let row = t.narrow(0, r, 1).unwrap();
                obj.insert(name.clone(), mtl::serve::tensor_json(&row).unwrap());
            }
            json!({ "inputs": obj }).to_string()
        })
        .collect()
}

/// Starts the server; returns it and its address.
fn serve(model: &str, window_ms: f64, max_batch: usize) -> (std::process::Child, String) {
    let f = fixtures();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mtl"))
        .arg("serve")
        .arg(f.join(format!("{model}.mtl")))
        .arg("--weights")
        .arg(f.join(format!("{model}.weights.safetensors")))
        .args(["--port", "0", "--max-batch", &max_batch.to_string()])
        .args(["--batch-window-ms", &window_ms.to_string()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting mtl serve");
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("the server prints its address")
        .to_string();
    (child, addr)
}

async fn post(c: &HttpClient, url: &str, body: &str) -> bool {
    let req = hyper::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    match c.request(req).await {
        Ok(res) => {
            let ok = res.status().is_success();
            ok && res.into_body().collect().await.is_ok()
        }
        Err(_) => false,
    }
}

struct Run {
    requests: usize,
    failures: usize,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn load(url: &str, bodies: &[String], clients: usize, secs: f64) -> Run {
    let c: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    // Warm-up: connections open and the first batch runs.
    for b in bodies.iter().take(2) {
        post(&c, url, b).await;
    }
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|k| {
            let (c, url, bodies) = (c.clone(), url.to_string(), bodies.to_vec());
            tokio::spawn(async move {
                let (mut lat, mut fail, mut i) = (vec![], 0usize, k);
                while Instant::now() < end {
                    let t = Instant::now();
                    if post(&c, &url, &bodies[i % bodies.len()]).await {
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                    } else {
                        fail += 1;
                    }
                    i += clients;
                }
                (lat, fail)
            })
        })
        .collect();
    let (mut lat, mut failures) = (vec![], 0);
    for t in tasks {
        let (l, f) = t.await.unwrap();
        lat.extend(l);
        failures += f;
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Run {
        requests: lat.len(),
        failures,
        secs,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| model | batching | clients | requests/s | p50 ms | p99 ms | mean batch | failures |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for model in ["digits_mt", "shapes_mm"] {
        let bodies = bodies(model);
        // The default; no waiting at all; no batching.
        for (mode, window, max_batch) in [
            ("dynamic", 2.0, 256),
            ("no wait", 0.0, 256),
            ("off", 0.0, 1),
        ] {
            let (mut child, addr) = serve(model, window, max_batch);
            for clients in [1, 16, 64] {
                let url = format!("http://{addr}/v1/predict");
                let before = stats(&rt, &addr);
                let r = rt.block_on(load(&url, &bodies, clients, secs));
                let after = stats(&rt, &addr);
                let batch = (after.1 - before.1) as f64 / ((after.0 - before.0).max(1)) as f64;
                println!(
                    "| {model} | {} | {clients} | {:.0} | {:.2} | {:.2} | {batch:.1} | {} |",
                    mode,
                    r.requests as f64 / r.secs,
                    r.p50_ms,
                    r.p99_ms,
                    r.failures
                );
            }
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

/// (batches, requests) served so far.
fn stats(rt: &tokio::runtime::Runtime, addr: &str) -> (u64, u64) {
    rt.block_on(async {
        let c: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let req = hyper::Request::get(format!("http://{addr}/v1/stats"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = c.request(req).await.unwrap();
        let b = res.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&b).unwrap();
        (
            v["batches"].as_u64().unwrap_or(0),
            v["requests"].as_u64().unwrap_or(0),
        )
    })
}
