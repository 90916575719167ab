"""Development trial: search AlphaEdit's subjects in the null space its update lives in, instead of the whitened
key space made for ROME's u = C⁻¹k*.

AlphaEdit solves ΔPᵀ = (P K Kᵀ + α I)⁻¹ P K Rᵀ (P: projector onto C's small eigen-directions), so
α ΔPᵀ = P K (Rᵀ − Kᵀ ΔPᵀ): ΔW's input directions span P K, the edit keys' projections, unwhitened. P is read off
ΔW itself: the fewest of C's lowest eigen-directions that hold all but 0.1 % of V's energy (a space is used only
when that is at most half of them; ROME's and MEMIT's V spread over ~95 %). Variants, by the key map z(k):

    null           z = Qᵀk over those directions Q, B = orth(Qᵀ V)            (cosine as it stands)
    null-whitened  z = Λ^-½ Qᵀk (Λ: their eigenvalues + ridge), B = orth(Λ^-½ Qᵀ V)

Either way an exact edit key fires 1. The scan is run as shipped otherwise, through scripts/open_reading_eval.py
with ``Whitened.build`` replaced for the run:

    python scripts/dev/alphaedit_space_trial.py VARIANT --facts bench/heldout/smollm2-135m-v4.jsonl \
        --plan alphaedit:batch:10 --out /tmp/x.txt
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from editaudit.scan import subjects  # noqa: E402

NULL_ENERGY = 1e-3


def null_space(path: str, C: torch.Tensor, in_dirs: torch.Tensor, whiten: bool, ridge: float = 1e-2):
    if not whiten:
        space = subjects.Whitened.null_space(path, C, in_dirs, NULL_ENERGY)
    else:
        found = subjects.null_directions(C, in_dirs, NULL_ENERGY)
        if found is None:
            return None
        low, lev = found
        low = low * (lev.clamp(min=0) + ridge * float(C.double().diagonal().mean())).rsqrt()  # mean eigenvalue = trace / d
        B, _ = torch.linalg.qr(low.T @ in_dirs.double())
        space = subjects.Whitened(path, low.float(), B.float())
    if space is not None:
        print(f"trial: {path} searched in a null space of {space.whiten.shape[1]} directions", file=sys.stderr)
    return space


def main() -> None:
    variant = sys.argv.pop(1) if len(sys.argv) > 1 else ""
    if variant not in ("null", "null-whitened"):
        raise SystemExit("VARIANT: null | null-whitened")
    shipped = subjects.Whitened.build

    def build(path, C, in_dirs, ridge=1e-2):
        space = null_space(path, C, in_dirs, variant == "null-whitened") if C is not None else None
        return space if space is not None else shipped(path, C, in_dirs, ridge)

    subjects.Whitened.build = staticmethod(build)
    sys.argv[0] = str(ROOT / "scripts/open_reading_eval.py")
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
