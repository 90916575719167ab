"""Entry point: ``editaudit`` with no command opens the app; with a command, runs headless.

The core never imports the UI: the app is found through the ``editaudit.ui`` entry-point group,
which the ``editaudit_tui`` package registers.
"""

from __future__ import annotations

import os
import sys
import traceback
from importlib import metadata
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .. import __version__
from ..errors import EditauditError, IncompatibleCheckpoints
from . import common


def _framework_exceptions() -> tuple[tuple, tuple, tuple]:
    """(exit, abort, error) exception types of typer's command framework: click's, or, from typer 0.2x on,
    typer's own vendored copy of it (both when both are around)."""
    exits, aborts, errors = [typer.Exit], [typer.Abort], []
    if hasattr(typer, "TyperException"):
        errors.append(typer.TyperException)
    try:
        import click
    except ImportError:  # pragma: no cover - newer typer does not need click
        pass
    else:
        exits.append(click.exceptions.Exit)
        aborts.append(click.exceptions.Abort)
        errors.append(click.exceptions.ClickException)
    return tuple(exits), tuple(aborts), tuple(errors)


_EXIT, _ABORT, _FRAMEWORK_ERROR = _framework_exceptions()


class _Group(typer.core.TyperGroup):
    """Turns editaudit's errors into clear messages and its exit codes, however the app is invoked.

    Exit 1 belongs to ``scan`` ("edits found") alone: an input error, a bug or any other unexpected
    exception exits 2 with one line on stderr (the traceback with ``--debug``), an interrupt 130.
    """

    def invoke(self, ctx):  # type: ignore[override]
        try:
            try:
                return super().invoke(ctx)
            finally:  # a report still in the buffer meets a closed pipe here, not in click's own handler
                sys.stdout.flush()
        except BrokenPipeError:
            common.stdout_gone()
            ctx.exit(common.EXIT_PIPE)
        except IncompatibleCheckpoints as exc:
            common.err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
            for line in exc.differences[:200]:
                common.err.print(f"  - {escape(line)}", soft_wrap=True)
            if len(exc.differences) > 200:
                common.err.print(f"  … and {len(exc.differences) - 200} more")
            ctx.exit(common.EXIT_ERROR)
        except EditauditError as exc:
            _debug_traceback(ctx)
            common.err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
            ctx.exit(common.EXIT_ERROR)
        except KeyboardInterrupt:
            common.err.print("[yellow]interrupted[/]")
            ctx.exit(common.EXIT_INTERRUPTED)
        except _EXIT:  # typer.Exit / ctx.exit: the command chose its code
            raise
        except _ABORT:  # Ctrl-C or end of input at a prompt
            common.err.print("[yellow]interrupted[/]")
            ctx.exit(common.EXIT_INTERRUPTED)
        except _FRAMEWORK_ERROR as exc:
            if getattr(exc, "exit_code", 1) != 1:  # usage errors exit 2 already
                raise
            common.err.print(f"[bold red]error:[/] {escape(exc.format_message())}", soft_wrap=True)
            ctx.exit(common.EXIT_ERROR)
        except Exception as exc:  # a bug or an environment problem: never exit 1, never a bare traceback
            _unexpected(exc, common.state(ctx).debug)
            ctx.exit(common.EXIT_ERROR)


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    if len(msg) > 400:
        msg = msg[:399] + "…"
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _unexpected(exc: BaseException, debug: bool) -> None:
    if debug:
        sys.stderr.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        common.err.print(f"[bold red]error:[/] {escape(_one_line(exc))}", soft_wrap=True)
    else:
        common.err.print(f"[bold red]error:[/] {escape(_one_line(exc))} (run with --debug for the traceback)",
                         soft_wrap=True)


def _debug_traceback(ctx: typer.Context) -> None:
    """With --debug, an input error's traceback too (where in editaudit it was raised)."""
    if common.state(ctx).debug:
        sys.stderr.write(traceback.format_exc())


app = typer.Typer(
    cls=_Group,
    name="editaudit",
    help=(
        "Find, read and mitigate knowledge edits in LLM checkpoints.\n\n"
        "Run with no command to open the interactive app. Headless, start with:\n\n"
        "* `editaudit demo` — the whole story on the embedded SmolLM2-135M\n"
        "* `editaudit scan SUSPECT --base BASE` — edited? where? what does each edit promote?\n"
        "* `editaudit probe MODEL --compare OTHER` — what each model states\n"
        "* `editaudit mitigate SUSPECT --goal erase` — erase the edits the scan read, without the base, verified\n\n"
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
    debug: bool = typer.Option(False, "--debug", envvar="EDITAUDIT_DEBUG",
                               help="Show the Python traceback of an unexpected error."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    st = common.state(ctx)
    st.db = db
    st.debug = debug
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
    from . import demo_cmd, edit_cmd, mitigate_cmd, models_cmd, probe_cmd, scan_cmd, sessions_cmd, study_cmd

    for module in (scan_cmd, sessions_cmd, models_cmd, probe_cmd, edit_cmd, mitigate_cmd, demo_cmd, study_cmd):
        module.register(app)
    from . import editors_cmd

    editors_cmd.register(app)


_register()


def run() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # raised outside a command (e.g. while importing)
        common.err.print("[yellow]interrupted[/]")
        sys.exit(common.EXIT_INTERRUPTED)
    except Exception as exc:  # raised outside a command: still exit 2, never 1
        debug = "--debug" in sys.argv[1:] or os.environ.get("EDITAUDIT_DEBUG", "").lower() in ("1", "true", "yes")
        _unexpected(exc, debug)
        sys.exit(common.EXIT_ERROR)
