"""The editor named without the base, by the null-space lean (scan/gain.py: null_lean), on development suspects:
a table from base-free scan reports. Development: spent facts only.

    editaudit edit smollm2-135m --method alphaedit --facts FACTS.jsonl --out SUSPECT     (and memit, rome)
    editaudit scan SUSPECT --map-runs -f json > SUSPECT.json
    python scripts/dev/null_lean_dev.py EDITOR=SUSPECT.json[,EDITOR=SUSPECT.json...] [--out F]

EDITOR: the editor that made the suspect (rome, memit, alphaedit), to score the name against.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from editaudit.scan.method import NULL_LEAN_MIN, name_method  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    lines = [f"# editor named without the base by the null-space lean (bar {NULL_LEAN_MIN}); command: python "
             f"scripts/dev/null_lean_dev.py {' '.join(sys.argv[1:])}",
             f"{'editor':10s} {'finding layers':16s} {'flagged':10s} {'lean':>6s}  {'named':10s} {'without lean':12s}"
             f" {'s/scan':>7s}"]
    right = right_before = n = 0
    for item in args.reports.split(","):
        editor, _, path = item.partition("=")
        doc = json.loads(Path(path).read_text())
        for f in doc["findings"]:
            if f["rule"] not in ("EA101", "EA102") or "null_lean" not in f:
                continue
            before = name_method(f["rule"], f["layers"], 1, n_layers=doc.get("n_layers"), no_base=True)["name"]
            named = f["method"]["name"]
            n += 1
            right += named == editor
            right_before += before == editor
            lines.append(f"{editor:10s} {str(f['layers']):16s} {','.join(f['null_lean']['by_layer']):10s} "
                         f"{f['null_lean']['median']:6.3f}  {named:10s} {before:12s} {doc['summary']['total_s']:7.0f}")
    lines.append(f"named right: {right} of {n} with the lean, {right_before} of {n} without")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
