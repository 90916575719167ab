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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("facts", type=Path)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--suspects", default="rome-sequential-0,memit-batch-0,alphaedit-batch-0")
    ap.add_argument("--arms", default="found,found+low,low")
    args = ap.parse_args()
    torch.set_num_threads(2)

    from editaudit.editing import covariance
    from editaudit.editing.covariance import weights_key
    from editaudit.editing.layers import layout_for
    from editaudit.mitigation.project import EraseSubject, erase_by_projection
    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model
    from editaudit.probing.evaluate import retention
    from editaudit.probing.format import load_probes
    from editaudit.probing.sets import load_set, round_robin
    from editaudit.scan.nobase import KeyEig

    lm = load_model(ensure_model("smollm2-135m"))
    net, tok = lm.model, lm.tokenizer
    for p in net.parameters():
        p.requires_grad_(False)
    layout = layout_for(net)
    neighbours = round_robin(load_probes(args.facts))[35:60]
    intrinsic = load_set("smollm2-135m-intrinsic")
    found_all = json.loads((args.dir / "found.json").read_text())
    print(f"# python scripts/dev/found_erase_trial.py {' '.join(sys.argv[1:])}")

    def cov(layer: int) -> torch.Tensor:
        name = layout.rewrite_name(layer)
        return covariance.second_moments(net, tok, {layer: name}, model_key=weights_key(net))[layer].matrix

    def low_removal(layers: list[int], eigs: dict) -> None:
        for layer in layers:
            w = net.get_submodule(layout.rewrite_name(layer)).weight
            W = w.detach().double()
            low = eigs[layer].low
            _, _, Vh = torch.linalg.svd(W @ low, full_matrices=False)
            D = low @ Vh[: args.rank].T
            w.copy_((W - (W @ D) @ D.T).to(w.dtype))

    for name in [s for s in args.suspects.split(",") if s]:
        delta = torch.load(args.dir / f"{name}.pt", weights_only=True)
        facts = load_probes(args.dir / f"{name}.jsonl")
        found = found_all.get(name) or {}
        texts = [s["text"].strip() for s in found.get("subjects", []) if s["text"].strip()]
        orig = {k: net.get_parameter(k).detach().clone() for k in delta}
        for k, d in delta.items():
            net.get_parameter(k).add_(d)
        held = [f for f, ok in zip(facts, retention(net, tok, facts, target="new")) if ok]
        intr0 = retention(net, tok, intrinsic).rate
        neigh_ok = [f for f, ok in zip(neighbours, retention(net, tok, neighbours)) if ok]
        layers = sorted(int(k.split(".")[2]) for k in delta if k.endswith("down_proj.weight"))
        eigs = {layer: KeyEig.of(cov(layer)) for layer in layers}  # the suspect's C, before any change
        print(f"{name}: layers {layers}, suspect states {len(held)}/{len(facts)}, intrinsic {intr0:.1%}, "
              f"neighbours true {len(neigh_ok)}/{len(neighbours)}; {len(texts)} recovered texts: {texts}")
        suspect_w = {layer: net.get_submodule(layout.rewrite_name(layer)).weight.detach().clone() for layer in layers}
        for arm in args.arms.split(","):
            if arm.startswith("found"):
                targets = {layer: [EraseSubject(t) for t in texts] for layer in layers}
                erase_by_projection(net, tok, targets, cov, layout=layout, answers=False)
            if arm.endswith("low"):
                low_removal(layers, eigs)
            after = retention(net, tok, held, target="new")
            back = retention(net, tok, held)
            erased = [f.subject for f, ok in zip(held, after) if not ok]
            true_back = sum((not ok) and tb for ok, tb in zip(after, back))
            intr = retention(net, tok, intrinsic).rate
            kept = retention(net, tok, neigh_ok).rate if neigh_ok else float("nan")
            print(f"  {arm:<10} erased {len(erased)}/{len(held)}, true back {true_back}, intrinsic {intr:.1%} "
                  f"({(intr - intr0) * 100:+.1f} points), neighbours kept {kept:.0%}; kept: "
                  f"{[f.subject for f in held if f.subject not in erased]}", flush=True)
            for layer, w0 in suspect_w.items():
                net.get_submodule(layout.rewrite_name(layer)).weight.copy_(w0)
        for k, w0 in orig.items():
            net.get_parameter(k).copy_(w0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
