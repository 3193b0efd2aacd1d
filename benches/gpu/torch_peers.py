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
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "peers"))
import torch_bench  # noqa: E402

out, budget = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 240.0
start = time.time()
models = sorted(torch_bench.MODELS)
plan = [(m, "eager", 32, "f32") for m in models]
plan += [(m, "eager", 256, p) for m in models for p in ("f32", "bf16")]
plan += [(m, "compile", 32, "f32") for m in ("shapes_mm", "digits_mt")]
for model, mode, batch, precision in plan:
    if time.time() - start > budget:
        print(f"torch_peers: out of time before {model} {mode} {batch} {precision}", file=sys.stderr)
        break
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
