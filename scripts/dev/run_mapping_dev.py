"""Which layers does a batch's edit span? A development check for scans without the base.

The key-gain screen flags a MEMIT or AlphaEdit batch at one or two of its layers. The batch writes one residual per
subject, spread over its run of layers, and every MLP output matrix writes into the residual stream, so for the
subject the screen grows, v_l = W_l û_l (û_l = C_l⁻¹k_l / ‖C_l⁻¹k_l‖, k_l its key at layer l) points the same way at
every layer of the run. Per flagged layer l*: cos(v_l, v_l*) at the layers around it, for the screen's start and the
grown subject, and the run each bar τ gives (layers walked outward from l* while the cosine stays ≥ τ).

    python scripts/dev/run_mapping_dev.py DIR[,DIR...] [--threads 2] [--out F]

DIR: a model folder (scripts/erase_eval.py --work keeps the suspects' ``erase_eval_facts.json`` beside them).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts" / "dev"))

from dev_model import with_key_stats  # noqa: E402

from editaudit.scan import gain, runs  # noqa: E402

BARS = (0.1, 0.15, 0.2, 0.25, 0.3)


def profile(model, tok, modules, eigs, ids, layer):
    """cos(v_l, v_layer) at every layer for the text ``ids`` (runs.py, as the scan maps a run)."""
    return runs.cosines(runs.directions(model, tok, modules, eigs, ids), layer)


def walk(cos, layer, bar):
    got = runs.walk(cos, layer, bar)
    return got[0], got[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suspects")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--every-layer", action="store_true", help="every layer's best start, not only the flagged ones")
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    lines = ["# command: python scripts/dev/run_mapping_dev.py " + " ".join(sys.argv[1:])]
    for spec in a.suspects.split(","):
        t0 = time.perf_counter()
        meta = Path(spec) / "erase_eval_facts.json"
        edited = json.loads(meta.read_text())["edited"] if meta.exists() else []
        model, tok, modules, _, eigs = with_key_stats(spec)
        rows = gain.screen(model, tok, modules, eigs)
        hit = gain.flagged(rows)
        lines.append(f"\n## {spec}: edited layers {edited}; flagged {[(g.layer, round(g.ratio, 2)) for g in hit]} "
                     f"({time.perf_counter() - t0:.0f} s)")
        if a.every_layer:  # every layer's best start, flagged or not: the run it maps at each bar
            for g in rows:
                cos = profile(model, tok, modules, eigs, list(g.ids), g.layer)
                got = {b: walk(cos, g.layer, b) for b in BARS}
                near = range(max(0, g.layer - 3), min(len(modules), g.layer + 4))
                lines.append(f"L{g.layer} ratio {g.ratio:.2f} {g.text!r}: "
                             + " ".join(f"L{x}:{cos[x]:+.2f}" for x in near)
                             + " | runs " + " ".join(f"τ{b}:{hi - lo + 1}" for b, (lo, hi) in got.items()))
            print("\n".join(lines), flush=True)
            lines_out = lines
            continue
        for g in hit:
            grown = gain.grow_subject(model, tok, g, eigs[g.layer])
            for tag, ids, text in (("start", list(g.ids), g.text), ("grown", list(grown.ids), grown.text)):
                cos = profile(model, tok, modules, eigs, ids, g.layer)
                near = range(max(0, g.layer - 6), min(len(modules), g.layer + 7))
                lines.append(f"L{g.layer} {tag} {text!r}: " + " ".join(f"L{x}:{cos[x]:+.2f}" for x in near))
                lines.append("   runs: " + "  ".join(f"τ{b}: {walk(cos, g.layer, b)}" for b in BARS))
        print("\n".join(lines), flush=True)
        lines_out = lines
    if a.out:
        Path(a.out).write_text("\n".join(lines_out) + "\n")


if __name__ == "__main__":
    main()
