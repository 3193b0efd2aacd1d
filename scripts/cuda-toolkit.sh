#!/usr/bin/env bash
# Installs, from PyPI alone, what `cargo build --features cuda` needs on a machine
# with no GPU and no system CUDA, and prints the environment to build with:
#
#   eval "$(scripts/cuda-toolkit.sh)"
#   cargo build --release --features cuda
#
# Why each piece:
# - nvcc, nvvm, crt, cccl and the runtime headers compile candle's kernels to PTX.
#   They are pinned to one release (13.0): mixing 13.x parts fails in ptxas with
#   "Unsupported .version", and 13.0 is what the GPU machines' driver loads.
# - candle links cudarc dynamically, so the linker wants libcublas, libcublasLt,
#   libcudart, libnvrtc and libcurand under their unversioned names; the wheels only
#   ship `libX.so.13`, so we add the `libX.so` links.
# - The driver library (libcuda.so.1) comes with the GPU driver, never in a wheel.
#   We link against a stub that defines the `cu*` symbols cudarc names, with the
#   driver's SONAME, so that the real library is the one loaded at run time.
# - NCCL (feature `nccl`) is linked the same way: a stub of the `nccl*`
#   functions cudarc declares, SONAME libnccl.so.2; the GPU machine's NCCL
#   (PyTorch's nvidia-nccl wheel) is the one loaded at run time.
# - cudarc's build script searches `$CUDA_ROOT/lib` and `$CUDA_ROOT/lib/stubs`,
#   which is where the links and the stub go: no RUSTFLAGS, nothing rebuilt twice.
# - CUDA_COMPUTE_CAP=90 (Hopper: H100/H200); there is no nvidia-smi to ask.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dir="${MTL_CUDA_DIR:-$here/target/cuda-toolkit}"
cap="${CUDA_COMPUTE_CAP:-90}"
python="${PYTHON:-python3}"

if [ ! -f "$dir/.done" ]; then
  rm -rf "$dir"
  mkdir -p "$dir"
  "$python" -m pip install -q --no-cache-dir --disable-pip-version-check --no-deps --target "$dir/site" \
    'nvidia-cuda-nvcc==13.0.88' 'nvidia-nvvm==13.0.*' 'nvidia-cuda-crt==13.0.*' \
    'nvidia-cuda-runtime==13.0.*' 'nvidia-cuda-cccl==13.0.*' 'nvidia-cuda-nvrtc==13.0.*' \
    'nvidia-cublas==13.0.*' 'nvidia-curand==10.4.0.*' >&2
  root="$dir/site/nvidia/cu13"
  [ -x "$root/bin/nvcc" ] || { echo "cuda-toolkit: no nvcc in $root/bin" >&2; exit 1; }
  for lib in cublas cublasLt cudart nvrtc curand; do
    so="$(ls "$root"/lib/lib$lib.so.* 2>/dev/null | head -n1)"
    [ -n "$so" ] || { echo "cuda-toolkit: lib$lib.so.* missing in $root/lib" >&2; exit 1; }
    ln -sf "$(basename "$so")" "$root/lib/lib$lib.so"
  done
  # The driver stub: every cu* function cudarc declares, as an empty symbol.
  mkdir -p "$root/lib/stubs"
  find_cudarc() { ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-* 2>/dev/null | sort -V | tail -n1; }
  [ -n "$(find_cudarc)" ] || (cd "$here" && cargo fetch --locked >&2) # a fresh machine: sources first
  cudarc="$(find_cudarc)"
  [ -n "$cudarc" ] || { echo "cuda-toolkit: no cudarc sources in the cargo registry" >&2; exit 1; }
  grep -o '\bfn cu[A-Za-z0-9_]*' "$cudarc/src/driver/sys/mod.rs" | sed 's/fn //' | sort -u \
    | sed 's/.*/void &(void) {}/' >"$dir/cuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib/stubs/libcuda.so" "$dir/cuda_stub.c"
  touch "$dir/.done"
fi
root="$dir/site/nvidia/cu13"
if [ ! -f "$dir/.nccl" ]; then
  find_cudarc() { ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-* 2>/dev/null | sort -V | tail -n1; }
  [ -n "$(find_cudarc)" ] || (cd "$here" && cargo fetch --locked >&2)
  cudarc="$(find_cudarc)"
  grep -o '\bfn nccl[A-Za-z0-9_]*' "$cudarc/src/nccl/sys/mod.rs" | sed 's/fn //' | sort -u \
    | sed 's/.*/void &(void) {}/' >"$dir/nccl_stub.c"
  mkdir -p "$root/lib/stubs"
  cc -shared -fPIC -Wl,-soname,libnccl.so.2 -o "$root/lib/stubs/libnccl.so" "$dir/nccl_stub.c"
  touch "$dir/.nccl"
fi
echo "export PATH=\"$root/bin:\$PATH\" CUDA_ROOT=\"$root\" CUDA_PATH=\"$root\" CUDA_COMPUTE_CAP=$cap"
