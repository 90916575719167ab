"""A small API over the store so that services never write SQL by hand.

Rows that describe long work are inserted with status ``running`` and flipped to ``done`` in the
same transaction that writes their results, so a crash or Ctrl-C never leaves a half-written row
marked as done. ``Store.reap_stale`` marks runs whose process died as ``interrupted``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import sqlite_utils

from .db import open_store


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """Sessions and the rows that hang off them."""

    def __init__(self, path: str | Path | None = None, db: sqlite_utils.Database | None = None) -> None:
        self.db = db if db is not None else open_store(path)
        self.path = path

    # -- sessions -------------------------------------------------------------------------
    def new_session(self, kind: str, title: str = "", base: str | None = None, suspect: str | None = None) -> str:
        import sqlite3

        for _ in range(20):
            sid = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
            try:
                with self.db.atomic():
                    self.db["sessions"].insert(
                        {
                            "id": sid, "kind": kind, "title": title, "status": "running", "created": now(),
                            "updated": now(), "base": base, "suspect": suspect, "verdict": None,
                            "pid": os.getpid(), "summary": None,
                        }
                    )
                return sid
            except sqlite3.IntegrityError:
                continue  # id collision within the same second: draw again
        raise RuntimeError("could not allocate a session id")

    def finish_session(self, sid: str, status: str = "done", verdict: str | None = None, summary: Any = None) -> None:
        with self.db.atomic():
            self.db["sessions"].update(
                sid,
                {"status": status, "verdict": verdict, "updated": now(),
                 "summary": dumps(summary) if summary is not None else None},
            )

    def touch(self, sid: str, **fields: Any) -> None:
        with self.db.atomic():
            self.db["sessions"].update(sid, {"updated": now(), **fields})

    def sessions(self, limit: int = 50) -> list[dict]:
        self.reap_stale()
        return list(self.db["sessions"].rows_where(order_by="created desc, rowid desc", limit=limit))

    def session(self, sid: str) -> dict:
        from ..errors import BadInput

        rows = list(self.db["sessions"].rows_where("id = ? or id like ?", [sid, sid + "%"], limit=2))
        if not rows:
            raise BadInput(f"no session {sid!r} in {self.path or 'the store'}")
        if len(rows) > 1 and rows[0]["id"] != sid:
            raise BadInput(f"session prefix {sid!r} is ambiguous")
        return rows[0]

    def delete_session(self, sid: str) -> None:
        """Delete a session and everything that hangs off it, in one transaction."""
        with self.db.atomic():
            for scan in self.db["scans"].rows_where("session_id = ?", [sid]):
                self.db["findings"].delete_where("scan_id = ?", [scan["id"]])
                self.db["tensor_stats"].delete_where("scan_id = ?", [scan["id"]])
            self.db["scans"].delete_where("session_id = ?", [sid])
            for run in self.db["probe_runs"].rows_where("session_id = ?", [sid]):
                self.db["probe_results"].delete_where("run_id = ?", [run["id"]])
            self.db["probe_runs"].delete_where("session_id = ?", [sid])
            for run in self.db["finetune_runs"].rows_where("session_id = ?", [sid]):
                self.db["metrics"].delete_where("run_id = ?", [run["id"]])
            self.db["finetune_runs"].delete_where("session_id = ?", [sid])
            self.db["edits"].delete_where("session_id = ?", [sid])
            self.db["sessions"].delete(sid)

    def reap_stale(self) -> int:
        """Mark sessions and runs left ``running`` by a dead process as ``interrupted``."""
        stale = [r["id"] for r in self.db["sessions"].rows_where("status = 'running'") if not _pid_alive(r["pid"])]
        if not stale:
            return 0
        with self.db.atomic():
            for sid in stale:
                self.db["sessions"].update(sid, {"status": "interrupted", "updated": now()})
                for table in ("scans", "probe_runs", "finetune_runs", "edits"):
                    self.db.execute(
                        f"update {table} set status = 'interrupted' where session_id = ? and status = 'running'", [sid]
                    )
        return len(stale)

    @contextmanager
    def running(self, sid: str) -> Iterator[None]:
        """Mark the session failed/interrupted if the body raises; the body marks success itself."""
        try:
            yield
        except KeyboardInterrupt:
            self.finish_session(sid, status="interrupted")
            raise
        except BaseException:
            self.finish_session(sid, status="failed")
            raise

    # -- checkpoints and the base hash cache ----------------------------------------------
    def checkpoint_id(self, record: dict) -> int:
        """Insert or refresh a checkpoint row keyed by its fingerprint."""
        table = self.db["checkpoints"]
        rows = list(table.rows_where("fingerprint = ?", [record["fingerprint"]], limit=1))
        with self.db.atomic():
            if rows:
                table.update(rows[0]["id"], {"path": record["path"]})
                return rows[0]["id"]
            return table.insert({**record, "created": now()}).last_pk

    def cached_hashes(self, fingerprint: str) -> dict[str, str]:
        return {r["name"]: r["digest"] for r in self.db["tensor_hashes"].rows_where("fingerprint = ?", [fingerprint])}

    def save_hashes(self, fingerprint: str, hashes: dict[str, tuple[str, int]]) -> None:
        with self.db.atomic():
            self.db["tensor_hashes"].upsert_all(
                ({"fingerprint": fingerprint, "name": n, "digest": h, "nbytes": nb} for n, (h, nb) in hashes.items()),
                pk=("fingerprint", "name"),
            )

    # -- generic helpers for services -------------------------------------------------------
    def insert(self, table: str, row: dict) -> int:
        with self.db.atomic():
            return self.db[table].insert(row).last_pk

    def update(self, table: str, pk: Any, fields: dict) -> None:
        with self.db.atomic():
            self.db[table].update(pk, fields)

    def rows(self, table: str, where: str | None = None, args: list | None = None, order_by: str | None = None) -> list[dict]:
        return list(self.db[table].rows_where(where, args or [], order_by=order_by))
