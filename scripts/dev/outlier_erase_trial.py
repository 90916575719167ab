"""Erase with neither the base nor a subject text: remove the edited matrix's outlier components in C's low-energy half.

    python scripts/dev/outlier_erase_trial.py DIR FACTS [--taus 8,5,3] [--suspects rome-sequential-0,memit-batch-0,...]

DIR holds development suspects from ``scripts/dev/make_dev_suspects.py DIR FACTS`` (weight deltas + their facts).
The no-base scan (``scan/nobase.py``) finds an edited MLP output matrix W by the outliers of σ(W Q), Q the
low-energy half of C's eigenvectors (C from the suspect's own keys): an edit writes along C⁻¹k*, which lives mostly
there, while a trained W has little action there. This trial removes those outliers,

    W' = W − (W D) Dᵀ,   D = [Q v_i for the components with σ_i / median σ ≥ τ]

and measures what the projection erase is measured on: the suspect's edits no longer stated, true object back,
intrinsic facts, neighbour facts (the FACTS file's facts 35–59 in round-robin order, edited by no suspect).
Layers: ``known`` (the layers the delta changed: a scan with the base, or a user, named them) and ``flagged`` (every
layer whose s_1 ≥ τ: nothing known). Development data only; nothing here is a held-apart figure.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("facts", type=Path)
    ap.add_argument("--taus", default="8,5,3")
    ap.add_argument("--suspects", default="rome-sequential-0,memit-batch-0,alphaedit-batch-0")
    ap.add_argument("--layers", default="known,flagged")
    ap.add_argument("--ranks", default="", help="also: the top N low-half components of each known layer, N in this list")
    args = ap.parse_args()
    torch.set_num_threads(2)

    from editaudit.editing.covariance import weights_key
    from editaudit.editing.layers import layout_for
    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model
    from editaudit.probing.evaluate import retention
    from editaudit.probing.format import load_probes
    from editaudit.probing.sets import load_set, round_robin
    from editaudit.scan.nobase import layer_spectra

    lm = load_model(ensure_model("smollm2-135m"))
    net, tok = lm.model, lm.tokenizer
    for p in net.parameters():
        p.requires_grad_(False)
    layout = layout_for(net)
    modules = {layer: layout.rewrite_name(layer) for layer in range(layout.n_layers)}
    neighbours = round_robin(load_probes(args.facts))[35:60]
    intrinsic = load_set("smollm2-135m-intrinsic")
    taus = [float(x) for x in args.taus.split(",")]
    print(f"# python scripts/dev/outlier_erase_trial.py {' '.join(sys.argv[1:])}")
    for name in [s for s in args.suspects.split(",") if s]:
        delta = torch.load(args.dir / f"{name}.pt", weights_only=True)
        facts = load_probes(args.dir / f"{name}.jsonl")
        orig = {k: net.get_parameter(k).detach().clone() for k in delta}
        for k, d in delta.items():
            net.get_parameter(k).add_(d)
        t0 = time.perf_counter()
        states = retention(net, tok, facts, target="new")
        held = [f for f, ok in zip(facts, states) if ok]
        intr0 = retention(net, tok, intrinsic).rate
        neigh_ok = [f for f, ok in zip(neighbours, retention(net, tok, neighbours)) if ok]
        known = sorted(int(k.split(".")[2]) for k in delta if k.endswith("down_proj.weight"))
        wanted = modules if "flagged" in args.layers else {layer: modules[layer] for layer in known}
        spectra, eigs = layer_spectra(net, tok, wanted, weights_key(net))
        print(f"{name}: edited layers {known}, suspect states {len(held)}/{len(facts)}, intrinsic {intr0:.1%}, "
              f"neighbours true {len(neigh_ok)}/{len(neighbours)}; s_1 per layer "
              + " ".join(f"{s.layer}:{float(s.ratios[0]):.1f}" for s in spectra if float(s.ratios[0]) >= 3)
              + f" [{time.perf_counter() - t0:.0f}s]")
        for which in args.layers.split(","):
            arms = [("tau", t) for t in taus] + ([("rank", int(x)) for x in args.ranks.split(",") if x]
                                                 if which == "known" else [])
            for kind, tau in arms:
                saved = {}
                removed = []
                for s in spectra:
                    if which == "known" and s.layer not in known:
                        continue
                    r = int((s.ratios >= tau).sum()) if kind == "tau" else int(tau)
                    if which == "flagged" and r == 0:
                        continue
                    if r == 0:
                        removed.append(f"{s.layer}:0")
                        continue
                    w = net.get_submodule(s.path).weight
                    saved[s.path] = w.detach().clone()
                    W = w.detach().double()
                    if r <= s.in_dirs.shape[1]:
                        D = s.in_dirs[:, :r].double()
                    else:
                        low = eigs[s.layer].low
                        _, _, Vh = torch.linalg.svd(W @ low, full_matrices=False)
                        D = low @ Vh[:r].T
                    w.copy_((W - (W @ D) @ D.T).to(w.dtype))
                    removed.append(f"{s.layer}:{r}")
                after = retention(net, tok, held, target="new")
                back = retention(net, tok, held)
                erased = sum(not ok for ok in after)
                true_back = sum((not ok) and tb for ok, tb in zip(after, back))
                intr = retention(net, tok, intrinsic).rate
                kept = retention(net, tok, neigh_ok).rate if neigh_ok else float("nan")
                print(f"  {which:<8} {kind} {tau:>4}: removed {' '.join(removed) or '-':<28} erased {erased}/{len(held)}, "
                      f"true back {true_back}, intrinsic {intr:.1%} ({(intr - intr0) * 100:+.1f} points), "
                      f"neighbours kept {kept:.0%}", flush=True)
                for path, w0 in saved.items():
                    net.get_submodule(path).weight.copy_(w0)
        for k, w0 in orig.items():
            net.get_parameter(k).copy_(w0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
