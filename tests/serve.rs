//! `mtl serve` over real TCP: predictions equal `predict`, bad requests get
//! 4xx with a JSON error and the server keeps serving, 200 concurrent
//! requests all succeed (and are batched), raw text is encoded as `predict`
//! encodes it, and SIGTERM stops the binary cleanly.

mod common;

use candle_core::{Device, Tensor};
use common::graph;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mtl::data::encoders::{LabelMap, Vocab};
use mtl::data::{Dataset, Encoders};
use mtl::lower::{init_params, lower, Params, Program};
use mtl::pipeline::Mode;
use mtl::serve::{ServeOptions, Served};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn fixture(name: &str) -> std::path::PathBuf {
    common::root().join("../shared/fixtures").join(name)
}

fn program(path: &Path) -> (Program, Params) {
    let c = mtl::compile_file(path, &mtl::Options::default()).unwrap();
    let prog = lower(&graph(c), Mode::Infer).unwrap();
    let params = init_params(&prog, 0, &Device::Cpu).unwrap();
    (prog, params)
}

fn digits() -> (Program, Params) {
    let (prog, mut params) = program(&fixture("digits_mt.mtl"));
    params
        .load(&fixture("digits_mt.weights.safetensors"), &Device::Cpu)
        .unwrap();
    (prog, params)
}

