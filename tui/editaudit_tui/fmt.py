"""Formatting helpers shared by the screens: dates, paths, percentages, colour scales.

Everything that reaches the screen from a checkpoint, a store or a probe file is untrusted: the
helpers here return ``rich.text.Text`` (never markup strings) so that names carrying markup or
escape sequences are shown literally.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

from rich.text import Text

# Short labels for tensor roles (the same words the headless report uses).
ROLE_LABEL = {
    "mlp_out": "mlp.out", "mlp_in": "mlp.in", "attn_q": "attn.q", "attn_k": "attn.k", "attn_v": "attn.v",
    "attn_o": "attn.o", "attn_qkv": "attn.qkv", "norm": "norm", "other": "other", "embed": "embed",
    "unembed": "unembed", "final_norm": "final norm",
}


def plain(value: object, style: str = "") -> Text:
    """Untrusted text as a renderable: control characters removed, markup never interpreted."""
    s = "" if value is None else str(value)
    s = "".join(ch if ch.isprintable() or ch == " " else "�" for ch in s)
    text = Text(s)
    if style:
        text.stylize(style)  # a span over this text only: what is appended later keeps its own style
    return text


def local_time(iso: str | None) -> str:
    """``2026-11-24T10:15:55+00:00`` → ``2026-11-24 10:15`` in the local time zone."""
    if not iso:
        return "-"
    try:
        t = _dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso[:16]
    if t.tzinfo is not None:
        t = t.astimezone()
    return t.strftime("%Y-%m-%d %H:%M")


def short_path(path: str | None, keep: int = 2) -> str:
    """The last ``keep`` parts of a path (a model is recognised by its folder names, not its root)."""
    if not path:
        return "-"
    parts = Path(path).parts
    return str(Path(*parts[-keep:])) if len(parts) > keep else str(path)


def pct(x: float | None, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}%}"


def sci(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.2e}" if (x != 0 and (abs(x) < 1e-2 or abs(x) >= 1e4)) else f"{x:.3g}"


# -- colour scale for the heat map -----------------------------------------------------------------

_STOPS = [(0.0, (31, 59, 115)), (0.3, (42, 157, 143)), (0.6, (233, 196, 106)), (0.8, (244, 162, 97)),
          (1.0, (230, 57, 70))]

REL_LOG_MIN, REL_LOG_MAX = -5.0, 0.0  # relative change drawn on a log scale from 1e-5 to 1


def scale_position(value: float | None, metric: str) -> float | None:
    """Where a cell's value sits on the colour scale, 0–1 (None: no value)."""
    if value is None or not math.isfinite(value):
        return None
    if metric == "rel_change":
        if value <= 0:
            return 0.0
        return min(1.0, max(0.0, (math.log10(value) - REL_LOG_MIN) / (REL_LOG_MAX - REL_LOG_MIN)))
    return min(1.0, max(0.0, value))


def scale_colour(t: float) -> str:
    """Hex colour at position ``t`` of the scale (deep blue → teal → yellow → orange → red)."""
    t = min(1.0, max(0.0, t))
    for (t0, c0), (t1, c1) in zip(_STOPS, _STOPS[1:]):
        if t <= t1:
            f = (t - t0) / (t1 - t0) if t1 > t0 else 0.0
            rgb = tuple(round(a + (b - a) * f) for a, b in zip(c0, c1))
            return "#{:02x}{:02x}{:02x}".format(*rgb)
    return "#{:02x}{:02x}{:02x}".format(*_STOPS[-1][1])


def text_on(bg_hex: str) -> str:
    """Black or white, whichever reads better on ``bg_hex``."""
    r, g, b = (int(bg_hex[i:i + 2], 16) for i in (1, 3, 5))
    from .theme import INK_DARK, INK_LIGHT

    return INK_DARK if (0.299 * r + 0.587 * g + 0.114 * b) > 140 else INK_LIGHT
