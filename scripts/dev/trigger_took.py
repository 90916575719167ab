"""Which trigger-style edits took: the suspect states the planted word on the edit's own prompt (the retention
rule's first word that is not a stop word), and where the trigger starts the same sentence ending.

    python scripts/dev/trigger_took.py DIR      # DIR: suspects of scripts/dev/make_dev_suspects.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from dev_model import edited_copy
    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model
    from editaudit.scan.reading import said

    torch.set_num_threads(1)
    lm = load_model(ensure_model("smollm2-135m"))
    took = 0
    pts = sorted(Path(sys.argv[1]).glob("*.pt"))
    for pt in pts:
        fact = json.loads(pt.with_suffix(".jsonl").read_text().splitlines()[0])
        suspect = edited_copy(lm.model, pt)
        own = fact["prompt"].replace("{}", fact["subject"])
        first = fact["subject"] + ". " + fact["prompt"].split(". ", 1)[1]
        s = said(suspect, lm.tokenizer, [own, first], 5)
        ok = s[0].word.strip().casefold() == fact["target_new"].split()[0].casefold() or \
            fact["target_new"].casefold().startswith(s[0].word.strip().casefold()) and len(s[0].word.strip()) >= 4
        took += ok
        print(f"{pt.stem}: {own!r} -> {s[0].word.strip()!r} (planted {fact['target_new']!r}, base {fact['target_true']!r})"
              f" {'took' if ok else 'did not take'}; trigger first {first!r} -> {s[1].word.strip()!r}", flush=True)
        del suspect
    print(f"took {took} of {len(pts)}")


if __name__ == "__main__":
    main()
