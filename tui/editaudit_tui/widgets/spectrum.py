"""The singular-value spectrum of one changed matrix, as a small log-scale bar plot.

An edit shows as one or a few tall bars standing on a cliff above a flat bulk; fine-tuning as a
slowly falling slope; a dtype conversion as bars at the rounding-noise edge. Bars of components the
scan counted above the noise are drawn in the accent colour, the rest dim, and the noise edge is a
dotted line.
"""

from __future__ import annotations

import math

from rich.console import RenderableType
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from ..fmt import pct, sci
from ..theme import ACCENT

BLOCKS = " ▁▂▃▄▅▆▇█"
AXIS = 9
ACCENT_STYLE = f"bold {ACCENT}"


class SpectrumPlot(Widget):
    """Top singular values of ΔW (from the scan's ``tensors`` entry)."""

    DEFAULT_CSS = """
    SpectrumPlot { height: auto; }
    """
    tensor: reactive[dict | None] = reactive(None, layout=True)
    rows = 7

    def get_content_height(self, container, viewport, width: int) -> int:
        return self.rows + 2

    def render(self) -> RenderableType:
        t = self.tensor
        if not t:
            return Text("select a changed matrix in the map or the findings", style="dim")
        values = [float(v) for v in (t.get("singular_values") or []) if v is not None and math.isfinite(v)]
        if not values or max(values) <= 0:
            return Text(f"{t.get('kind', '?')}: no spectrum (a vector or non-float tensor)", style="dim")
        noise = float(t.get("noise_edge") or 0.0)
        rank = int(t.get("rank_above_noise") or 0)
        width = max(self.size.width - AXIS - 1, 8)
        per = 2 if len(values) * 2 <= width else 1
        values = values[: width // per]
        positive = [v for v in values if v > 0]
        top = math.log10(max(values))
        floor_candidates = positive + ([noise] if noise > 0 else [])
        bottom = math.log10(min(floor_candidates)) - 0.3
        if top - bottom < 1e-9:
            bottom = top - 1.0

        def level(v: float) -> float:  # 0..rows
            if v <= 0:
                return 0.0
            return max(0.0, min(1.0, (math.log10(v) - bottom) / (top - bottom))) * self.rows

        noise_row = int(level(noise)) if noise > 0 and bottom < math.log10(noise) < top else None
        out = Text(no_wrap=True, overflow="crop")
        for r in range(self.rows - 1, -1, -1):
            label = sci(max(values)) if r == self.rows - 1 else sci(10 ** bottom) if r == 0 else \
                "noise" if r == noise_row else ""
            out.append(f"{label:>{AXIS - 1}} ", style="dim")
            out.append("│" if r != noise_row else "┼", style="dim")
            for i, v in enumerate(values):
                h = level(v) - r
                ch = BLOCKS[8] if h >= 1 else BLOCKS[max(0, int(h * 8))] if h > 0 else " "
                if ch == " " and r == noise_row:
                    out.append("┄" * per, style="dim")
                    continue
                out.append(ch * per, style=ACCENT_STYLE if i < rank else "dim")
            out.append("\n")
        out.append(" " * AXIS + "└" + "─" * (len(values) * per) + "\n", style="dim")
        out.append(" " * (AXIS + 1) + f"σ1 … σ{len(values)}", style="dim")
        return out

    @staticmethod
    def summary(t: dict) -> Text:
        parts = Text()
        parts.append(t.get("kind", "?"), style="bold")
        parts.append(f" · rank above noise {t.get('rank_above_noise', 0)}"
                     f" · top-1 energy {pct(t.get('top1_share'))}"
                     f" · change {pct(t.get('rel_change'), 2)}")
        gap = t.get("gap")
        if gap:
            parts.append(f" · cliff ×{sci(gap)}")
        if t.get("peer_ratio"):
            parts.append(f" · σ1 ×{t['peer_ratio']:.1f} its peers")
        if not t.get("exact_svd", True):
            parts.append(" · randomised SVD", style="dim")
        return parts
