"""The session store: migrations, crash safety, concurrent readers."""

from __future__ import annotations

import multiprocessing
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from editaudit.errors import BadInput
from editaudit.store import SCHEMA_VERSION, Store, open_store


def test_new_store_is_migrated_and_in_wal_mode(tmp_path):
    db = open_store(tmp_path / "s.db")
    assert db.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"sessions", "scans", "findings", "probe_runs", "edits", "finetune_runs", "metrics"} <= set(db.table_names())
    open_store(tmp_path / "s.db")  # re-opening is a no-op


def test_newer_schema_is_refused(tmp_path):
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(BadInput, match="newer"):
        open_store(tmp_path / "s.db")


def test_garbage_file_is_a_clear_error(tmp_path):
    (tmp_path / "s.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(BadInput, match="not an editaudit database"):
        open_store(tmp_path / "s.db")


def test_session_lifecycle_and_prefix_lookup(tmp_path):
    store = Store(tmp_path / "s.db")
    sid = store.new_session("scan", "t", "base", "suspect")
    assert store.session(sid[:15])["status"] == "running"
    store.finish_session(sid, verdict="clean")
    assert store.session(sid)["verdict"] == "clean"
    store.delete_session(sid)
    with pytest.raises(BadInput):
        store.session(sid)


KILLED_WRITER = textwrap.dedent("""
    import os, sys
    from editaudit.store import Store
    store = Store(sys.argv[1])
    sid = store.new_session("scan")
    scan = store.insert("scans", {"session_id": sid, "status": "running"})
    # the final write happens in one transaction; die in the middle of it
    with store.db.atomic():
        store.db["findings"].insert({"scan_id": scan, "rule": "EA101"})
        store.db["scans"].update(scan, {"status": "done"})
        print(sid, flush=True)
        os.kill(os.getpid(), 9)
""")


def test_process_killed_mid_write_leaves_no_half_done_rows(tmp_path):
    path = tmp_path / "s.db"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    store = Store(path)
    assert store.rows("findings") == []
    assert [s["status"] for s in store.rows("scans")] == ["running"]
    rows = store.sessions()  # reaps the dead process's session
    assert rows[0]["status"] == "interrupted"
    assert [s["status"] for s in store.rows("scans")] == ["interrupted"]


def _reader(path, stop_at, errors):
    store = Store(path)
    while time.time() < stop_at:
        try:
            store.sessions(limit=5)
        except Exception as exc:  # pragma: no cover - reported through the queue
            errors.put(repr(exc))
            return


def test_concurrent_readers_while_writing(tmp_path):
    path = tmp_path / "s.db"
    Store(path)
    errors = multiprocessing.Queue()
    stop_at = time.time() + 1.5
    readers = [multiprocessing.Process(target=_reader, args=(path, stop_at, errors)) for _ in range(2)]
    for r in readers:
        r.start()
    store = Store(path)
    n = 0
    while time.time() < stop_at:
        sid = store.new_session("scan")
        store.finish_session(sid, verdict="clean")
        n += 1
    for r in readers:
        r.join()
    assert errors.empty()
    assert len(store.sessions(limit=10_000)) == n
