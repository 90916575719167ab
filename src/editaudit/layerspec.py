"""Layer lists as users type them: ``"3,4,7-9"``."""

from __future__ import annotations

import re

from .errors import BadInput


def parse_layer_list(text: str, n_layers: int | None = None) -> list[int]:
    """``"3,4,7-9"`` → [3, 4, 7, 8, 9] (sorted, each once); with ``n_layers``, every layer must exist."""
    layers: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise BadInput(f"layer list item {part!r} is not a layer number or a range like 3-5")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise BadInput(f"layer range {part!r} runs backwards")
        layers.update(range(lo, hi + 1))
    if not layers:
        raise BadInput(f"layer list {text!r} names no layer")
    bad = sorted(x for x in layers if n_layers is not None and x >= n_layers)
    if bad:
        raise BadInput(f"layers {bad} do not exist: the model has layers 0–{n_layers - 1}")
    return sorted(layers)
