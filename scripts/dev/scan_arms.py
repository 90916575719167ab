"""Scan one suspect in several arms (ScanOptions fields switched on or off) and score each arm's readings against
what was planted, by the rules of ``scripts/open_reading_eval.py``. Development: spent facts only.

    editaudit edit smollm2-135m --method memit --facts FACTS.jsonl --out SUSPECT
    python scripts/dev/scan_arms.py SUSPECT FACTS.jsonl --arm name_seeds=false --arm name_seeds=true [--out FILE]
"""
import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))
from open_reading_eval import score_suspect  # noqa: E402

from editaudit.models.registry import ensure_model  # noqa: E402
from editaudit.models.loading import load_model  # noqa: E402
from editaudit.probing.format import load_probes  # noqa: E402
from editaudit.scan.service import ScanOptions, run_scan  # noqa: E402


def arm_options(spec: str) -> dict:
    """'name_seeds=true,wide_search=false' → {'name_seeds': True, 'wide_search': False}."""
    out = {}
    for item in filter(None, spec.split(",")):
        key, value = item.split("=", 1)
        out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suspect", type=Path)
    ap.add_argument("facts", type=Path)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--arm", action="append", required=True, help="FIELD=VALUE,... of ScanOptions")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    base = ensure_model(args.model)
    tok = load_model(base).tokenizer
    facts = load_probes(args.facts)
    lines = [f"# python scripts/dev/scan_arms.py {' '.join(sys.argv[1:])}",
             f"# {len(facts)} planted: " + "; ".join(f"{f.subject} → {f.target_new}" for f in facts),
             f"# torch {torch.__version__}, {torch.get_num_threads()} thread(s)"]
    for spec in args.arm:
        t = time.perf_counter()
        report = run_scan(args.suspect, base, ScanOptions(read="open", **arm_options(spec)), store=None)
        took = time.perf_counter() - t
        readings = [r for f in report.to_dict()["findings"] for r in f.get("readings", [])]
        rows, false, edits = score_suspect(tok, facts, readings, single=len(facts) == 1)
        found = sum(r["subject_found"] for r in rows)
        objects = sum(r["object_read"] for r in rows)
        lines.append(f"\n## arm {spec}: subjects {found}/{len(facts)}, objects {objects}/{len(facts)}, "
                     f"false edit readings {false}/{edits}, scan {took:.0f} s")
        lines += [f"  read: {r['found']!r} · {r['prompt']!r} · {r['after']!r} (was {r['before']!r}) "
                  f"fire {r['fire']:.2f} conf {r['confidence']:.2f} {r['status']}" for r in readings]
        lines += [f"  {r['subject']} → {r['target_new']}: subject {'found' if r['subject_found'] else 'MISSED'}, "
                  f"object {'read' if r['object_read'] else 'MISSED'}" + (f" as {r['read_as']}" if r['read_as'] else "")
                  for r in rows]
        print("\n".join(lines[-(len(readings) + len(rows) + 1):]), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
