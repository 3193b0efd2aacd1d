"""Compiles every CUDA C source in src/ with NVRTC, as mtl does at run time on
a GPU, but on any machine with the NVRTC library (no GPU, no driver needed):
a kernel that no longer compiles then fails CI instead of the next GPU run.

    eval "$(scripts/cuda-toolkit.sh)"; python3 scripts/nvrtc-check.py

The sources are the raw strings (r#"..."#) in src/ that define a
`__global__` function; NVRTC is found under $CUDA_ROOT/lib. Prints one line
per source and exits non-zero if any fails to compile."""
import ctypes
import os
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
lib_dir = pathlib.Path(os.environ.get("CUDA_ROOT", ROOT / "target/cuda-toolkit/site/nvidia/cu13")) / "lib"
# NVRTC opens its builtins library by name at compile time: load it first.
for builtins in sorted(lib_dir.glob("libnvrtc-builtins.so.*")):
    ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
nvrtc = ctypes.CDLL(str(lib_dir / "libnvrtc.so"))
arch = f"--gpu-architecture=compute_{os.environ.get('CUDA_COMPUTE_CAP', '90')}".encode()

failed = 0
for path in sorted((ROOT / "src").rglob("*.rs")):
    for n, source in enumerate(re.findall(r'r#"(.*?)"#', path.read_text(), re.S)):
        if "__global__" not in source:
            continue
        prog = ctypes.c_void_p()
        name = f"{path.relative_to(ROOT)}#{n}".encode()
        rc = nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name, 0, None, None)
        if rc == 0:
            opts = (ctypes.c_char_p * 1)(arch)
            rc = nvrtc.nvrtcCompileProgram(prog, 1, opts)
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(prog, log)
        kernels = len(re.findall(r"__global__", source))
        status = "ok" if rc == 0 else f"FAILED (nvrtc {rc})"
        print(f"{path.relative_to(ROOT)}: {kernels} kernel(s) {status}")
        if rc != 0:
            print(log.value.decode(errors="replace"), file=sys.stderr)
            failed += 1
        nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
sys.exit(1 if failed else 0)
