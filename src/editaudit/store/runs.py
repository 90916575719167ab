"""The rows the scan, probe and edit services write: each a function here, so no service writes SQL.

Long work is inserted as ``running`` and flipped to ``done`` in the same transaction that writes its
results (findings, probe results, an edit's report), so a crash never leaves a half-written row marked done.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

from .db import write
from .sessions import Store, dumps, now

# -- scans ------------------------------------------------------------------------------------------------


def start_scan(store: Store, session_id: str, base_id: int | None, suspect_id: int) -> int:
    """A ``running`` scan row; returns its id."""
    return store.insert("scans", {
        "session_id": session_id, "base_id": base_id, "suspect_id": suspect_id, "status": "running", "started": now(),
    })


def set_scan_status(store: Store, scan_id: int, status: str) -> None:
    store.update("scans", scan_id, {"status": status})


def save_scan(store: Store, session_id: str, scan_id: int, *, findings: Iterable[dict], stats: Iterable[dict],
              verdict: str, exit_code: int, report: dict, session_summary: dict | None = None) -> None:
    """Findings, tensor statistics and the report, with the scan (and, given ``session_summary``, its own
    session) marked done, in one transaction. ``findings``/``stats`` rows carry every column but ``scan_id``."""
    findings, stats = list(findings), list(stats)

    def save() -> None:
        db = store.db
        for f in findings:
            db["findings"].insert({"scan_id": scan_id, **f})
        db["tensor_stats"].insert_all(({"scan_id": scan_id, **s} for s in stats), pk=("scan_id", "name"))
        db["scans"].update(scan_id, {"status": "done", "finished": now(), "verdict": verdict, "exit_code": exit_code,
                                     "report": json.dumps(report, default=str)})
        if session_summary is not None:
            db["sessions"].update(session_id, {"status": "done", "verdict": verdict, "updated": now(),
                                               "summary": json.dumps(session_summary)})

    write(store.db, save)


# -- probe runs -------------------------------------------------------------------------------------------


def save_probe_run(store: Store, session_id: str, *, model: str, label: str, set_names: Sequence[str],
                   results: Iterable[dict], summary: dict, started: str | None = None) -> int:
    """One ``done`` probe run and its results (rows with every ``probe_results`` column but ``run_id``),
    in one transaction; returns the run's id."""
    rows = list(results)

    def save() -> int:
        run_id = store.db["probe_runs"].insert({
            "session_id": session_id, "model": model, "label": label, "probe_set": ",".join(set_names),
            "status": "done", "started": started or now(), "finished": now(),
            "summary": json.dumps(summary, ensure_ascii=False),
        }).last_pk
        store.db["probe_results"].insert_all(({"run_id": run_id, **row} for row in rows), pk=("run_id", "probe_id"))
        return run_id

    return write(store.db, save)


# -- edits ------------------------------------------------------------------------------------------------


def start_edit(store: Store, session_id: str, *, method: str, base: str, out: str | None, layers: list[int],
               hparams: dict, facts: list[dict]) -> int:
    """A ``running`` edit row; returns its id."""
    return store.insert("edits", {
        "session_id": session_id, "method": method, "base": base, "out": out, "layers": dumps(layers),
        "hparams": dumps(hparams), "facts": dumps(facts), "results": None, "status": "running", "started": now(),
        "finished": None,
    })


def finish_edit(store: Store, edit_id: int, results: Any) -> None:
    """The edit's report, with the row marked done, in one write."""
    store.update("edits", edit_id, {"results": dumps(results), "status": "done", "finished": now()})


def set_edit_status(store: Store, edit_id: int, status: str) -> None:
    store.update("edits", edit_id, {"status": status, "finished": now()})
