"""Objects read among the edits the suspect still states: a ``reading_rule_trial.py`` run's readings scored by
``scripts/open_reading_eval.py``'s rules, split by whether the finished suspect states each planted fact.

    python scripts/dev/stated_tally.py bench/results/info_v10h_v9z.txt /tmp/v10h [--section /tmp/v10h]

An edit "takes" when the editor reports success right after it; a later edit in the same layer may undo it, and a
reader that reports only what the suspect states (issue 9's rule) cannot read an edit the suspect no longer states.
So each record's objects are shown both ways: of every planted edit, and of the edits the suspect states (greedy
first word that is not a stop word = the planted object, on the fact's own prompt), the base plus the stored delta.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "scripts/dev")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log", type=Path, help="a reading_rule_trial.py output")
    ap.add_argument("deltas", type=Path, help="the suspects' folder (.pt deltas and .jsonl facts)")
    ap.add_argument("--section", default=None, help="read only the log's '## SECTION' part (a log of several folders)")
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    from dev_model import edited_copy, scored_trial
    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model
    from editaudit.probing.evaluate import retention

    lm = load_model(ensure_model(args.model))
    scored = scored_trial(args.log, args.deltas, lm.tokenizer, args.section)
    states = {}
    for stem, facts, *_ in next(iter(scored.values()), []):
        suspect = edited_copy(lm.model, args.deltas / f"{stem}.pt")
        states[stem] = [bool(x) for x in retention(suspect, lm.tokenizer, facts, "new")]
        del suspect
    for rule, suspects in scored.items():
        c: Counter = Counter()
        for stem, _facts, rows, _false, _n in suspects:
            kind = stem.rsplit("-", 1)[0]
            for row, says in zip(rows, states[stem]):
                c[kind, "all"] += 1
                c[kind, "objects"] += row["object_read"]
                c[kind, "stated"] += says
                c[kind, "stated objects"] += row["object_read"] and says
                c[kind, "unstated objects"] += row["object_read"] and not says
        kinds = sorted({k for k, _ in c})
        tot = {x: sum(c[k, x] for k in kinds) for x in ("all", "objects", "stated", "stated objects",
                                                        "unstated objects")}
        print(f"[{rule}] " + "; ".join(
            f"{k}: objects {c[k, 'objects']}/{c[k, 'all']}, of stated {c[k, 'stated objects']}/{c[k, 'stated']}"
            for k in kinds) + f" | all: objects {tot['objects']}/{tot['all']}, stated {tot['stated']}/{tot['all']}, "
            f"objects of stated {tot['stated objects']}/{tot['stated']} (read though not stated: "
            f"{tot['unstated objects']})")


if __name__ == "__main__":
    main()
