"""What the rounding edge from row and column variances costs per changed matrix, against the whole float work.

    python bench/rounding_edge_cost.py [--out bench/results/rounding_edge_cost.txt] [--repeat 5]

On one 7B-shaped MLP matrix (4096 × 11008, bfloat16, random weights with one outlier row) in one process and one
thread: the old uniform estimate (``ulp_rms``, a strided sample), the edge that follows rows and columns
(``rounding_edge``), every element's ulp exactly (what the sampling replaces), and ``delta_stats`` whole (ΔW, norms,
the randomised SVD, the edge) for a bfloat16 rank-one change. Best of ``--repeat``; edges printed beside their times.
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def best(fn, repeat: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/rounding_edge_cost.txt")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from editaudit.scan.spectral import delta_stats, rounding_edge, ulp_rms

    g = torch.Generator().manual_seed(0)
    w = torch.randn(4096, 11008, generator=g) * 0.02
    w[7] *= 30
    base = w.to(torch.bfloat16)
    edit = torch.outer(torch.randn(4096, generator=g), torch.randn(11008, generator=g))
    suspect = (w + edit * (3e-3 * float(w.norm()) / float(edit.norm()))).to(torch.bfloat16)

    def exact() -> float:
        a = suspect.float().abs()
        _, exp = torch.frexp(a)
        v = torch.ldexp(torch.full_like(a, 1 / 12), 2 * (exp - 1 - 7)).masked_fill(a == 0, 0.0)
        return float(v.sum(1, dtype=torch.float64).max().sqrt() + v.sum(0, dtype=torch.float64).max().sqrt())

    m, n = suspect.shape
    rows = [
        ("uniform edge (ulp_rms, strided sample)", lambda: ulp_rms(suspect, "BF16") * (math.sqrt(m) + math.sqrt(n))),
        ("row/column edge (rounding_edge, sampled)", lambda: rounding_edge(suspect, "BF16")),
        ("row/column edge, every element exactly", exact),
        ("delta_stats whole (ΔW, SVD, edge)", lambda: delta_stats(base, suspect, "BF16", "BF16")[0].noise_edge),
    ]
    lines = ["# the rounding edge's cost per changed 7B-shaped matrix (4096 x 11008 bf16, one outlier row), one thread",
             "# command: python bench/rounding_edge_cost.py " + " ".join(sys.argv[1:]),
             f"# python {platform.python_version()}, torch {torch.__version__}; best of {args.repeat}", ""]
    for name, fn in rows:
        t, edge = best(fn, args.repeat)
        lines.append(f"{name:44s} {t:7.3f} s   edge {float(edge):.5f}")
    text = "\n".join(lines) + "\n"
    print(text)
    from editaudit.atomic import atomic_write_text

    atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
