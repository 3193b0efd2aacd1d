"""The GPU check's report (gpu-report.json) as the markdown tables of
benches/README.md: mtl against PyTorch per model at batch 32, and f32 against
bf16 at batch 256.

    python3 benches/gpu/table.py gpu-report.json [LATER.json ...]

With several reports, a later one's numbers replace an earlier one's (mtl
rerun alone after a change, PyTorch kept from the first)."""
import json
import os
import sys

rows = [r for path in sys.argv[1:] for r in json.load(open(path))]
name = lambda p: os.path.splitext(os.path.basename(p))[0]  # noqa: E731
mtl, torch = {}, {}
for r in rows:
    if r["part"] == "mtl_bench" and "samples_per_sec" in r["result"]:
        x = r["result"]
        mtl[(name(x["model"]), x["mode"], x["batch_size"], x["precision"])] = x["samples_per_sec"]
    if r["part"] == "torch_bench" and "train_samples_per_sec" in r["result"]:
        x = r["result"]
        for mode in ("train", "infer"):
            torch[(x["model"], x["mode"], mode, x["batch_size"], x["precision"])] = x[f"{mode}_samples_per_sec"]
fmt = lambda v: f"{v:,.0f}" if v else "—"  # noqa: E731
ratio = lambda a, b: f"{a / b:.2f}×" if a and b else "—"  # noqa: E731
models = sorted({k[0] for k in mtl})
print("| model | mtl train | torch eager train | ratio | torch.compile train | mtl infer | torch eager infer | ratio |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for m in models:
    t, i = mtl.get((m, "train", 32, "f32")), mtl.get((m, "infer", 32, "f32"))
    tt, ti = torch.get((m, "eager", "train", 32, "f32")), torch.get((m, "eager", "infer", 32, "f32"))
    tc = torch.get((m, "compile", "train", 32, "f32"))
    print(f"| {m} | {fmt(t)} | {fmt(tt)} | {ratio(t, tt)} | {fmt(tc)} | {fmt(i)} | {fmt(ti)} | {ratio(i, ti)} |")
print()
print("| model | mtl f32 | mtl bf16 | bf16 speedup | torch f32 | torch bf16 | torch bf16 speedup |")
print("|---|---:|---:|---:|---:|---:|---:|")
for m in models:
    a, b = mtl.get((m, "train", 256, "f32")), mtl.get((m, "train", 256, "bf16"))
    c, d = torch.get((m, "eager", "train", 256, "f32")), torch.get((m, "eager", "train", 256, "bf16"))
    print(f"| {m} | {fmt(a)} | {fmt(b)} | {ratio(b, a)} | {fmt(c)} | {fmt(d)} | {ratio(d, c)} |")
last = json.load(open(sys.argv[-1]))
fx = [r for r in last if r["part"] == "fixture"]
ok = sum(1 for r in fx if r["result"].get("ok"))
worst = max((r["result"].get("max_rel_err", 0) for r in fx if r["result"].get("ok")), default=0)
print(f"\nfixtures on CUDA: {ok}/{len(fx)} within 1e-4 (worst {worst:.2e})")
for r in last:
    if r["part"] == "train":
        print("train", r["precision"], r["ok"], r["wall_s"], "s", json.dumps(r.get("test"))[:300])
