"""Opening the database: WAL mode, a busy timeout, retry on lock, versioned migrations.

Several editaudit processes may share one session database (six CI scans at once, the app open
while a scan runs). Three rules keep that safe:

* every write transaction starts with ``BEGIN IMMEDIATE`` (:meth:`Database.atomic`), so a writer
  takes the write lock before it reads anything: it waits in SQLite's busy handler instead of
  failing with "database is locked" when another writer committed since it started reading;
* writes that still meet a lock (a busy timeout that ran out, a WAL recovery) are retried as a
  whole transaction with backoff (:func:`write`), and give up with :class:`StoreBusy` after
  ``LOCK_DEADLINE_S``;
* migrations run one per transaction under that write lock and re-read ``PRAGMA user_version``
  inside it, so when several processes open a fresh file at once one of them migrates and the
  others find the work done.

Migrations are plain functions keyed by the version they produce; ``PRAGMA user_version``
records how far a file has been migrated, and each migration runs in its own transaction so a
crash leaves the file at the previous version rather than half-migrated.
"""

from __future__ import annotations

import random
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Generator, TypeVar

import sqlite_utils

from ..errors import BadInput, StoreBusy
from ..paths import default_db_path

T = TypeVar("T")

# How long one statement waits in SQLite's busy handler, and how long a write keeps retrying in all.
BUSY_TIMEOUT_S = 15.0
LOCK_DEADLINE_S = 120.0


def is_locked(exc: BaseException) -> bool:
    """Is this SQLite's "database is locked / busy" (worth waiting for), not a real error?"""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return code & 0xFF == sqlite3.SQLITE_BUSY  # SQLITE_LOCKED is a conflict inside one connection: not transient
    msg = str(exc).lower()
    return msg.startswith("database is locked") or msg.startswith("database is busy")


def retry_on_lock(fn: Callable[[], T], deadline_s: float | None = None, what: str = "the session database") -> T:
    """Call ``fn`` until it does not fail with a lock error, backing off with jitter.

    ``fn`` must be safe to call again after a lock error (a whole transaction, or one statement).
    Raises :class:`StoreBusy` once ``deadline_s`` (default ``LOCK_DEADLINE_S``) has passed.
    """
    deadline = time.monotonic() + (LOCK_DEADLINE_S if deadline_s is None else deadline_s)
    delay = 0.01
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not is_locked(exc):
                raise
            if time.monotonic() >= deadline:
                raise StoreBusy(f"{what} stayed locked by another process ({exc}); try again later") from exc
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.5)


class Database(sqlite_utils.Database):
    """sqlite-utils' Database whose outermost transactions take the write lock up front."""

    @contextmanager
    def atomic(self) -> Generator["Database", None, None]:  # type: ignore[override]
        if self.conn.in_transaction:  # nested: a savepoint inside the caller's transaction
            with super().atomic():
                yield self
            return
        retry_on_lock(lambda: self.conn.execute("BEGIN IMMEDIATE"))
        try:
            yield self
        except BaseException:
            self.rollback()
            raise
        try:
            # COMMIT can only be busy outside WAL mode (readers still on the old pages); it leaves the
            # transaction open when it is, so asking again is safe.
            retry_on_lock(lambda: self.conn.execute("COMMIT"))
        except BaseException:
            self.rollback()
            raise


def write(db: sqlite_utils.Database, fn: Callable[[], T]) -> T:
    """Run ``fn`` in one write transaction, retrying the whole transaction if it meets a lock.

    Inside an outer transaction ``fn`` runs in a savepoint and a lock error goes up to the outer
    writer, which owns the retry.
    """
    if db.conn.in_transaction:
        with db.atomic():
            return fn()

    def attempt() -> T:
        with db.atomic():
            return fn()

    return retry_on_lock(attempt)


def read(fn: Callable[[], T]) -> T:
    """Run a read, waiting out the rare lock a reader meets in WAL mode (e.g. during WAL recovery)."""
    return retry_on_lock(fn)


