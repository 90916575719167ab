"""Development trial of the reading's object choice, on the development suspects (first held-apart set) with the
true subjects: both models' top-50 first tokens on every library prompt are dumped once, then object-choice rules
are replayed on the dump without a model.

    python scripts/dev/make_dev_suspects.py            # deltas in /tmp/editaudit-dev/deltas
    python scripts/dev/reading_object_trial.py [--deltas DIR] [--dump /tmp/editaudit-dev/reading-dump.json]

The third set as development data: make_dev_suspects.py /tmp/dev3 bench/heldout/smollm2-135m-v3.jsonl, drop its
collapsed rome-sequential-0.pt, then --deltas /tmp/dev3 --dump /tmp/dev3/dump.json.

Rules: `current` (the first answer stated on two prompts or more, then p_base × rise) and `push` (the answer whose
probability rose most in total over all prompts, then its prompt by p_base × rise), each read as an edit when the
object is stated on two prompts (`stated`) or gained ≥ 0.1 of probability on two prompts (`rose`), confidence ≥ 0.35
at a fire of 0.85 as in scan/reading.py.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))


def dump(deltas: Path, out: Path) -> None:
    import torch

    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model
    from editaudit.probing.evaluate import predict
    from editaudit.probing.format import load_probes
    from editaudit.scan.relations import prompts_for

    lm = load_model(ensure_model("smollm2-135m"))
    rows = []
    for pt in sorted(deltas.glob("*.pt")):
        suspect = copy.deepcopy(lm.model)
        params = dict(suspect.named_parameters())
        with torch.no_grad():
            for name, d in torch.load(pt, weights_only=True).items():
                params[name].add_(d)
        for f in load_probes(pt.with_suffix(".jsonl")):
            asked = prompts_for(f.subject)
            texts = [t for _, t in asked]
            b = predict(lm.model, lm.tokenizer, texts, top_k=50, max_new_tokens=1)
            s = predict(suspect, lm.tokenizer, texts, top_k=50, max_new_tokens=1)
            rows.append({"suspect": pt.stem, "subject": f.subject, "new": f.target_new,
                         "prompts": [{"b": x.top, "s": y.top} for x, y in zip(b, s)]})
    out.write_text(json.dumps(rows))


def replay(rows: list[dict], top_k: int = 20, fire: float = 0.85) -> None:
    from editaudit.probing.metrics import is_skippable
    from editaudit.scan.reading import EDIT_MIN

    def right(token: str, new: str) -> bool:
        t, n = token.strip().casefold(), new.strip().casefold()
        return bool(t) and (n.startswith(t) or t.startswith(n)) and len(t) >= min(2, len(n))

    tally = {f"{o} {r}": [0, 0] for o in ("current", "push") for r in ("stated", "rose")}  # [right, wrong] edits
    for f in rows:
        P = []
        for p in f["prompts"]:
            b, s = dict(map(tuple, p["b"][:top_k])), dict(map(tuple, p["s"][:top_k]))
            (tb, pb), (ta, pa) = p["b"][0], p["s"][0]
            copies = bool(tb.strip()) and tb.strip().casefold() in f["subject"].casefold()
            moved = ta != tb and not is_skippable(ta) and not copies
            P.append({"b": b, "s": s, "ta": ta, "tb": tb, "score": pb * (pa - b.get(ta, 0.0)) if moved else -1e9,
                      "rise": pa - b.get(ta, 0.0)})
        says = [p["ta"] if p["ta"] != p["tb"] else None for p in P]
        picks = {"current": max(range(len(P)), key=lambda j: (says.count(P[j]["ta"]) >= 2, P[j]["score"]))}
        cands = {p["ta"] for p in P if p["score"] > -1e9}
        if cands:
            push = max(cands, key=lambda t: (sum(max(0.0, p["s"].get(t, 0) - p["b"].get(t, 0)) for p in P), t))
            picks["push"] = max((j for j in range(len(P)) if P[j]["ta"] == push), key=lambda j: P[j]["score"])
        else:
            picks["push"] = picks["current"]
        for pick, i in picks.items():
            t = P[i]["ta"]
            for rule, n in (("stated", says.count(t)),
                            ("rose", sum(p["s"].get(t, 0) - p["b"].get(t, 0) >= 0.1 for p in P))):
                conf = fire * (0.4 + 0.6 * max(0.0, min(1.0, P[i]["rise"]))) * (0.5 + 0.5 * min(1.0, n / 3))
                if P[i]["score"] > -1e9 and n >= 2 and conf >= EDIT_MIN:
                    tally[f"{pick} {rule}"][0 if right(t, f["new"]) else 1] += 1
    for rule, (ok, wrong) in tally.items():
        print(f"{rule:14s} of {len(rows)} edits: objects read as edits {ok}, wrong edit readings {wrong}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deltas", type=Path, default=Path("/tmp/editaudit-dev/deltas"))
    ap.add_argument("--dump", type=Path, default=Path("/tmp/editaudit-dev/reading-dump.json"))
    args = ap.parse_args()
    if not args.dump.exists():
        dump(args.deltas, args.dump)
    replay(json.loads(args.dump.read_text()))


if __name__ == "__main__":
    main()
