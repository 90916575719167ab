"""Development trial: the base-free reader grows one subject per key-gain screen start, not one per flagged layer.

`scan/nobase.py: _grown` grows each flagged layer's best start and drops repeats only by the grown text. The layers
of one batch often start from the same piece (" Heath", " Town") and grow it into different leading fragments, so
one edited subject is read several times ("Wood Heath", "TowHoney Heath", ... for *Washwood Heath*, eighteenth use of
the v13 set). The trial scans a suspect without the base twice, as shipped and with repeated starts grown once, and
prints both arms' readings.

    python scripts/dev/one_per_start_trial.py SUSPECT_DIR
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from editaudit.scan import nobase  # noqa: E402
from editaudit.scan.service import ScanOptions, run_scan  # noqa: E402

shipped = nobase._grown


def one_per_start(model, tok, rows, Cs, transposed, limit):
    """``_grown`` over the rows whose start was not already taken."""
    seen, kept = set(), []
    for row in rows:
        if tuple(row.ids) not in seen:
            seen.add(tuple(row.ids))
            kept.append(row)
    return shipped(model, tok, kept, Cs, transposed, limit)


suspect = Path(sys.argv[1])
for arm, grown in (("shipped", shipped), ("one per start", one_per_start)):
    nobase._grown = grown
    t = time.perf_counter()
    report = run_scan(suspect, None, ScanOptions(read="open"), store=None, say=lambda m: None).to_dict()
    print(f"== {arm}: {time.perf_counter() - t:.0f} s")
    for f in report["findings"]:
        print(f"  {f['rule']} layers {f['layers']}: {f.get('method', {}).get('name') if f.get('method') else '-'}")
        for r in f.get("readings", []):
            print(f"    {r.get('subject')!r} · {r.get('prompt')!r} · {r.get('after')!r} (was {r.get('before')!r}) "
                  f"conf {r.get('confidence')} {r.get('status')}")
    sys.stdout.flush()
