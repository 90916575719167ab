"""``editaudit editors train mend|malmen BASE``: train (or find cached) a hypernetwork editor for a base model."""

from __future__ import annotations

import json
import time
from enum import Enum
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import common


class Editor(str, Enum):
    mend = "mend"
    malmen = "malmen"


class Fmt(str, Enum):
    rich = "rich"
    json = "json"


def register(app: typer.Typer) -> None:
    editors = typer.Typer(help="Hypernetwork editors (MEND, MALMEN): train them for a base model.",
                          no_args_is_help=True)
    app.add_typer(editors, name="editors")

    @editors.command("train")
    def train(
        method: Editor = typer.Argument(..., help="mend or malmen."),
        base: str = typer.Argument(..., help="Base model: a safetensors model folder or a model name (smollm2-135m)."),
        steps: Optional[int] = typer.Option(None, "--steps", help="Training steps (default 1000)."),
        batch: Optional[int] = typer.Option(None, "--batch", help="Edits per step (default 8)."),
        span: Optional[int] = typer.Option(None, "--span", help="Edit the MLP output matrices of the last N layers (default 3)."),
        sources: Optional[str] = typer.Option(None, "--sources", help="Edit data: bank, factbook or bank,factbook (default)."),
        retrain: bool = typer.Option(False, "--retrain", help="Train again even if a cached editor or checkpoint exists."),
        threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda … (default: cuda when present)."),
        fmt: Fmt = typer.Option(Fmt.rich, "--format", "-f", help="rich (terminal) or json on stdout."),
    ) -> None:
        """Train a MEND or MALMEN editor on edit data built offline (held-apart subjects excluded).

        The editor is cached under the user cache folder, keyed by the base's weight hash, the data's hash and
        the settings; a later run (or `editaudit edit --method mend|malmen`) finds it. Training checkpoints
        every 50 steps: interrupted, the same command resumes where it stopped.

        Exit codes: 0 done, 2 bad input or error, 130 interrupted.
        """
        import dataclasses

        import torch

        from ..editing.hypernet import TrainSettings, train_editor
        from ..errors import BadInput
        from ..models.loading import load_model
        from ..progress import Event, Step

        if threads is not None:
            if threads < 1:
                raise BadInput("--threads must be at least 1")
            torch.set_num_threads(threads)
        changes: dict = {}
        for key, value in (("steps", steps), ("batch", batch), ("span", span)):
            if value is not None:
                changes[key] = value
        if sources is not None:
            changes["sources"] = tuple(s.strip() for s in sources.split(",") if s.strip())
        settings = dataclasses.replace(TrainSettings(), **changes)
        lm = load_model(base, device=device, say=common.say)
        t0 = time.perf_counter()
        logged = {"t": 0.0}

        with common.event_progress() as update:
            def on_progress(event: Event) -> None:
                update(event)
                now = time.perf_counter()
                # no bar without a terminal: a line a minute (and at each stage's end) for the log instead
                if (isinstance(event, Step) and not common.err.is_terminal
                        and (now - logged["t"] > 60 or event.finished)):
                    logged["t"] = now
                    common.say(f"{event.stage}: {event.done:.0f}/{event.total or 0:.0f} ({now - t0:.0f} s)")

            trained = train_editor(lm, method.value, settings, retrain=retrain, progress=on_progress,
                                   say=common.say)
        meta = trained.meta
        if fmt == Fmt.json:
            common.out.file.write(json.dumps({"folder": str(trained.folder), "cached": trained.from_cache, **meta},
                                             indent=2, default=str) + "\n")
            common.out.file.flush()
            return
        v = meta.get("validation") or {}
        table = Table(title=f"{method.value.upper()} editor · layers {meta['layers'][0]}–{meta['layers'][-1]}",
                      title_justify="left")
        for col in ("steps", "train s", "prep s", "val cases", "edit", "rephrase", "locality kept"):
            table.add_column(col)
        pct = lambda x: "-" if x is None else f"{x:.0%}"  # noqa: E731
        table.add_row(str(meta["steps"]), f"{meta['train_seconds']:.0f}", f"{meta['prep_seconds']:.0f}",
                      str(v.get("cases", "-")), pct(v.get("edit_success")), pct(v.get("rephrase_success")),
                      pct(v.get("locality_kept")))
        common.out.print(table)
        where = "cached" if trained.from_cache else "trained"
        common.out.print(f"[dim]{where}: {escape(str(trained.folder))}[/]")
