#!/usr/bin/env bash
# mtl against its peers on this machine, in one run: Keras 3 (JAX backend),
# PyTorch eager and torch.compile (CPU). Training and inference samples/s at
# batch 32, mtl's ratio to the best peer per model and mode, and each one's
# peak memory (RSS, MiB, of the whole process: /usr/bin/time); mtl's own
# candle path (`--executor candle`) beside its default (the planned executor
# where it applies). Then inference alone at each batch size of
# INFER_BATCHES (default "1 256"; empty skips it).
#
#   KERAS_PY=/tmp/kvenv/bin/python TORCH_PY=/tmp/tavenv/bin/python benches/peers/compare.sh
#
# Needs a release build of mtl, a Python with keras + jax (KERAS_PY) and one
# with torch (TORCH_PY); MODELS picks models. Rows go to stdout, JSON lines to
# $OUT (default /tmp/peers.jsonl).
#
# ROUNDS=R (default 1) measures each model's batch-32 rows R times, every
# runner once a round in turn, and reports each runner's median (the rounds'
# readings kept in the JSON as `rounds`): on a shared machine whose speed
# moves within minutes, one reading of a 20-step window says little.
set -euo pipefail
cd "$(dirname "$0")/../.."
KPY=${KERAS_PY:-python3}
TPY=${TORCH_PY:-python3}
OUT=${OUT:-/tmp/peers.jsonl}
: >"$OUT"
# Every shipped model and every fixture (the fixture `mmoe` as mmoe_fixture).
declare -A FILE=([mmoe_fixture]=../shared/fixtures/mmoe.mtl)
for m in shapes_mm digits_mt text_transformer fusion_ops seed_multitask_small; do FILE[$m]=../shared/fixtures/$m.mtl; done
for m in digits shapes reviews seed_multitask seed_multimodal siamese fusions captions mmoe overlap tones clip; do FILE[$m]=models/$m.mtl; done
MODELS=${MODELS:-"shapes_mm digits_mt digits shapes reviews seed_multitask seed_multimodal siamese fusions captions mmoe overlap tones clip text_transformer fusion_ops seed_multitask_small mmoe_fixture"}
INFER_BATCHES=${INFER_BATCHES-"1 256"}
# One measured command: its last stdout line (JSON) with "rss_mib" added.
measure() {
  local t
  t=$(mktemp)
  /usr/bin/time -f %M -o "$t" "$@" 2>/dev/null | tail -1 | python3 -c '
import json, sys
line = sys.stdin.read().strip()  # first: the command has ended, its RSS is written
rss = int(open(sys.argv[1]).read().split()[-1]) / 1024
d = json.loads(line) if line else {"error": True}
d["rss_mib"] = round(rss)
print(json.dumps(d))' "$t"
  rm -f "$t"
}
printf '%-16s %-6s %9s %9s %9s %9s %9s %7s   %s\n' model mode mtl candle keras torch t.compile best "RSS MiB mtl/keras/torch/compile"
ROUNDS=${ROUNDS:-1}
for m in $MODELS; do
  runs=$(mktemp)
  for _ in $(seq "$ROUNDS"); do
    mt=$(measure target/release/mtl bench "${FILE[$m]}" --train --json)
    mi=$(measure target/release/mtl bench "${FILE[$m]}" --infer --json)
    ct=$(measure target/release/mtl bench "${FILE[$m]}" --train --json --executor candle)
    ci=$(measure target/release/mtl bench "${FILE[$m]}" --infer --json --executor candle)
    k=$(KERAS_BACKEND=jax measure "$KPY" benches/peers/keras_bench.py "$m")
    te=$(measure "$TPY" benches/peers/torch_bench.py "$m" --mode eager)
    tc=$(measure "$TPY" benches/peers/torch_bench.py "$m" --mode compile)
    echo "[$mt, $mi, $k, $te, $tc, $ct, $ci]" >>"$runs"
  done
  python3 - "$m" "$runs" "$OUT" <<'PY'
import json, statistics, sys
m, out = sys.argv[1], sys.argv[3]
rounds = [json.loads(line) for line in open(sys.argv[2])]
def median(runs):
    # The first round's record with each samples/s the rounds' median
    # (readings under `rounds`) and the largest RSS.
    d = dict(runs[0])
    for key in [k for k in d if k.endswith("samples_per_sec")]:
        vals = [r.get(key) for r in runs if isinstance(r.get(key), (int, float))]
        if vals:
            d[key] = statistics.median(vals)
            if len(runs) > 1:
                d.setdefault("rounds", {})[key] = vals
    rss = [r["rss_mib"] for r in runs if "rss_mib" in r]
    if rss:
        d["rss_mib"] = max(rss)
    return d
mt, mi, k, te, tc, ct, ci = (median([r[i] for r in rounds]) for i in range(7))
with open(out, "a") as f:
    f.write(json.dumps({"model": m, "batch": 32, "mtl_train": mt, "mtl_infer": mi, "mtl_candle_train": ct, "mtl_candle_infer": ci, "keras": k, "torch_eager": te, "torch_compile": tc}) + "\n")
for mode, ours, cand in (("train", mt, ct), ("infer", mi, ci)):
    peers = [p.get(f"{mode}_samples_per_sec") or 0 for p in (k, te, tc)]
    best = max(peers) or float("nan")
    rss = "/".join(str(x.get("rss_mib", "?")) for x in (ours, k, te, tc))
    print(f"{m:<16} {mode:<6} {ours.get('samples_per_sec', 0):9.0f} {cand.get('samples_per_sec', 0):9.0f} " + " ".join(f"{p:9.0f}" for p in peers)
          + f" {ours.get('samples_per_sec', 0) / best:6.2f}x   {rss}")
PY
  rm -f "$runs"
done
for b in $INFER_BATCHES; do
  for m in $MODELS; do
    mi=$(measure target/release/mtl bench "${FILE[$m]}" --infer --json --batch-size "$b")
    ci=$(measure target/release/mtl bench "${FILE[$m]}" --infer --json --batch-size "$b" --executor candle)
    k=$(KERAS_BACKEND=jax KERAS_BATCH=$b INFER_ONLY=1 measure "$KPY" benches/peers/keras_bench.py "$m")
    te=$(measure "$TPY" benches/peers/torch_bench.py "$m" --mode eager --infer-only --batch-size "$b")
    tc=$(measure "$TPY" benches/peers/torch_bench.py "$m" --mode compile --infer-only --batch-size "$b")
    python3 - "$m" "$b" "$mi" "$ci" "$k" "$te" "$tc" "$OUT" <<'PY'
import json, sys
m, b, mi, ci, k, te, tc = sys.argv[1], int(sys.argv[2]), *map(json.loads, sys.argv[3:8])
with open(sys.argv[8], "a") as f:
    f.write(json.dumps({"model": m, "batch": b, "mtl_infer": mi, "mtl_candle_infer": ci, "keras": k, "torch_eager": te, "torch_compile": tc}) + "\n")
peers = [p.get("infer_samples_per_sec") or 0 for p in (k, te, tc)]
best = max(peers) or float("nan")
print(f"{m:<16} {'inf@' + str(b):<6} {mi.get('samples_per_sec', 0):9.0f} {ci.get('samples_per_sec', 0):9.0f} " + " ".join(f"{p:9.0f}" for p in peers)
      + f" {mi.get('samples_per_sec', 0) / best:6.2f}x")
PY
  done
done
