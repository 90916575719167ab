"""The first screen: every stored session with its date, models and verdict; open, delete or start new."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from ..fmt import local_time, plain, short_path
from ..store_views import SessionRow, list_sessions
from ..theme import STATUS_STYLE, VERDICT_STYLE
from ..widgets.confirm import ConfirmScreen


class SessionsScreen(Screen):
    BINDINGS = [
        Binding("enter", "open", "open", show=True, priority=False),
        Binding("n", "new", "new audit"),
        Binding("d,delete", "delete", "delete"),
        Binding("e", "export", "export report"),
        Binding("r", "refresh", "refresh"),
        Binding("q", "app.quit", "quit"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[SessionRow] = []

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="sessions-body"):
            yield Static(id="sessions-hint")
            yield DataTable(id="sessions", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "sessions"
        table = self.query_one("#sessions", DataTable)
        table.add_columns("created", "kind", "suspect", "base", "status", "verdict", "id")
        self.refresh_sessions()
        table.focus()

    def refresh_sessions(self) -> None:
        table = self.query_one("#sessions", DataTable)
        keep = self.selected.id if self.selected else None
        table.clear()
        self.rows = list_sessions(self.app.store)  # type: ignore[attr-defined]
        for r in self.rows:
            verdict = Text(f" {r.verdict} ", style=VERDICT_STYLE.get(r.verdict, "")) if r.verdict else Text("-", style="dim")
            table.add_row(
                local_time(r.created), plain(r.kind), plain(short_path(r.suspect)), plain(short_path(r.base)),
                Text(r.status, style=STATUS_STYLE.get(r.status, "")), verdict, plain(r.id, "dim"), key=r.id,
            )
        hint = self.query_one("#sessions-hint", Static)
        if self.rows:
            hint.update(Text.assemble((f"{len(self.rows)} sessions", "bold"),
                                      "  ·  enter opens · n starts a new audit · ctrl+p for every command"))
        else:
            hint.update(Text.assemble(("No sessions yet.", "bold"),
                                      "  Press n to audit a suspect checkpoint against its base "
                                      "(the embedded smollm2-135m works as either)."))
        if keep is not None:
            for i, r in enumerate(self.rows):
                if r.id == keep:
                    table.move_cursor(row=i)

    @property
    def selected(self) -> SessionRow | None:
        if not self.rows or not self.is_mounted:
            return None
        table = self.query_one("#sessions", DataTable)
        i = table.cursor_row
        return self.rows[i] if 0 <= i < len(self.rows) else None

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            self.app.open_session(event.row_key.value)  # type: ignore[attr-defined]

    def on_screen_resume(self) -> None:
        self.refresh_sessions()

    def action_open(self) -> None:
        if self.selected:
            self.app.open_session(self.selected.id)  # type: ignore[attr-defined]

    def action_new(self) -> None:
        self.app.new_audit()  # type: ignore[attr-defined]

    def action_refresh(self) -> None:
        self.refresh_sessions()

    def action_export(self) -> None:
        if self.selected:
            self.app.export_report(self.selected.id)  # type: ignore[attr-defined]

    def action_delete(self) -> None:
        row = self.selected
        if row is None:
            return
        if row.status == "running":
            self.notify("that session is still running; stop it first", severity="warning")
            return

        def done(yes: bool | None) -> None:
            if yes:
                self.app.store.delete_session(row.id)  # type: ignore[attr-defined]
                self.notify(f"deleted session {row.id}", markup=False)
                self.refresh_sessions()

        self.app.push_screen(ConfirmScreen(
            f"Delete session {row.id} ({row.kind}: {row.title})?\n"
            "Its scans, probe runs and fine-tuning records go with it. Checkpoint files are not touched."), done)

    def palette_commands(self):
        entries = [("Delete selected session", "Delete the highlighted session (asks first)", self.action_delete)]
        if self.selected:
            entries.insert(0, ("Export selected session", "Write a Markdown, HTML or JSON report",
                               self.action_export))
        return entries
