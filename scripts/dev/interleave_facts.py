"""Write a held-apart set's unused facts interleaved by their true answer, so that any run of consecutive facts
spans many countries: a city → country set is in population order, and the plans take consecutive facts.

    python scripts/dev/interleave_facts.py bench/heldout/smollm2-135m-v9.jsonl --skip 30 \
        --out bench/heldout/smollm2-135m-v9b.jsonl

Round-robin over the true answers in the order they first appear; within one answer, the file's order. The
facts themselves are not changed. Deterministic: no randomness.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


def interleave(rows: list[dict]) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r["target_true"]), []).append(r)
    out: list[dict] = []
    queues = list(groups.values())
    while queues:
        out.extend(q.pop(0) for q in queues)
        queues = [q for q in queues if q]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("facts", type=Path)
    ap.add_argument("--skip", type=int, default=0, help="facts at the start already used")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.facts.read_text().splitlines() if line.strip()][args.skip:]
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        for r in interleave(rows):
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, args.out)
    print(f"{len(rows)} facts, {len({r['target_true'] for r in rows})} true answers -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
