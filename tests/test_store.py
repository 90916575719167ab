"""The session store: migrations, crash safety, concurrent readers."""

from __future__ import annotations

import multiprocessing
import os
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


def test_session_prefix_is_text_not_a_pattern(tmp_path):
    """``report %`` or ``report 2_`` printed some session: the prefix went into a LIKE pattern unescaped."""
    store = Store(tmp_path / "s.db")
    sid = store.new_session("scan", "t", "base", "suspect")
    for pattern in ("%", "_", sid[:3] + "%", "_" + sid[1:]):
        with pytest.raises(BadInput, match="no session"):
            store.session(pattern)
    assert store.session(sid[:3])["id"] == sid


def test_a_database_path_that_cannot_be_one_is_a_clear_error(tmp_path, monkeypatch):
    """A folder, a pipe, a path below a file, a read-only place: each said "not an editaudit database" (the
    pipe after SQLite wrote a journal beside it) or was an unexpected FileExistsError."""
    with pytest.raises(BadInput, match="is a folder"):
        open_store(tmp_path)
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(BadInput, match="not a regular file"):
        open_store(tmp_path / "pipe")
    assert not (tmp_path / "pipe-journal").exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(BadInput, match="afile is not a folder"):
        open_store(tmp_path / "afile" / "sub" / "s.db")

    def read_only(*args, **kwargs):  # what SQLite says in a read-only folder (root ignores chmod: simulated)
        exc = sqlite3.OperationalError("unable to open database file")
        exc.sqlite_errorcode = sqlite3.SQLITE_CANTOPEN
        raise exc

    monkeypatch.setattr(sqlite3, "connect", read_only)
    with pytest.raises(BadInput, match="cannot open the session database .* writable place"):
        open_store(tmp_path / "s.db")


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


# -- migrations, owners of sessions, locks --------------------------------------------------------------------

def socket_host() -> str:
    import socket

    return socket.gethostname()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_version_1_database_is_migrated_in_place(tmp_path):
    import sqlite_utils

    from editaudit.store import db as store_db

    path = tmp_path / "old.db"
    old = sqlite_utils.Database(path)
    store_db.MIGRATIONS[1](old)
    old["sessions"].insert({"id": "20260101-000000-abcdef", "kind": "scan", "status": "done", "pid": 1})
    old.conn.execute("PRAGMA user_version = 1")
    old.conn.close()
    store = Store(path)
    assert store.db.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert "host" in store.db["sessions"].columns_dict
    assert store.session("20260101")["status"] == "done"


def test_session_records_its_process_and_host(tmp_path):
    store = Store(tmp_path / "s.db")
    sid = store.new_session("scan")
    row = store.session(sid)
    assert (row["pid"], row["host"], row["status"]) == (os.getpid(), socket_host(), "running")
    store.db["sessions"].update(sid, {"host": None})
    store.touch(sid, pid=os.getpid())  # a resumed session takes the resuming process's host with its pid
    assert store.session(sid)["host"] == socket_host()


def test_only_sessions_whose_process_is_gone_from_this_host_are_interrupted(tmp_path):
    store = Store(tmp_path / "s.db")
    dead = _dead_pid()
    rows = {
        "mine-dead": {"pid": dead, "host": socket_host()},
        "mine-alive": {"pid": os.getpid(), "host": socket_host()},
        "elsewhere": {"pid": dead, "host": "some-other-host.example"},  # cannot be checked from here
        "legacy": {"pid": dead, "host": None},  # written before hosts were recorded: judged as this host's
    }
    for sid, owner in rows.items():
        store.db["sessions"].insert({"id": sid, "kind": "scan", "status": "running", "created": sid, **owner})
    store.insert("scans", {"session_id": "mine-dead", "status": "running"})
    assert store.session("mine-dead")["status"] == "interrupted"  # reading one session judges it too
    assert [s["status"] for s in store.rows("scans")] == ["interrupted"]
    status = {r["id"]: r["status"] for r in store.sessions()}
    assert status == {"mine-dead": "interrupted", "mine-alive": "running", "elsewhere": "running",
                      "legacy": "interrupted"}
    assert {r["id"]: r["status"] for r in store.rows("sessions")} == status  # and stored


@pytest.fixture
def short_locks(monkeypatch):
    from editaudit.store import db as store_db

    monkeypatch.setattr(store_db, "BUSY_TIMEOUT_S", 0.05)
    monkeypatch.setattr(store_db, "LOCK_DEADLINE_S", 0.5)


def _hold_write_lock(path):
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_writer_waits_for_another_writer_then_writes(tmp_path, short_locks, monkeypatch):
    import threading

    from editaudit.store import db as store_db

    monkeypatch.setattr(store_db, "LOCK_DEADLINE_S", 10.0)
    path = tmp_path / "s.db"
    store = Store(path)
    other = _hold_write_lock(path)
    threading.Timer(0.4, other.rollback).start()
    t0 = time.monotonic()
    sid = store.new_session("scan")  # meets the lock, backs off, retries
    assert time.monotonic() - t0 >= 0.3
    assert store.session(sid)["status"] == "running"
    other.close()


def test_writer_gives_up_with_a_clear_error_when_locked_too_long(tmp_path, short_locks):
    from editaudit.errors import StoreBusy

    path = tmp_path / "s.db"
    store = Store(path)
    other = _hold_write_lock(path)
    try:
        with pytest.raises(StoreBusy, match="locked by another process"):
            store.new_session("scan")
        with pytest.raises(StoreBusy):
            with store.db.atomic():  # services' own transactions take the write lock up front too
                store.db["sessions"].insert({"id": "x"})
        assert store.rows("sessions") == []  # reads go on meanwhile (WAL)
    finally:
        other.close()
    store.new_session("scan")


def test_listing_judges_dead_sessions_even_when_it_cannot_write(tmp_path, short_locks):
    path = tmp_path / "s.db"
    store = Store(path)
    store.db["sessions"].insert({"id": "gone", "kind": "scan", "status": "running", "pid": _dead_pid(),
                                 "host": socket_host()})
    other = _hold_write_lock(path)
    try:
        assert [r["status"] for r in store.sessions()] == ["interrupted"]
        assert store.rows("sessions")[0]["status"] == "running"  # storing it waits for the next listing
    finally:
        other.close()
    store.sessions()
    assert store.rows("sessions")[0]["status"] == "interrupted"


def test_lock_errors_are_told_from_real_errors():
    from editaudit.store.db import is_locked

    assert is_locked(sqlite3.OperationalError("database is locked"))
    assert not is_locked(sqlite3.OperationalError("no such table: x"))
    assert not is_locked(ValueError("database is locked"))
