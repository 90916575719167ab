"""How many power iterations the scan's randomised SVD needs: classification and cost against four iterations.

``scan.spectral.top_singular_values`` takes the top 48 singular values of every large changed matrix with
``torch.svd_lowrank``; its cost grows with the power iterations (each is two products with ΔW), and on a CPU
it is the largest part of a changed 7B matrix's float work. This compares iteration counts on:

* real edits: the deltas ``scripts/dev/make_dev_suspects.py`` saves (ROME, ROME in sequence, MEMIT, AlphaEdit),
  added to the base's own weights (``--suspects DIR``, base ``--model``);
* synthetic changes of two shapes: dense with power-law spectra, dense with a spike, rank 3, and pure noise;

each stored as float32 and as bfloat16 (both sides rounded, as a bf16 checkpoint stores them). Per case: the
kind, the components above the rounding floor, the spike count, the largest relative change in the top three
values, and the time. Then the time of one 7B-shaped (4096 × 11008) change on one thread, the scan's analyser's
thread count while reading runs.

Usage: python bench/spectral_niter.py [--suspects DIR] [--model smollm2-135m] [--iters 4,2,1]
       [--out bench/results/spectral_niter.txt]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from editaudit.atomic import atomic_write_text  # noqa: E402
from editaudit.scan import spectral  # noqa: E402


def synthetic(m: int, n: int, gen: torch.Generator) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, base, suspect) for dense, dense+spike, rank-3 and noise-only changes of an m×n matrix."""
    def dense(alpha: float, scale: float) -> torch.Tensor:
        r = min(m, n)
        a = torch.randn(m, r, generator=gen) / math.sqrt(m)
        b = torch.randn(r, n, generator=gen) / math.sqrt(n)
        return (a * torch.arange(1, r + 1).float() ** -alpha) @ b * scale

    base = torch.randn(m, n, generator=gen) * 0.02
    spike = torch.randn(m, 1, generator=gen) @ torch.randn(1, n, generator=gen) / math.sqrt(m * n)
    low = torch.randn(m, 3, generator=gen) @ torch.randn(3, n, generator=gen) * 1e-3
    cases = [(f"dense α={a} {m}x{n}", base, base + dense(a, 0.05)) for a in (0.3, 0.7, 1.2)]
    cases += [(f"dense+spike {m}x{n}", base, base + dense(0.5, 0.02) + 0.3 * spike),
              (f"rank-3 {m}x{n}", base, base + low),
              (f"noise-only {m}x{n}", base, base + torch.randn(m, n, generator=gen) * 1e-4)]
    return cases


def real(suspects: Path, model: str) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, base, base + ΔW) for the first two edited matrices of each saved suspect."""
    from safetensors.torch import load_file

    from editaudit.models.registry import ensure_model

    weights: dict[str, torch.Tensor] = {}
    for f in sorted(Path(ensure_model(model)).glob("*.safetensors")):
        weights.update(load_file(f))
    cases = []
    for pt in sorted(suspects.glob("*.pt")):
        for name, delta in list(torch.load(pt, weights_only=True).items())[:2]:
            base = weights[name].float()
            cases.append((f"{pt.stem} {name.split('.')[2]}", base, base + delta.float()))
    return cases


def stats(base: torch.Tensor, suspect: torch.Tensor, dtype: str, niter: int) -> tuple[spectral.DeltaStats, float]:
    spectral.NITER = niter
    t = time.perf_counter()
    st, _ = spectral.delta_stats(base, suspect, dtype, dtype, keep_vectors=16)
    return st, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suspects", type=Path, help="a make_dev_suspects.py folder of saved deltas (*.pt)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--iters", default="4,2,1", help="iteration counts; the first is the reference")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    iters = [int(x) for x in args.iters.split(",")]
    shipped = spectral.NITER
    gen = torch.Generator().manual_seed(1)
    cases = real(args.suspects, args.model) if args.suspects else []
    cases += synthetic(576, 1536, gen) + synthetic(2048, 5632, gen)
    lines = [f"# python bench/spectral_niter.py {' '.join(sys.argv[1:])}   (shipped: NITER = {shipped})",
             f"# {torch.get_num_threads()} thread(s); reference: {iters[0]} iterations; kind · components above "
             "the rounding floor · spikes, then the largest relative change in the top 3 values"]
    differ = 0
    for dtype in ("F32", "BF16"):
        for name, b, s in cases:
            if dtype == "BF16":
                b, s = b.bfloat16(), s.bfloat16()
            runs = [stats(b, s, dtype, k) for k in iters]
            ref = runs[0][0]
            cells = []
            for k, (st, sec) in zip(iters, runs):
                rel = max((abs(x - y) / max(x, 1e-30) for x, y in zip(ref.singular_values[:3], st.singular_values[:3])),
                          default=0.0)
                same = (st.kind, st.spikes) == (ref.kind, ref.spikes)
                differ += not same
                cells.append(f"{k}: {st.kind} {st.rank_above_noise} {st.spikes} {rel:.0e} {sec * 1e3:.0f}ms"
                             + ("" if same else " KIND/SPIKES DIFFER"))
            lines.append(f"{dtype:4s} {name:34s} | " + " | ".join(cells))
    lines.append(f"cases whose kind or spike count differs from the reference: {differ}")
    # the cost that matters: one changed 7B-shaped matrix on one thread (the analyser's while reading runs)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    b = (torch.randn(4096, 11008, generator=gen) * 0.02).bfloat16()
    s = (b.float() + torch.randn(4096, 1, generator=gen) @ torch.randn(1, 11008, generator=gen) * 1e-3).bfloat16()
    timing = []
    for k in iters:
        best = min(stats(b, s, "BF16", k)[1] for _ in range(2))
        timing.append(f"{k} iterations {best:.2f} s")
    torch.set_num_threads(before)
    spectral.NITER = shipped
    lines.append("one 4096x11008 bf16 rank-one change, 1 thread, delta_stats (best of 2): " + ", ".join(timing))
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
