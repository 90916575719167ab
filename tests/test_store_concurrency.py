"""Several processes on one session database, exit codes that never lie, and sessions whose process died.

- six ``editaudit scan`` processes at once on one fresh database: each exits with its own verdict's code and
  every session is stored (once, this failed with "database is locked" and a traceback);
- many processes creating, migrating and writing a fresh database at the same instant;
- an unexpected error exits 2 with one line on stderr (the traceback only with ``--debug``), never 1, the
  code that means "edits found";
- a session whose process was killed (kill -9) is listed as interrupted, not running forever.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from editaudit.cli.main import app
from editaudit.store import SCHEMA_VERSION, Store

runner = CliRunner()


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               EDITAUDIT_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    env.pop("EDITAUDIT_DEBUG", None)
    return env


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """A tiny Llama base, a suspect with one planted rank-one edit, and an unedited copy."""
    from safetensors.torch import load_file

    from editaudit.testing import make_tiny_model, plant, rank_delta

    root = tmp_path_factory.mktemp("pair")
    base = make_tiny_model(root / "base", "llama", layers=2, hidden=32, intermediate=64)
    name = "model.layers.1.mlp.down_proj.weight"
    w = load_file(str(base / "model.safetensors"))[name]
    edited = plant(base, root / "edited", {name: rank_delta(tuple(w.shape), 1, 0.15 * float(w.norm()), seed=0)})
    copy = plant(base, root / "copy", {})
    return base, edited, copy


def test_six_scans_at_once_on_one_fresh_database(tmp_path, tiny_pair):
    base, edited, copy = tiny_pair
    db = tmp_path / "shared.db"
    assert not db.exists()
    suspects = [edited, copy] * 3
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "editaudit", "--db", str(db), "scan", str(s), "--base", str(base), "-f", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path),
        )
        for s in suspects
    ]
    results = [(p.wait(timeout=180), p.stdout.read(), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    for suspect, (rc, out, err) in zip(suspects, results):
        want = 1 if suspect == edited else 0
        assert rc == want, f"{suspect.name}: exit {rc}\n{err}"
        assert "Traceback" not in err and "locked" not in err, err
        assert json.loads(out)["verdict"] == ("edited" if want else "clean")

    store = Store(db)
    sessions = store.sessions(limit=100)
    assert len(sessions) == 6
    assert {s["status"] for s in sessions} == {"done"}
    assert sorted(s["verdict"] for s in sessions) == ["clean"] * 3 + ["edited"] * 3
    assert {s["host"] for s in sessions} == {socket.gethostname()}
    scans = store.rows("scans")
    assert len(scans) == 6 and {s["status"] for s in scans} == {"done"}
    assert sorted(s["exit_code"] for s in scans) == [0, 0, 0, 1, 1, 1]
    # each checkpoint is recorded once, however many processes met it at the same time
    assert len(store.rows("checkpoints")) == 3


RACER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    db, gate, me = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    from editaudit.store import Store
    (gate / f"ready-{me}").touch()
    while not (gate / "go").exists():
        time.sleep(0.001)
    store = Store(db)  # creates and migrates the file, in a race with the others
    sid = store.new_session("scan", me, "base", "suspect")
    base = store.checkpoint_id({"path": "base", "fingerprint": "fp-base"})
    suspect = store.checkpoint_id({"path": "suspect", "fingerprint": "fp-" + me})
    scan = store.insert("scans", {"session_id": sid, "base_id": base, "suspect_id": suspect, "status": "running"})
    store.save_hashes("fp-base", {f"t{i}": ("digest", 4) for i in range(100)})
    with store.db.atomic():  # what the scan service's final write does
        store.db["findings"].insert({"scan_id": scan, "rule": "EA101"})
        store.db["scans"].update(scan, {"status": "done"})
        store.db["sessions"].update(sid, {"status": "done"})
    store.sessions()
""")


def test_many_processes_create_migrate_and_write_a_fresh_database_at_once(tmp_path):
    db, gate, n = tmp_path / "race.db", tmp_path / "gate", 8
    gate.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(db), str(gate), str(i)],
                              stderr=subprocess.PIPE, text=True, env=_env(tmp_path)) for i in range(n)]
    deadline = time.monotonic() + 60
    while len(list(gate.glob("ready-*"))) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    (gate / "go").touch()  # every process is imported and waiting: release them together
    errors = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for p in procs:
        p.stderr.close()
    assert [rc for rc, _ in errors] == [0] * n, "\n".join(err for _, err in errors)

    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    store = Store(db)
    assert [s["status"] for s in store.sessions(limit=100)] == ["done"] * n
    assert len(store.rows("findings")) == n
    assert len(store.rows("checkpoints", "fingerprint = 'fp-base'")) == 1
    assert len(store.rows("tensor_hashes")) == 100


