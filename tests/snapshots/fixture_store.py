"""Load ``fixtures/store.json`` (made by ``make_fixture.py``) into a fresh session database.

Rows keep their fixed ids, paths and timestamps, so the app renders the same screens everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "store.json"
ORDER = ["sessions", "checkpoints", "scans", "findings", "tensor_stats", "probe_runs", "probe_results",
         "finetune_runs", "metrics"]
AUDIT_ID = "20260301-120000-a0b0c0"
CLEAN_ID = "20260301-120100-a1b1c1"
MITIGATE_ID = "20260301-120200-a2b2c2"


def load_fixture_store(db_path: Path, change: Callable[[dict], None] | None = None):
    """A ``Store`` at ``db_path`` holding the fixture sessions (the file must not exist yet); ``change`` may
    alter the rows ({table: [row]}) first."""
    from editaudit.store import Store

    doc = json.loads(FIXTURE.read_text())
    if change is not None:
        change(doc)
    store = Store(db_path)
    with store.db.atomic():
        for table in ORDER:
            rows = doc.get(table) or []
            if rows:
                store.db[table].insert_all(rows)
    return store
