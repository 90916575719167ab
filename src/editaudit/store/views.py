"""Read-only views of a session that the app, the reports and the probe hints share.

Rows come back as plain dicts (JSON columns still as text: each caller decodes what it shows), so this
module needs nothing but the store: the app lists and opens sessions without torch.
"""

from __future__ import annotations

from pathlib import Path

from .db import read
from .sessions import Store


def _rows(store: Store, table: str, where: str, args: list, order_by: str | None = None,
          limit: int | None = None) -> list[dict]:
    return read(lambda: list(store.db[table].rows_where(where, args, order_by=order_by, limit=limit)))


def scans(store: Store, session_id: str) -> list[dict]:
    """A session's scans, oldest first."""
    return _rows(store, "scans", "session_id = ?", [session_id], order_by="id")


def scan(store: Store, scan_id: int) -> dict | None:
    rows = _rows(store, "scans", "id = ?", [scan_id])
    return rows[0] if rows else None


def findings(store: Store, scan_id: int) -> list[dict]:
    return _rows(store, "findings", "scan_id = ?", [scan_id], order_by="id")


def scans_of_pair(store: Store, base_path: str | Path, suspect_path: str | Path) -> list[dict]:
    """Every stored scan of this suspect against this base, newest first: by the checkpoints' recorded
    paths, else by the paths the scan sessions name."""
    def ids(path: str | Path) -> list[int]:
        return [r["id"] for r in _rows(store, "checkpoints", "path = ?", [str(Path(path).resolve())])]

    b_ids, s_ids = ids(base_path), ids(suspect_path)
    found: list[dict] = []
    if b_ids and s_ids:
        marks = ",".join("?" * len(b_ids)), ",".join("?" * len(s_ids))
        found = _rows(store, "scans", f"base_id in ({marks[0]}) and suspect_id in ({marks[1]})", b_ids + s_ids,
                      order_by="id desc")
    if not found:
        sessions = _rows(store, "sessions", "kind = 'scan' and base in (?, ?) and suspect in (?, ?)",
                         [str(base_path), str(Path(base_path).resolve()), str(suspect_path),
                          str(Path(suspect_path).resolve())])
        for sess in sessions:
            found += _rows(store, "scans", "session_id = ?", [sess["id"]], order_by="id desc")
    return found


def probe_runs(store: Store, session_id: str, done_only: bool = False) -> list[dict]:
    """A session's probe runs, oldest first."""
    where = "session_id = ?" + (" and status = 'done'" if done_only else "")
    return _rows(store, "probe_runs", where, [session_id], order_by="id")


def probe_results(store: Store, run_id: int) -> list[dict]:
    """One run's results in the order they were written."""
    return _rows(store, "probe_results", "run_id = ?", [run_id], order_by="rowid")


def edits(store: Store, session_id: str) -> list[dict]:
    return _rows(store, "edits", "session_id = ?", [session_id], order_by="id")


def finetune_runs(store: Store, session_id: str, done_only: bool = False, newest_first: bool = False) -> list[dict]:
    where = "session_id = ?" + (" and status = 'done'" if done_only else "")
    return _rows(store, "finetune_runs", where, [session_id], order_by="id desc" if newest_first else "id")


def metrics(store: Store, run_id: int) -> list[dict]:
    """A fine-tuning run's metrics by step."""
    return _rows(store, "metrics", "run_id = ?", [run_id], order_by="step")


def done_mitigations(store: Store, suspect_path: str) -> list[dict]:
    """Finished mitigation sessions of this suspect, newest first."""
    return _rows(store, "sessions", "kind = 'mitigate' and suspect = ? and status = 'done'", [suspect_path],
                 order_by="created desc")
