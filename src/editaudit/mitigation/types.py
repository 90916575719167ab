"""What a mitigation run reports: progress events, one result per arm, and the run's result."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Union

from ..progress import Event
from .evidence import EditEvidence
from .plan import Plan


@dataclass(frozen=True)
class MitigationEvent:
    """What only a mitigation reports, next to the shared Stage/Step/Note (``editaudit.progress``) on one callback.

    ``plan`` {plan, evidence, revert}: what will run; ``start`` {method, layers, run_id}: an arm begins;
    ``loss`` {stage, step, total, loss}: a training (or unlearning) step's loss, sent with the Step of that
    stage; ``eval`` {step, val_loss, edited_retention, top3, …}: an evaluation's metrics; ``resume``
    {stage, step}: training continues from a saved step; ``result``: the arm's ``ArmResult.to_dict()``.
    ``arm`` names the arm ("" for the run as a whole). Renderers ignore the kinds they do not show.
    """

    kind: str
    arm: str = ""
    data: dict = field(default_factory=dict)


@dataclass
class ArmResult:
    name: str  # "selective", "full" (comparison) or "revert"
    method: str
    run_id: int | None
    layers: list[int]
    before: dict
    after: dict
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    stop_reason: str = ""
    merge_check: float | None = None
    residual: dict | None = None  # weight-space share of each edit still present (needs a base)
    reverted: list[dict] = field(default_factory=list)
    rescan: dict | None = None
    out: str | None = None
    seconds: float = 0.0
    project: dict | None = None  # the projection erase's report (per layer and subject)
    unlearn: dict | None = None  # the unlearning erase's report (steps, stop, targets)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MitigationResult:
    session_id: str | None
    goal: str
    suspect: str
    base: str | None
    out: str | None
    plan: Plan | None
    evidence: EditEvidence | None
    arms: dict[str, ArmResult]
    verification: dict
    task: dict
    skipped_files: list[str] = field(default_factory=list)
    main: bool = True  # False in the helper processes of `accelerate launch` (they report nothing)
    input: dict = field(default_factory=dict)  # the suspect: a checkpoint, or a peft adapter over its base
    output: dict = field(default_factory=dict)  # what was written: a merged checkpoint or an adapter (its ranks)

    def to_dict(self) -> dict:
        return {
            "schema": "editaudit.mitigation/1", "session_id": self.session_id, "goal": self.goal,
            "suspect": self.suspect, "base": self.base, "out": self.out,
            "plan": self.plan.to_dict() if self.plan else None,
            "evidence": self.evidence.to_dict() if self.evidence else None,
            "task": self.task, "arms": {k: v.to_dict() for k, v in self.arms.items()},
            "verification": self.verification, "skipped_files": self.skipped_files,
            "input": self.input, "output": self.output,
        }


#: the one callback a mitigation run reports through (as the study's ``StudyProgress``)
MitigationProgress = Callable[[Union[Event, MitigationEvent]], None]
