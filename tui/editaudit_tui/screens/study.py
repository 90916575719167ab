"""A study's arms in the terminal: retention per arm, and the curves of the chosen arm over fine-tuning.

Studies live in their own store (``editaudit study run … --out DIR`` writes DIR/study.db); the screen
opens one by path, lists its studies, and for the chosen study shows one row per arm (cells pooled
over seeds, 95% Wilson intervals) with sparklines of the validation loss and of the probability of
the edited target's first token across the arm's evaluations.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Select, Sparkline, Static


def _pct(r) -> str:
    rate, lo, hi = r
    return "-" if rate != rate else f"{rate:.0%} [{lo:.0%}–{hi:.0%}]"


class StudyScreen(Screen):
    BINDINGS = [Binding("escape", "back", "back"), Binding("r", "reload", "reload")]

    def __init__(self, store: str | Path | None = None) -> None:
        super().__init__()
        self.store_path = Path(store) if store else None
        self.rows: list[dict] = []

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="study-body"):
            with Horizontal(id="study-controls"):
                yield Input(str(self.store_path or ""), placeholder="study store (OUT/study.db)", id="study-store")
                yield Select([], id="study-name", prompt="study", allow_blank=True, compact=True)
            yield Static(id="study-hint")
            yield DataTable(id="study-arms", cursor_type="row", zebra_stripes=True)
            yield Static("validation loss", id="study-loss-label")
            yield Sparkline([], id="study-loss")
            yield Static("probability of the edited target's first token", id="study-mass-label")
            yield Sparkline([], id="study-mass")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "study"
        self.query_one("#study-arms", DataTable).add_columns(
            "arm", "cells", "edit wrote", "retained after FT", "intrinsic after FT", "edit left in W")
        if self.store_path:
            self.load_store()

    def _hint(self, text: str) -> None:
        self.query_one("#study-hint", Static).update(Text(text))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.store_path = Path(event.value).expanduser() if event.value.strip() else None
        self.load_store()

    def load_store(self) -> None:
        from editaudit.store.studies import StudyStore

        if self.store_path is None or not self.store_path.is_file():
            self._hint(f"no study store at {self.store_path}" if self.store_path else "type a study store's path")
            return
        try:
            names = [s["name"] for s in StudyStore(self.store_path).studies()]
        except Exception as exc:  # a file that is not a study store: say so, keep the screen
            self._hint(f"cannot read {self.store_path}: {exc}")
            return
        select = self.query_one("#study-name", Select)
        select.set_options([(n, n) for n in names])
        if names:
            select.value = names[0]
            self.show_study(names[0])
        else:
            self._hint("this store holds no study yet")

    def on_select_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            self.show_study(event.value)

    def show_study(self, name: str) -> None:
        from editaudit.store.studies import StudyStore
        from editaudit.study.report import arm_rows

        cells = StudyStore(self.store_path).cells(name)
        self.rows = arm_rows(cells)
        table = self.query_one("#study-arms", DataTable)
        table.clear()
        for r in self.rows:
            left = "-" if r["edit_left"] is None else f"{r['edit_left']:.2f}"
            table.add_row(r["arm"], str(r["cells"]), _pct(r["edit_wrote"]), _pct(r["retained"]),
                          _pct(r["intrinsic"]), left, key=r["arm"])
        done = sum(1 for c in cells if c["status"] == "done" and c["kind"] == "cell")
        self._hint(f"{name}: {done} finished cells in {len(self.rows)} arms · {len(cells) - done} other rows "
                   "(references, running, failed)")
        if self.rows:
            self.show_curves(0)

    def show_curves(self, index: int) -> None:
        row = self.rows[index]
        self.query_one("#study-loss", Sparkline).data = row["loss_curve"]
        self.query_one("#study-mass", Sparkline).data = row["mass_curve"]
        self.query_one("#study-loss-label", Static).update(
            f"validation loss · {row['arm']}: " + " → ".join(f"{x:.3f}" for x in row["loss_curve"]))
        self.query_one("#study-mass-label", Static).update(
            f"edited target's first-token probability · {row['arm']}: "
            + " → ".join(f"{x:.3f}" for x in row["mass_curve"]))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if 0 <= event.cursor_row < len(self.rows):
            self.show_curves(event.cursor_row)

    def action_reload(self) -> None:
        self.load_store()

    def action_back(self) -> None:
        self.app.pop_screen()
