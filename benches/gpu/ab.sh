#!/usr/bin/env bash
# Two packed `cuda` binaries alternated on the GPU, so that a change is
# measured against its parent on the same machine in the same minutes:
#
#   BASE=.gpu/mtl-base.gz NEW=.gpu/mtl.gz MODELS="models/reviews.mtl ..." \
#     benches/gpu/ab.sh [OUT_DIR]
#
# For each model, point (POINTS, MODE:BATCH[:PRECISION], default
# "train:32 infer:32 train:256") and round (ROUNDS, default 2),
# `mtl bench --steps 10 --repeats 3` of BASE then NEW; one JSON line per run in OUT_DIR/ab.jsonl ({"binary", "round",
# "result"}). Stops starting runs after BUDGET seconds (default 240).
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${1:-${OUT:-/tmp/gpu-check}}"
mkdir -p "$out"
budget="${BUDGET:-240}"
start=$SECONDS
. benches/gpu/libs.sh
for v in base new; do
  src="$([ "$v" = base ] && echo "${BASE:-.gpu/mtl-base.gz}" || echo "${NEW:-.gpu/mtl.gz}")"
  gunzip -c "$src" >"/tmp/mtl-$v" && chmod +x "/tmp/mtl-$v"
done
lines="$out/ab.jsonl"
for m in ${MODELS:-models/reviews.mtl}; do
  for point in ${POINTS:-train:32 infer:32 train:256}; do
    for round in $(seq "${ROUNDS:-2}"); do
      for v in base new; do
        [ $((SECONDS - start)) -lt "$budget" ] || { echo "ab: out of time" >&2; exit 0; }
        IFS=: read -r mode batch precision <<<"$point"
        r="$(timeout 60 "/tmp/mtl-$v" bench "$m" --"$mode" --batch-size "$batch" \
          --precision "${precision:-f32}" --device cuda --steps 10 --repeats 3 --json \
          2>>"$out/ab.log" | tail -n1)"
        [ -n "$r" ] || r="{\"model\": \"$m\", \"error\": true}"
        echo "{\"binary\": \"$v\", \"round\": $round, \"result\": $r}" | tee -a "$lines" >&2
      done
    done
  done
done
