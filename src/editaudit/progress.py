"""Progress of long work as typed events, one callback shape for every service and every renderer.

A service calls ``progress(event)`` with a :class:`Stage` when a stage begins, :class:`Step` as it
advances and :class:`Note` for a line worth telling the user; the CLI draws rich bars and prints notes,
the app moves its progress bar. A renderer ignores what it does not show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union


@dataclass(frozen=True)
class Stage:
    """A stage begins (``total`` units of work, when known)."""

    name: str
    total: float | None = None


@dataclass(frozen=True)
class Step:
    """``done`` of ``total`` units of the named stage are finished."""

    stage: str
    done: float
    total: float | None = None

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total


@dataclass(frozen=True)
class Note:
    """A line for the user (what is being loaded, a fallback taken)."""

    text: str


Event = Union[Stage, Step, Note]
Progress = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The default callback: nobody is watching."""


def steps(progress: Progress, stage: str) -> Callable[[float, float | None], None]:
    """A ``(done, total)`` callback that reports Steps of ``stage`` (for helpers that count but do not name)."""
    return lambda done, total=None: progress(Step(stage, done, total))


def stage_steps(progress: Progress) -> Callable[[str, float, float | None], None]:
    """A ``(stage, done, total)`` callback for a service's internals: each new stage is announced with a
    :class:`Stage`, then every call is a :class:`Step`."""
    seen: set[str] = set()

    def emit(stage: str, done: float, total: float | None = None) -> None:
        if stage not in seen:
            seen.add(stage)
            progress(Stage(stage, total))
        progress(Step(stage, done, total))

    return emit
