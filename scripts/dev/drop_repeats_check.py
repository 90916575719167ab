"""Development check: scan suspect folders without the base with ``ScanOptions.drop_repeats`` on, and print what the
reader said about repeated edits and the readings it made.

    python scripts/dev/drop_repeats_check.py SUSPECT_DIR [SUSPECT_DIR ...]
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from editaudit.scan.service import ScanOptions, run_scan  # noqa: E402

for arg in sys.argv[1:]:
    t = time.perf_counter()
    report = run_scan(Path(arg), None, ScanOptions(read="open", drop_repeats=True), store=None,
                      say=lambda m: print("  say:", m) if "again" in m or "key-gain" in m else None).to_dict()
    print(f"== {arg}: {time.perf_counter() - t:.0f} s")
    for f in report["findings"]:
        print(f"  {f['rule']} layers {f['layers']}: {(f.get('method') or {}).get('name')}")
        for r in f.get("readings", []):
            print(f"    {r.get('subject')!r} · {r.get('prompt')!r} · {r.get('after')!r} (was {r.get('before')!r}) "
                  f"conf {r.get('confidence')} {r.get('status')}")
    sys.stdout.flush()