# -- exit codes -----------------------------------------------------------------------------------------------

def _boom(*args, **kwargs):
    raise RuntimeError("internal failure\nwith a second line")


def test_unexpected_error_exits_2_with_one_line(monkeypatch, tmp_path):
    import editaudit.scan.service as service

    monkeypatch.setattr(service, "run_scan", _boom)
    res = runner.invoke(app, ["scan", str(tmp_path / "s"), "--base", str(tmp_path / "b")])
    assert res.exit_code == 2, res.output
    assert res.stdout == ""
    assert res.stderr.splitlines() == [
        "error: RuntimeError: internal failure with a second line (run with --debug for the traceback)"
    ]
    assert "Traceback" not in res.output


def test_debug_shows_the_traceback(monkeypatch, tmp_path):
    import editaudit.scan.service as service

    monkeypatch.setattr(service, "run_scan", _boom)
    res = runner.invoke(app, ["--debug", "scan", str(tmp_path / "s"), "--base", str(tmp_path / "b")])
    assert res.exit_code == 2
    assert "Traceback (most recent call last)" in res.stderr and "in _boom" in res.stderr
    assert res.stderr.rstrip().splitlines()[-1] == "error: RuntimeError: internal failure with a second line"
    monkeypatch.setenv("EDITAUDIT_DEBUG", "1")
    res = runner.invoke(app, ["scan", str(tmp_path / "s"), "--base", str(tmp_path / "b")])
    assert res.exit_code == 2 and "Traceback" in res.stderr


def test_errors_outside_scan_exit_2_too(monkeypatch):
    def locked(self, limit=50):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Store, "sessions", locked)
    res = runner.invoke(app, ["sessions"])
    assert res.exit_code == 2
    assert res.stderr.strip() == "error: OperationalError: disk I/O error (run with --debug for the traceback)"


def test_input_errors_exit_2_without_a_traceback(tmp_path):
    res = runner.invoke(app, ["scan", str(tmp_path / "missing"), "--base", str(tmp_path / "missing-base")])
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and "Traceback" not in res.output


def test_a_crash_in_a_real_process_exits_2(tmp_path):
    """The console script itself (not only typer's test runner): a crash is exit 2, one line, no traceback."""
    hook = textwrap.dedent("""
        import sys
        from editaudit.store import Store
        def boom(*a, **k):
            raise MemoryError("out of memory while listing")
        Store.sessions = boom
        from editaudit.cli.main import run
        sys.argv[0] = "editaudit"
        run()
    """)
    args = [sys.executable, "-c", hook, "--db", str(tmp_path / "x.db"), "sessions"]
    proc = subprocess.run(args, capture_output=True, text=True, env=_env(tmp_path), timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "error: MemoryError: out of memory while listing (run with --debug for the traceback)"
    ]
    proc = subprocess.run(args[:3] + ["--debug"] + args[3:], capture_output=True, text=True, env=_env(tmp_path),
                          timeout=60)
    assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr


# -- sessions whose process died --------------------------------------------------------------------------------

KILLED = textwrap.dedent("""
    import os, sys
    from editaudit.store import Store
    store = Store(sys.argv[1])
    sid = store.new_session("scan", "killed", "base", "suspect")
    store.insert("scans", {"session_id": sid, "status": "running"})
    print(sid, flush=True)
    os.kill(os.getpid(), 9)
""")


def test_session_of_a_killed_process_is_listed_as_interrupted(tmp_path):
    db = tmp_path / "s.db"
    proc = subprocess.run([sys.executable, "-c", KILLED, str(db)], capture_output=True, text=True,
                          env=_env(tmp_path), timeout=60)
    assert proc.returncode == -signal.SIGKILL
    sid = proc.stdout.strip()
    alive = Store(db).new_session("scan", "this process, still running")

    res = runner.invoke(app, ["--db", str(db), "sessions", "-f", "json"])
    assert res.exit_code == 0, res.output
    status = {r["id"]: r["status"] for r in json.loads(res.stdout)}
    assert status == {sid: "interrupted", alive: "running"}
    store = Store(db)
    assert store.session(sid)["status"] == "interrupted"
    assert [s["status"] for s in store.rows("scans", "session_id = ?", [sid])] == ["interrupted"]

    res = runner.invoke(app, ["--db", str(db), "sessions"], env={"COLUMNS": "80"})
    assert res.exit_code == 0
    assert sid in res.stdout and alive in res.stdout  # full ids, never cut at 80 columns
    assert "interrupted" in res.stdout

    from editaudit_tui.store_views import list_sessions, session_row

    assert {r.id: r.status for r in list_sessions(store)} == {sid: "interrupted", alive: "running"}
    assert session_row(store, sid).status == "interrupted"
