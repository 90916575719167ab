"""The run context: everything one mitigation run's arms share, in one object instead of long parameter lists.

``Runs`` binds the store and the session for the arms' ``finetune_runs`` rows (the SQL is in
``store/mitigation_runs.py``). ``RunContext.stage/note/event`` are how the arms report (``types.MitigationEvent``).
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..progress import Event, Note, Progress, Stage, Step
from ..store import mitigation_runs
from .types import MitigationEvent, MitigationProgress


@dataclass
class Runs:
    """The arms' rows in the store for one session (no-ops without a store)."""

    store: Any = None
    session_id: str | None = None
    goal: str = "erase"

    def start(self, arm: str, method: str, layers: list[int], task: str, config: dict, out) -> int | None:
        return mitigation_runs.start_run(self.store, self.session_id, arm, self.goal, method, layers, task, config, out)

    def reopen(self, run_id: int | None) -> bool:
        """Mark a stored arm running again (resume); False when there is no such row."""
        if not mitigation_runs.exists(self.store, run_id):
            return False
        mitigation_runs.mark_run(self.store, run_id, "running")
        return True

    def finish(self, run_id: int | None, result: dict) -> None:
        mitigation_runs.finish_run(self.store, run_id, result)

    def record_eval(self, run_id: int | None, metrics: dict) -> None:
        mitigation_runs.record_eval(self.store, run_id, metrics)

    def marked_on_failure(self, run_id: int | None) -> AbstractContextManager:
        return mitigation_runs.marked_on_failure(self.store, run_id)


@dataclass
class RunContext:
    """One run: checkpoints, evidence, options, where it writes, how it reports and how it is stopped."""

    suspect_ck: Any
    base_ck: Any
    evidence: Any  # EditEvidence | None
    goal: str
    options: Any  # MitigationOptions
    out: Path
    runs: Runs
    emit: MitigationProgress = lambda ev: None
    say: Callable[[str], None] = lambda s: None
    cancel: threading.Event | None = None
    evaluate: Callable | None = None
    state_root: Path | None = None
    run_state: dict = field(default_factory=dict)
    resume: bool = False
    main: bool = True
    output: dict = field(default_factory=dict)  # what the main arm wrote (output.write_result)

    def load(self, where: Any) -> Any:
        """The model at ``where`` (the suspect, or what a run wrote) in the run's dtype and device. A suspect shipped
        without a tokenizer is run with its base's, when a base is given."""
        from ..models.loading import load_model

        fallback = self.base_ck.folder if self.base_ck is not None and self.base_ck.config is not None else None
        return load_model(where, dtype=self.options.dtype, device=self.options.device, say=self.say,
                          tokenizer_fallback=fallback)

    def stage(self, text: str, total: int | None = None, arm: str = "") -> str:
        """Begin a stage; returns its name for the Steps. Named after its arm (two arms never share a stage
        name); a counted stage starts at Step 0 so a display shows "0 of total" before the first step ends."""
        name = f"{arm}: {text}" if arm else text
        self.emit(Stage(name, total))
        if total is not None:
            self.emit(Step(name, 0, total))
        return name

    def steps_in(self, stage: str) -> Progress:
        """A callback for a helper that announces its own stage (``surgical_revert``, ``erase_by_projection``):
        its Steps count in the arm's ``stage``, its Notes pass, its own Stage is dropped."""
        def forward(event: Event) -> None:
            if isinstance(event, Step):
                self.emit(Step(stage, event.done, event.total))
            elif isinstance(event, Note):
                self.emit(event)

        return forward

    def note(self, text: str) -> None:
        self.emit(Note(text))

    def event(self, kind: str, arm: str = "", data: dict | None = None) -> None:
        """Report what only a mitigation has (see ``MitigationEvent`` for the kinds)."""
        self.emit(MitigationEvent(kind, arm, data or {}))
