"""Finish a held-apart candidate set: drop subjects seen before, then draw each fact's counterfactual object.

A held-apart set only measures a reader change fairly if none of its subjects was in an earlier set or in a list
the product ships or consults (an edit keyed on 'Microsoft' also reaches 'Microsoft Excel'). So every candidate
whose normalised subject equals or is a whole-word part of (or contains) a subject of the earlier candidate files,
the development facts, the held-apart fact files, any probes/*.jsonl (the fact bank among them) or an earlier row
of this set is dropped and named. target_new is then drawn with a seeded RNG, in file order, from the other
target_true values of the same relation in the set.

    python scripts/dev/draw_counterfactuals.py /tmp/v5_three_columns.tsv bench/heldout/candidates_v5.tsv --seed 2029

Input: relation, subject, target_true (tab-separated, '#' lines ignored). Run with PYTHONPATH=src.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

from editaudit.probing.build import normalise, overlaps

ROOT = Path(__file__).resolve().parents[2]
#: every earlier candidate file (the one being written is left out in main)
EARLIER = sorted(ROOT.glob("bench/heldout/candidates*.tsv"))


def tsv_rows(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8") as fh:
        return [line.rstrip("\n").split("\t") for line in fh if line.strip() and not line.startswith("#")]


def seen_subjects(out: Path) -> set[str]:
    seen = {normalise(row[1]) for f in EARLIER if f.resolve() != out.resolve() for row in tsv_rows(f)}
    jsonl = {*ROOT.glob("bench/dev/*.jsonl"), *ROOT.glob("bench/heldout/*.jsonl"),
             *(p for p in ROOT.rglob("probes/*.jsonl") if not {".venv", ".git"} & set(p.parts))}
    for f in sorted(jsonl):
        for line in f.read_text(encoding="utf-8").splitlines():
            try:  # a test fixture holds a deliberately broken line
                seen.add(normalise(json.loads(line)["subject"]))
            except (ValueError, KeyError, TypeError):
                continue
    return seen - {""}


def first_word(obj: str) -> str:
    words = normalise(obj).split()
    return words[0] if words else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("candidates", type=Path, help="three columns: relation, subject, target_true")
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=2029)
    ap.add_argument("--distinct-first-word", action="store_true",
                    help="draw only objects whose first word (past an article) differs from the true object's: the "
                         "retention rule compares first words, so 'New York' → 'New Jersey' could never be told apart")
    ap.add_argument("--label", default="fifth held-apart set (v5)", help="what the file's header calls the set")
    args = ap.parse_args()

    seen = sorted(seen_subjects(args.out))
    kept: list[tuple[str, str, str]] = []
    dropped: list[str] = []
    for relation, subject, true in tsv_rows(args.candidates):
        s = normalise(subject)
        clash = next((o for o in seen if overlaps(s, o)), None) or next(
            (k[1] for k in kept if overlaps(s, normalise(k[1]))), None)
        if clash is not None:
            dropped.append(f"{subject} ({clash})")
        else:
            kept.append((relation, subject, true))
    rng = random.Random(args.seed)
    lines = ["# relation\tsubject\ttarget_true\ttarget_new",
             f"# {args.label}: written before any reader change it evaluates; target_new drawn at random "
             f"(seed {args.seed}) from the same relation's other objects by scripts/dev/draw_counterfactuals.py"]
    for relation, subject, true in list(kept):
        others = sorted({t for r, _, t in kept if r == relation} - {true})
        if args.distinct_first_word:
            others = [t for t in others if first_word(t) != first_word(true)]
        if not others:  # every kept row of the relation has this object: nothing to draw a counterfactual from
            dropped.append(f"{subject} (no other {relation} object)")
            kept.remove((relation, subject, true))
            continue
        lines.append(f"{relation}\t{subject}\t{true}\t{rng.choice(others)}")
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(kept)} rows -> {args.out}; {len(dropped)} dropped for an overlapping subject: {'; '.join(dropped)}")
    print(json.dumps(dict(sorted(Counter(r for r, _, _ in kept).items()))))


if __name__ == "__main__":
    main()
