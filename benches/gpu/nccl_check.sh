#!/usr/bin/env bash
# The NCCL transport on a GPU machine (one GPU: one rank), after
# benches/gpu/pack.sh: `mtl collective --device cuda` checks the all-reduces,
# broadcasts, barrier and the differentiable all-reduce on the device, and
# times the device all-reduce at a few sizes. JSON lines in OUT/nccl.jsonl.
#   benches/gpu/nccl_check.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${1:-${OUT:-/tmp/gpu-check}}"
mkdir -p "$out"
bin=/tmp/mtl-nccl
gunzip -c .gpu/mtl-nccl.gz >"$bin" && chmod +x "$bin"
libdirs="$(find /usr/local /opt /usr/lib \( -name libcublas.so.13 -o -name libcublasLt.so.13 \
  -o -name libcudart.so.13 -o -name libnvrtc.so.13 -o -name libcurand.so.10 -o -name libnccl.so.2 \) \
  -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)"
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ldd "$bin" | grep -E "not found|nccl" | tee "$out/nccl-ldd.txt"
: >"$out/nccl.jsonl"
for n in 1024 1048576 16777216; do
  timeout 120 "$bin" collective --device cuda --floats "$n" --repeats 50 --json >>"$out/nccl.jsonl" 2>>"$out/nccl.log" \
    || echo "{\"floats\": $n, \"checks\": \"failed\"}" >>"$out/nccl.jsonl"
done
cat "$out/nccl.jsonl"
