"""Where the open reading spends its time after the search: a development suspect's found subjects
(scripts/dev/reading_rule_trial.py's --subjects file) read as the scan reads them, with predict() timed by call site.

    python scripts/dev/profile_reading.py /tmp/v9w rome-sequential-0 /tmp/v9w/found-48.json [--threads 1]
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_model import edited_copy, frozen_base  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("deltas", type=Path)
    ap.add_argument("suspect")
    ap.add_argument("subjects", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from editaudit.scan import reading
    from editaudit.scan.subjects import Subject

    spent: dict[str, float] = collections.defaultdict(float)
    calls: dict[str, int] = collections.defaultdict(int)
    prompts: dict[str, int] = collections.defaultdict(int)
    real = reading.predict

    def timed(model, tok, texts, **kw):
        site = next(f"{f.name}:{f.lineno} new={kw.get('max_new_tokens')}" for f in reversed(traceback.extract_stack()[:-1])
                    if f.filename.endswith("reading.py"))
        t = time.perf_counter()
        try:
            return real(model, tok, texts, **kw)
        finally:
            spent[site] += time.perf_counter() - t
            calls[site] += 1
            prompts[site] += len(texts)

    reading.predict = timed
    lm, _ = frozen_base()
    suspect = edited_copy(lm.model, args.deltas / f"{args.suspect}.pt")
    found = json.loads(args.subjects.read_text())[args.suspect]["subjects"]
    subs = [Subject(s["text"], s["ids"], s["fire"], torch.empty(0)) for s in found]
    t = time.perf_counter()
    reads = reading.read_edits(lm.model, suspect, lm.tokenizer, subs, None, None)
    total = time.perf_counter() - t
    print(f"{args.suspect}: {len(subs)} subjects read in {total:.1f} s ({total / max(1, len(subs)):.1f} s each), "
          f"{args.threads} thread(s); {len(reading.prompts_for('X'))} prompts per form")
    for site in sorted(spent, key=lambda k: -spent[k]):
        print(f"  {site:34s} {spent[site]:7.1f} s  {calls[site]:5d} calls  {prompts[site]:6d} prompts")
    for r in reads:
        print("  ", r.subject, "·", r.after, r.status)


if __name__ == "__main__":
    main()
