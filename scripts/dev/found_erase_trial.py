"""Erase from every recovered subject text, not only the readings judged edits; and with the low-half outliers removed.

    python scripts/dev/found_erase_trial.py DIR FACTS [--rank 16] [--suspects rome-sequential-0,memit-batch-0,...]

DIR holds development suspects (``scripts/dev/make_dev_suspects.py DIR FACTS``) and ``found.json``, the subject
texts the scan's search recovered for each (``scripts/dev/reading_rule_trial.py`` writes it). The projection erase
(``mitigation/project.py``) only needs keys that fire the edit, not clean names nor a read object, so here it is
given every recovered text (subject alone, ROME's contexts, target ``mean``) at the suspect's edited layers. Arms:

- ``found``: the projection erase on all recovered texts;
- ``found+low``: then, in each edited layer, W's action on the top ``--rank`` directions of C's low-energy half
  removed (``scripts/dev/outlier_erase_trial.py``: text-free, saturates at 5/9 on the ROME suspect alone);
- ``low``: that removal alone.

Measured as in ``outlier_erase_trial.py``. Development data only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from erase_trial_bench import load_bench, outcome, suspect


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("facts", type=Path)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--suspects", default="rome-sequential-0,memit-batch-0,alphaedit-batch-0")
    ap.add_argument("--arms", default="found,found+low,low")
    args = ap.parse_args()
    from editaudit.editing import covariance
    from editaudit.editing.covariance import weights_key
    from editaudit.mitigation.project import EraseSubject, erase_by_projection, low_half_sweep

    b = load_bench(args.facts)
    net, tok, layout = b.net, b.tok, b.layout
    found_all = json.loads((args.dir / "found.json").read_text())
    print(f"# python scripts/dev/found_erase_trial.py {' '.join(sys.argv[1:])}")

    def cov(layer: int) -> torch.Tensor:
        name = layout.rewrite_name(layer)
        return covariance.second_moments(net, tok, {layer: name}, model_key=weights_key(net))[layer].matrix

    for name in [s for s in args.suspects.split(",") if s]:
        found = found_all.get(name) or {}
        texts = [s["text"].strip() for s in found.get("subjects", []) if s["text"].strip()]
        with suspect(b, args.dir, name) as sus:
            layers = sus.layers
            Cs = {layer: cov(layer) for layer in layers}  # the suspect's C, before any change
            print(f"{name}: layers {layers}, suspect states {len(sus.held)}/{sus.facts}, intrinsic {sus.intr0:.1%}, "
                  f"neighbours true {len(sus.neigh_ok)}/{len(b.neighbours)}; {len(texts)} recovered texts: {texts}")
            suspect_w = {layer: net.get_submodule(layout.rewrite_name(layer)).weight.detach().clone() for layer in layers}
            for arm in args.arms.split(","):
                if arm.startswith("found"):
                    targets = {layer: [EraseSubject(t) for t in texts] for layer in layers}
                    erase_by_projection(net, tok, targets, cov, layout=layout, answers=False)
                if arm.endswith("low"):
                    for layer in layers:
                        w = net.get_submodule(layout.rewrite_name(layer)).weight
                        w.add_(low_half_sweep(w.detach(), Cs[layer], args.rank).to(w.dtype))
                erased, true_back, intr, kept = outcome(b, sus)
                print(f"  {arm:<10} erased {len(erased)}/{len(sus.held)}, true back {true_back}, intrinsic {intr:.1%} "
                      f"({(intr - sus.intr0) * 100:+.1f} points), neighbours kept {kept:.0%}; kept: "
                      f"{[f.subject for f in sus.held if f.subject not in erased]}", flush=True)
                for layer, w0 in suspect_w.items():
                    net.get_submodule(layout.rewrite_name(layer)).weight.copy_(w0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
