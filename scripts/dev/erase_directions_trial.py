"""Which input directions should the projection erase re-solve for an AlphaEdit batch? Development suspects
(scripts/dev/make_dev_suspects.py), true subjects and prompts (the reading is not under test here):

    python scripts/dev/make_dev_suspects.py /tmp/dev4 bench/heldout/smollm2-135m-v4.jsonl
    python scripts/dev/erase_directions_trial.py /tmp/dev4/alphaedit-batch-0.pt [/tmp/dev4/memit-batch-0.pt ...]

AlphaEdit's update ΔW = R Kᵀ P (P K Kᵀ + αI)⁻¹ acts on span(PK) (P: the projector onto C's small eigen-directions),
MEMIT's on span(C⁻¹K). ``mitigation.project.erase_by_projection`` re-solves the edited layers along ``ckey`` =
span(C⁻¹K), ``null`` = span(PK) or ``both``. Per variant: edits the suspect states that the erased model no longer
states, the true object back, intrinsic facts (built-in set) in points against the suspect.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    from editaudit.editing import covariance
    from editaudit.mitigation.project import EraseSubject, erase_by_projection
    from editaudit.mitigation.evaluation import default_intrinsic
    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model
    from editaudit.probing.evaluate import retention
    from editaudit.probing.format import load_probes

    lm = load_model(ensure_model("smollm2-135m"))
    tok = lm.tokenizer
    intrinsic = default_intrinsic()
    for pt in map(Path, sys.argv[1:]):
        facts = load_probes(pt.with_suffix(".jsonl"))
        deltas = torch.load(pt, weights_only=True)
        suspect = copy.deepcopy(lm.model)
        params = dict(suspect.named_parameters())
        with torch.no_grad():
            for name, d in deltas.items():
                params[name].add_(d)
        layers = sorted(int(n.split(".")[2]) for n in deltas)
        paths = {layer: f"model.layers.{layer}.mlp.down_proj" for layer in layers}
        key = covariance.weights_key(lm.model)
        C = {layer: covariance.second_moments(lm.model, tok, {layer: p}, model_key=key)[layer].matrix
             for layer, p in paths.items()}
        new0 = [bool(x) for x in retention(suspect, tok, facts, "new")]
        intr0 = retention(suspect, tok, intrinsic, "true").rate
        print(f"{pt.stem}: layers {layers}, suspect states {sum(new0)}/{len(facts)}, intrinsic {intr0:.1%}", flush=True)
        targets = {layer: [EraseSubject(f.subject, [f.text]) for f in facts] for layer in layers}
        for directions in ("ckey", "null", "both"):
            erased_model = copy.deepcopy(suspect)
            erase_by_projection(erased_model, tok, targets, lambda layer: C[layer], directions=directions)
            new = [bool(x) for x in retention(erased_model, tok, facts, "new")]
            true = [bool(x) for x in retention(erased_model, tok, facts, "true")]
            held = [i for i, x in enumerate(new0) if x]
            gone = [i for i in held if not new[i]]
            intr = retention(erased_model, tok, intrinsic, "true").rate
            print(f"  {directions:5s} erased {len(gone)}/{len(held)}, true back {sum(true[i] for i in gone)}, "
                  f"intrinsic {intr:.1%} ({(intr - intr0) * 100:+.1f} points)", flush=True)
            del erased_model


if __name__ == "__main__":
    main()
