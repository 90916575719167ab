"""``editaudit demo``: the whole story on the embedded default model, in a few minutes on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import common


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        ctx: typer.Context,
        workdir: Optional[Path] = typer.Option(None, "--workdir", help="Where the suspect checkpoint goes (default: the cache)."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, … (default: cuda if available)."),
    ) -> None:
        """Plant hidden ROME and MEMIT edits in SmolLM2-135M, scan the result blind, and compare with the truth.

        Fetches and converts the model on first use. Everything is stored as one session.
        """
        from ..demo import run_demo
        from ..paths import cache_dir
        from .scan_view import render

        workdir = workdir or cache_dir() / "demo"
        store = common.state(ctx).store()
        with common.event_progress() as on_progress:
            result = run_demo(store, workdir, say=common.say, progress=on_progress, device=device)
        render(result["report"], common.out)
        truth = Table(title="the truth beside what the blind scan found", expand=True)
        truth.add_column("method", no_wrap=True)
        truth.add_column("layers", no_wrap=True)
        truth.add_column("fact (true → new)", ratio=1)
        for label in ("took", "layer"):
            truth.add_column(label, no_wrap=True, justify="center")
        truth.add_column("read blind (no list)", ratio=1, overflow="fold")
        for label in ("object", "rank"):
            truth.add_column(label, no_wrap=True, justify="center")
        yes = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}
        for r in result["truth"]:
            layers = f"{r['layers'][0]}" if len(r["layers"]) == 1 else f"{r['layers'][0]}–{r['layers'][-1]}"
            truth.add_row(
                r["method"].upper(), layers,
                escape(f"{r['prompt']} {r['target_true']} → {r['target_new']}"),
                yes[r["edit_succeeded"]], yes[r["layer_found"]],
                escape(r.get("read_open") or "-") if r.get("object_open") else "[red]no[/]",
                yes[r["object_read"]],
                str(r["subject_rank"]) if r["subject_rank"] else "-",
            )
        common.out.print(truth)
        s = result["scores"]
        common.out.print(
            f"edits {s['edits']} · layers found {s['layer_found']:.0%} · read blind (subject and object, no list) "
            f"{s.get('object_open', 0):.0%} · new object read {s['object_read']:.0%}"
            f" · subject ranked at the top {s['subject_top']:.0%} · {result['seconds']:.0f}s"
        )
        common.out.print(f"[dim]suspect checkpoint: {escape(result['suspect'])}\n"
                         f"session {result['session_id']}: editaudit report {result['session_id']} --format md[/]")
