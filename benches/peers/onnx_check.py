#!/usr/bin/env python3
"""Runs every Keras-checked fixture through `mtl export --format onnx` and
ONNX Runtime, and compares ORT's outputs with Keras's expected outputs
(max relative error |a - b| / max(|b|, 1e-3), as tests/fixtures.rs).

    python benches/peers/onnx_check.py [--mtl target/release/mtl] [DIR ...]

DIRs default to ../shared/fixtures and tests/reference. With `--models
F.mtl ...` each model instead gets random weights (`mtl init`, then every
tensor perturbed so that biases and norm statistics are not trivial) and
random inputs (token ids with padding zeros), and ORT is compared with
`mtl predict` on the same weights and inputs. Needs `onnx`,
`onnxruntime`, `numpy` and `safetensors`. Also runs onnx's own checker
(with full shape inference) on every file. Exit 1 on any failure.
"""
import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file

ROOT = pathlib.Path(__file__).resolve().parents[2]


def rel_err(a, b):
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-3))) if a.size else 0.0


EXTRA = []  # extra `mtl export` flags (`--unroll-rnn`)


def check(mtl, model, out_dir):
    name = model.stem
    weights = model.with_name(f"{name}.weights.safetensors")
    onnx_path = out_dir / f"{name}.onnx"
    r = subprocess.run(
        [mtl, "export", str(model), "--weights", str(weights), "--format", "onnx", "--output", str(onnx_path)] + EXTRA,
        capture_output=True, text=True)
    if r.returncode != 0:
        return {"model": name, "ok": False, "error": r.stderr.strip()}
    onnx.checker.check_model(onnx.load(str(onnx_path)), full_check=True)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs = load_file(str(model.with_name(f"{name}.inputs.safetensors")))
    expected = load_file(str(model.with_name(f"{name}.expected.safetensors")))
    feed = {}
    for i in sess.get_inputs():
        x = inputs[i.name]
        feed[i.name] = x.astype(np.int64) if i.type == "tensor(int64)" else x.astype(np.float32)
    names = [o.name for o in sess.get_outputs()]
    t0 = time.perf_counter()
    got = dict(zip(names, sess.run(names, feed)))
    ms = (time.perf_counter() - t0) * 1e3
    errs = {h: rel_err(got[h], want) for h, want in expected.items() if h in got}
    missing = sorted(set(expected) - set(got))
    worst = max(errs.values(), default=0.0)
    return {
        "model": name,
        "ok": not missing and worst < 1e-4,
        "max_rel_err": worst,
        "heads": errs,
        "missing": missing,
        "nodes": len(onnx.load(str(onnx_path)).graph.node),
        "ort_ms": round(ms, 2),
    }


def random_inputs(sess, graph, rng, n=5):
    """Random tensors for the graph inputs: normal floats, token ids below
    the vocabulary of the embedding that reads them, a few zeros (padding)
    among them and a row that is all padding after its first id."""
    vocab = {}
    inits = {t.name: list(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Gather" and node.input[0] in inits and len(node.input) > 1:
            vocab[node.input[1]] = inits[node.input[0]][0]
    out = {}
    for i in sess.get_inputs():
        shape = [n] + [d if isinstance(d, int) else 4 for d in i.shape[1:]]
        if i.type == "tensor(int64)":
            ids = rng.integers(1, vocab.get(i.name, 2), size=shape)
            ids[rng.random(shape) < 0.2] = 0
            ids[0, shape[1] // 2:] = 0
            ids[1, 1:] = 0
            out[i.name] = ids.astype(np.int64)
        else:
            out[i.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def check_model(mtl, model, out_dir, seed=0):
    """ORT against `mtl predict` on perturbed random weights and random inputs."""
    from safetensors.numpy import save_file
    name = model.stem
    rng = np.random.default_rng(seed)
    w0, w = out_dir / f"{name}.init.safetensors", out_dir / f"{name}.w.safetensors"
    subprocess.run([mtl, "init", str(model), "--out", str(w0), "--seed", str(seed)], check=True, capture_output=True)
    weights = {}
    for k, v in load_file(str(w0)).items():
        v = np.asarray(v + 0.1 * rng.standard_normal(v.shape), dtype=np.float32)
        weights[k] = np.abs(v) + 0.5 if k.endswith("running_var") else v
    save_file(weights, str(w))
    onnx_path = out_dir / f"{name}.onnx"
    r = subprocess.run([mtl, "export", str(model), "--weights", str(w), "--output", str(onnx_path)] + EXTRA,
                       capture_output=True, text=True)
    if r.returncode != 0:
        return {"model": name, "ok": False, "error": r.stderr.strip()}
    m = onnx.load(str(onnx_path))
    onnx.checker.check_model(m, full_check=True)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feed = random_inputs(sess, m.graph, rng)
    save_file(feed, str(out_dir / f"{name}.in.safetensors"))
    pred = out_dir / f"{name}.pred.safetensors"
    subprocess.run([mtl, "predict", str(model), "--weights", str(w), "--input", str(out_dir / f"{name}.in.safetensors"),
                    "--output", str(pred)], check=True, capture_output=True)
    want = load_file(str(pred))
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(names, feed)))
    errs = {h: rel_err(got[h], want[h]) for h in want}
    worst = max(errs.values(), default=0.0)
    return {"model": name, "ok": worst < 1e-4 and set(want) == set(got), "max_rel_err": worst,
            "heads": errs, "nodes": len(m.graph.node)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mtl", default=str(ROOT / "target/release/mtl"))
    ap.add_argument("--models", nargs="+", help="compare with `mtl predict` on random weights instead")
    ap.add_argument("--unroll-rnn", action="store_true", help="export recurrences unrolled (for onnx2torch)")
    ap.add_argument("dirs", nargs="*", default=[str(ROOT / "../shared/fixtures"), str(ROOT / "tests/reference")])
    a = ap.parse_args()
    if a.unroll_rnn:
        EXTRA.append("--unroll-rnn")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in a.models or []:
            try:
                res = check_model(a.mtl, pathlib.Path(model), pathlib.Path(tmp))
            except Exception as e:
                res = {"model": pathlib.Path(model).stem, "ok": False, "error": str(e)}
            results.append(res)
            print(json.dumps(res), flush=True)
        for d in [] if a.models else a.dirs:
            for model in sorted(pathlib.Path(d).glob("*.mtl")):
                if not model.with_name(f"{model.stem}.expected.safetensors").exists():
                    continue
                try:
                    res = check(a.mtl, model, pathlib.Path(tmp))
                except Exception as e:  # a checker or runtime failure is a result too
                    res = {"model": model.stem, "ok": False, "error": str(e)}
                results.append(res)
                print(json.dumps(res), flush=True)
    bad = [r["model"] for r in results if not r["ok"]]
    peer = "mtl predict" if a.models else "Keras"
    print(f"{len(results) - len(bad)}/{len(results)} models equal {peer} within 1e-4 in ONNX Runtime {ort.__version__}"
          + (f"; failing: {', '.join(bad)}" if bad else ""))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
