"""Entry point: ``editaudit`` with no command opens the app; with a command, runs headless.

The core never imports the UI: the app is found through the ``editaudit.ui`` entry-point group,
which the ``editaudit_tui`` package registers.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .. import __version__
from ..errors import EditauditError, IncompatibleCheckpoints
from . import common

class _Group(typer.core.TyperGroup):
    """Turns editaudit's errors into clear messages and its exit codes, however the app is invoked."""

    def invoke(self, ctx):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except IncompatibleCheckpoints as exc:
            common.err.print(f"[bold red]error:[/] {escape(str(exc))}")
            for line in exc.differences[:200]:
                common.err.print(f"  - {escape(line)}")
            if len(exc.differences) > 200:
                common.err.print(f"  … and {len(exc.differences) - 200} more")
            ctx.exit(common.EXIT_ERROR)
        except EditauditError as exc:
            common.err.print(f"[bold red]error:[/] {escape(str(exc))}")
            ctx.exit(common.EXIT_ERROR)
        except KeyboardInterrupt:
            common.err.print("[yellow]interrupted[/]")
            ctx.exit(common.EXIT_INTERRUPTED)


app = typer.Typer(
    cls=_Group,
    name="editaudit",
    help=(
        "Find, read and mitigate knowledge edits in LLM checkpoints.\n\n"
        "Run with no command to open the interactive app. Headless, start with:\n\n"
        "* `editaudit demo` — the whole story on the embedded SmolLM2-135M\n"
        "* `editaudit scan SUSPECT --base BASE` — edited? where? what does each edit promote?\n"
        "* `editaudit probe MODEL --compare OTHER` — what each model states\n"
        "* `editaudit mitigate SUSPECT --goal erase` — fine-tune the edits away, verified\n\n"
        "Models are safetensors folders or files, or the embedded default's name (smollm2-135m)."
    ),
    no_args_is_help=False,
    invoke_without_command=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        common.out.print(f"editaudit {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    db: Optional[Path] = common.DbOption,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    st = common.state(ctx)
    st.db = db
    if ctx.invoked_subcommand is None:
        _launch_app(db)


def _launch_app(db: Path | None) -> None:
    uis = metadata.entry_points(group="editaudit.ui")
    if not uis:
        common.err.print("The interactive app is not installed; see `editaudit --help` for headless commands.")
        raise typer.Exit(common.EXIT_ERROR)
    launch = next(iter(uis)).load()
    raise typer.Exit(launch(db=db) or 0)


def _register() -> None:
    """Each command lives in its own module; importing them is cheap (heavy libraries load inside commands)."""
    from . import demo_cmd, edit_cmd, mitigate_cmd, models_cmd, probe_cmd, scan_cmd, sessions_cmd

    for module in (scan_cmd, sessions_cmd, models_cmd, probe_cmd, edit_cmd, mitigate_cmd, demo_cmd):
        module.register(app)


_register()


def run() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # raised outside a command (e.g. while importing)
        common.err.print("[yellow]interrupted[/]")
        sys.exit(common.EXIT_INTERRUPTED)
