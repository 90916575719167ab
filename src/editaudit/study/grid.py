"""Expanding a study into cells, each with an id that is a hash of everything that decides its result.

The id covers the cell's own settings and the settings all cells share (model, edit hyper-parameters,
fine-tuning, stopping, metrics), so a finished cell is found again after a restart, a reordering of
the file or a merge of stores from several workers, and a changed setting gives new cells instead of
silently reusing old numbers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from itertools import product

from .config import StudyConfig


@dataclass(frozen=True)
class Cell:
    grid: str
    edit: str          # none | ft | rome | memit | alphaedit
    n_edits: int
    ft: str            # full | lora | dora
    layers: str        # all | edited | non-edited | threshold:N | window:C/W
    task: str
    seed: int

    def settings(self) -> dict:
        d = asdict(self)
        d.pop("grid")
        return d

    def label(self) -> str:
        return f"{self.edit}×{self.n_edits} · {self.ft} · {self.layers} · {self.task} · seed {self.seed}"


def _digest(doc: dict) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def cell_id(cell: Cell, cfg: StudyConfig) -> str:
    """Stable id: the hash of the cell's settings and the shared settings (not of the grid label)."""
    return _digest({"cell": cell.settings(), "shared": cfg.shared()})


def reference_id(task: str, cfg: StudyConfig) -> str:
    """Id of the equal-impact reference run of ``task`` (the unedited model, reference arm)."""
    s = cfg.stopping
    return _digest({"reference": {"task": task, "ft": s.reference_ft, "layers": s.reference_layers,
                                  "steps": s.reference_steps}, "shared": cfg.shared()})


def expand(cfg: StudyConfig) -> list[tuple[str, Cell]]:
    """Every cell of every grid block, in file order, without duplicates (first block wins the label)."""
    out: list[tuple[str, Cell]] = []
    seen: set[str] = set()
    for g in cfg.grids:
        for edit, n, ft, layers, task, seed in product(g.edit_methods, g.n_edits, g.ft_methods, g.layers, g.tasks,
                                                       g.seeds):
            cell = Cell(g.label, edit, n, ft, layers, task, seed)
            cid = cell_id(cell, cfg)
            if cid not in seen:
                seen.add(cid)
                out.append((cid, cell))
    return out


def shard(cells: list[tuple[str, Cell]], index: int, count: int) -> list[tuple[str, Cell]]:
    """Worker ``index`` of ``count``: every count-th cell from the index-th on (disjoint, together the grid)."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: the index must lie in 0..{count - 1}")
    return cells[index::count]


def layer_set(strategy: str, n_layers: int, edited: list[int]) -> list[int]:
    """The decoder layers a strategy fine-tunes, given the model's depth and the layers the edit changed."""
    if strategy == "all":
        return list(range(n_layers))
    if strategy == "edited":
        return sorted(edited)
    if strategy == "non-edited":
        return [i for i in range(n_layers) if i not in set(edited)]
    kind, _, arg = strategy.partition(":")
    if kind == "threshold":
        return list(range(min(int(arg), n_layers), n_layers))
    if kind == "window":
        centre, width = (int(x) for x in arg.split("/"))
        lo = centre - (width - 1) // 2
        return [i for i in range(lo, lo + width) if 0 <= i < n_layers]
    raise ValueError(f"unknown layer strategy {strategy!r}")
