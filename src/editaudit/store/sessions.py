"""A small API over the store so that services never write SQL by hand.

Rows that describe long work are inserted with status ``running`` and flipped to ``done`` in the
same transaction that writes their results, so a crash or Ctrl-C never leaves a half-written row
marked as done. A session records the pid and host of the process that runs it; when sessions are
listed or read, one still ``running`` whose process is gone from this host (kill -9, power loss) is
shown, and stored, as ``interrupted`` (:func:`session_status`, ``Store.reap_stale``). A session
run on another host is left as it is: its process cannot be checked from here.

Every write goes through :func:`.db.write` (one ``BEGIN IMMEDIATE`` transaction, retried on lock), so
several processes can share one database.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
import socket
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import sqlite_utils

from ..errors import BadInput, StoreBusy
from .db import open_store, read, write

RUN_TABLES = ("scans", "probe_runs", "finetune_runs", "edits")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def this_host() -> str:
    return socket.gethostname()


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    if os.name == "nt":
        return _pid_alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OSError:
        return False
    try:  # a killed child its parent has not reaped yet is a zombie: gone all the same
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rpartition(b")")[2].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return True  # no /proc (macOS): the signal test is all there is


def _pid_alive_windows(pid: int) -> bool:  # pragma: no cover - not run on the Linux test machines
    # os.kill(pid, 0) would send CTRL_C_EVENT on Windows, so ask the kernel instead.
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return kernel32.GetLastError() == 5  # ERROR_ACCESS_DENIED: it exists, it is not ours
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def process_alive(pid: int | None, host: str | None) -> bool | None:
    """Is the process that runs a session alive? None when it ran on another host (cannot tell from here).

    Rows written before hosts were recorded (no host) are judged as this host's.
    """
    if host and host != this_host():
        return None
    return _pid_alive(pid)


def session_status(row: dict) -> str:
    """The status to show for a session row: ``interrupted`` for a ``running`` one whose process is gone."""
    status = row.get("status") or ""
    if status == "running" and process_alive(row.get("pid"), row.get("host")) is False:
        return "interrupted"
    return status


class Store:
    """Sessions and the rows that hang off them."""

    def __init__(self, path: str | Path | None = None, db: sqlite_utils.Database | None = None) -> None:
        self.db = db if db is not None else open_store(path)
        self.path = path

    # -- sessions -------------------------------------------------------------------------
    def new_session(self, kind: str, title: str = "", base: str | None = None, suspect: str | None = None) -> str:
        """Insert a ``running`` session owned by this process (its pid and host); return its id."""
        for _ in range(20):
            sid = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
            row = {
                "id": sid, "kind": kind, "title": title, "status": "running", "created": now(),
                "updated": now(), "base": base, "suspect": suspect, "verdict": None,
                "pid": os.getpid(), "host": this_host(), "summary": None,
            }
            try:
                write(self.db, lambda: self.db["sessions"].insert(row))
                return sid
            except sqlite3.IntegrityError:
                continue  # id collision within the same second: draw again
        raise RuntimeError("could not allocate a session id")

    def finish_session(self, sid: str, status: str = "done", verdict: str | None = None, summary: Any = None) -> None:
        fields = {"status": status, "verdict": verdict, "updated": now(),
                  "summary": dumps(summary) if summary is not None else None}
        write(self.db, lambda: self.db["sessions"].update(sid, fields))

    def touch(self, sid: str, **fields: Any) -> None:
        """Update a session's fields; a new ``pid`` (a resumed session) takes this host with it."""
        if "pid" in fields and "host" not in fields:
            fields["host"] = this_host()
        write(self.db, lambda: self.db["sessions"].update(sid, {"updated": now(), **fields}))

    def sessions(self, limit: int = 50) -> list[dict]:
        """The newest sessions, a dead process's ``running`` ones shown (and stored) as ``interrupted``."""
        self._reap_quietly()
        rows = read(lambda: list(self.db["sessions"].rows_where(order_by="created desc, rowid desc", limit=limit)))
        for r in rows:
            r["status"] = session_status(r)
        return rows

    def session(self, sid: str) -> dict:
        """One session by id or unique id prefix, with its status judged as in :meth:`sessions`."""
        # a prefix compared as text: with LIKE, '%' or '_' in the id given matched any session
        rows = read(lambda: list(self.db["sessions"].rows_where("id = ? or substr(id, 1, ?) = ?", [sid, len(sid), sid],
                                                                limit=2)))
        if not rows:
            raise BadInput(f"no session {sid!r} in {self.path or 'the store'}")
        if len(rows) > 1 and rows[0]["id"] != sid:
            raise BadInput(f"session prefix {sid!r} is ambiguous")
        row = rows[0]
        status = session_status(row)
        if status != row["status"]:
            self._reap_quietly([row])
            row["status"] = status
        return row

    def delete_session(self, sid: str) -> None:
        """Delete a session and everything that hangs off it, in one transaction."""
        write(self.db, lambda: self._delete_session(sid))

    def _delete_session(self, sid: str) -> None:
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

    def reap_stale(self, rows: list[dict] | None = None) -> int:
        """Store ``interrupted`` for sessions (and their runs) left ``running`` by a process that is gone from
        this host; return how many. ``rows``: judge only these session rows (default: every running one)."""
        if rows is None:
            rows = read(lambda: list(self.db["sessions"].rows_where("status = 'running'")))
        stale = [(r["id"], r.get("pid")) for r in rows if session_status(r) == "interrupted"]
        if not stale:
            return 0

        def mark() -> int:
            n = 0
            for sid, pid in stale:
                # only if still running under the same pid: it may have been resumed since it was read
                cur = self.db.execute(
                    "update sessions set status = 'interrupted', updated = ? "
                    "where id = ? and status = 'running' and pid is ?", [now(), sid, pid],
                )
                if cur.rowcount:
                    n += 1
                    for table in RUN_TABLES:
                        self.db.execute(
                            f"update {table} set status = 'interrupted' where session_id = ? and status = 'running'",
                            [sid],
                        )
            return n

        return write(self.db, mark)

    def _reap_quietly(self, rows: list[dict] | None = None) -> None:
        """Reap for a reader: a database too busy (or read-only) to take the write only delays storing the status;
        the rows returned are judged all the same."""
        try:
            self.reap_stale(rows)
        except StoreBusy:
            pass
        except sqlite3.OperationalError as exc:  # a database this user may only read
            if "readonly" not in str(exc):
                raise

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
        """Insert or refresh a checkpoint row keyed by its fingerprint (look-up and insert under one write lock,
        so two processes meeting the same new checkpoint do not both insert it)."""
        table = self.db["checkpoints"]

        def upsert() -> int:
            rows = list(table.rows_where("fingerprint = ?", [record["fingerprint"]], limit=1))
            if rows:
                table.update(rows[0]["id"], {"path": record["path"]})
                return rows[0]["id"]
            return table.insert({**record, "created": now()}).last_pk

        return write(self.db, upsert)

    def cached_hashes(self, fingerprint: str) -> dict[str, str]:
        return read(lambda: {r["name"]: r["digest"]
                             for r in self.db["tensor_hashes"].rows_where("fingerprint = ?", [fingerprint])})

    def save_hashes(self, fingerprint: str, hashes: dict[str, tuple[str, int]]) -> None:
        rows = [{"fingerprint": fingerprint, "name": n, "digest": h, "nbytes": nb} for n, (h, nb) in hashes.items()]
        write(self.db, lambda: self.db["tensor_hashes"].upsert_all(rows, pk=("fingerprint", "name")))

    # -- generic helpers for services -------------------------------------------------------
    def insert(self, table: str, row: dict) -> int:
        return write(self.db, lambda: self.db[table].insert(row).last_pk)

    def update(self, table: str, pk: Any, fields: dict) -> None:
        write(self.db, lambda: self.db[table].update(pk, fields))

    def rows(self, table: str, where: str | None = None, args: list | None = None, order_by: str | None = None) -> list[dict]:
        return read(lambda: list(self.db[table].rows_where(where, args or [], order_by=order_by)))
