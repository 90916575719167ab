"""Opening the database: WAL mode, a busy timeout for concurrent readers, versioned migrations.

Migrations are plain functions keyed by the version they produce; ``PRAGMA user_version``
records how far a file has been migrated, and each migration runs in its own transaction so a
crash leaves the file at the previous version rather than half-migrated.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable

import sqlite_utils

from ..errors import BadInput
from ..paths import default_db_path


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


MIGRATIONS: dict[int, Callable[[sqlite_utils.Database], None]] = {1: _v1}
SCHEMA_VERSION = max(MIGRATIONS)


def _migrate(db: sqlite_utils.Database) -> None:
    conn = db.conn
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise BadInput(
            f"database schema version {current} is newer than this editaudit understands ({SCHEMA_VERSION}); upgrade editaudit"
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        with db.atomic():  # one transaction per migration
            MIGRATIONS[version](db)
            conn.execute(f"PRAGMA user_version = {version}")


def open_store(path: str | Path | None = None) -> sqlite_utils.Database:
    """Open (creating and migrating if needed) the session database."""
    path = Path(path) if path else default_db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.DatabaseError as exc:
        raise BadInput(f"{path} is not an editaudit database: {exc}") from exc
    db = sqlite_utils.Database(conn)
    try:
        _migrate(db)
    except sqlite3.DatabaseError as exc:
        raise BadInput(f"{path} is not an editaudit database: {exc}") from exc
    return db
