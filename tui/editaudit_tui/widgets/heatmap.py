"""The layer × module heat map: one row per matrix role, one column per layer, read at a glance.

Each changed matrix is a coloured cell (relative change ‖ΔW‖/‖W‖ on a log scale, or the energy share
of its low-rank components; ``t`` toggles) with a letter for how it changed: 1 rank-one, r low-rank,
s dense with spikes standing out, d dense, v vector, ~ rounding only, ! non-finite. Unchanged
matrices are dim dots. The cursor moves with the arrow keys or the mouse and announces the cell.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import RenderableType
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

from ..fmt import ROLE_LABEL, pct, scale_colour, scale_position, sci, text_on
from ..theme import EMPTY

KIND_GLYPH = {"rank-one": "1", "low-rank": "r", "dense+spike": "s", "dense": "d", "vector": "v",
              "rounding": "~", "nonfinite": "!"}
METRICS = {"rel_change": "relative change ‖ΔW‖/‖W‖ (log scale)", "lowrank_energy": "low-rank energy share"}
LABEL_WIDTH = 10


@dataclass(frozen=True)
class MapCell:
    layer: int
    role: str
    tensor: str | None
    kind: str | None
    rel_change: float | None
    lowrank_energy: float | None


class LayerHeatMap(Widget, can_focus=True):
    """A focusable heat map of a scan's ``map`` section."""

    DEFAULT_CSS = """
    LayerHeatMap { height: auto; min-height: 3; padding: 0 1; }
    LayerHeatMap:focus { background: $boost; }
    """
    BINDINGS = [
        Binding("left", "move(-1, 0)", "layer −", show=False),
        Binding("right", "move(1, 0)", "layer +", show=False),
        Binding("up", "move(0, -1)", "module ↑", show=False),
        Binding("down", "move(0, 1)", "module ↓", show=False),
        Binding("home", "jump(-1)", "first change", show=False),
        Binding("end", "jump(1)", "last change", show=False),
    ]

    metric: reactive[str] = reactive("rel_change")
    cursor: reactive[tuple[int, int]] = reactive((0, 0))  # (layer, row)

    class CellHighlighted(Message):
        def __init__(self, heatmap: "LayerHeatMap", cell: MapCell) -> None:
            super().__init__()
            self.heatmap = heatmap
            self.cell = cell

    def __init__(self, layers: int = 0, roles: list[str] | None = None, cells: list[dict] | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_layers = layers
        self.roles: list[str] = list(roles or [])
        self.cells: dict[tuple[int, str], dict] = {}
        self.marked: set[tuple[int, str]] = set()
        if cells:
            self.set_map(layers, self.roles, cells)

    # -- data -------------------------------------------------------------------------------------
    def set_map(self, layers: int, roles: list[str], cells: list[dict]) -> None:
        self.n_layers = max(int(layers or 0), 1 + max((c["layer"] for c in cells), default=-1))
        self.roles = list(roles)
        self.cells = {(c["layer"], c["role"]): c for c in cells if c.get("role") in roles}
        first = min(self.cells, key=lambda k: (k[0], roles.index(k[1])), default=None)
        self.cursor = (first[0], roles.index(first[1])) if first else (0, 0)
        self.refresh(layout=True)

    def mark(self, tensors: set[str]) -> None:
        """Outline the cells of these tensors (the selected finding's matrices)."""
        self.marked = {k for k, c in self.cells.items() if c.get("tensor") in tensors}
        self.refresh()

    def select_tensor(self, tensor: str) -> bool:
        for (layer, role), c in self.cells.items():
            if c.get("tensor") == tensor:
                self.cursor = (layer, self.roles.index(role))
                return True
        return False

    def cell_at(self, layer: int, row: int) -> MapCell:
        role = self.roles[row] if 0 <= row < len(self.roles) else ""
        c = self.cells.get((layer, role))
        if c is None:
            return MapCell(layer, role, None, None, None, None)
        return MapCell(layer, role, c.get("tensor"), c.get("kind"), c.get("rel_change"), c.get("lowrank_energy"))

    @property
    def current(self) -> MapCell:
        return self.cell_at(*self.cursor)

    # -- interaction --------------------------------------------------------------------------------
    def action_move(self, dx: int, dy: int) -> None:
        if not self.roles or not self.n_layers:
            return
        layer, row = self.cursor
        self.cursor = (min(max(layer + dx, 0), self.n_layers - 1), min(max(row + dy, 0), len(self.roles) - 1))

    def action_jump(self, direction: int) -> None:
        keys = sorted(self.cells, key=lambda k: (k[0], self.roles.index(k[1])))
        if keys:
            layer, role = keys[0] if direction < 0 else keys[-1]
            self.cursor = (layer, self.roles.index(role))

    def toggle_metric(self) -> None:
        self.metric = "lowrank_energy" if self.metric == "rel_change" else "rel_change"

    def watch_cursor(self, _old: tuple[int, int], _new: tuple[int, int]) -> None:
        if self.roles:
            self.post_message(self.CellHighlighted(self, self.current))
        self.refresh()

    def watch_metric(self) -> None:
        self.refresh()

    def on_click(self, event: events.Click) -> None:
        width = self._cell_width()
        x, y = event.x - 1, event.y - 1  # padding and the header row
        if y < 0 or y >= len(self.roles) or x < LABEL_WIDTH:
            return
        layer = (x - LABEL_WIDTH) // width
        if 0 <= layer < self.n_layers:
            self.cursor = (layer, y)

    # -- drawing ------------------------------------------------------------------------------------
    def _cell_width(self) -> int:
        avail = max(self.size.width - 2 - LABEL_WIDTH, 1)
        return 3 if self.n_layers * 3 <= avail else 2 if self.n_layers * 2 <= avail else 1

    def get_content_height(self, container, viewport, width: int) -> int:
        return len(self.roles) + 3

    def render(self) -> RenderableType:
        w = self._cell_width()
        out = Text(no_wrap=True, overflow="crop")
        # the row starts with a word: leading spaces of a rendered line do not survive
        out.append(f"{'layer':<{LABEL_WIDTH}}" + self._layer_header(w) + "\n", style="dim")
        cur_layer, cur_row = self.cursor
        for row, role in enumerate(self.roles):
            label = ROLE_LABEL.get(role, role)[: LABEL_WIDTH - 1]
            out.append(f"{label:<{LABEL_WIDTH}}", style="bold" if row == cur_row else "")
            for layer in range(self.n_layers):
                out.append_text(self._cell_text(layer, role, w, (layer, row) == (cur_layer, cur_row)))
            out.append("\n")
        out.append_text(self._legend())
        out.append("\n")
        out.append_text(self._status_line())
        return out

    def _layer_header(self, w: int) -> str:
        step = 1 if w == 3 else 5 if w == 2 else 10
        chars = [" "] * (self.n_layers * w)
        for layer in range(0, self.n_layers, step):
            label = str(layer)
            start = layer * w + (1 if w == 3 and len(label) == 1 else 0)
            if start + len(label) <= len(chars):
                chars[start:start + len(label)] = label
        return "".join(chars)

    def _cell_text(self, layer: int, role: str, w: int, is_cursor: bool) -> Text:
        c = self.cells.get((layer, role))
        marked = (layer, role) in self.marked
        if c is None:
            body = "·".center(w)
            style = "dim"
            if is_cursor:
                style = "reverse"
            return Text(body, style=style)
        pos = scale_position(c.get(self.metric), self.metric)
        bg = scale_colour(pos) if pos is not None else EMPTY
        glyph = KIND_GLYPH.get(c.get("kind") or "", "?")
        body = glyph.center(w) if w > 1 else glyph
        style = f"bold {text_on(bg)} on {bg}"
        if is_cursor:
            body = f"[{glyph}]" if w == 3 else glyph + "◂" if w == 2 else glyph
            style = f"bold reverse {bg} on {text_on(bg)}" if w == 1 else style
        elif marked:
            style += " underline"
        return Text(body, style=style)

    def _legend(self) -> Text:
        t = Text(f"{'scale':<{LABEL_WIDTH}}", style="dim")
        lo, hi = ("1e-5", "1") if self.metric == "rel_change" else ("0", "1")
        t.append(lo + " ", style="dim")
        for i in range(16):
            t.append(" ", style=f"on {scale_colour(i / 15)}")
        t.append(f" {hi}  ", style="dim")
        t.append(METRICS[self.metric], style="italic dim")
        t.append("  (t toggles)", style="dim")
        return t

    def _status_line(self) -> Text:
        c = self.current
        t = Text(f"{'cursor':<{LABEL_WIDTH}}", style="dim")
        t.append(f"layer {c.layer} · {ROLE_LABEL.get(c.role, c.role)}: ")
        if c.tensor is None:
            t.append("unchanged", style="dim")
        else:
            t.append(c.kind or "?", style="bold")
            t.append(f" · change {pct(c.rel_change, 2) if c.rel_change is not None and c.rel_change >= 1e-4 else sci(c.rel_change)}"
                     f" · low-rank energy {pct(c.lowrank_energy)}")
        t.append("   1 rank-one  r low-rank  s dense+spike  d dense  v vector  ~ rounding", style="dim")
        return t
