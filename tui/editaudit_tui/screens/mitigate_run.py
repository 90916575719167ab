"""A mitigation run, live or stored: progress, loss and retention sparklines, the watched probes'
top-3 tokens, cancel; then the verification report (edits erased or kept, intrinsic retained,
downstream metric, before → after, per arm)."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import (
    Footer,
    Header,
    Label,
    ProgressBar,
    RichLog,
    Sparkline,
    Static,
)

from editaudit.mitigation.summary import kept_vs_full, verification_rows
from editaudit.mitigation.types import MitigationEvent
from editaudit.progress import Event, Note, Stage, Step

from ..fmt import pct, plain, short_path
from ..theme import ERROR, INK_LIGHT, PALETTE, SUCCESS, WARNING
from ..jobs import Job, Outcome, RunsJobs, describe_error
from ..store_views import mitigation_runs, session_row
from .mitigate import MitigationRequest, plan_text

CHARTS = {"loss": "loss", "edited": "edited facts → new answer", "intrinsic": "intrinsic facts retained"}


def _f(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def verification_view(v: dict, out: str | None = None) -> Group:
    """The verification report: the verdict, then before → after per arm."""
    head = Text.assemble((f" {v.get('verdict', '?')} ", f"bold {INK_LIGHT} on {PALETTE['banner']}"))
    if line := kept_vs_full(v):
        head.append(f"  {line}")
    names, rows = verification_rows(v)
    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    table.add_column("", style="dim", no_wrap=True)
    for name in names:
        table.add_column(name)
    for label, values in rows:
        table.add_row(label, *[plain(x) for x in values])
    parts: list = [head, Text(""), table]
    probes = v.get("probes") or {}
    if probes:
        parts.append(Text(f"\nprobes: {probes.get('edited', 0)} edited, {probes.get('intrinsic', 0)} intrinsic",
                          style="dim"))
    if out:
        parts.append(plain(f"wrote {out}", "dim"))
    return Group(*parts)


class MitigationScreen(RunsJobs, Screen):
    BUSY = "the run is still going: c cancels it"
    BINDINGS = [
        Binding("c", "cancel", "cancel run"),
        Binding("e", "export", "export"),
        Binding("escape", "back", "back"),
    ]

    def __init__(self, request: MitigationRequest | None = None, sid: str | None = None) -> None:
        super().__init__()
        self.request = request
        self.sid = sid
        self.job: Job | None = None
        self.running = False
        self.series: dict[str, list[float]] = {k: [] for k in CHARTS}
        self.total_steps = 0
        self.steps_done = 0
        self.result: dict | None = None
        self.state = "idle"  # idle | running | done | cancelled | failed | stored

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="run-head")
        with Vertical(id="run-progress"):
            yield Static(id="run-stage")
            yield ProgressBar(id="run-bar", show_eta=True)
        with Horizontal(id="charts"):
            for key, label in CHARTS.items():
                with Vertical():
                    yield Label(label, id=f"label-{key}", classes="chart-label")
                    yield Sparkline([], id=f"spark-{key}")
        with Horizontal(id="run-lower"):
            yield RichLog(id="run-log", wrap=True, markup=False, max_lines=1000)
            with VerticalScroll(id="verification"):
                yield Static(id="top3")
                yield Static(id="verify")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "mitigate"
        self.query_one("#charts").border_title = "watch the edits fade or hold"
        self.query_one("#verification").border_title = "verification"
        self.query_one("#run-log").border_title = "log"
        if self.request is not None:
            self.start(self.request)
        elif self.sid is not None:
            self.load_session(self.sid)

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "cancel":
            return self.running
        if action == "export":
            return self.sid is not None and not self.running
        return True

    # -- live run --------------------------------------------------------------------------------------
    def start(self, request: MitigationRequest) -> None:
        self.job = Job(self.app)
        self.running = True
        self.state = "running"
        self.refresh_bindings()
        how = "surgical revert" if request.revert else f"{request.method}, layers {request.layers}, {request.modules}"
        self.query_one("#run-head", Static).update(Text.assemble(
            (f" {request.goal.upper()} ", "bold reverse"), f"  {how}  ", plain(short_path(request.suspect)),
            (" → ", "dim"), plain(str(request.out))))
        self.query_one("#run-stage", Static).update(Text("starting…", style="dim"))
        self._run_worker(request, self.job)

    @work(thread=True, exclusive=True, group="mitigate")
    def _run_worker(self, request: MitigationRequest, job: Job) -> None:
        def run():
            from editaudit.mitigation.service import run_mitigation

            store = self.app.new_store()  # type: ignore[attr-defined]
            result = run_mitigation(request.suspect, request.goal, request.options(), store=store,
                                    progress=lambda ev: self._relay(job, ev), cancel=job.cancel,
                                    say=lambda s: job.ui(self._log, s))
            return result.to_dict()

        outcome = job.run(run)
        job.ui(self._finished, outcome)

    def _relay(self, job: Job, ev: Event | MitigationEvent) -> None:
        """From the worker thread: Steps and step losses are throttled (the last of a stage always goes through),
        everything else goes through."""
        if isinstance(ev, Step):
            job.throttled("step", self._step, ev, final=ev.finished)
        elif isinstance(ev, MitigationEvent) and ev.kind == "loss":
            job.throttled("loss", self._loss, dict(ev.data), final=ev.data.get("step") == ev.data.get("total"))
        else:
            job.ui(self._event, ev)

    def _event(self, ev: Stage | Note | MitigationEvent) -> None:
        if isinstance(ev, Stage):
            self._log(ev.name)
            self.query_one("#run-stage", Static).update(plain(ev.name, "bold"))
            if ev.total is not None:
                self.total_steps = int(ev.total)
                self.query_one("#run-bar", ProgressBar).update(total=max(self.total_steps, 1), progress=0)
        elif isinstance(ev, Note):
            self._log(ev.text)
        elif ev.kind == "start":
            self.series["loss"] = []  # the loss chart follows the arm that runs
        elif ev.kind == "plan":
            self.query_one("#top3", Static).update(Group(Text("plan", style="bold"), plan_text(
                ev.data.get("plan"), ev.data.get("evidence"), ev.data.get("revert", False))))
        elif ev.kind == "resume":
            self._log(f"{ev.arm}: resuming from step {ev.data.get('step')}")
        elif ev.kind == "eval":
            self._eval(ev.arm, dict(ev.data))
        elif ev.kind == "result":
            self._log(f"{ev.arm}: finished ({ev.data.get('stop_reason') or 'done'})")

    def _step(self, step: Step) -> None:
        self.steps_done = int(step.done)
        self.query_one("#run-bar", ProgressBar).update(total=max(int(step.total or 1), 1), progress=self.steps_done)

    def _loss(self, data: dict) -> None:
        self.series["loss"].append(float(data["loss"]))
        self._update_chart("loss", f"train loss {data['loss']:.3f} · step {data['step']}/{data['total']}")

    def _eval(self, arm: str, m: dict) -> None:
        line = f"{arm} step {m.get('step', 0)}"
        if "val_loss" in m:
            line += f"  val loss {m['val_loss']:.3f}"
        if "edited_retention" in m:
            self.series["edited"].append(float(m["edited_retention"]))
            self._update_chart("edited", f"edited facts → new answer {pct(m['edited_retention'])}")
            line += f"  edited {pct(m['edited_retention'])}"
        if "intrinsic_retention" in m:
            self.series["intrinsic"].append(float(m["intrinsic_retention"]))
            self._update_chart("intrinsic", f"intrinsic facts retained {pct(m['intrinsic_retention'])}")
            line += f"  intrinsic {pct(m['intrinsic_retention'])}"
        self._log(line)
        if m.get("top3"):
            self.query_one("#top3", Static).update(top3_view(m["top3"], m.get("step", 0)))

    def _note_missing_series(self) -> None:
        if not self.series["edited"]:
            self.query_one("#label-edited", Label).update(Text("edited facts: no edited probes to measure", style="dim"))
        if not self.series["intrinsic"]:
            self.query_one("#label-intrinsic", Label).update(Text("intrinsic facts: no intrinsic probes", style="dim"))

    def _update_chart(self, key: str, label: str) -> None:
        self.query_one(f"#spark-{key}", Sparkline).data = list(self.series[key])
        self.query_one(f"#label-{key}", Label).update(plain(label))

    def _log(self, line: str) -> None:
        self.query_one("#run-log", RichLog).write(plain(line))

    def _finished(self, outcome: Outcome) -> None:
        self.running = False
        self.refresh_bindings()
        stage = self.query_one("#run-stage", Static)
        if outcome.cancelled:
            self.state = "cancelled"
            stage.update(Text("cancelled: nothing was written; the session is kept as interrupted "
                              "(editaudit mitigate … --resume continues it)", style=f"bold {WARNING}"))
            self._log("cancelled")
            return
        if outcome.error is not None:
            self.state = "failed"
            stage.update(plain(f"failed: {describe_error(outcome.error)}", f"bold {ERROR}"))
            self._log(describe_error(outcome.error))
            return
        self.state = "done"
        self._note_missing_series()
        doc = outcome.result
        self.result = doc
        self.sid = doc.get("session_id")
        stage.update(Text("done", style=f"bold {SUCCESS}"))
        self.query_one("#verify", Static).update(verification_view(doc.get("verification", {}), doc.get("out")))
        self.refresh_bindings()

    # -- stored session --------------------------------------------------------------------------------
    def load_session(self, sid: str) -> None:
        store = self.app.store  # type: ignore[attr-defined]
        row = session_row(store, sid)
        self.state = "stored"
        runs = mitigation_runs(store, sid)
        self.query_one("#run-head", Static).update(Text.assemble(
            (f" {row.status.upper()} ", "bold reverse"), "  ", plain(row.title), ("  session ", "dim"),
            plain(row.id, "dim")))
        self.query_one("#run-progress").display = False
        for run in runs:
            self._log(f"run {run.id} ({run.arm}): {run.method}, layers {run.layers}, task {run.task}, {run.status}")
            for step, value in run.history.get("val_loss", []):
                self._log(f"  step {step}: val loss {value:.3f}")
        main = next((r for r in runs if r.arm in ("selective", "revert", "project", "unlearn", "project+unlearn")),
                    runs[0] if runs else None)
        if main is not None:
            self.series["loss"] = [v for _, v in main.history.get("val_loss", [])]
            self.series["edited"] = [v for _, v in main.history.get("edited_retention", [])]
            self.series["intrinsic"] = [v for _, v in main.history.get("intrinsic_retention", [])]
            if self.series["loss"]:
                self._update_chart("loss", f"val loss {self.series['loss'][0]:.3f} → {self.series['loss'][-1]:.3f}")
            if self.series["edited"]:
                e = self.series["edited"]
                self._update_chart("edited", f"edited facts → new answer {pct(e[0])} → {pct(e[-1])}")
            if self.series["intrinsic"]:
                i = self.series["intrinsic"]
                self._update_chart("intrinsic", f"intrinsic facts retained {pct(i[0])} → {pct(i[-1])}")
            if main.top3:
                last = max(main.top3)
                self.query_one("#top3", Static).update(top3_view(main.top3[last], last))
        self._note_missing_series()
        if row.summary and "arms" in row.summary:
            out = main.out if main is not None else None
            self.query_one("#verify", Static).update(verification_view(row.summary, out))
        else:
            self.query_one("#verify", Static).update(Text(f"no verification: the run is {row.status}", style="dim"))

    # -- actions ---------------------------------------------------------------------------------------
    def cancelling(self) -> None:
        self.query_one("#run-stage", Static).update(Text("cancelling at the next step…", style=f"bold {WARNING}"))

    def action_export(self) -> None:
        if self.sid and not self.running:
            self.app.export_report(self.sid)  # type: ignore[attr-defined]

    def palette_commands(self):
        if self.running:
            return [("Cancel run", "Stop the mitigation at the next step", self.action_cancel)]
        return [("Export report", "Write this session as Markdown, HTML or JSON", self.action_export)] if self.sid else []


def top3_view(top3: dict, step: int) -> Text:
    t = Text()
    t.append(f"watched probes at step {step}: top-3 next tokens\n", style="bold")
    for pid, rows in top3.items():
        t.append_text(plain(f"{pid}: "))
        for tok, prob in rows:
            t.append_text(plain(repr(str(tok).strip())))
            t.append(f" {prob:.2f}  ", style="dim")
        t.append("\n")
    return t
