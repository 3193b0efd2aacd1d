#!/usr/bin/env bash
# Builds the GPU binaries here (no GPU needed) and packs what the GPU check
# needs into .gpu/ (ignored by git; `carry` it to the device machine, which
# has no Rust toolchain and no ../shared): the gzipped stripped binaries and
# the shared fixtures.
# - .gpu/mtl.gz: the `cuda` feature, no MPI (the GPU machines have no MPI
#   library to load) and no NCCL: what benches/gpu/check.sh runs;
# - .gpu/cuda-tests.gz: tests/cuda.rs built with the `cuda` feature (the CUDA
#   kernels and every model's gradients against the CPU's), run by check.sh;
# - .gpu/mtl-nccl.gz: with NCCL, for `mtl collective --device cuda` (one
#   rank: these machines have one GPU); it loads the machine's libnccl.so.2.
#   VARIANTS=cuda leaves it out.
# CARGO_TARGET_DIR is honoured (a separate one keeps the CPU build's binary).
set -euo pipefail
cd "$(dirname "$0")/../.."
eval "$(scripts/cuda-toolkit.sh)"
target="${CARGO_TARGET_DIR:-target}"
mkdir -p .gpu
for variant in ${VARIANTS:-cuda nccl}; do
  name=mtl; [ "$variant" = cuda ] || name="mtl-$variant"
  cargo build --release --locked --no-default-features --features "$variant"
  strip -o ".gpu/$name" "$target/release/mtl"
  gzip -f -9 ".gpu/$name"
done
tests="$(cargo test --release --locked --no-default-features --features cuda --test cuda --no-run \
  --message-format=json | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable"):
        print(m["executable"])')"
strip -o .gpu/cuda-tests "$tests"
gzip -f -9 .gpu/cuda-tests
rm -rf .gpu/fixtures && cp -r ../shared/fixtures .gpu/fixtures
du -sh .gpu
