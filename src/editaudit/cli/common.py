"""Things every command shares: consoles, the store, error handling, progress."""

from __future__ import annotations

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

# stdout carries data (reports); everything for the human watching goes to stderr.
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

EXIT_CLEAN, EXIT_FOUND, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130

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
