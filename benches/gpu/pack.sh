#!/usr/bin/env bash
# Builds the `cuda` binary here (no GPU needed) and packs what the GPU check
# needs into .gpu/ (ignored by git; `carry` it to the device machine, which
# has no Rust toolchain and no ../shared): the gzipped stripped binary and the
# shared fixtures.
set -euo pipefail
cd "$(dirname "$0")/../.."
eval "$(scripts/cuda-toolkit.sh)"
# No MPI in this binary: the GPU machines have no MPI library to load.
cargo build --release --locked --no-default-features --features cuda
mkdir -p .gpu
strip -o .gpu/mtl target/release/mtl
gzip -f -9 .gpu/mtl
rm -rf .gpu/fixtures && cp -r ../shared/fixtures .gpu/fixtures
du -sh .gpu
