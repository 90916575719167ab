"""Objects read per relation, from the readings a ``reading_rule_trial.py`` run printed: each rule's readings of each
suspect scored by ``scripts/open_reading_eval.py``'s rules against the suspect's planted facts.

    python scripts/dev/per_relation_tally.py bench/results/library_v10_38.txt /tmp/v10b

The trial prints each reading's confidence, not its fire; ``score_suspect`` ranks readings by fire only to keep a
single edit's five best, and a trial reads one subject per single edit, so the tally is the trial's own.
"""
from __future__ import annotations

import argparse
import runpy
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts/dev"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log", type=Path, help="a reading_rule_trial.py output")
    ap.add_argument("deltas", type=Path, help="the suspects' folder (their .jsonl facts)")
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from dev_model import trial_readings
    from editaudit.models.registry import ensure_model
    from editaudit.probing.format import load_probes

    ev = runpy.run_path(str(ROOT / "scripts/open_reading_eval.py"))
    tok = AutoTokenizer.from_pretrained(str(ensure_model(args.model)))
    reads = trial_readings(args.log)
    for rule in dict.fromkeys(r for r, _ in reads):
        c: Counter = Counter()
        for (r, stem), rs in reads.items():
            if r != rule:
                continue
            facts = load_probes(args.deltas / f"{stem}.jsonl")
            rows, false, n = ev["score_suspect"](tok, facts, rs, len(facts) == 1)
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
