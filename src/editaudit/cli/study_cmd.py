"""``editaudit study run|status|report|merge``: the papers' experiments as a grid of stored, resumable cells."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import common

if TYPE_CHECKING:
    from ..progress import Event
    from ..study.config import StudyConfig
    from ..study.runner import StudyEvent

OutOption = typer.Option(None, "--out", "-o", help="Folder for activations, figures and the report (default: study-NAME).")
StoreOption = typer.Option(None, "--store", help="Study database (default: OUT/study.db; one per worker, then merge).")


def _paths(config: Path, out: Optional[Path], store: Optional[Path]):
    from ..study.config import load_config

    cfg = load_config(config)
    out = out or Path(f"study-{cfg.study.name}")
    return cfg, out, store or out / "study.db"


def _shard(text: Optional[str]) -> Optional[tuple[int, int]]:
    if text is None:
        return None
    from ..errors import BadInput

    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise BadInput(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise BadInput(f"--shard {text!r}: I must lie in 0..N-1")
    return i, n


@contextmanager
def _study_progress(cfg: StudyConfig) -> Iterator[Callable[[Event | StudyEvent], None]]:
    """Two bars for a study's events: the grid's cells, and whatever the current cell is doing.

    ``common.event_progress`` would give every stage its own bar, one per cell and step of a grid of hundreds;
    here each new stage takes over the second bar. Notes are printed as ``common.event_progress`` prints them,
    and each evaluation's validation loss gets a line. The bars stay when the study ends (not transient), so
    a long study's terminal or log keeps where it got to.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..progress import Note, Stage, Step
    from ..study.runner import StudyEvent, grid_stage

    grid_name = grid_stage(cfg)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=common.err, transient=False) as prog:
        grid = prog.add_task(escape(grid_name), total=None)
        inner = prog.add_task("", total=None, visible=False)

        def update(event: Event | StudyEvent) -> None:
            if isinstance(event, Stage):
                if event.name == grid_name:
                    prog.update(grid, total=event.total or None)
                else:
                    prog.update(inner, visible=True, completed=0, total=event.total or None,
                                description=f"  {escape(event.name)}")
            elif isinstance(event, Step):
                prog.update(grid if event.stage == grid_name else inner, completed=event.done,
                            total=event.total or None)
            elif isinstance(event, Note):
                common.say(event.text)
            elif isinstance(event, StudyEvent) and event.kind == "eval":
                prog.console.print(f"    step {event.data['step']:>3}  val {event.data['val_loss']:.3f}",
                                   highlight=False)

        yield update


