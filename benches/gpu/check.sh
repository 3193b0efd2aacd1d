#!/usr/bin/env bash
# The GPU check: one prepared run on a GPU machine, from the repo root, after
# benches/gpu/pack.sh has packed .gpu/ here (that machine has no Rust).
#
#   benches/gpu/check.sh [OUT_DIR]          (default $OUT, else /tmp/gpu-check)
#
# In order of importance, each part bounded in time, stopping new parts once
# BUDGET seconds (default 500) have passed:
#   0. the CUDA tests (tests/cuda.rs) when pack.sh packed them;
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
work=/tmp/gpu-work # predictions and runs; only the report and logs go to $out
rm -rf "$work"
mkdir -p "$out" "$work"
budget="${BUDGET:-500}"
epochs="${EPOCHS:-3}"
start=$SECONDS
log="$out/check.log"
: >"$log"
lines="$work/results.jsonl"
: >"$lines"
say() { echo "[$((SECONDS - start))s] $*" | tee -a "$log" >&2; }
left() { [ $((SECONDS - start)) -lt "$budget" ]; }
record() { echo "$1" >>"$lines"; }

# The binary and the libraries it was linked against (cuBLAS, NVRTC, cuRAND,
# the runtime: found wherever this machine's CUDA or PyTorch keeps them).
# (BIN and DEVICE let the script be tried on a CPU: BIN=target/debug/mtl DEVICE=cpu.)
device="${DEVICE:-cuda}"
bin="${BIN:-/tmp/mtl-cuda}"
[ -n "${BIN:-}" ] || { gunzip -c .gpu/mtl.gz >"$bin" && chmod +x "$bin"; }
. benches/gpu/libs.sh
ldd "$bin" | grep -E "not found|cuda|cublas|nvrtc|curand" >>"$log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$work/gpu.txt" 2>&1
say "gpu: $(cat "$work/gpu.txt")"
record "{\"part\": \"machine\", \"gpu\": \"$(head -n1 "$work/gpu.txt")\", \"cpus\": $(nproc)}"

# 0. The CUDA tests (tests/cuda.rs, packed by pack.sh), run against this
#    checkout; the shared fixtures they read come from .gpu/fixtures.
if [ -f .gpu/cuda-tests.gz ] && [ -z "${BIN:-}" ]; then
  gunzip -c .gpu/cuda-tests.gz >/tmp/mtl-cuda-tests && chmod +x /tmp/mtl-cuda-tests
  [ -d ../shared/fixtures ] || { mkdir -p ../shared && ln -sfn "$PWD/.gpu/fixtures" ../shared/fixtures; }
  ok=false
  MTL_TEST_ROOT="$PWD" timeout "${TESTS_TIMEOUT:-300}" /tmp/mtl-cuda-tests --test-threads 1 --nocapture \
    >"$out/cuda-tests.log" 2>&1 && ok=true
  summary="$(grep -E '^test result' "$out/cuda-tests.log" | tail -n1)"
  record "{\"part\": \"cuda_tests\", \"ok\": $ok, \"summary\": \"$summary\"}"
  say "cuda tests: ok=$ok $summary"
fi

# 1. Fixtures.
for dir in .gpu/fixtures tests/reference; do
  for model in "$dir"/*.mtl; do
    name="$(basename "$model" .mtl)"
    for opt in "" "--no-opt"; do
      left || break 3
      o="$work/fixture-$name${opt:+-noopt}.safetensors"
      if timeout 120 "$bin" predict "$model" --weights "$dir/$name.weights.safetensors" \
        --input "$dir/$name.inputs.safetensors" --output "$o" --device "$device" $opt >>"$log" 2>&1; then
        r="$(python3 benches/gpu/compare.py "$o" "$dir/$name.expected.safetensors")" || r=""
        [ -n "$r" ] || r='{"ok": false, "error": "compare failed (see check.log)"}'
      else
        r='{"ok": false, "error": "predict failed (see check.log)"}'
      fi
      record "{\"part\": \"fixture\", \"name\": \"$name\", \"optimized\": $([ -z "$opt" ] && echo true || echo false), \"result\": $r}"
      say "fixture $name ${opt:-opt}: $r"
    done
  done
done

# 2. Training on CUDA (the data is generated on first use, on the CPU), then
#    the test set evaluated on CUDA (SKIP_TRAIN=1 leaves it out).
for precision in ${PRECISIONS:-f32 bf16}; do
  left && [ -z "${SKIP_TRAIN:-}" ] || break
  t0=$SECONDS
  run="$work/run-$precision"
  ok=false
  if timeout 240 "$bin" train models/shapes.mtl --epochs "$epochs" --device "$device" \
    --precision "$precision" --out "$run" --overwrite >"$out/train-$precision.log" 2>&1; then
    ok=true
  fi
  wall=$((SECONDS - t0))
  eval="$(timeout 120 "$bin" evaluate "$run" --data data/shapes/test.csv --device "$device" \
    --precision "$precision" --json 2>>"$log" \
    | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' 2>>"$log")" || eval=""
  [ -n "$eval" ] || eval=null
  record "{\"part\": \"train\", \"model\": \"shapes\", \"precision\": \"$precision\", \"epochs\": $epochs, \"ok\": $ok, \"wall_s\": $wall, \"test\": $eval}"
  say "train shapes $precision: ok=$ok in $wall s; test $eval"
done

# 3. mtl bench on CUDA.
models=".gpu/fixtures/shapes_mm.mtl .gpu/fixtures/digits_mt.mtl"
for m in ${MODELS:-digits shapes reviews seed_multitask seed_multimodal siamese fusions captions mmoe clip tones overlap}; do
  models="$models models/$m.mtl"
done
bench() { # model mode batch precision; leaves the last 150 s to PyTorch
  [ $((SECONDS - start)) -lt $((budget - 150)) ] || return 1
  r="$(timeout 60 "$bin" bench "$1" --"$2" --batch-size "$3" --precision "$4" --device "$device" \
    --steps 10 --repeats 3 --json 2>>"$log" | tail -n1)"
  [ -n "$r" ] || r="{\"model\": \"$1\", \"mode\": \"$2\", \"batch_size\": $3, \"precision\": \"$4\", \"error\": true}"
  record "{\"part\": \"mtl_bench\", \"result\": $r}"
  say "bench $r"
}
for m in $models; do
  bench "$m" train 32 f32 && bench "$m" infer 32 f32 || break
done
for m in $models; do
  [ -z "${NO_256:-}" ] || break
  bench "$m" train 256 f32 && bench "$m" train 256 bf16 || break
done
# Where a training step's time goes on the GPU (forward per op, backward, optimizer).
# (PROFILE_MODELS: which; each into profile-NAME.txt.)
for m in ${PROFILE_MODELS:-models/shapes.mtl .gpu/fixtures/shapes_mm.mtl models/seed_multitask.mtl}; do
  left || break
  timeout 60 "$bin" bench "$m" --train --device "$device" --profile --steps 10 --repeats 1 \
    >"$out/profile-$(basename "$m" .mtl).txt" 2>&1
done

# 4. PyTorch on the same GPU (SKIP_TORCH=1 leaves it out, for a rerun of mtl alone).
if left && [ -z "${SKIP_TORCH:-}" ]; then
  rest=$((budget - (SECONDS - start)))
  timeout $((rest + 60)) python3 benches/gpu/torch_peers.py "$lines" "$rest" >>"$log" 2>&1
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
