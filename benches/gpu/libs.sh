# Sourced by the GPU scripts: the libraries the `cuda` binary was linked
# against (cuBLAS, NVRTC, cuRAND, the runtime), found wherever this machine's
# CUDA or PyTorch keeps them, put on LD_LIBRARY_PATH.
libdirs="$(find /usr/local /opt /usr/lib \( -name libcublas.so.13 -o -name libcublasLt.so.13 \
  -o -name libcudart.so.13 -o -name libnvrtc.so.13 -o -name libcurand.so.10 \) -printf '%h\n' 2>/dev/null \
  | sort -u | paste -sd:)"
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
