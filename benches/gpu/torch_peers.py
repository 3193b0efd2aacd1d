"""PyTorch on the GPU, beside `mtl bench` in benches/gpu/check.sh: every
model of benches/peers/torch_bench.py in one process (one CUDA start), eager
at batch 32 (f32) and batch 256 (f32 and bf16 autocast), then torch.compile
at batch 32 for the two fixtures while time is left.

    python3 benches/gpu/torch_peers.py RESULTS.jsonl [SECONDS]

Appends one JSON line per run ({"part": "torch_bench", "result": {...}})."""
import contextlib
import io
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "peers"))


def run_model(model, configs, out):
    """In a child process: the model's runs, one CUDA context (a CUDA error
    is sticky: it must not spoil the other models' runs)."""
    import torch_bench

    for mode, batch, precision in configs:
        sys.argv = ["torch_bench.py", model, "--device", "cuda", "--mode", mode,
                    "--batch-size", str(batch), "--precision", precision,
                    "--steps", "30", "--warmup", "10", "--infer-steps", "20", "--repeats", "3"]
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                torch_bench.main()
            result = json.loads(buf.getvalue().strip().splitlines()[-1])
        except Exception as e:  # noqa: BLE001
            result = {"model": model, "mode": mode, "batch_size": batch, "precision": precision,
                      "error": f"{type(e).__name__}: {e}"[:300]}
        with open(out, "a") as f:
            f.write(json.dumps({"part": "torch_bench", "result": result}) + "\n")
        print(json.dumps(result), file=sys.stderr)


if len(sys.argv) > 3 and sys.argv[1] == "--child":
    run_model(sys.argv[2], json.loads(sys.argv[3]), sys.argv[4])
    sys.exit(0)

import torch_bench  # noqa: E402

out, budget = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 240.0
start = time.time()
# TORCH_EAGER ("BATCH:PRECISION ...") narrows the eager points.
points = os.environ.get("TORCH_EAGER", "32:f32 256:f32 256:bf16").split()
eager = [("eager", int(b), p) for b, p in (x.split(":") for x in points)]
# TORCH_MODELS (space-separated) narrows the plan to those models.
only = set(os.environ.get("TORCH_MODELS", "").split())
plan = [(m, eager) for m in sorted(torch_bench.MODELS)]
plan += [(m, [("compile", 32, "f32")]) for m in ("shapes_mm", "digits_mt")]
plan = [(m, c) for m, c in plan if not only or m in only]
for model, configs in plan:
    left = budget - (time.time() - start)
    if left < 5:
        print(f"torch_peers: out of time before {model} {configs}", file=sys.stderr)
        break
    try:
        subprocess.run([sys.executable, __file__, "--child", model, json.dumps(configs), out],
                       timeout=max(left, 30))
    except subprocess.TimeoutExpired:
        print(f"torch_peers: {model} {configs} ran out of time", file=sys.stderr)
