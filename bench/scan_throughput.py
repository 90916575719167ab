"""Scan throughput and peak memory on a synthetic bf16 checkpoint with one rank-one edit.

Builds a Llama-shaped bf16 checkpoint of ≥ 1 GB per side (random weights; the suspect differs by
one rank-one change in one MLP output matrix), then measures, each in its own subprocess so that
peak RSS (VmHWM) is per mode, all on a warm page cache:

  read      simply reading both files' bytes (the floor any scan must pay)
  scan      ``editaudit scan`` first audit (byte compare + recording the base's digests)
  cached    a repeat audit against the same base (suspect hashed against cached digests)
  hf-diff   loading both models with transformers and diffing their state dicts

Usage: python bench/scan_throughput.py [--layers 8] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {
    "read": """
import os, sys, time
t = time.perf_counter(); n = 0
buf = bytearray(8 << 20)
for path in sys.argv[1:3]:
    with open(path + '/model.safetensors', 'rb', buffering=0) as f:
        while (k := f.readinto(buf)):
            n += k
print(time.perf_counter() - t, n)
""",
    "scan": """
import sys, time
from editaudit.scan.service import ScanOptions, run_scan
from editaudit.store import Store
store = Store(sys.argv[3])
t = time.perf_counter()
r = run_scan(sys.argv[2], sys.argv[1], ScanOptions(), store=store)
import json
print(time.perf_counter() - t, r.bytes_read, json.dumps({"kind": r.kind, "layers": [f.layers for f in r.findings], **r.timings}))
""",
    "hf-diff": """
import sys, time, torch
from transformers import AutoModelForCausalLM
t = time.perf_counter()
a = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16).state_dict()
b = AutoModelForCausalLM.from_pretrained(sys.argv[2], dtype=torch.bfloat16).state_dict()
changed = [k for k in a if not torch.equal(a[k], b[k])]
print(time.perf_counter() - t, 0, changed)
""",
}


def build(root: Path, layers: int) -> tuple[Path, Path, int]:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers, num_attention_heads=16,
                      num_key_value_heads=16, vocab_size=32000, tie_word_embeddings=False, torch_dtype="bfloat16")
    base, suspect = root / "base", root / "suspect"
    for d in (base, suspect):
        d.mkdir(parents=True, exist_ok=True)
        cfg.save_pretrained(d)
    gen = torch.Generator().manual_seed(0)
    h, f = cfg.hidden_size, cfg.intermediate_size
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, h), "lm_head.weight": (cfg.vocab_size, h),
              "model.norm.weight": (h,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (h, h),
                       p + "self_attn.v_proj.weight": (h, h), p + "self_attn.o_proj.weight": (h, h),
                       p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                       p + "mlp.down_proj.weight": (h, f), p + "input_layernorm.weight": (h,),
                       p + "post_attention_layernorm.weight": (h,)})
    tensors = {n: (torch.randn(s, generator=gen) * 0.02).to(torch.bfloat16) for n, s in shapes.items()}
    save_file(tensors, str(base / "model.safetensors"), metadata={"format": "pt"})
    edited = f"model.layers.{layers // 2}.mlp.down_proj.weight"
    w = tensors[edited].float()
    u, v = torch.randn(h, 1, generator=gen), torch.randn(1, f, generator=gen)
    d = u @ v
    tensors[edited] = (w + d / d.norm() * 0.05 * w.norm()).to(torch.bfloat16)
    save_file(tensors, str(suspect / "model.safetensors"), metadata={"format": "pt"})
    return base, suspect, os.path.getsize(base / "model.safetensors")


def run_mode(mode: str, base: Path, suspect: Path, db: Path) -> dict:
    code = "import resource, sys\n" + MODES[mode] + (
        "\nprint('RSS', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, str(base), str(suspect), str(db)], capture_output=True,
                         text=True, check=True).stdout.strip().splitlines()
    wall = time.perf_counter() - t
    inner = out[-2].split(" ", 2)
    rss_mb = int(out[-1].split()[1]) / 1024
    return {"mode": mode, "seconds": float(inner[0]), "wall_s": wall, "peak_rss_mb": rss_mb, "detail": inner[2] if len(inner) > 2 else ""}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--keep", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode; the fastest is kept")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="editaudit-bench-"))
    try:
        if not (root / "suspect" / "model.safetensors").exists():
            print("building synthetic checkpoints…", file=sys.stderr)
            build(root, args.layers)
        base, suspect = root / "base", root / "suspect"
        size = os.path.getsize(base / "model.safetensors")
        db = root / "bench.db"
        db.unlink(missing_ok=True)
        run_mode("read", base, suspect, db)  # warm the page cache
        def best(mode: str, fresh_db: bool = False) -> dict:
            runs = []
            for _ in range(args.repeat):
                if fresh_db:
                    for suffix in ("", "-wal", "-shm"):
                        Path(str(db) + suffix).unlink(missing_ok=True)
                runs.append(run_mode(mode, base, suspect, db))
            return min(runs, key=lambda r: r["seconds"])

        rows = [best("read"), best("scan", fresh_db=True), best("scan"), best("hf-diff")]
        rows[2]["mode"] = "cached"
        read_s = rows[0]["seconds"]
        print(f"synthetic bf16 checkpoint: {size / 1e9:.2f} GB per side, one rank-one edit; warm page cache; "
              f"{os.cpu_count()} CPU(s)")
        print(f"{'mode':8s} {'seconds':>8s} {'GB/s (both sides)':>18s} {'ratio to read':>14s} {'peak RSS MB':>12s}")
        for r in rows:
            speed = 2 * size / r["seconds"] / 1e9
            print(f"{r['mode']:8s} {r['seconds']:8.2f} {speed:18.2f} {read_s / r['seconds']:14.2f} {r['peak_rss_mb']:12.0f}")
        scan, cached = rows[1], rows[2]
        for r in (scan, cached):
            t = json.loads(r["detail"])
            if t:
                print(f"{r['mode']}: compare phase {t['compare_s']:.2f}s (ratio to read {read_s / t['compare_s']:.2f}), "
                      f"float work on the changed tensor {t['analyse_s']:.2f}s, reading the edit {t['read_s']:.2f}s")
        largest = 32000 * 2048 * 2
        print(f"scan result: {json.loads(scan['detail'])['kind']} at layers {json.loads(scan['detail'])['layers']}")
        print(f"largest tensor {largest / 1e6:.0f} MB; scan peak RSS = {scan['peak_rss_mb'] / (largest / 1e6):.1f}× it")
        for name, gb in (("7B", 13.5), ("70B", 140.0)):
            first = 2 * gb / (2 * size / 1e9 / scan["seconds"])
            again = 2 * gb / (2 * size / 1e9 / cached["seconds"])
            print(f"projected {name} ({gb:.0f} GB/side, same storage speed): first audit {first / 60:.1f} min, "
                  f"repeat {again / 60:.1f} min")
        if args.json:
            args.json.write_text(json.dumps({"bytes_per_side": size, "rows": rows}, indent=2))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
