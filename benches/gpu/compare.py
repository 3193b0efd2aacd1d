"""Max relative error of mtl's predictions against Keras's expected outputs,
per head, as tests/fixtures.rs computes it: |a - b| / max(|b|, 1e-3).
Prints one JSON object: {"ok": bool, "max_rel_err": float, "heads": {...}}."""
import json
import sys

import numpy as np
from safetensors.numpy import load_file

got, want = load_file(sys.argv[1]), load_file(sys.argv[2])
heads = {}
for name, b in want.items():
    a = got.get(name)
    if a is None or a.shape != b.shape:
        heads[name] = None
        continue
    err = np.abs(a.astype(np.float64) - b) / np.maximum(np.abs(b), 1e-3)
    heads[name] = float(err.max()) if err.size else 0.0
worst = max((e for e in heads.values() if e is not None), default=0.0)
ok = all(e is not None and e < 1e-4 for e in heads.values())
print(json.dumps({"ok": ok, "max_rel_err": worst, "heads": heads}))
