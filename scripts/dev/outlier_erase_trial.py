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

from erase_trial_bench import load_bench, outcome, suspect


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("facts", type=Path)
    ap.add_argument("--taus", default="8,5,3")
    ap.add_argument("--suspects", default="rome-sequential-0,memit-batch-0,alphaedit-batch-0")
    ap.add_argument("--layers", default="known,flagged")
    ap.add_argument("--ranks", default="", help="also: the top N low-half components of each known layer, N in this list")
    args = ap.parse_args()
    from editaudit.editing.covariance import weights_key
    from editaudit.mitigation.project import low_half_sweep
    from editaudit.scan.nobase import layer_spectra

    b = load_bench(args.facts)
    net, tok, layout = b.net, b.tok, b.layout
    modules = {layer: layout.rewrite_name(layer) for layer in range(layout.n_layers)}
    taus = [float(x) for x in args.taus.split(",")]
    print(f"# python scripts/dev/outlier_erase_trial.py {' '.join(sys.argv[1:])}")
    for name in [s for s in args.suspects.split(",") if s]:
        with suspect(b, args.dir, name) as sus:
            t0 = time.perf_counter()
            known = sus.layers
            wanted = modules if "flagged" in args.layers else {layer: modules[layer] for layer in known}
            spectra, eigs = layer_spectra(net, tok, wanted, weights_key(net))
            print(f"{name}: edited layers {known}, suspect states {len(sus.held)}/{sus.facts}, intrinsic {sus.intr0:.1%}, "
                  f"neighbours true {len(sus.neigh_ok)}/{len(b.neighbours)}; s_1 per layer "
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
                        w.add_(low_half_sweep(w.detach(), eigs[s.layer].C, r).to(w.dtype))
                        removed.append(f"{s.layer}:{r}")
                    erased, true_back, intr, kept = outcome(b, sus)
                    print(f"  {which:<8} {kind} {tau:>4}: removed {' '.join(removed) or '-':<28} "
                          f"erased {len(erased)}/{len(sus.held)}, true back {true_back}, intrinsic {intr:.1%} "
                          f"({(intr - sus.intr0) * 100:+.1f} points), neighbours kept {kept:.0%}", flush=True)
                    for path, w0 in saved.items():
                        net.get_submodule(path).weight.copy_(w0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
