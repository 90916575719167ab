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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_model import print_findings  # noqa: E402
from editaudit.scan import nobase  # noqa: E402
from editaudit.scan.service import ScanOptions, run_scan  # noqa: E402

shipped = nobase._grown


def one_per_start(model, tok, rows, Cs, transposed, limit, *rest, **kw):
    """``_grown`` over the rows whose start was not already taken."""
    seen, kept = set(), []
    for row in rows:
        if tuple(row.ids) not in seen:
            seen.add(tuple(row.ids))
            kept.append(row)
    return shipped(model, tok, kept, Cs, transposed, limit, *rest, **kw)


suspect = Path(sys.argv[1])
for arm, grown in (("shipped", shipped), ("one per start", one_per_start)):
    nobase._grown = grown
    t = time.perf_counter()
    # drop_repeats off: the trial predates it, and with it on no repeat is grown in either arm
    report = run_scan(suspect, None, ScanOptions(read="open", drop_repeats=False, merge_repeats=False), store=None,
                      say=lambda m: None).to_dict()
    print_findings(report, f"{arm}: {time.perf_counter() - t:.0f} s")
