#!/usr/bin/env bash
# Every loss weighting on the two-task overlap benchmark (models/overlap.mtl):
# test accuracy per head over seeds, and wall time relative to fixed weights.
#   benches/weighting/run.sh            # all methods, seeds 0 1 2
#   METHODS="fixed pcgrad" SEEDS="0" benches/weighting/run.sh
# Prints a Markdown table; the runs stay in $OUT (default /tmp/mtl-weighting).
set -euo pipefail
cd "$(dirname "$0")/../.."
MTL=${MTL:-target/release/mtl}
OUT=${OUT:-/tmp/mtl-weighting}
DATA=${DATA:-$OUT/data}
SEEDS=${SEEDS:-0 1 2}
METHODS=${METHODS:-fixed uncertainty dwa gradnorm pcgrad cagrad mgda imtl nash_mtl famo rlw aligned_mtl}
mkdir -p "$OUT"
[ -f "$DATA/train.csv" ] || "$MTL" data overlap --out "$DATA" --n 3000 --seed 0
# Untimed warm-up: the first run also pays for cold file caches.
"$MTL" train models/overlap.mtl --data "$DATA/train.csv" --epochs 1 --out "$OUT/warm-up" --quiet
rm -rf "$OUT/warm-up"
for m in $METHODS; do
  for s in $SEEDS; do
    run="$OUT/$m-$s"
    rm -rf "$run"
    start=$(date +%s.%N)
    "$MTL" train models/overlap.mtl --data "$DATA/train.csv" --weighting "$m" --seed "$s" \
      --out "$run" --quiet
    end=$(date +%s.%N)
    echo "$start $end" > "$run.time"
    "$MTL" evaluate "$run" --data "$DATA/test.csv" --json > "$run.eval.json"
  done
done
python3 - "$OUT" "$METHODS" "$SEEDS" <<'PY'
import json, statistics, sys
out, methods, seeds = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
rows = {}
for m in methods:
    acc = {"left": [], "right": []}
    secs, sps = [], []
    for s in seeds:
        e = json.load(open(f"{out}/{m}-{s}.eval.json"))
        for h in acc:
            acc[h].append(e["heads"][h]["accuracy"])
        a, b = map(float, open(f"{out}/{m}-{s}.time").read().split())
        secs.append(b - a)
        st = json.load(open(f"{out}/{m}-{s}/training_statistics.json"))["epochs"]
        sps.append(statistics.mean(x["samples_per_sec"] for x in st))
    rows[m] = (acc, statistics.mean(secs), statistics.mean(sps))
base = rows.get("fixed")
print("| method | left acc | right acc | mean | wall s | vs fixed | samples/s | vs fixed |")
print("|---|---|---|---|---|---|---|---|")
for m, (acc, secs, sps) in rows.items():
    cells = []
    for h in ("left", "right"):
        v = acc[h]
        cells.append(f"{statistics.mean(v):.4f} ± {statistics.pstdev(v):.4f}")
    mean = statistics.mean(acc["left"] + acc["right"])
    rel_t = f"{secs / base[1]:.2f}x" if base else "-"
    rel_s = f"{base[2] / sps:.2f}x" if base else "-"
    print(f"| {m} | {cells[0]} | {cells[1]} | {mean:.4f} | {secs:.1f} | {rel_t} | {sps:.0f} | {rel_s} |")
PY
