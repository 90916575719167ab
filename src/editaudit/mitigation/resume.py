"""Resumable state of a mitigation run: ``.<out>.resume/`` next to the output folder holds ``run.json`` (the
session, the arms' run ids, and the settings a resume must share: ``SAME_ON_RESUME``), each finished arm's result
(``<arm>.result.json``) and each training arm's last saved state (``<arm>/``, written by ``train.save_state`` and
read by ``train.load_state``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..errors import BadInput

#: run.json keys a resume must match, with their options: the training state's own key (``TrainConfig.key``)
#: leaves them out, and AdamW moments saved in float32 resumed in bfloat16 (or the reverse) silently change the run
SAME_ON_RESUME = {"dtype": "--dtype", "out_format": "--out-format"}


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


def check_same_run(saved: dict, current: dict, say: Callable[[str], None] = lambda s: None) -> None:
    """BadInput when a saved run was started with other ``SAME_ON_RESUME`` settings than ``current``."""
    for key, flag in SAME_ON_RESUME.items():
        if key not in saved:  # a state saved before editaudit recorded it
            say(f"the saved state does not record its {flag}; resuming with {flag} {current[key]}")
        elif saved[key] != current[key]:
            raise BadInput(f"the saved state of this run was made with {flag} {saved[key]}, not {current[key]}: "
                           f"resume with {flag} {saved[key]}, or start afresh without --resume")
