"""Export a session for a review: Markdown, HTML or JSON, written atomically."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, RadioButton, RadioSet, Static

from ..jobs import Job, Outcome, describe_error
from ..paths import FileSuggester
from ..theme import ERROR

FORMATS = {"md": "Markdown", "html": "HTML", "json": "JSON"}


def write_report(store, sid: str, fmt: str, path: Path) -> Path:
    """Render the session with the core's report renderer and write it atomically."""
    from editaudit.atomic import atomic_write_text
    from editaudit.reports.session_report import render_session

    text = render_session(store, sid, fmt)
    path = Path(path).expanduser()
    atomic_write_text(path, text if text.endswith("\n") else text + "\n")
    return path


class ExportScreen(ModalScreen[Path | None]):
    BINDINGS = [Binding("escape", "cancel", "cancel"), Binding("ctrl+s", "export", "write", priority=True)]

    def __init__(self, sid: str, folder: Path | None = None) -> None:
        super().__init__()
        self.sid = sid
        self.folder = folder or Path.cwd()

    def compose(self) -> ComposeResult:
        with Vertical(id="export-box"):
            yield Static(Text.assemble(("Export session ", "bold"), (self.sid, "bold")))
            with RadioSet(id="format"):
                for key, name in FORMATS.items():
                    yield RadioButton(f"{name} (.{key})", value=key == "md", name=key, id=f"fmt-{key}")
            yield Label("File")
            yield Input(str(self._default_path("md")), id="path", suggester=FileSuggester((".md", ".html", ".json")))
            yield Static(id="export-status")
            with Horizontal(classes="buttons"):
                yield Button("Write", variant="primary", id="write")
                yield Button("Cancel", id="cancel")

    def _default_path(self, fmt: str) -> Path:
        return self.folder / f"editaudit-{self.sid}.{fmt}"

    @property
    def fmt(self) -> str:
        pressed = self.query_one("#format", RadioSet).pressed_button
        return pressed.name if pressed is not None and pressed.name else "md"

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        path = self.query_one("#path", Input)
        current = Path(path.value)
        if current.suffix.lstrip(".") in FORMATS:
            path.value = str(current.with_suffix("." + self.fmt))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "write":
            self.action_export()
        else:
            self.action_cancel()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_export()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def action_export(self) -> None:
        value = self.query_one("#path", Input).value.strip()
        if not value:
            self.query_one("#export-status", Static).update(Text("a file name is needed", style=ERROR))
            return
        path = Path(value).expanduser()
        if path.is_dir():
            path = path / self._default_path(self.fmt).name
        self.query_one("#export-status", Static).update(Text("writing…", style="dim"))
        self._export_worker(Job(self.app), self.fmt, path)

    @work(thread=True, exclusive=True, group="export")
    def _export_worker(self, job: Job, fmt: str, path: Path) -> None:
        outcome = job.run(lambda: write_report(self.app.new_store(), self.sid, fmt, path))  # type: ignore[attr-defined]
        job.ui(self._done, outcome)

    def _done(self, outcome: Outcome) -> None:
        if not outcome.ok:
            msg = describe_error(outcome.error) if outcome.error else "cancelled"
            self.query_one("#export-status", Static).update(Text(f"✗ {msg}", style=ERROR))
            return
        self.app.notify(f"wrote {outcome.result}", title="report", markup=False)
        self.dismiss(outcome.result)
