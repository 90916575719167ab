"""The scan of an audit: the verdict, the layer × module heat map, the findings, and a detail pane
with the singular-value spectrum of the selected matrix and what the edit promotes.

The screen either runs a new scan (in a thread worker, with progress and cancel) or shows a stored
session's scan straight from the store.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Group
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, ProgressBar, RichLog, Static

from editaudit.scan.wording import headline, nothing_found, open_reading, subject_reading, without_base

from ..fmt import ROLE_LABEL, plain
from ..jobs import Job, Outcome, RunsJobs, describe_error
from ..store_views import (
    FindingRow,
    finding_rows,
    likely_editor,
    map_roles,
    scan_document,
    session_row,
    tensors_by_name,
)
from ..theme import LEVEL_STYLE, SUCCESS, VERDICT_STYLE, WARNING
from ..widgets.heatmap import LayerHeatMap
from ..widgets.spectrum import SpectrumPlot
from .new_audit import AuditRequest

STAGES = {"compare": "comparing tensors byte for byte", "analyse": "spectra of the changed matrices",
          "subjects": "ranking candidate subjects",
          "subject search, second try": "subject search: a second try, seeds tried"}


class ScanScreen(RunsJobs, Screen):
    BUSY = "the scan is still running: c cancels it"
    BINDINGS = [
        Binding("t", "toggle_metric", "colour: change ↔ low-rank"),
        Binding("p", "probes", "probes"),
        Binding("m", "mitigate", "mitigate"),
        Binding("e", "export", "export"),
        Binding("c", "cancel", "cancel scan"),
        Binding("escape", "back", "sessions"),
    ]

    def __init__(self, sid: str | None = None, request: AuditRequest | None = None) -> None:
        super().__init__()
        self.sid = sid
        self.request = request
        self.doc: dict | None = None
        self.rows: list[FindingRow] = []
        self.job: Job | None = None
        self.running = False

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="scan-running"):
            yield Static(id="stage")
            yield ProgressBar(id="progress", show_eta=False)
            yield RichLog(id="scan-log", wrap=True, markup=False, max_lines=500)
        with Vertical(id="scan-result"):
            yield Static(id="banner")
            with Vertical(id="map-box"):
                yield LayerHeatMap(id="heatmap")
            with Horizontal(id="lower"):
                yield DataTable(id="findings", cursor_type="row", zebra_stripes=True)
                with VerticalScroll(id="detail"):
                    yield Static(id="detail-title")
                    yield SpectrumPlot(id="spectrum")
                    yield Static(id="detail-text")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "scan"
        self.query_one("#map-box").border_title = "layer × module"
        self.query_one("#findings", DataTable).border_title = "findings"
        self.query_one("#detail").border_title = "detail"
        table = self.query_one("#findings", DataTable)
        table.add_columns("rule", "layers", "matrix", "kind", "rank", "reading", "lens")
        if self.request is not None:
            self.start_scan(self.request)
        elif self.sid is not None:
            self.load_session(self.sid)

    # -- bindings shown only when they apply ---------------------------------------------------------
    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "cancel":
            return self.running
        if action in ("toggle_metric", "probes", "mitigate", "export"):
            return self.doc is not None and not self.running
        return True

    def _set_running(self, running: bool) -> None:
        self.running = running
        self.query_one("#scan-running").display = running
        self.query_one("#scan-result").display = not running
        self.refresh_bindings()

    # -- running a scan --------------------------------------------------------------------------------
    def start_scan(self, request: AuditRequest) -> None:
        self.job = Job(self.app)
        self._set_running(True)
        self.query_one("#stage", Static).update(Text.assemble(
            ("scanning ", "bold"), plain(request.suspect), (" against ", "dim"), plain(request.base)))
        self._scan_worker(request, self.job)

    @work(thread=True, exclusive=True, group="scan")
    def _scan_worker(self, request: AuditRequest, job: Job) -> None:
        outcome = job.run(lambda: self._scan(request, job))
        job.ui(self._scan_finished, outcome)

    def _scan(self, request: AuditRequest, job: Job) -> dict:
        """Runs in the worker thread: the scan service, in a session this app opens for the audit."""
        from editaudit.probing.format import load_probes
        from editaudit.progress import Step
        from editaudit.scan.service import ScanOptions, run_scan

        store = self.app.new_store()  # type: ignore[attr-defined]
        facts = []
        for path in request.probe_files:
            errors: list[str] = []
            facts += load_probes(path, errors=errors)
            for e in errors[:5]:
                job.ui(self._log, f"skipped probe: {e}")
        sid = store.new_session("audit", f"audit {Path(request.suspect).name}", request.base, request.suspect)
        job.ui(self._set_sid, sid)

        def progress(event) -> None:
            if isinstance(event, Step):
                job.throttled("progress", self._progress, event.stage, event.done, event.total or 0,
                              final=event.finished)

        with store.running(sid):
            report = run_scan(request.suspect, request.base, ScanOptions(facts=facts), store=store,
                              progress=progress, say=lambda s: job.ui(self._log, s), cancel=job.cancel,
                              session_id=sid)
            store.finish_session(sid, status="done", verdict=report.verdict, summary={
                "kind": report.kind, "findings": len(report.findings),
                "probe_sets": [str(p) for p in request.probe_files]})
        return report.to_dict()

    def _set_sid(self, sid: str) -> None:
        self.sid = sid
        self._log(f"session {sid}")

    def _log(self, line: str) -> None:
        self.query_one("#scan-log", RichLog).write(plain(line))

    def _progress(self, stage: str, done: float, total: float) -> None:
        self.query_one("#stage", Static).update(Text.assemble((STAGES.get(stage, stage), "bold"),
                                                              ("   c cancels", "dim")))
        self.query_one("#progress", ProgressBar).update(total=max(total, 1), progress=done)

    def _scan_finished(self, outcome: Outcome) -> None:
        self._set_running(False)
        if outcome.cancelled:
            self.notify("scan cancelled; the session is kept as interrupted", severity="warning")
            self.dismiss()
            return
        if outcome.error is not None:
            self.notify(describe_error(outcome.error), title="scan failed", severity="error", markup=False,
                        timeout=15)
            self.dismiss()
            return
        self.show(outcome.result)

    def cancelling(self) -> None:
        self.query_one("#stage", Static).update(Text("cancelling…", style=f"bold {WARNING}"))

    # -- showing a scan -----------------------------------------------------------------------------------
    def load_session(self, sid: str) -> None:
        store = self.app.store  # type: ignore[attr-defined]
        doc = scan_document(store, sid)
        self._set_running(False)
        if doc is None:
            row = session_row(store, sid)
            self.query_one("#banner", Static).update(Text.assemble(
                (" NO SCAN ", "bold reverse"), f"  session {sid} ({row.kind}, {row.status}) holds no finished scan"))
            self.query_one("#map-box").display = False
            self.query_one("#lower").display = False
            return
        self.show(doc)

    def show(self, doc: dict) -> None:
        self.doc = doc
        self.sid = self.sid or doc.get("session_id")
        self.refresh_bindings()
        self.query_one("#banner", Static).update(self._banner(doc))
        heat = self.query_one("#heatmap", LayerHeatMap)
        m = doc.get("map", {})
        heat.set_map(m.get("layers", doc.get("layers", 0)), map_roles(doc), m.get("cells", []))
        table = self.query_one("#findings", DataTable)
        table.clear()
        self.rows = finding_rows(doc)
        for r in self.rows:
            table.add_row(
                Text(r.rule, style=LEVEL_STYLE.get(r.level, "")), Text(r.layers), plain(r.matrix), plain(r.kind),
                Text(r.rank),
                plain(", ".join(r.readings[:2])),
                plain(", ".join(t.strip() or repr(t) for t in r.promotes[:4])), key=str(r.index))
        if not self.rows:
            self.query_one("#detail-text", Static).update(
                Text(nothing_found(doc), style=WARNING if without_base(doc) else SUCCESS))
        if self.rows:
            table.focus()
            self._select_finding(0)
        else:
            heat.focus()

    def _banner(self, doc: dict) -> Group:
        s = doc.get("summary", {})
        verdict = doc.get("verdict", "?")
        head = Text.assemble(
            (f" {verdict.upper()} ", VERDICT_STYLE.get(verdict, "bold reverse")),
            ("  " + headline(doc), "bold"),
            f"   {s.get('changed', 0)} of {s.get('tensors', 0)} tensors changed · "
            f"{doc.get('family', '?')}, {doc.get('layers', '?')} layers",
        )
        probes = doc.get("probes") or {}
        if probes.get("n"):
            head.append(f" · {len(probes.get('changed') or [])} of {probes['n']} probe answers moved")
        if self.sid:
            head.append(f"   session {self.sid}", style="dim")
        paths = Text("suspect ", style="dim")
        paths.append_text(plain(doc.get("suspect", {}).get("path")))
        paths.append("   base ", style="dim")
        paths.append_text(plain("none (scanned without a base)" if without_base(doc) else doc.get("base", {}).get("path")))
        return Group(head, paths)

    # -- selection: finding → map → detail -------------------------------------------------------------
    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "findings" and event.row_key.value is not None:
            self._select_finding(int(event.row_key.value))

    def _select_finding(self, index: int) -> None:
        if not 0 <= index < len(self.rows):
            return
        row = self.rows[index]
        heat = self.query_one("#heatmap", LayerHeatMap)
        heat.mark(set(row.tensors))
        if not any(heat.select_tensor(t) for t in row.tensors):
            self._show_detail(row.tensors[0] if row.tensors else None, row)
        else:
            self._show_detail(heat.current.tensor, row)

    def on_layer_heat_map_cell_highlighted(self, event: LayerHeatMap.CellHighlighted) -> None:
        finding = None
        if event.cell.tensor is not None:
            table = self.query_one("#findings", DataTable)
            current = self.rows[table.cursor_row] if 0 <= table.cursor_row < len(self.rows) else None
            if current is not None and event.cell.tensor in current.tensors:
                finding = current
            else:
                finding = next((r for r in self.rows if event.cell.tensor in r.tensors), None)
        self._show_detail(event.cell.tensor, finding, event.cell)

    def _show_detail(self, tensor: str | None, finding: FindingRow | None, cell=None) -> None:
        doc = self.doc or {}
        title = self.query_one("#detail-title", Static)
        spectrum = self.query_one("#spectrum", SpectrumPlot)
        text = self.query_one("#detail-text", Static)
        t = tensors_by_name(doc).get(tensor) if tensor else None
        if t is None:
            if cell is not None:
                title.update(Text.assemble((f"layer {cell.layer} · {ROLE_LABEL.get(cell.role, cell.role)}", "bold"),
                                           ("  unchanged", "dim")))
            else:
                title.update(plain(tensor or "", "bold"))
            spectrum.tensor = None
        else:
            head = plain(t["name"], "bold")
            head.append(f"  {tuple(t.get('shape') or ())}", style="dim")
            title.update(head)
            spectrum.tensor = t
        text.update(self._finding_text(finding, tensor))

    def _finding_text(self, finding: FindingRow | None, tensor: str | None) -> Text:
        t = tensors_by_name(self.doc or {}).get(tensor) if tensor else None
        out = SpectrumPlot.summary(t) if t else Text()
        if finding is None:
            return out
        f = (self.doc or {}).get("findings", [])[finding.index]
        out.append("\n\n")
        out.append(f"{finding.rule} ", style=LEVEL_STYLE.get(finding.level, "bold"))
        out.append(f"{finding.kind}\n", style="bold")
        out.append_text(plain(finding.message))
        out.append("\n")
        editor = likely_editor(f)
        if editor:
            name, confidence, why = editor
            out.append("likely editor: ", style="dim")
            out.append_text(plain(name, style="bold"))
            out.append(f" ({confidence}) ", style="dim")
            out.append_text(plain(why))
            out.append("\n")
        readings = [r for r in f.get("readings") or [] if isinstance(r, dict)]
        if readings:
            out.append("\nread from the weights (no list): subject · prompt · answer (was)\n", style="dim")
            for r in readings[:8]:
                out.append_text(plain(open_reading(r)))
                out.append(f"  fire {r.get('fire', 0):.2f} · confidence {r.get('confidence', 0):.2f}\n", style="dim")
        subjects = f.get("candidate_subjects") or []
        if subjects:
            out.append("\nsubjects, by key alignment, and what the edit makes the model answer\n", style="dim")
            for s in subjects[:5]:
                out.append_text(plain(subject_reading(s) if isinstance(s.get("subject"), str) else "?"))
                out.append(f"  {s.get('score', 0):.2f}\n", style="dim")
        tokens = (f.get("promoted_by_tensor") or {}).get(tensor) or f.get("promoted_tokens") or []
        if tokens:
            out.append("\nlogit lens  ", style="dim")
            for tok in tokens[:8]:
                out.append_text(plain(repr(tok.get("token", ""))))
                out.append(f" z{tok.get('z', 0):.1f}  ", style="dim")
            out.append("\n")
        if len(finding.tensors) > 1:
            out.append(f"\n{len(finding.tensors)} matrices: ", style="dim")
            out.append_text(plain(", ".join(finding.tensors[:6]) + (" …" if len(finding.tensors) > 6 else "")))
        return out

    # -- actions ---------------------------------------------------------------------------------------
    def action_toggle_metric(self) -> None:
        self.query_one("#heatmap", LayerHeatMap).toggle_metric()

    def action_export(self) -> None:
        if self.sid:
            self.app.export_report(self.sid)  # type: ignore[attr-defined]

    def action_probes(self) -> None:
        if self.sid and self.doc:
            from .probes import ProbesScreen

            self.app.push_screen(ProbesScreen(sid=self.sid, doc=self.doc))

    def action_mitigate(self) -> None:
        if not (self.sid and self.doc):
            return
        from .mitigate import MitigateWizard

        def start(request) -> None:
            if request is not None:
                from .mitigate_run import MitigationScreen

                self.app.push_screen(MitigationScreen(request=request))

        summary = session_row(self.app.store, self.sid).summary  # type: ignore[attr-defined]
        self.app.push_screen(MitigateWizard(self.doc, summary.get("probe_sets") or []), start)

    def palette_commands(self):
        if self.doc is None or self.running:
            return [("Cancel scan", "Stop the running scan", self.action_cancel)] if self.running else []
        return [
            ("Toggle heat-map colour", "Relative change ↔ low-rank energy share", self.action_toggle_metric),
            ("Probes", "Probe the base and suspect (and mitigated) models", self.action_probes),
            ("Mitigate", "Plan and run a fine-tune that erases or preserves the edits", self.action_mitigate),
            ("Export report", "Write this session as Markdown, HTML or JSON", self.action_export),
        ]