def register(app: typer.Typer) -> None:
    study = typer.Typer(help="Studies: edit × fine-tune grids from a TOML file, resumable, with figures and a report.")
    app.add_typer(study, name="study")

    @study.command("run")
    def run(config: Path = typer.Argument(..., help="The study's TOML file (see studies/)."),
            out: Optional[Path] = OutOption, store: Optional[Path] = StoreOption,
            only: Optional[int] = typer.Option(None, "--only", min=1, help="Stop after this many cells ran."),
            shard: Optional[str] = typer.Option(None, "--shard", help="I/N: run worker I's share of N (0-based), "
                                                "with its own --store; merge the stores afterwards."),
            report: bool = typer.Option(True, "--report/--no-report", help="Write the report when the grid is done.")) -> None:
        """Run every cell not yet finished (a killed study resumes where it stopped)."""
        from ..store.studies import StudyStore
        from ..study.runner import run_study

        cfg, out, db = _paths(config, out, store)
        part = _shard(shard)
        st = StudyStore(db)
        with _study_progress(cfg) as progress:
            outcome = run_study(cfg, st, out, progress=progress, say=common.say, only=only, shard=part)
        common.out.print(f"{outcome.total} cells: {outcome.skipped} already done, {outcome.ran} ran, "
                         f"{len(outcome.failed)} failed ({outcome.seconds:.0f}s)")
        if report and part is None and not outcome.failed and outcome.skipped + outcome.ran == outcome.total:
            from ..study.report import write_report

            path = write_report(cfg, st, out)
            common.out.print(f"report: {path}")
        if outcome.failed:
            raise typer.Exit(common.EXIT_ERROR)

    @study.command("launch")
    def launch(config: Path = typer.Argument(..., help="The study's TOML file (see studies/)."),
               out: Optional[Path] = OutOption,
               workers: int = typer.Option(2, "--workers", "-n", min=1, help="Worker tasks, each a shard of the grid."),
               engine: str = typer.Option("local", "--engine", help="local (processes on this machine) or slurm "
                                          "(a job array submitted with sbatch)."),
               partition: Optional[str] = typer.Option(None, "--partition", help="Slurm partition."),
               gpus: int = typer.Option(0, "--gpus-per-worker", min=0, help="GPUs per worker task."),
               cpus: Optional[int] = typer.Option(None, "--cpus-per-worker", min=1, help="CPUs per worker task."),
               timeout_min: int = typer.Option(24 * 60, "--timeout-min", min=1, help="Each task's time limit."),
               wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for the tasks, merge their stores "
                                         "and write the report (--no-wait: submit and return)."),
               report: bool = typer.Option(True, "--report/--no-report", help="Write the report when the grid is done.")) -> None:
        """Run the grid as N worker tasks through submitit (a store per worker, merged into OUT/study.db)."""
        from ..store.studies import StudyStore
        from ..study.grid import expand
        from ..study.launch import launch_study

        cfg, out, db = _paths(config, out, None)
        res = launch_study(config, out, workers, engine, timeout_min=timeout_min, gpus_per_worker=gpus,
                           cpus_per_worker=cpus, partition=partition, wait=wait, say=common.say)
        if not res.waited:
            common.out.print(f"submitted {res.workers} task(s); when they end: editaudit study merge {db} "
                             f"{out / 'workers'}/w*.db")
            return
        total = len(expand(cfg))
        common.out.print(f"{total} cells: {res.ran} ran in {res.workers} worker(s), {res.skipped} already done, "
                         f"{len(res.failed)} failed; {res.merged} done in {db}")
        for line in res.failed:
            common.say(f"failed: {line}")
        if report and not res.failed and res.merged == total:
            from ..study.report import write_report

            common.out.print(f"report: {write_report(cfg, StudyStore(db), out)}")
        if res.failed:
            raise typer.Exit(common.EXIT_ERROR)

    @study.command("status")
    def status(config: Path = typer.Argument(...), out: Optional[Path] = OutOption,
               store: Optional[Path] = StoreOption) -> None:
        """How many cells of the study are done, running, failed or waiting."""
        from ..store.studies import StudyStore
        from ..study.grid import expand

        cfg, out, db = _paths(config, out, store)
        cells = expand(cfg)
        rows = {r["id"]: r for r in StudyStore(db).cells(cfg.study.name)} if db.exists() else {}
        table = Table("cell", "grid", "status", "steps", "seconds")
        counts: dict[str, int] = {}
        for cid, cell in cells:
            r = rows.get(cid)
            s = r["status"] if r else "waiting"
            counts[s] = counts.get(s, 0) + 1
            steps = ",".join(map(str, (r.get("metrics") or {}).get("steps", []))) if r else ""
            table.add_row(escape(cell.label()), cell.grid, s, steps, f"{r['seconds']:.0f}" if r and r["seconds"] else "")
        common.out.print(table)
        common.out.print(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))

    @study.command("report")
    def report_cmd(config: Path = typer.Argument(...), out: Optional[Path] = OutOption,
                   store: Optional[Path] = StoreOption,
                   to: Optional[Path] = typer.Option(None, "--to", help="Report folder (default: OUT/report).")) -> None:
        """Write report.md, summary.json and the figures (PNG and SVG) from the finished cells."""
        from ..store.studies import StudyStore
        from ..study.report import write_report

        cfg, out, db = _paths(config, out, store)
        if not db.exists():
            from ..errors import BadInput

            raise BadInput(f"no study store at {db}; run the study first")
        common.out.print(f"report: {write_report(cfg, StudyStore(db), out, to)}")

    @study.command("merge")
    def merge(into: Path = typer.Argument(..., help="The store to merge into (created if missing)."),
              sources: List[Path] = typer.Argument(..., help="Worker stores to copy finished cells from.")) -> None:
        """Merge the finished cells of worker stores (cell ids are content hashes, so nothing clashes)."""
        from ..errors import BadInput
        from ..store.studies import StudyStore

        st = StudyStore(into)
        for src in sources:
            if not src.is_file():
                raise BadInput(f"{src} is not a study store")
            common.out.print(f"{src}: {st.merge(src)} cell(s) copied")
