#!/usr/bin/env bash
# The GPU check: one prepared run on a GPU machine, from the repo root, after
# benches/gpu/pack.sh has packed .gpu/ here (that machine has no Rust).
#
#   benches/gpu/check.sh [OUT_DIR]          (default $OUT, else /tmp/gpu-check)
#
# In order of importance, each part bounded in time, stopping new parts once
# BUDGET seconds (default 500) have passed:
#   1. every Keras fixture (../shared/fixtures as packed, tests/reference)
#      predicted on CUDA, optimized and not, against the expected outputs
#      (max relative error, 1e-4 to pass, as tests/fixtures.rs on the CPU);
#   2. models/shapes.mtl trained for EPOCHS epochs on CUDA, f32 then bf16;
#   3. `mtl bench` of every shipped model and both fixtures on CUDA: training
#      and inference at batch 32 (f32), training at batch 256 (f32 and bf16);
#   4. the PyTorch peers (benches/peers/torch_bench.py) on the same GPU, eager
#      at the same points, torch.compile for the two fixtures.
# Everything lands in OUT_DIR/gpu-report.json, the logs beside it.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${1:-${OUT:-/tmp/gpu-check}}"
mkdir -p "$out"
budget="${BUDGET:-500}"
epochs="${EPOCHS:-3}"
start=$SECONDS
log="$out/check.log"
: >"$log"
lines="$out/results.jsonl"
: >"$lines"
say() { echo "[$((SECONDS - start))s] $*" | tee -a "$log" >&2; }
left() { [ $((SECONDS - start)) -lt "$budget" ]; }
record() { echo "$1" >>"$lines"; }

# The binary and the libraries it was linked against (cuBLAS, NVRTC, cuRAND,
# the runtime: found wherever this machine's CUDA or PyTorch keeps them).
bin=/tmp/mtl-cuda
gunzip -c .gpu/mtl.gz >"$bin" && chmod +x "$bin"
libdirs=""
for lib in libcublas.so.13 libcublasLt.so.13 libcudart.so.13 libnvrtc.so.13 libcurand.so.10; do
  f="$(find /usr/local /opt /usr/lib -name "$lib" 2>/dev/null | head -n1)"
  [ -n "$f" ] && libdirs="$libdirs:$(dirname "$f")"
done
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ldd "$bin" | grep -E "not found|cuda|cublas|nvrtc|curand" >>"$log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$out/gpu.txt" 2>&1
say "gpu: $(cat "$out/gpu.txt")"
record "{\"part\": \"machine\", \"gpu\": \"$(head -n1 "$out/gpu.txt")\", \"cpus\": $(nproc)}"

# 1. Fixtures.
for dir in .gpu/fixtures tests/reference; do
  for model in "$dir"/*.mtl; do
    name="$(basename "$model" .mtl)"
    for opt in "" "--no-opt"; do
      left || break 3
      o="$out/fixture-$name${opt:+-noopt}.safetensors"
      if timeout 120 "$bin" predict "$model" --weights "$dir/$name.weights.safetensors" \
        --input "$dir/$name.inputs.safetensors" --output "$o" --device cuda $opt >>"$log" 2>&1; then
        r="$(python3 benches/gpu/compare.py "$o" "$dir/$name.expected.safetensors")"
      else
        r='{"ok": false, "error": "predict failed (see check.log)"}'
      fi
      record "{\"part\": \"fixture\", \"name\": \"$name\", \"optimized\": $([ -z "$opt" ] && echo true || echo false), \"result\": $r}"
      say "fixture $name ${opt:-opt}: $r"
    done
  done
done

# 2. Training on CUDA (the data is generated on first use, on the CPU).
for precision in f32 bf16; do
  left || break
  t0=$SECONDS
  if timeout 240 "$bin" train models/shapes.mtl --epochs "$epochs" --device cuda \
    --precision "$precision" --out "$out/run-$precision" --overwrite >"$out/train-$precision.log" 2>&1; then
    ok=true
  else
    ok=false
  fi
  summary="$(grep -E "^(done|test|val|  )" "$out/train-$precision.log" | tail -n 8 | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')"
  record "{\"part\": \"train\", \"model\": \"shapes\", \"precision\": \"$precision\", \"epochs\": $epochs, \"ok\": $ok, \"wall_s\": $((SECONDS - t0)), \"tail\": $summary}"
  say "train shapes $precision: ok=$ok in $((SECONDS - t0)) s"
done

# 3. mtl bench on CUDA.
models=".gpu/fixtures/shapes_mm.mtl .gpu/fixtures/digits_mt.mtl"
for m in digits shapes reviews seed_multitask seed_multimodal siamese fusions captions mmoe clip tones overlap; do
  models="$models models/$m.mtl"
done
bench() { # model mode batch precision
  left || return 1
  r="$(timeout 60 "$bin" bench "$1" --"$2" --batch-size "$3" --precision "$4" --device cuda \
    --steps 10 --repeats 3 --json 2>>"$log" | tail -n1)"
  [ -n "$r" ] || r="{\"model\": \"$1\", \"mode\": \"$2\", \"batch_size\": $3, \"precision\": \"$4\", \"error\": true}"
  record "{\"part\": \"mtl_bench\", \"result\": $r}"
  say "bench $r"
}
for m in $models; do
  bench "$m" train 32 f32 && bench "$m" infer 32 f32 || break
done
for m in $models; do
  bench "$m" train 256 f32 && bench "$m" train 256 bf16 || break
done

# 4. PyTorch on the same GPU.
if left; then
  timeout $((budget - (SECONDS - start) + 30)) python3 benches/gpu/torch_peers.py "$lines" >>"$log" 2>&1
  say "pytorch peers done"
fi

python3 - "$lines" "$out/gpu-report.json" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
json.dump(rows, open(sys.argv[2], "w"), indent=1)
fx = [r for r in rows if r["part"] == "fixture"]
bad = [r for r in fx if not r["result"].get("ok")]
print(f"fixtures: {len(fx) - len(bad)}/{len(fx)} within 1e-4", *[r["name"] for r in bad])
PY
say "total $((SECONDS - start)) s"
