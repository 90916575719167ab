"""Probes: what each model answers (base, suspect, mitigated), side by side and coloured by agreement.

``r`` runs the chosen probe set on every model of the audit; ``d`` runs discovery (the fact bank and
the chosen set on base and suspect, ranked by how far each answer moved, using the scan's promoted
tokens and candidate subjects as hints). Runs are recorded in the audit's session, so they are part
of its report and reopen with it.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Header, ProgressBar, Select, Static

from ..fmt import pct, plain
from ..jobs import Job, Outcome, RunsJobs, describe_error
from ..paths import probe_sets
from ..store_views import (ProbeRow, ProbeRunView, answer_probability, mitigated_checkpoint, probe_rows, probe_runs,
                           session_row)
from ..theme import ERROR, SUCCESS, WARNING

KINDS = [("all kinds", "all"), ("edited", "edited"), ("intrinsic", "intrinsic"), ("neighbourhood", "neighbourhood")]
CATEGORY_STYLE = {"true target": SUCCESS, "edited target": f"bold {ERROR}", "related term": WARNING, "other": ""}
MODEL_ORDER = ["base", "suspect", "mitigated"]


class ProbesScreen(RunsJobs, Screen):
    BUSY = "probes are still running: c cancels them"
    BINDINGS = [
        Binding("r", "run", "run probes"),
        Binding("d", "discover", "discover"),
        Binding("f", "next_kind", "filter kind"),
        Binding("c", "cancel", "cancel"),
        Binding("e", "export", "export"),
        Binding("escape", "back", "back"),
    ]

    def __init__(self, sid: str, doc: dict | None = None) -> None:
        super().__init__()
        self.sid = sid
        self.doc = doc
        self.models: dict[str, str] = {}
        self.runs: list[ProbeRunView] = []
        self.rows: list[ProbeRow] = []
        self.shown: list[ProbeRow] = []
        self.discovery = False
        self.job: Job | None = None
        self.running = False
        self.state = "idle"  # idle | running | done | cancelled | failed

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="probe-controls"):
            yield Select([], id="probe-set", prompt="probe set", allow_blank=True, compact=True)
            yield Select(KINDS, value="all", allow_blank=False, id="kind-filter", compact=True)
            yield Button("Run probes", id="run", compact=True)
            yield Button("Discover", id="discover", compact=True)
        yield Static(id="probe-status")
        yield ProgressBar(id="probe-progress", show_eta=False)
        with Horizontal(id="probe-lower"):
            yield DataTable(id="probe-table", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="probe-detail"):
                yield Static(id="probe-detail-text")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "probes"
        self.query_one("#probe-table").border_title = "answers per model · P(answer)"
        self.query_one("#probe-detail").border_title = "probe"
        self.query_one("#probe-progress").display = False
        store = self.app.store  # type: ignore[attr-defined]
        row = session_row(store, self.sid)
        if self.doc is not None:
            self.models = {"base": self.doc["base"]["path"], "suspect": self.doc["suspect"]["path"]}
            mitigated = mitigated_checkpoint(store, self.doc["suspect"]["path"])
            if mitigated:
                self.models["mitigated"] = mitigated
        self._fill_sets(row.summary.get("probe_sets") or [])
        self.load()

    def _fill_sets(self, session_sets: list[str]) -> None:
        options: list[tuple[str, str]] = []
        for path in session_sets:
            options.append((f"{Path(path).name} (this audit)", str(path)))
        for name, path, count in probe_sets():
            if str(path) not in {v for _, v in options}:
                options.append((f"{name} ({count})", str(path)))
        select = self.query_one("#probe-set", Select)
        select.set_options(options)
        if options:
            select.value = options[0][1]

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action in ("run", "discover"):
            return bool(self.models) and not self.running
        if action == "cancel":
            return self.running
        return True

    # -- table ---------------------------------------------------------------------------------------
    def load(self) -> None:
        store = self.app.store  # type: ignore[attr-defined]
        runs = probe_runs(store, self.sid)
        order = {label: i for i, label in enumerate(MODEL_ORDER)}
        self.runs = sorted(runs, key=lambda r: order.get(r.label, len(order)))
        self.rows = probe_rows(store, self.runs)
        self.discovery = any("movement" in d for r in self.rows for d in r.by_run.values())
        if self.discovery:
            self.rows.sort(key=lambda r: -r.score())
        self.refresh_table()

    def refresh_table(self) -> None:
        table = self.query_one("#probe-table", DataTable)
        table.clear(columns=True)
        kind = str(self.query_one("#kind-filter", Select).value)
        columns = ["probe", "true → new"] + [r.label for r in self.runs] + ["agree", "kind", "prompt"]
        if self.discovery:
            columns.insert(0, "moved")
        self.shown = [r for r in self.rows if kind == "all" or r.kind == kind]
        body = [self._cells(row) for row in self.shown]
        # explicit widths: the table is rebuilt whenever the filter or the runs change
        for i, label in enumerate(columns):
            width = max([len(label)] + [row[i].cell_len for row in body])
            table.add_column(label, width=min(width, 40))
        for row, cells in zip(self.shown, body):
            table.add_row(*cells, key=row.id)
        self._status()

    def _cells(self, row: ProbeRow) -> list[Text]:
        base = row.by_run.get(self.runs[0].id) if self.runs else None
        cells = [plain(_clip(row.id, 22)),
                 plain(f"{row.target_true} → {row.target_new}" if row.target_new else row.target_true)]
        answers = []
        for run in self.runs:
            result = row.by_run.get(run.id)
            if result is None:
                cells.append(Text("-", style="dim"))
                continue
            answers.append((result.get("answer") or "").strip().casefold())
            cells.append(answer_cell(result, base, run is self.runs[0]))
        agree = len(set(answers)) <= 1
        cells.append(Text("=" if agree else "≠", style="dim" if agree else f"bold {ERROR}"))
        cells += [plain(row.kind, "dim"), plain(row.prompt, "dim")]
        if self.discovery:
            cells.insert(0, Text(f"{row.score():.2f}", style="bold" if row.score() >= 1 else "dim"))
        return cells

    def _status(self) -> None:
        status = self.query_one("#probe-status", Static)
        if self.running:
            return
        if not self.runs:
            hint = "No probe runs in this session yet." + (
                "  r runs the chosen set on " + ", ".join(self.models) + "; d discovers which facts moved."
                if self.models else "")
            status.update(Text(hint, style="dim"))
            return
        t = Text()
        for run in self.runs:
            s = run.summary
            t.append(f"{run.label} ", style="bold")
            parts = []
            for kind in ("intrinsic", "edited", "neighbourhood"):
                if kind in s:
                    parts.append(f"{kind} {pct(s[kind].get('retention_true'))} true" +
                                 (f", {pct(s[kind].get('retention_new'))} new" if s[kind].get("retention_new") is not None else ""))
            t.append(("; ".join(parts) or "-") + "   ", style="")
        t.append(f"· {len(self.shown)} of {len(self.rows)} probes shown", style="dim")
        status.update(t)

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "kind-filter":
            self.refresh_table()

    def action_next_kind(self) -> None:
        select = self.query_one("#kind-filter", Select)
        values = [v for _, v in KINDS]
        select.value = values[(values.index(str(select.value)) + 1) % len(values)]

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        row = next((r for r in self.shown if r.id == event.row_key.value), None)
        if row is not None:
            self.query_one("#probe-detail-text", Static).update(self._detail(row))

    def _detail(self, row: ProbeRow) -> Text:
        t = plain(row.id, "bold")
        t.append(f"  {row.kind}\n", style="dim")
        t.append_text(plain(row.prompt))
        t.append("\ntrue ", style="dim")
        t.append_text(plain(row.target_true, SUCCESS))
        if row.target_new:
            t.append("   new ", style="dim")
            t.append_text(plain(row.target_new, ERROR))
        t.append("\n")
        for run in self.runs:
            r = row.by_run.get(run.id)
            if r is None:
                continue
            t.append(f"\n{run.label}", style="bold")
            t.append("  answers ", style="dim")
            t.append_text(plain(r.get("answer") or "(nothing)", CATEGORY_STYLE.get(r.get("category"), "")))
            t.append(f"  ({r.get('category')})\n", style="dim")
            t.append("  top: ", style="dim")
            for tok, p in (r.get("top") or [])[:5]:
                t.append_text(plain(repr(str(tok).strip())))
                t.append(f" {float(p):.2f}  ", style="dim")
            t.append(f"\n  P(true) {_num(r.get('p_true'))}", style="dim")
            if r.get("p_new") is not None:
                t.append(f"  P(new) {_num(r.get('p_new'))}", style="dim")
            if r.get("continuation"):
                t.append("\n  continues ", style="dim")
                t.append_text(plain(repr(r["continuation"])))
            t.append("\n")
        return t

    # -- running ---------------------------------------------------------------------------------------
    def action_run(self) -> None:
        self._start("run")

    def action_discover(self) -> None:
        self._start("discover")

    def _start(self, mode: str) -> None:
        if self.running or not self.models:
            return
        chosen = self.query_one("#probe-set", Select).value
        set_path = None if chosen is Select.BLANK else str(chosen)
        if mode == "run" and set_path is None:
            self.notify("choose a probe set first", severity="warning")
            return
        models = dict(self.models) if mode == "run" else {k: self.models[k] for k in ("base", "suspect")}
        self.job = Job(self.app)
        self.running = True
        self.state = "running"
        self.refresh_bindings()
        self.query_one("#probe-progress").display = True
        self.query_one("#probe-status", Static).update(Text(f"{mode}: starting…", style="bold"))
        self._probe_worker(self.job, mode, set_path, models)

    @work(thread=True, exclusive=True, group="probes")
    def _probe_worker(self, job: Job, mode: str, set_path: str | None, models: dict[str, str]) -> None:
        outcome = job.run(lambda: self._probe(job, mode, set_path, models))
        job.ui(self._finished, outcome)

    def _probe(self, job: Job, mode: str, set_path: str | None, models: dict[str, str]) -> int:
        """Worker thread: the core's one job for each mode (probing.jobs, probing.discovery) runs every model and
        records all runs at once (a cancelled run records nothing); this screen only shows its progress."""
        from editaudit.probing.discovery import run_discovery
        from editaudit.probing.jobs import run_probe_job
        from editaudit.probing.service import dedupe
        from editaudit.probing.sets import FACT_BANK, load_set
        from editaudit.progress import Note, Step

        store = self.app.new_store()  # type: ignore[attr-defined]
        names = ([FACT_BANK] if mode == "discover" else []) + ([set_path] if set_path else [])
        probes = []
        for name in names:
            errors: list[str] = []
            probes += load_set(name, errors)
            for e in errors[:3]:
                job.ui(self._say, f"skipped: {e}")
        probes = dedupe(probes)
        set_names = [Path(n).stem if Path(n).is_file() else n for n in names]

        def on_event(event) -> None:
            if job.cancelled:
                raise KeyboardInterrupt
            if isinstance(event, Note):
                job.ui(self._say, event.text)
            elif isinstance(event, Step):
                job.throttled("progress", self._progress, event.stage, event.done, event.total or 0,
                              final=event.finished)

        if mode == "discover":
            run_discovery(models["suspect"], models["base"], probes, set_names, store=store, session_id=self.sid,
                          progress=on_event, cancelled=lambda: job.cancelled)
            return len(probes)
        run_probe_job(list(models.items()), probes, set_names, store=store, session_id=self.sid, progress=on_event,
                      cancelled=lambda: job.cancelled)
        return len(probes)

    def _say(self, text: str) -> None:
        self.query_one("#probe-status", Static).update(plain(text, "bold"))

    def _progress(self, stage: str, done: int, total: int) -> None:
        self.query_one("#probe-status", Static).update(Text.assemble((stage, "bold"), (f"  {done}/{total}", "dim"),
                                                                     ("   c cancels", "dim")))
        self.query_one("#probe-progress", ProgressBar).update(total=max(total, 1), progress=done)

    def _finished(self, outcome: Outcome) -> None:
        self.running = False
        self.refresh_bindings()
        self.query_one("#probe-progress").display = False
        if outcome.cancelled:
            self.state = "cancelled"
            self.notify("probing cancelled; nothing was recorded", severity="warning")
        elif outcome.error is not None:
            self.state = "failed"
            self.notify(describe_error(outcome.error), title="probes failed", severity="error", markup=False,
                        timeout=15)
        else:
            self.state = "done"
            self.notify(f"probed {outcome.result} facts on {len(self.models)} models")
        self.load()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "run":
            self.action_run()
        elif event.button.id == "discover":
            self.action_discover()

    def action_export(self) -> None:
        if not self.running:
            self.app.export_report(self.sid)  # type: ignore[attr-defined]

    def palette_commands(self):
        if self.running:
            return [("Cancel probes", "Stop probing (nothing is recorded)", self.action_cancel)]
        entries = [("Filter probes by kind", "Cycle all / edited / intrinsic / neighbourhood", self.action_next_kind),
                   ("Export report", "Write this session as Markdown, HTML or JSON", self.action_export)]
        if self.models:
            entries = [("Run probes", "Run the chosen set on " + ", ".join(self.models), self.action_run),
                       ("Discover moved facts", "Fact bank on base and suspect, ranked by movement",
                        self.action_discover)] + entries
        return entries


def answer_cell(result: dict, base: dict | None, is_base: bool) -> Text:
    """``Paris 0.83`` coloured by what the answer is (true target, edited target, …), bold when it
    disagrees with the base's answer."""
    answer = (result.get("answer") or "").strip()
    p = answer_probability(result)
    style = CATEGORY_STYLE.get(result.get("category") or "", "")
    if not is_base and base is not None and answer.casefold() != (base.get("answer") or "").strip().casefold():
        style = (style + " bold underline").strip()
    t = plain(answer or "∅", style)
    if p is not None:
        t.append(f" {p:.2f}", style="dim")
    return t


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _num(x) -> str:
    return "-" if x is None else f"{float(x):.3f}"
