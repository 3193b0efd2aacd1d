#!/usr/bin/env bash
# mtl vs Keras 3 (JAX) on this machine, in one run: training and inference
# samples/s at batch 32, and their ratio. Needs a release build of mtl and a
# Python with keras + jax (PYTHON=..., default python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
declare -A FILE=([shapes_mm]=../shared/fixtures/shapes_mm.mtl [digits_mt]=../shared/fixtures/digits_mt.mtl)
for m in digits shapes reviews seed_multitask seed_multimodal siamese fusions captions mmoe; do FILE[$m]=models/$m.mtl; done
MODELS=${MODELS:-"shapes_mm digits_mt digits shapes reviews seed_multitask seed_multimodal siamese fusions captions mmoe"}
printf '%-10s %12s %12s %7s %12s %12s %7s\n' model mtl-train keras-train ratio mtl-infer keras-infer ratio
for m in $MODELS; do
  k=$(KERAS_BACKEND=jax "$PY" benches/peers/keras_bench.py "$m" 2>/dev/null | tail -1)
  mt=$(target/release/mtl bench "${FILE[$m]}" --train --json 2>/dev/null | tail -1)
  mi=$(target/release/mtl bench "${FILE[$m]}" --infer --json 2>/dev/null | tail -1)
  python3 - "$m" "$k" "$mt" "$mi" <<'PY'
import json, sys
m, k, mt, mi = sys.argv[1], *map(json.loads, sys.argv[2:])
kt, ki = k["train_samples_per_sec"], k["infer_samples_per_sec"]
t, i = mt["samples_per_sec"], mi["samples_per_sec"]
print(f"{m:<10} {t:12.0f} {kt:12.0f} {t/kt:6.2f}x {i:12.0f} {ki:12.0f} {i/ki:6.2f}x")
PY
done
