"""The verification report as rows of text, shared by the CLI table and the app's run view."""

from __future__ import annotations

import math
from typing import Callable


def pct(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.0%}"


ROWS: list[tuple[str, Callable[[dict], str]]] = [
    ("method", lambda s: s["method"]),
    ("steps", lambda s: f"{s['steps']} ({s['stop']})" if s.get("stop") else str(s["steps"])),
    ("edited facts: new answer", lambda s: f"{pct(s['edited_before'])} → {pct(s['edited_after'])}"),
    ("edits erased", lambda s: f"{pct(s['edits_erased'])} of {s['edits_held_before']} held"),
    # an erased edit may state its true object again, or a third answer: the first is what a reviewer hopes for
    ("erased to the true answer", lambda s: f"{pct(s['edits_true_back'])} of {s['edits_held_before']} held"),
    ("edited facts: true answer", lambda s: pct(s["edited_true_after"])),
    ("intrinsic facts retained", lambda s: f"{pct(s['intrinsic_before'])} → {pct(s['intrinsic_after'])} "
                                           f"({s['intrinsic_points']:+.1f} pts)"),
    ("neighbourhood facts kept", lambda s: f"{pct(s['neighbourhood_kept'])} ({pct(s['neighbourhood_before'])} → "
                                           f"{pct(s['neighbourhood_after'])})"),
    ("validation loss", lambda s: f"{s['val_loss_before']:.3f} → {s['val_loss_after']:.3f}"),
    ("validation accuracy", lambda s: f"{s['val_acc_before']:.3f} → {s['val_acc_after']:.3f}"),
    ("edit left in weights", lambda s: f"{s['edit_weight_share_left']:.1%}"),
    ("subjects re-solved", lambda s: f"{s['subjects']} in layers {','.join(map(str, s['layers_resolved']))} "
                                     f"({s['subjects_answer_moved']} answers moved)"),
    ("re-scan: edited tensors left", lambda s: f"{s['rescan_edited_tensors_left']} ({s['rescan_verdict']})"),
]


def verification_rows(verification: dict) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(arm names, [(label, one cell per arm)]); rows no arm has a value for are left out."""
    arms = verification.get("arms", {})
    rows = []
    for label, cell in ROWS:
        values = []
        for s in arms.values():
            try:
                values.append(cell(s))
            except (KeyError, TypeError, ValueError):
                values.append("-")
        if any(x != "-" for x in values):
            rows.append((label, values))
    return list(arms), rows


def kept_vs_full(verification: dict) -> str | None:
    """The preserve goal's comparison line, when the run had a full fine-tuning arm."""
    if "kept_vs_full" not in verification:
        return None
    return (f"edits kept: {pct(verification.get('edits_kept'))} vs {pct(verification.get('full_edits_kept'))} "
            "with full fine-tuning")
