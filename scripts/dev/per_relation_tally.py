"""Objects read per relation, from the readings a ``reading_rule_trial.py`` run printed: each rule's readings of each
suspect scored by ``scripts/open_reading_eval.py``'s rules against the suspect's planted facts.

    python scripts/dev/per_relation_tally.py bench/results/library_v10_38.txt /tmp/v10b

The trial prints each reading's confidence, not its fire; ``score_suspect`` ranks readings by fire only to keep a
single edit's five best, and a trial reads one subject per single edit, so the tally is the trial's own.
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
    ap.add_argument("deltas", type=Path, help="the suspects' folder (their .jsonl facts)")
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from dev_model import scored_trial
    from editaudit.models.registry import ensure_model

    tok = AutoTokenizer.from_pretrained(str(ensure_model(args.model)))
    for rule, suspects in scored_trial(args.log, args.deltas, tok).items():
        c: Counter = Counter()
        for _stem, facts, rows, false, n in suspects:
            for f, row in zip(facts, rows):
                c[f.relation, "facts"] += 1
                c[f.relation, "subjects"] += row["subject_found"]
                c[f.relation, "objects"] += row["object_read"]
            c["false"] += false
            c["edit readings"] += n
        rels = sorted({k[0] for k in c if isinstance(k, tuple)})
        print(f"[{rule}] " + "; ".join(f"{r}: objects {c[r, 'objects']}/{c[r, 'facts']}, subjects "
                                       f"{c[r, 'subjects']}/{c[r, 'facts']}" for r in rels)
              + f" | false {c['false']}/{c['edit readings']}")


if __name__ == "__main__":
    main()
