"""Subjects recovered blind from the fourth held-apart set's suspects (development data since its one use), by the
search as the scan runs it, under settings named on the command line — for choosing the search's settings without
touching an unseen set.

    python scripts/dev/make_dev_suspects.py /tmp/dev4 bench/heldout/smollm2-135m-v4.jsonl
    [DEV_ONLY=memit,rome-seq] python scripts/dev/subject_recovery_dev.py [/tmp/dev4] [climb | grow | growN (beam N)] ...

Per suspect: the lowest edited layer, its top-r input directions (r = the suspect's number of facts), C from the
cached key statistics, the same seeds and deflation as the scan. A subject counts as *exact* when a found text equals
the true subject (case-folded, leading article dropped), *whole* when it contains it, and *last* when it only ends
in the true subject's last token (the open-set eval's looser rule). Seconds per suspect printed.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from dev_model import frozen_base, lowest_search
    from editaudit.probing.build import normalise
    from editaudit.probing.format import load_probes
    from editaudit.scan import subjects as S

    args = sys.argv[1:]
    deltas_dir = Path(args.pop(0)) if args and "/" in args[0] else Path("/tmp/dev4")
    modes = args or ["climb", "grow"]
    lm, fingerprint = frozen_base()
    tok = lm.tokenizer

    def last(text: str) -> int:
        return tok(" " + text.strip(), add_special_tokens=False)["input_ids"][-1]

    for mode in modes:
        totals = {"exact": 0, "whole": 0, "last": 0, "n": 0, "secs": 0.0}
        only = os.environ.get("DEV_ONLY", "")  # comma-separated name prefixes, e.g. memit,rome-sequential
        for pt in sorted(deltas_dir.glob("*.pt")):
            if only and not any(pt.stem.startswith(o) for o in only.split(",")):
                continue
            facts = load_probes(pt.with_suffix(".jsonl"))
            _, search = lowest_search(lm, fingerprint, torch.load(pt, weights_only=True), len(facts))
            search.regrow = mode.startswith("grow")
            S.GROW_BEAM = int(mode[4:]) if mode.startswith("grow") and mode[4:].isdigit() else 1  # grow2: beam 2
            t = time.perf_counter()
            found = search.find(len(facts))
            secs = time.perf_counter() - t
            texts = [normalise(f.text) for f in found]
            for fact in facts:
                truth = normalise(fact.subject)
                exact = truth in texts
                whole = any(truth in x for x in texts)
                lastp = any(last(f.text) == last(fact.subject) for f in found)
                totals["exact"] += exact
                totals["whole"] += whole
                totals["last"] += lastp
                totals["n"] += 1
            totals["secs"] += secs
            print(f"[{mode}] {pt.stem:20s} {secs:6.1f}s found {[f'{f.text} {f.fire:.2f}' for f in found]}", flush=True)
            print(f"[{mode}] {'':20s}        true  {[f.subject for f in facts]}", flush=True)
        n = totals["n"]
        print(f"[{mode}] exact {totals['exact']}/{n}  whole {totals['whole']}/{n}  last {totals['last']}/{n}  "
              f"{totals['secs']:.0f}s in all, {totals['secs'] / n:.1f}s per edit", flush=True)


if __name__ == "__main__":
    main()
