"""Resumable state of a mitigation run: ``.<out>.resume/`` next to the output folder holds ``run.json`` (the
session and the arms' run ids), each finished arm's result (``<arm>.result.json``) and each training arm's
last saved state (``<arm>/``, written by ``train.save_state`` and read by ``train.load_state``)."""

from __future__ import annotations

import json
from pathlib import Path


def state_root(out: Path) -> Path:
    """Where the resumable state of a run writing ``out`` lives."""
    return out.parent / f".{out.name}.resume"


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json(path: Path, doc: dict) -> None:
    from ..atomic import atomic_write_text

    atomic_write_text(path, json.dumps(doc, default=str))
