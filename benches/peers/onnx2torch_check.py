#!/usr/bin/env python3
"""Every Keras-checked fixture exported with `mtl export --unroll-rnn`
(onnx2torch has no LSTM/GRU converter), converted to a torch module by
onnx2torch and run; outputs compared with Keras's expected ones (max relative
error |a - b| / max(|b|, 1e-3)). Needs `torch onnx onnx2torch safetensors`.

    python benches/peers/onnx2torch_check.py [--mtl target/release/mtl]
"""
import argparse
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import torch
from onnx2torch import convert
from safetensors.numpy import load_file

ROOT = pathlib.Path(__file__).resolve().parents[2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mtl", default=str(ROOT / "target/release/mtl"))
    a = ap.parse_args()
    bad = []
    models = sorted((ROOT / "../shared/fixtures").glob("*.mtl")) + sorted((ROOT / "tests/reference").glob("*.mtl"))
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            name, path = model.stem, pathlib.Path(tmp) / f"{model.stem}.onnx"
            weights = model.with_name(f"{name}.weights.safetensors")
            subprocess.run([a.mtl, "export", str(model), "--weights", str(weights), "--output", str(path),
                            "--unroll-rnn"], check=True, capture_output=True)
            g = onnx.load(str(path)).graph
            inputs = load_file(str(model.with_name(f"{name}.inputs.safetensors")))
            expected = load_file(str(model.with_name(f"{name}.expected.safetensors")))
            args = [torch.tensor(inputs[i.name].astype(np.int64 if i.type.tensor_type.elem_type == 7 else np.float32))
                    for i in g.input]
            try:
                with torch.no_grad():
                    out = convert(onnx.load(str(path)))(*args)
            except Exception as e:  # a converter gap is a result too
                print(f"{name}: onnx2torch failed: {e}")
                bad.append(name)
                continue
            out = out if isinstance(out, (list, tuple)) else [out]
            err = max(float(np.max(np.abs(y.numpy() - expected[o.name]) / np.maximum(np.abs(expected[o.name]), 1e-3)))
                      for o, y in zip(g.output, out))
            print(f"{name}: max relative error {err:.2e}")
            if err >= 1e-4:
                bad.append(name)
    print(f"{len(models) - len(bad)}/{len(models)} models equal Keras within 1e-4 through onnx2torch"
          + (f"; failing: {', '.join(bad)}" if bad else ""))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
