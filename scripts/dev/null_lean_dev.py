"""The editor named without the base, by the null-space lean (scan/gain.py: null_lean), on development suspects:
a table from base-free scan reports. Development: spent facts only.

    editaudit edit smollm2-135m --method alphaedit --facts FACTS.jsonl --out SUSPECT     (and memit, rome)
    editaudit scan SUSPECT --map-runs -f json > SUSPECT.json
    python scripts/dev/null_lean_dev.py EDITOR=SUSPECT.json[,EDITOR=SUSPECT.json...] [--out F]

EDITOR: the editor that made the suspect (rome, memit, alphaedit), to score the name against. A report may also be
a scan stored in a sessions database, ``EDITOR=sessions.db#ID`` (``scripts/erase_eval.py`` keeps its scans in one).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts" / "dev"))

from dev_model import emit  # noqa: E402
from editaudit.scan.method import NULL_LEAN_MIN, name_method  # noqa: E402


def stored(db: str, scan_id: str) -> dict:
    from editaudit.store import Store, views

    row = views.scan(Store(Path(db)), int(scan_id))
    if row is None or not row.get("report"):
        raise SystemExit(f"no finished scan {scan_id} in {db}")
    return json.loads(row["report"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    lines = [f"# editor named without the base by the null-space lean (bar {NULL_LEAN_MIN}); command: python "
             f"scripts/dev/null_lean_dev.py {' '.join(sys.argv[1:])}",
             f"{'editor':10s} {'finding layers':16s} {'flagged':10s} {'lean':>6s}  {'named':10s} {'without lean':12s}"
             f" {'s/scan':>7s}"]
    right = right_before = ae_right = ae_right_before = n = 0
    for item in args.reports.split(","):
        editor, _, path = item.partition("=")
        doc = json.loads(Path(path).read_text()) if "#" not in path else stored(*path.rsplit("#", 1))
        for f in doc["findings"]:
            if f["rule"] not in ("EA101", "EA102") or "null_lean" not in f:
                continue
            before = name_method(f["rule"], f["layers"], 1, n_layers=doc.get("n_layers"), no_base=True)["name"]
            named = f["method"]["name"]
            n += 1
            right += named == editor
            right_before += before == editor
            ae_right += (named == "alphaedit") == (editor == "alphaedit")
            ae_right_before += (before == "alphaedit") == (editor == "alphaedit")
            seconds = doc.get("summary", {}).get("total_s", 0)
            lines.append(f"{editor:10s} {str(f['layers']):16s} {','.join(f['null_lean']['by_layer']):10s} "
                         f"{f['null_lean']['median']:6.3f}  {named:10s} {before:12s} {seconds:7.0f}")
    lines.append(f"named right: {right} of {n} with the lean, {right_before} of {n} without")
    lines.append(f"AlphaEdit told right (AlphaEdit for its suspects, not AlphaEdit for the others): {ae_right} of {n} "
                 f"with the lean, {ae_right_before} of {n} without")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
