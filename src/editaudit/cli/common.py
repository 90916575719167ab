"""Things every command shares: consoles, the store, error handling, progress."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from ..progress import Event


def stdout_gone() -> None:
    """stdout's reader went away (``editaudit scan … -f json | head``): nothing more can be delivered (the work
    is kept: a scan is stored already). stdout is pointed at /dev/null so that the interpreter's last flush
    cannot fail again; the caller exits EXIT_PIPE, with no message, as other command-line tools do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is no real file (a test runner's capture): nothing to silence
        pass


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """rich's own answer to a closed stdout is exit 1, which means "edits found" here."""
        self.quiet = True
        stdout_gone()
        raise SystemExit(EXIT_PIPE)


# stdout carries data (reports); everything for the human watching goes to stderr.
out = _Console(highlight=False)
err = _Console(stderr=True, highlight=False)

EXIT_CLEAN, EXIT_FOUND, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_PIPE = 141  # stdout's reader went away (``| head``): 128 + SIGPIPE, as a shell reports a process it killed

DbOption = typer.Option(None, "--db", envvar="EDITAUDIT_DB", help="Session database (default: XDG data dir).")


class Dtype(str, Enum):
    """What a model runs in (models.loading.resolve_dtype)."""

    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


DtypeOption = typer.Option(Dtype.auto, "--dtype", help="Weights and compute dtype: auto (bfloat16 on a GPU that supports it, float32 on CPU), float32, bfloat16 or float16.")


class State:
    """Global options, kept on typer's context object."""

    def __init__(self) -> None:
        self.db: Path | None = None
        self.quiet = False
        self.debug = False

    def store(self):
        from ..store import Store

        return Store(self.db)


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    if obj is None:
        obj = ctx.find_root().obj = State()
    return obj


def say(msg: str) -> None:
    """A progress line for humans, on stderr, always escaped (messages may quote untrusted names)."""
    err.print(f"[dim]·[/] {escape(msg)}")


@contextmanager
def event_progress(quiet: bool = False) -> Iterator[Callable[[Event], None]]:
    """A rich progress display on stderr for the typed progress events (editaudit.progress): a bar per stage,
    notes printed as progress lines."""
    from ..progress import Note, Stage, Step

    with progress(quiet) as bar:
        tasks: dict[str, int] = {}

        def task(stage: str, total: float | None) -> int:
            if stage not in tasks:
                tasks[stage] = bar.add_task(escape(stage), total=total or None)
            return tasks[stage]

        def update(event: Event) -> None:
            if isinstance(event, Stage):
                bar.update(task(event.name, event.total), total=event.total or None)
            elif isinstance(event, Step):
                bar.update(task(event.stage, event.total), completed=event.done, total=event.total or None)
            elif isinstance(event, Note):
                say(event.text)

        yield update


@contextmanager
def progress(quiet: bool = False) -> Iterator[Progress]:
    """A rich progress display on stderr (none when stderr is not a terminal: a log would only get a blank line)."""
    bar = Progress(
        SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
        MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True, disable=quiet or not err.is_terminal,
    )
    with bar:
        yield bar
