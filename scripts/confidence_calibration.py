"""What a reading's confidence means: how often edit readings at each confidence named a planted object, over the
held-apart records the open-reading eval wrote.

    python scripts/confidence_calibration.py [--out bench/results/confidence_calibration.txt]

Records used (fixed before the first run): each held-apart set's own record, ``bench/results/open_reading_<set>.txt``
for the SmolLM2 sets v2–v10 (no variant arms: they read the same suspects again) and Gemma 3's v2–v4, all written
after the confidence took its present form (fire × rise × agreement, 941beca). Hypernetwork and base-free records
read through other paths and are left out.

A reading is right when its answer starts with the first content word of some object planted in the same arm (the
eval's "named" rule, ``scripts/open_reading_eval.py``: for the arms of single edits the arm's five objects, so a
little lenient). Readings below ``EDIT_MIN`` or stated on fewer than two prompts are "uncertain"; they are listed
too, since raising or lowering the bar moves readings between the two.
"""

from __future__ import annotations

import argparse
import ast
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

SMOL = ["v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9b", "v9b_366", "v9b_544", "v10"]
GEMMA = ["gemma3-270m_v2", "gemma3-270m_v3", "gemma3-270m_v4"]
BANDS = [(0.0, 0.35), (0.35, 0.5), (0.5, 0.65), (0.65, 0.8), (0.8, 1.01)]

_STR = r"('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"
READ = re.compile(rf"^\s*\[(\w+)/(\w+)\] read: {_STR} · {_STR} · {_STR} \(was {_STR}\) fire ([\d.]+) conf ([\d.]+) (\w+)")
FACT = re.compile(r"^\s*\[(\w+)/(\w+)\] (.+?) → (.+?): subject ")


def parse(path: Path) -> list[dict]:
    """Readings of one record, each with the objects planted in its arm."""
    readings, planted = [], {}
    for line in path.read_text().splitlines():
        if m := READ.match(line):
            arm = f"{m[1]}/{m[2]}"
            readings.append({"arm": arm, "subject": ast.literal_eval(m[3]), "after": ast.literal_eval(m[5]),
                             "fire": float(m[7]), "conf": float(m[8]), "status": m[9]})
        elif m := FACT.match(line):
            planted.setdefault(f"{m[1]}/{m[2]}", []).append(m[4])
    for r in readings:
        r["planted"] = planted.get(r["arm"], [])
    return readings


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))


def table(readings: list[dict]) -> list[str]:
    from open_reading_eval import starts

    lines = [f"{'confidence':<12s} {'status':<10s} {'readings':>8s} {'right':>6s} {'share':>6s}  95% interval"]
    for lo, hi in BANDS:
        for status in ("edit", "uncertain"):
            rs = [r for r in readings if lo <= r["conf"] < hi and r["status"] == status]
            if not rs:
                continue
            k = sum(any(starts(r["after"], t) for t in r["planted"]) for r in rs)
            a, b = wilson(k, len(rs))
            band = f"{lo:.2f}–{min(hi, 1.0):.2f}"
            lines.append(f"{band:<12s} {status:<10s} {len(rs):8d} {k:6d} {k / len(rs):6.0%}  {a:.0%}–{b:.0%}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    out = ["# confidence of open readings against what was planted (python scripts/confidence_calibration.py)", ""]
    for title, sets in (("SmolLM2-135M", SMOL), ("Gemma 3 270M", GEMMA)):
        readings, used = [], []
        for s in sets:
            f = ROOT / "bench" / "results" / f"open_reading_{s}.txt"
            got = parse(f)
            readings += got
            used.append(f"{s} ({len(got)})")
        out += [f"{title}: records {', '.join(used)}; {len(readings)} readings", *table(readings), ""]
        by_method: dict[str, list[dict]] = {}
        for r in readings:
            by_method.setdefault(r["arm"].split("/")[0], []).append(r)
        for method, rs in sorted(by_method.items()):
            out += [f"  {title}, {method} only ({len(rs)} readings)", *["  " + x for x in table(rs)], ""]
    text = "\n".join(out)
    print(text)
    if args.out:
        from editaudit.atomic import atomic_write_text

        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
