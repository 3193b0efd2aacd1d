#!/usr/bin/env bash
# Builds the GPU binaries here (no GPU needed) and packs what the GPU check
# needs into .gpu/ (ignored by git; `carry` it to the device machine, which
# has no Rust toolchain and no ../shared): the gzipped stripped binaries and
# the shared fixtures.
# - .gpu/mtl.gz: the `cuda` feature, no MPI (the GPU machines have no MPI
#   library to load) and no NCCL: what benches/gpu/check.sh runs;
# - .gpu/mtl-nccl.gz: with NCCL, for `mtl collective --device cuda` (one
#   rank: these machines have one GPU); it loads the machine's libnccl.so.2.
set -euo pipefail
cd "$(dirname "$0")/../.."
eval "$(scripts/cuda-toolkit.sh)"
mkdir -p .gpu
for variant in cuda:mtl nccl:mtl-nccl; do
  cargo build --release --locked --no-default-features --features "${variant%%:*}"
  strip -o ".gpu/${variant#*:}" target/release/mtl
  gzip -f -9 ".gpu/${variant#*:}"
done
rm -rf .gpu/fixtures && cp -r ../shared/fixtures .gpu/fixtures
du -sh .gpu