def _v1(db: sqlite_utils.Database) -> None:
    db["sessions"].create(
        {
            "id": str, "kind": str, "title": str, "status": str, "created": str, "updated": str,
            "base": str, "suspect": str, "verdict": str, "pid": int, "summary": str,
        },
        pk="id",
    )
    db["checkpoints"].create(
        {
            "id": int, "path": str, "fingerprint": str, "layout": str, "family": str,
            "total_bytes": int, "files": str, "n_tensors": int, "created": str,
        },
        pk="id",
    )
    db["checkpoints"].create_index(["fingerprint"], unique=True)
    db["tensor_hashes"].create(
        {"fingerprint": str, "name": str, "digest": str, "nbytes": int},
        pk=("fingerprint", "name"),
    )
    db["scans"].create(
        {
            "id": int, "session_id": str, "base_id": int, "suspect_id": int, "status": str,
            "started": str, "finished": str, "verdict": str, "exit_code": int, "report": str,
        },
        pk="id",
        foreign_keys=[("session_id", "sessions"), ("base_id", "checkpoints"), ("suspect_id", "checkpoints")],
    )
    db["findings"].create(
        {
            "id": int, "scan_id": int, "rule": str, "kind": str, "severity": str, "layers": str,
            "tensors": str, "message": str, "data": str,
        },
        pk="id",
        foreign_keys=[("scan_id", "scans")],
    )
    db["tensor_stats"].create(
        {
            "scan_id": int, "name": str, "layer": int, "module": str, "status": str, "kind": str,
            "rel_change": float, "max_abs": float, "rank": int, "top1_share": float,
            "topk_share": float, "data": str,
        },
        pk=("scan_id", "name"),
        foreign_keys=[("scan_id", "scans")],
    )
    db["probe_runs"].create(
        {
            "id": int, "session_id": str, "model": str, "label": str, "probe_set": str, "status": str,
            "started": str, "finished": str, "summary": str,
        },
        pk="id",
        foreign_keys=[("session_id", "sessions")],
    )
    db["probe_results"].create(
        {
            "run_id": int, "probe_id": str, "kind": str, "prompt": str, "target_true": str,
            "target_new": str, "prediction": str, "category": str, "data": str,
        },
        pk=("run_id", "probe_id"),
        foreign_keys=[("run_id", "probe_runs")],
    )
    db["edits"].create(
        {
            "id": int, "session_id": str, "method": str, "base": str, "out": str, "layers": str,
            "hparams": str, "facts": str, "results": str, "status": str, "started": str, "finished": str,
        },
        pk="id",
        foreign_keys=[("session_id", "sessions")],
    )
    db["finetune_runs"].create(
        {
            "id": int, "session_id": str, "goal": str, "method": str, "layers": str, "task": str,
            "config": str, "status": str, "out": str, "result": str, "started": str, "finished": str,
        },
        pk="id",
        foreign_keys=[("session_id", "sessions")],
    )
    db["metrics"].create(
        {"run_id": int, "step": int, "name": str, "value": float, "data": str},
        pk=("run_id", "step", "name"),
        foreign_keys=[("run_id", "finetune_runs")],
    )


def _v2(db: sqlite_utils.Database) -> None:
    """The host a session's process runs on, so that only that host judges whether it is still alive."""
    db["sessions"].add_column("host", str)


MIGRATIONS: dict[int, Callable[[sqlite_utils.Database], None]] = {1: _v1, 2: _v2}
SCHEMA_VERSION = max(MIGRATIONS)


def _user_version(db: sqlite_utils.Database) -> int:
    return db.conn.execute("PRAGMA user_version").fetchone()[0]


def _too_new(path: Path, version: int) -> BadInput:
    return BadInput(
        f"database {path} has schema version {version}, newer than this editaudit understands ({SCHEMA_VERSION}); "
        "upgrade editaudit"
    )


def _migrate(db: sqlite_utils.Database, path: Path) -> None:
    current = read(lambda: _user_version(db))
    if current > SCHEMA_VERSION:
        raise _too_new(path, current)

    def step() -> bool:
        """One migration under the write lock; False once the file is current."""
        version = _user_version(db)  # again, inside the lock: another process may have migrated meanwhile
        if version > SCHEMA_VERSION:
            raise _too_new(path, version)
        if version == SCHEMA_VERSION:
            return False
        MIGRATIONS[version + 1](db)
        db.conn.execute(f"PRAGMA user_version = {version + 1}")
        return True

    while current < SCHEMA_VERSION and write(db, step):
        pass


def _set_wal(conn: sqlite3.Connection) -> None:
    # Persistent in the file; switching needs a moment alone with it, so a fresh file opened by
    # several processes at once can be busy here. A file system without shared memory keeps its
    # old journal mode: the store still works, with readers and the writer taking turns.
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        conn.execute("PRAGMA journal_mode=WAL")


def _cannot_open(exc: sqlite3.DatabaseError) -> bool:
    """SQLite could not open or write the file (read-only place, no permission), as opposed to a foreign file."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM)
    msg = str(exc).lower()
    return msg.startswith("unable to open") or "readonly" in msg


def open_store(path: str | Path | None = None) -> Database:
    """Open (creating and migrating if needed) the session database."""
    path = Path(path) if path else default_db_path()
    if path.is_dir():
        raise BadInput(f"{path} is a folder: the session database is a file (--db PATH or EDITAUDIT_DB)")
    if path.exists() and not path.is_file():  # SQLite would write a journal beside /dev/null, or block on a FIFO
        raise BadInput(f"{path} is not a regular file: the session database is a file (--db PATH or EDITAUDIT_DB)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        above = path.parent
        while not above.exists() and above != above.parent:
            above = above.parent
        raise BadInput(f"cannot create the session database {path}: {above} is not a folder") from None
    except OSError as exc:
        raise BadInput(f"cannot create the session database {path}: {exc.strerror or exc}") from None
    conn = None
    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        read(lambda: _set_wal(conn))
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")
        db = Database(conn)
        _migrate(db, path)
    except (StoreBusy, BadInput):
        if conn is not None:
            conn.close()
        raise
    except sqlite3.DatabaseError as exc:
        if conn is not None:
            conn.close()
        if _cannot_open(exc):  # the file may be fine: its place is not (read-only, no permission)
            raise BadInput(
                f"cannot open the session database {path} for writing ({exc}): editaudit needs to write the file and "
                "its journal beside it; use a writable place (--db PATH or EDITAUDIT_DB)"
            ) from exc
        raise BadInput(f"{path} is not an editaudit database: {exc}") from exc
    return db
