"""Mitigation runs in the store: one ``finetune_runs`` row per arm and its ``metrics`` history.

Every arm of ``editaudit mitigate`` is a row (running → done with its result in one write; interrupted on
Ctrl-C or cancel; failed on error) — never left running. The mitigation code calls these functions and
writes no SQL itself. Each function takes the ``Store`` (or None: nothing is recorded, as in the helper
processes of a multi-process run).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Iterator

from .db import write
from .sessions import now


def start_run(store, session_id: str | None, arm: str, goal: str, method: str, layers: list[int], task: str,
              config: dict, out: Any) -> int | None:
    """A new running arm; its id (None without a store)."""
    if store is None:
        return None
    return store.insert("finetune_runs", {
        "session_id": session_id, "goal": goal, "method": method, "layers": json.dumps(layers), "task": task,
        "config": json.dumps({"arm": arm, **config}, default=str), "status": "running",
        "out": str(out) if out else None, "started": now(),
    })


def exists(store, run_id: int | None) -> bool:
    return store is not None and run_id is not None and bool(store.rows("finetune_runs", "id = ?", [run_id]))


def finish_run(store, run_id: int | None, result: dict, status: str = "done") -> None:
    """The arm's result and final status, in one write."""
    if store is None or run_id is None:
        return
    store.update("finetune_runs", run_id, {"status": status, "result": json.dumps(result, default=str),
                                           "finished": now()})


def mark_run(store, run_id: int | None, status: str) -> None:
    if store is not None and run_id is not None:
        store.update("finetune_runs", run_id, {"status": status})


def record_eval(store, run_id: int | None, metrics: dict) -> None:
    """One evaluation's metrics at its step: numbers as values, the rest (flags, top-3 tokens) as JSON."""
    if store is None or run_id is None:
        return
    step = int(metrics.get("step", 0))
    rows = []
    for k, v in metrics.items():
        if k == "step":
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            rows.append({"run_id": run_id, "step": step, "name": k, "value": float(v), "data": None})
        else:
            rows.append({"run_id": run_id, "step": step, "name": k, "value": None,
                         "data": json.dumps(v, ensure_ascii=False)})
    if rows:
        write(store.db, lambda: store.db["metrics"].upsert_all(rows, pk=("run_id", "step", "name")))


@contextmanager
def marked_on_failure(store, run_id: int | None) -> Iterator[None]:
    """A run that stops by Ctrl-C is stored as interrupted, by any other error as failed."""
    try:
        yield
    except KeyboardInterrupt:
        mark_run(store, run_id, "interrupted")
        raise
    except BaseException:
        mark_run(store, run_id, "failed")
        raise


# -- what mitigation reads from other tables ----------------------------------------------------------

def session_exists(store, session_id: str | None) -> bool:
    return store is not None and bool(session_id) and bool(store.rows("sessions", "id = ?", [session_id]))


def finished_edits(store) -> list[dict]:
    """``edits`` rows that finished and wrote an output folder, oldest first."""
    if store is None:
        return []
    return store.rows("edits", "out is not null and status = 'done'", order_by="id")


def finished_scans(store, suspect_fingerprint: str, base_fingerprint: str | None = None) -> list[dict]:
    """Finished scans of this exact suspect (against this base, if given), newest first."""
    rows = store.rows("checkpoints", "fingerprint = ?", [suspect_fingerprint])
    if not rows:
        return []
    where, args = "suspect_id = ? and status = 'done'", [rows[0]["id"]]
    if base_fingerprint is not None:
        base_rows = store.rows("checkpoints", "fingerprint = ?", [base_fingerprint])
        if not base_rows:
            return []
        where += " and base_id = ?"
        args.append(base_rows[0]["id"])
    return store.rows("scans", where, args, order_by="id desc")
