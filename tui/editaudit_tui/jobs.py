"""Long work off the event loop: a cancel flag for the services, and progress relayed to the UI thread.

The services (scan, probes, mitigation) take a ``threading.Event`` to stop and call back with
progress from the worker thread. ``Job`` owns the event and forwards callbacks with
``App.call_from_thread``, throttled so that a scan reporting every tensor cannot flood the UI.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from textual.app import App


@dataclass
class Outcome:
    """How a job ended: a result, an error the user can act on, or a cancellation."""

    result: Any = None
    error: BaseException | None = None
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.cancelled


class Job:
    """One piece of long work: its cancel flag and a thread-safe way to update the UI."""

    def __init__(self, app: App, min_interval: float = 0.05) -> None:
        self.app = app
        self.cancel = threading.Event()
        self.min_interval = min_interval
        self._last: dict[str, float] = {}
        registry = getattr(app, "jobs", None)
        if registry is not None:
            registry.add(self)  # so that quitting the app stops every job

    @property
    def cancelled(self) -> bool:
        return self.cancel.is_set()

    def ui(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the UI thread; dropped quietly once the app has stopped."""
        try:
            self.app.call_from_thread(fn, *args)
        except RuntimeError:
            pass  # the app is shutting down; the job sees its cancel flag next

    def throttled(self, key: str, fn: Callable[..., Any], *args: Any, final: bool = False) -> None:
        """Like ``ui`` but at most once per ``min_interval`` per key (``final`` always goes through)."""
        now = time.monotonic()
        if not final and now - self._last.get(key, 0.0) < self.min_interval:
            return
        self._last[key] = now
        self.ui(fn, *args)

    def run(self, fn: Callable[[], Any]) -> Outcome:
        """Call ``fn`` and capture how it ended (meant to run inside a thread worker)."""
        try:
            return Outcome(result=fn())
        except KeyboardInterrupt:  # the services raise it (or a subclass) when the cancel flag is set
            return Outcome(cancelled=True)
        except Exception as exc:  # shown to the user; the store records the run as failed
            return Outcome(error=exc)


def describe_error(exc: BaseException) -> str:
    """A one-paragraph message for the user: the service's own words for input errors, else the type."""
    from editaudit.errors import EditauditError, IncompatibleCheckpoints

    if isinstance(exc, IncompatibleCheckpoints):
        extra = "".join(f"\n  - {d}" for d in exc.differences[:8])
        more = f"\n  … and {len(exc.differences) - 8} more" if len(exc.differences) > 8 else ""
        return f"{exc}{extra}{more}"
    if isinstance(exc, EditauditError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class RunsJobs:
    """Mixin for screens that run one job at a time: ``c`` cancels it, leaving is refused while it runs,
    and closing the screen stops it. Screens set ``BUSY`` (the warning) and may override ``cancelling``."""

    BUSY = "work is still running: c cancels it"
    job: Job | None = None
    running: bool = False

    def cancelling(self) -> None:
        """Shown once the cancel flag is set (the service stops at its next check)."""

    def action_cancel(self) -> None:
        if self.job is not None and self.running:
            self.job.cancel.set()
            self.cancelling()

    def action_back(self) -> None:
        if self.running:
            self.notify(self.BUSY, severity="warning")  # type: ignore[attr-defined]
            return
        self.dismiss()  # type: ignore[attr-defined]

    def on_unmount(self) -> None:
        if self.job is not None:
            self.job.cancel.set()
