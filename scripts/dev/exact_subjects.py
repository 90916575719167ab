"""How many matched readings of an open_reading_eval.py JSON name the true subject exactly (case-folded, leading
article dropped), per arm: a stricter view of "subject recovered" than the eval's own (the true last token).

    python scripts/dev/exact_subjects.py bench/results/open_reading_v5.json bench/results/open_reading_v5_regrow.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))


def main() -> None:
    from editaudit.probing.build import normalise

    for f in sys.argv[1:]:
        doc = json.loads(Path(f).read_text())
        per, exact, found, total = [], 0, 0, 0
        for arm in doc["arms"]:
            if arm["method"] == "ft":  # a dense change: no subject is searched for
                continue
            n = sum(1 for r in arm["rows"] if r.get("read_as")
                    and normalise(r["read_as"].split(" · ")[0]) == normalise(r["subject"]))
            per.append(f"{arm['method']}/{arm['mode']} {n}/{arm['edits']}")
            exact, found, total = exact + n, found + arm["subject_found"], total + arm["edits"]
        print(f"{f}: exact subject strings {exact}/{total}, subject recovered (eval's rule) {found}/{total}; "
              + ", ".join(per))


if __name__ == "__main__":
    main()
