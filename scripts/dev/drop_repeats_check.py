"""Development check: scan suspect folders without the base with ``ScanOptions.drop_repeats`` on, and print what the
reader said about repeated edits and the readings it made.

    python scripts/dev/drop_repeats_check.py SUSPECT_DIR [SUSPECT_DIR ...]
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_model import print_findings  # noqa: E402
from editaudit.scan.service import ScanOptions, run_scan  # noqa: E402

for arg in sys.argv[1:]:
    t = time.perf_counter()
    report = run_scan(Path(arg), None, ScanOptions(read="open", drop_repeats=True), store=None,
                      say=lambda m: print("  say:", m) if "again" in m or "key-gain" in m else None).to_dict()
    print_findings(report, f"{arg}: {time.perf_counter() - t:.0f} s")
