"""Study runs and their cells in SQLite: every statement the study feature needs lives here.

A study store is an ordinary editaudit database (``open_store``) with two more tables, created on
first use: ``studies`` (one row per study name: its configuration) and ``study_cells`` (one row per
cell, keyed by the cell's content hash, with its status, metrics and evaluation history as JSON).
Because cell ids are content hashes, stores written by independent workers merge by copying the
finished rows a store lacks (``merge``): no row can mean two different things.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from .db import open_store, read, write
from .sessions import now


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str, allow_nan=True)


class StudyStore:
    """The studies and cells of one database file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.db = open_store(self.path)
        write(self.db, self._ensure)

    def _ensure(self) -> None:
        if "studies" not in self.db.table_names():
            self.db["studies"].create({"name": str, "config": str, "path": str, "created": str, "updated": str},
                                      pk="name", if_not_exists=True)
        if "study_cells" not in self.db.table_names():
            self.db["study_cells"].create({
                "id": str, "study": str, "grid": str, "kind": str, "settings": str, "status": str,
                "started": str, "finished": str, "seconds": float, "metrics": str, "history": str,
                "error": str, "worker": str,
            }, pk="id", if_not_exists=True)
            self.db["study_cells"].create_index(["study", "status"], if_not_exists=True)

    # -- studies ---------------------------------------------------------------------------------

    def save_study(self, name: str, config: dict, path: str | None) -> None:
        def go() -> None:
            old = self.db["studies"].rows_where("name = ?", [name])
            created = next((r["created"] for r in old), now())
            self.db["studies"].upsert({"name": name, "config": _dumps(config), "path": path or "",
                                       "created": created, "updated": now()}, pk="name")
        write(self.db, go)

    def studies(self) -> list[dict]:
        return read(lambda: list(self.db["studies"].rows_where(order_by="updated desc")))

    # -- cells -----------------------------------------------------------------------------------

    def cell(self, cell_id: str) -> dict | None:
        rows = read(lambda: list(self.db["study_cells"].rows_where("id = ?", [cell_id])))
        return _decode(rows[0]) if rows else None

    def done_ids(self, study: str | None = None) -> set[str]:
        where, args = ("status = 'done'", []) if study is None else ("status = 'done' AND study = ?", [study])
        return read(lambda: {r["id"] for r in self.db["study_cells"].rows_where(where, args, select="id")})

    def start_cell(self, cell_id: str, study: str, grid: str, kind: str, settings: dict) -> None:
        """Mark a cell running (a re-run of a failed or interrupted cell overwrites its row)."""
        row = {"id": cell_id, "study": study, "grid": grid, "kind": kind, "settings": _dumps(settings),
               "status": "running", "started": now(), "finished": None, "seconds": None, "metrics": None,
               "history": None, "error": None, "worker": f"{socket.gethostname()}:{os.getpid()}"}
        write(self.db, lambda: self.db["study_cells"].upsert(row, pk="id"))

    def finish_cell(self, cell_id: str, metrics: dict, history: list, seconds: float) -> None:
        write(self.db, lambda: self.db["study_cells"].update(cell_id, {
            "status": "done", "finished": now(), "seconds": seconds, "metrics": _dumps(metrics),
            "history": _dumps(history), "error": None}))

    def fail_cell(self, cell_id: str, status: str, error: str) -> None:
        write(self.db, lambda: self.db["study_cells"].update(cell_id, {
            "status": status, "finished": now(), "error": error[:2000]}))

    def cells(self, study: str, status: str | None = None) -> list[dict]:
        where = "study = ?" + (" AND status = ?" if status else "")
        args = [study] + ([status] if status else [])
        return read(lambda: [_decode(r) for r in self.db["study_cells"].rows_where(where, args, order_by="started")])

    def merge(self, other: str | Path) -> int:
        """Copy in the finished cells (and study rows) of another store that this one lacks; returns how many."""
        src = StudyStore(other)
        mine = self.done_ids()
        rows = [r for r in read(lambda: list(src.db["study_cells"].rows_where("status = 'done'")))
                if r["id"] not in mine]
        studies = src.studies()

        def go() -> None:
            for s in studies:
                if not list(self.db["studies"].rows_where("name = ?", [s["name"]])):
                    self.db["studies"].insert(s, pk="name")
            for r in rows:
                self.db["study_cells"].upsert(r, pk="id")
        write(self.db, go)
        src.db.close()
        return len(rows)

    def close(self) -> None:
        self.db.close()


def _decode(row: dict) -> dict:
    out = dict(row)
    for key in ("settings", "metrics", "history"):
        if out.get(key):
            out[key] = json.loads(out[key])
    return out
