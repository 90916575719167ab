"""``editaudit sessions`` and ``editaudit report``: what the store holds."""

from __future__ import annotations

import json
from enum import Enum

import typer
from rich.markup import escape
from rich.table import Table

from . import common


class Fmt(str, Enum):
    rich = "rich"
    json = "json"


# The id starts with the local date and time the session was created, so the table shows no separate date
# (the JSON keeps every stored field).
COLUMNS = ("id", "kind", "status", "verdict", "suspect", "base")


def register(app: typer.Typer) -> None:
    @app.command("sessions")
    def sessions(
        ctx: typer.Context,
        limit: int = typer.Option(50, help="How many of the newest sessions to list."),
        fmt: Fmt = typer.Option(Fmt.rich, "--format", "-f", help="rich (terminal) or json."),
    ) -> None:
        """List stored sessions, newest first.

        A session still marked running whose process is gone from this host (killed, power loss) is
        listed as interrupted.
        """
        rows = common.state(ctx).store().sessions(limit=limit)
        if fmt == Fmt.json:
            common.out.file.write(json.dumps(rows, indent=2, default=str, ensure_ascii=False) + "\n")
            common.out.file.flush()
            return
        table = Table(title="sessions")
        # the id is what every other command takes: never cut it (fold it if the terminal is that narrow)
        table.add_column("id", no_wrap=True, overflow="fold", min_width=max((len(r["id"]) for r in rows), default=2))
        for name in COLUMNS[1:]:
            table.add_column(name, no_wrap=name in ("kind", "status", "verdict"), overflow="fold")
        for r in rows:
            table.add_row(*(escape(str(r.get(k) or "")) for k in COLUMNS))
        common.out.print(table)

    @app.command("report")
    def report(
        ctx: typer.Context,
        session_id: str = typer.Argument(..., help="Session id (a unique prefix is enough)."),
        fmt: str = typer.Option("md", "--format", "-f", help="json, md or html."),
        output: str = typer.Option(None, "-o", "--output", help="Write to this file instead of stdout."),
    ) -> None:
        """Print one stored session as JSON, Markdown or HTML."""
        from ..reports.session_report import render_session

        text = render_session(common.state(ctx).store(), session_id, fmt)
        if output:
            from pathlib import Path

            from ..atomic import atomic_write_text

            atomic_write_text(Path(output), text)
            common.say(f"wrote {output}")
        else:
            common.out.file.write(text if text.endswith("\n") else text + "\n")