/// A server on an ephemeral port; returns its base URL and a stopper.
async fn start(
    prog: Program,
    params: Params,
    enc: Encoders,
    opts: ServeOptions,
) -> (String, tokio::sync::oneshot::Sender<()>, mtl::serve::App) {
    let served = Served {
        name: "test".into(),
        prog,
        params,
        enc,
        device: Device::Cpu,
    };
    let app = mtl::serve::app(served, &opts).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = app.router.clone();
    tokio::spawn(async move {
        mtl::serve::serve(listener, router, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (format!("http://{addr}"), stop, app)
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn call(c: &HttpClient, method: &str, url: &str, body: Vec<u8>) -> (u16, Value) {
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let res = c.request(req).await.unwrap();
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{status}: not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, v)
}

fn nested(t: &Tensor) -> Value {
    mtl::serve::tensor_json(t).unwrap()
}

fn flat(v: &Value, out: &mut Vec<f32>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| flat(x, out)),
        x => out.push(x.as_f64().unwrap() as f32),
    }
}

fn predict_all(
    prog: &Program,
    params: &Params,
    inputs: HashMap<String, Tensor>,
) -> HashMap<String, Tensor> {
    let ds = Dataset::from_tensors(inputs, "t").unwrap();
    mtl::predict::predict(prog, params, &ds, 1024, &Device::Cpu).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_over_http_equal_predict() {
    let (prog, params) = digits();
    let inputs =
        candle_core::safetensors::load(fixture("digits_mt.inputs.safetensors"), &Device::Cpu)
            .unwrap();
    let want = predict_all(&prog, &params, inputs.clone());
    let (url, stop, _app) = start(prog, params, Encoders::default(), ServeOptions::default()).await;
    let c = client();
    assert_eq!(
        call(&c, "GET", &format!("{url}/healthz"), vec![]).await.0,
        200
    );
    let (s, model) = call(&c, "GET", &format!("{url}/v1/model"), vec![]).await;
    assert_eq!(s, 200);
    assert_eq!(model["inputs"][0]["name"], "image");
    assert_eq!(model["inputs"][0]["shape"], json!(["N", 1, 8, 8]));
    assert_eq!(model["heads"][0]["classes"], 10);
    let body = json!({"inputs": {"image": nested(&inputs["image"])}});
    let (s, got) = call(
        &c,
        "POST",
        &format!("{url}/v1/predict"),
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(s, 200, "{got}");
    for (head, w) in &want {
        let mut g = vec![];
        flat(&got["outputs"][head], &mut g);
        let w = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // The same rows in one batch: the same kernels, the same values.
        assert_eq!(g, w, "head {head}");
    }
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_and_the_server_keeps_serving() {
    let (prog, params) = digits();
    let opts = ServeOptions {
        max_body_bytes: 64 << 10,
        max_rows: 8,
        ..Default::default()
    };
    let (url, stop, _app) = start(prog, params, Encoders::default(), opts).await;
    let c = client();
    let p = format!("{url}/v1/predict");
    let image = |n: usize| json!(vec![vec![vec![vec![0.5; 8]; 8]; 1]; n]);
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "invalid_json"),
        (json!({"x": 1}).to_string().into(), 422, "no_inputs"),
        (json!({"inputs": {}}).to_string().into(), 422, "missing_input"),
        (json!({"inputs": {"image": image(2), "extra": [1]}}).to_string().into(), 422, "unknown_input"),
        (json!({"inputs": {"image": [[1, 2, 3]]}}).to_string().into(), 422, "wrong_shape"),
        (json!({"inputs": {"image": [vec![vec![vec![1.0; 8]; 8]], vec![vec![vec![1.0; 7]; 8]]]}}).to_string().into(), 422, "wrong_shape"),
        (json!({"inputs": {"image": ["a picture"]}}).to_string().into(), 422, "wrong_type"),
        (json!({"inputs": {"image": [[vec![vec![true; 8]; 8]]]}}).to_string().into(), 422, "wrong_type"),
        (json!({"inputs": {"image": [[vec![vec![1e39; 8]; 8]]]}}).to_string().into(), 422, "not_finite"),
        (json!({"inputs": {"image": image(9)}}).to_string().into(), 413, "too_many_rows"),
        (vec![b' '; 100 << 10], 413, "too_large"),
    ];
    for (body, status, code) in cases {
        let (s, v) = call(&c, "POST", &p, body).await;
        assert_eq!(
            (s, v["error"]["code"].as_str().unwrap_or("")),
            (status, code),
            "{v}"
        );
        if status == 422 && code != "no_inputs" && code != "unknown_input" {
            assert_eq!(v["error"]["input"], "image", "{v}");
            assert_eq!(v["error"]["expected"], "float32 [N, 1, 8, 8]", "{v}");
        }
    }
    let (s, v) = call(&c, "GET", &format!("{url}/v2/nothing"), vec![]).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    // Still serving.
    let (s, v) = call(
        &c,
        "POST",
        &p,
        json!({"inputs": {"image": image(2)}}).to_string().into(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["outputs"]["digit"].as_array().unwrap().len(), 2);
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_all_succeed_batched() {
    let (prog, params) = digits();
    let inputs =
        candle_core::safetensors::load(fixture("digits_mt.inputs.safetensors"), &Device::Cpu)
            .unwrap();
    let images = &inputs["image"];
    let n = images.dim(0).unwrap();
    let want = predict_all(&prog, &params, inputs.clone());
    let (url, stop, app) = start(prog, params, Encoders::default(), ServeOptions::default()).await;
    let c = client();
    let mut tasks = vec![];
    for i in 0..200 {
        let row = i % n;
        let body = json!({"inputs": {"image": nested(&images.narrow(0, row, 1).unwrap())}});
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            (
                row,
                call(
                    &c,
                    "POST",
                    &format!("{url}/v1/predict"),
                    body.to_string().into(),
                )
                .await,
            )
        }));
    }
    let want_digit = want["digit"].to_vec2::<f32>().unwrap();
    for t in tasks {
        let (row, (s, v)) = t.await.unwrap();
        assert_eq!(s, 200, "{v}");
        let mut g = vec![];
        flat(&v["outputs"]["digit"], &mut g);
        for (a, b) in g.iter().zip(&want_digit[row]) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1e-3),
                "row {row}: {a} vs {b}"
            );
        }
    }
    let (_, st) = call(&c, "GET", &format!("{url}/v1/stats"), vec![]).await;
    assert_eq!(st["requests"], 200);
    let batches = app.stats.batches.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        batches < 200,
        "no two requests shared a batch ({batches} batches)"
    );
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_text_is_encoded_as_predict_encodes_it() {
    let src = "model t {\n  input text: tokens[6] vocab 20\n  head y = text -> embedding(4) -> global_avg_pool(axis = 1) -> dense(2) { loss: cross_entropy }\n}\n";
    let path = std::env::temp_dir().join(format!("mtl-serve-text-{}.mtl", std::process::id()));
    std::fs::write(&path, src).unwrap();
    let (prog, params) = program(&path);
    let _ = std::fs::remove_file(&path);
    let vocab = Vocab::build(["the cat sat", "the dog ran far"].into_iter(), 20);
    let mut enc = Encoders::default();
    enc.vocabs.insert("text".into(), vocab.clone());
    enc.labels.insert(
        "y".into(),
        LabelMap {
            classes: vec!["neg".into(), "pos".into()],
        },
    );
    let texts = ["the cat ran", "a dog sat far away"];
    let ids: Vec<Vec<i64>> = texts.iter().map(|t| vocab.encode(t, 6)).collect();
    let (url, stop, _app) = start(prog, params, enc, ServeOptions::default()).await;
    let c = client();
    let p = format!("{url}/v1/predict");
    let (s, by_text) = call(
        &c,
        "POST",
        &p,
        json!({"inputs": {"text": texts}}).to_string().into(),
    )
    .await;
    assert_eq!(s, 200, "{by_text}");
    let (s, by_ids) = call(
        &c,
        "POST",
        &p,
        json!({"inputs": {"text": ids}}).to_string().into(),
    )
    .await;
    assert_eq!(s, 200, "{by_ids}");
    assert_eq!(by_text["outputs"], by_ids["outputs"]);
    let labels = by_text["labels"]["y"].as_array().unwrap();
    assert_eq!(labels.len(), 2);
    assert!(
        labels.iter().all(|l| l == "neg" || l == "pos"),
        "{labels:?}"
    );
    let (_, model) = call(&c, "GET", &format!("{url}/v1/model"), vec![]).await;
    assert_eq!(model["inputs"][0]["accepts_text"], true);
    assert_eq!(model["heads"][0]["labels"], json!(["neg", "pos"]));
    // Ids beyond the vocabulary are refused.
    let (s, v) = call(
        &c,
        "POST",
        &p,
        json!({"inputs": {"text": [[1, 2, 3, 4, 5, 20]]}})
            .to_string()
            .into(),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("bad_token")),
        "{v}"
    );
    let _ = stop.send(());
}

#[cfg(unix)]
#[test]
fn the_binary_stops_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let f = fixture("digits_mt.mtl");
    let w = fixture("digits_mt.weights.safetensors");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mtl"))
        .args([
            "serve".as_ref(),
            f.as_os_str(),
            "--weights".as_ref(),
            w.as_os_str(),
        ])
        .args(["--port", "0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (s, _) = rt.block_on(call(
        &client(),
        "GET",
        &format!("http://{addr}/healthz"),
        vec![],
    ));
    assert_eq!(s, 200);
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            started.elapsed().as_secs() < 20,
            "still running 20 s after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut err, &mut rest);
    assert!(rest.contains("stopped after"), "{rest}");
}
