"""``editaudit sessions`` and ``editaudit report``: what the store holds."""

from __future__ import annotations

import json

import typer
from rich.markup import escape
from rich.table import Table

from . import common


def register(app: typer.Typer) -> None:
    @app.command("sessions")
    def sessions(
        ctx: typer.Context,
        limit: int = typer.Option(50, help="How many of the newest sessions to list."),
        fmt: str = typer.Option("table", "--format", help="table or json."),
    ) -> None:
        """List stored sessions, newest first."""
        rows = common.state(ctx).store().sessions(limit=limit)
        if fmt == "json":
            common.out.print_json(json.dumps(rows, default=str))
            return
        table = Table("id", "kind", "status", "verdict", "created", "base", "suspect", title="sessions")
        for r in rows:
            table.add_row(*(escape(str(r.get(k) or "")) for k in ("id", "kind", "status", "verdict", "created", "base", "suspect")))
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
