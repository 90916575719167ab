"""Do a batch editor's per-layer updates share output directions that the low-half spectra show jointly?

MEMIT and AlphaEdit spread one residual per subject over a run of layers, so the run's updates write into the same
few residual-stream directions. Per layer M_l = W_l Q_l / med_l (the low-half restriction of the nobase screen, scaled
by its median singular value); per window w of consecutive layers G_w = Σ_{l∈w} M_l M_lᵀ. An update shared over the
window adds coherently to G_w's top eigenvalues, a trained matrix's own low-half components (different per layer) do
not. Printed per window: s_joint = sqrt(λ_1(G_w) / |w|), the largest single-layer s_1 in the window, and the ratio of
the joint to what the window's layers reach alone (sqrt(λ_1(G_w)) / sqrt(Σ s_1,l²)): 1/sqrt(|w|) when nothing aligns.

    python scripts/dev/joint_spectrum_trial.py MODEL[,MODEL...] [--width 5] [--out F]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

sys.path.insert(0, str(ROOT / "scripts" / "dev"))

from dev_model import with_key_stats  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models")
    ap.add_argument("--width", default="3,5")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    lines = ["# command: python scripts/dev/joint_spectrum_trial.py " + " ".join(sys.argv[1:])]
    for spec in a.models.split(","):
        model, _, modules, transposed, eigs = with_key_stats(spec)
        Ms, s1 = [], []
        for layer, path in modules.items():
            w = model.get_submodule(path).weight.detach().double()
            M = (w.T if transposed else w) @ eigs[layer].low
            S = torch.linalg.svdvals(M)
            Ms.append(M / S.median())
            s1.append(float(S[0] / S.median()))
        lines.append(f"== {spec}: per-layer s1 " + " ".join(f"{x:.1f}" for x in s1))
        for width in map(int, a.width.split(",")):
            row = []
            for lo in range(len(Ms) - width + 1):
                G = sum(M @ M.T for M in Ms[lo:lo + width])
                ev = torch.linalg.eigvalsh(G).flip(0)
                joint = float(ev[0] / width) ** 0.5
                alone = sum(x * x for x in s1[lo:lo + width]) ** 0.5
                row.append((lo, joint, max(s1[lo:lo + width]), float(ev[0]) ** 0.5 / alone,
                            float((ev[:10] / ev[ev.numel() // 2]).sqrt().mean())))
            best = max(row, key=lambda r: r[3])
            lines.append(f"  width {width}: coherence by window " + " ".join(f"L{r[0]}:{r[3]:.2f}" for r in row))
            lines.append(f"  width {width}: s_joint by window " + " ".join(f"L{r[0]}:{r[1]:.1f}" for r in row))
            lines.append(f"  width {width}: top-10 mean sqrt(ev/median) "
                         + " ".join(f"L{r[0]}:{r[4]:.1f}" for r in row))
            lines.append(f"  width {width}: most coherent window L{best[0]}-{best[0] + width - 1} {best[3]:.2f}")
        print("\n".join(lines[-(1 + 4 * len(a.width.split(','))):]), flush=True)
        del model
    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
