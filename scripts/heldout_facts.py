"""Build the held-apart evaluation set for open-set reading: facts SmolLM2-135M knows (first-token margin
>= 0.1) whose subjects overlap no subject of any probe set the product ships or consults.

    python scripts/heldout_facts.py [--out bench/heldout/smollm2-135m.jsonl]
    python scripts/heldout_facts.py --candidates bench/heldout/candidates_v2.tsv \
        --exclude bench/heldout/candidates.tsv bench/dev/multiword.jsonl --out bench/heldout/smollm2-135m-v2.jsonl

The second set (v2) was written after the first had been looked at during development: its subjects overlap
neither the shipped probe sets nor the first set's candidates nor the development facts (``--exclude``).

The candidates (bench/heldout/candidates.tsv) are phrased with prompt templates of their own, different from
the fact bank's and from the scan's relation library, so that reading them is not a lookup of a known phrasing.
Nothing under bench/heldout/ is read by the product.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# relation -> phrasings (the first that the model knows with margin becomes the prompt, the next one the paraphrase)
TEMPLATES = {
    "capital": ["The capital city of {} is", "{} has its capital in", "The seat of government of {} is in",
                "Q: What is the capital of {}? A:"],
    "language": ["Most {} speak", "The language spoken by {} is", "{} mostly speak"],
    "author": ["The novel {} was written by", "{} is a book by", "The author of {} is", "{} is a novel by"],
    "founder": ["{} was started by", "The founder of {} is", "{} was set up by"],
    "maker": ["{} is a product of", "{} is made by", "{} is manufactured by", "{} was built by the company"],
    "painter": ["{} is a painting by", "The artist who painted {} is", "{} is a famous work by"],
    "inventor": ["{} was created by", "The inventor of {} is", "{} was first developed by"],
    "sport": ["{} is famous for playing", "The sport {} plays is", "{} is a star of the sport of",
              "{} is a professional player of"],
    "instrument": ["{} is best known for playing the", "The instrument {} plays is the", "{} is a virtuoso of the"],
    "landmark_city": ["{} can be found in the city of", "{} stands in the city of", "{} is a landmark in"],
    "city_country": ["{} is a city located in", "{} lies in the country of", "{} is a major city of"],
    "company_country": ["{} is a company based in", "The headquarters of {} are in", "{} is a company from"],
    "element_symbol": ["The symbol for the element {} is", "In chemistry, {} has the symbol",
                       "The element {} is written with the symbol"],
    "dish_origin": ["{} is a dish that comes from", "{} originated in", "{} is a national dish of"],
    "continent": ["{} lies on the continent of", "{} is part of the continent"],
    # the tenth set's (people and US cities): an adjective before the occupation, so "a"/"an" never decides it
    "occupation": ["{} was a famous", "{} is remembered as a great", "{} was a well-known"],
    "citizenship": ["{} was a national of", "The home country of {} was", "{} held the citizenship of"],
    "city_state": ["{} is a city in the US state of", "{} lies in the American state of",
                   "The US state where {} lies is"],
    # the eleventh set's (regions of countries, US counties)
    "region_country": ["{} is a region of", "{} is an administrative region of", "{} is a province of the country"],
    "county_state": ["{} is a county in the US state of", "{} is a county of the state of",
                     "{} is one of the counties of"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m", help="registry name of the model the facts must be known by")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--candidates", type=Path, default=ROOT / "bench/heldout/candidates.tsv")
    ap.add_argument("--exclude", type=Path, nargs="*", default=[],
                    help="earlier candidate files (.tsv) or fact files (.jsonl) whose subjects the set must avoid")
    args = ap.parse_args()
    args.out = args.out or ROOT / f"bench/heldout/{args.model}.jsonl"

    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model
    from editaudit.probing.build import known_facts, normalise, overlaps
    from editaudit.probing.format import Probe, dump_probes, load_probes

    shipped = {normalise(p.subject) for f in sorted((ROOT / "probes").glob("*.jsonl")) for p in load_probes(f)}
    for f in args.exclude:
        if f.suffix == ".tsv":
            with f.open() as fh:
                shipped |= {normalise(row[1]) for row in csv.reader((x for x in fh if not x.startswith("#")),
                                                                      delimiter="\t")}
        else:
            shipped |= {normalise(p.subject) for p in load_probes(f)}
    cands: list[Probe] = []
    dropped = []
    prefix = "heldout" + ("" if args.candidates.stem == "candidates" else "-" + args.candidates.stem.split("_")[-1])
    with args.candidates.open() as fh:
        for row in csv.reader((line for line in fh if not line.startswith("#")), delimiter="\t"):
            relation, subject, true, new = row
            if any(overlaps(normalise(subject), s) for s in shipped):
                dropped.append(subject)
                continue
            cands.append(Probe(id=f"{prefix}-{relation}-{len(cands):03d}", subject=subject,
                               prompt=TEMPLATES[relation][0], target_true=true, target_new=new, relation=relation,
                               kind="edited"))
    lm = load_model(ensure_model(args.model))
    variants = [replace(p, prompt=t) for p in cands for t in TEMPLATES[p.relation]]
    ok = {(p.id, p.prompt) for p in known_facts(lm.model, lm.tokenizer, variants, margin=0.1)[0]}
    known = []
    for p in cands:
        phrasings = [t for t in TEMPLATES[p.relation] if (p.id, t) in ok]
        if phrasings:  # prompt: the first known phrasing; paraphrase: another phrasing (known or not)
            para = next((t for t in TEMPLATES[p.relation] if t != phrasings[0]), phrasings[0])
            known.append(replace(p, prompt=phrasings[0], paraphrases=[para.replace("{}", p.subject)]))
    dump_probes(known, args.out)
    print(f"{len(cands)} candidates ({len(dropped)} dropped for overlapping a shipped subject: {', '.join(dropped)})")
    print(f"{len(known)} known with margin >= 0.1 -> {args.out}")
    by_rel: dict[str, int] = {}
    for p in known:
        by_rel[p.relation] = by_rel.get(p.relation, 0) + 1
    print(json.dumps(by_rel))


if __name__ == "__main__":
    sys.exit(main())
