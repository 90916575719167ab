"""The study's figures with matplotlib (Agg), each written as PNG and SVG.

Retention bars per arm (Wen & Zhang Fig. 2 / Cheng et al. Fig. 2), sweep curves over the threshold
or the window centre (Wen & Zhang Fig. 3), activation drift and directional similarity per layer
with the edited layers marked (Cheng et al. Fig. 3), and the first token's probability mass by
category across fine-tuning (Wen & Zhang Fig. 4). Every function takes plain numbers, so the report
decides what is plotted and the figures only draw it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

COLOURS = {"edited": "#d62728", "true": "#2ca02c", "related": "#1f77b4", "other": "#bbbbbb"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, folder: Path, stem: str) -> list[Path]:
    from ..atomic import atomic_write_bytes

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=130, bbox_inches="tight", metadata={"Date": None} if ext == "svg" else None)
        path = folder / f"{stem}.{ext}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    _plt().close(fig)
    return paths


def retention_bars(rows: Sequence[dict], folder: Path, stem: str, title: str) -> list[Path]:
    """rows: {"label", and for each series "edit", "after", "intrinsic": (rate, lo, hi)}."""
    plt = _plt()
    series = [("edit", "edited facts, after the edit", "#ff9896"), ("after", "edited facts, after fine-tuning", "#d62728"),
              ("intrinsic", "intrinsic facts, after fine-tuning", "#2ca02c")]
    n = len(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * n + 2), 3.8))
    w = 0.27
    for j, (key, label, colour) in enumerate(series):
        xs = [i + (j - 1) * w for i in range(n)]
        vals = [r[key][0] for r in rows]
        err = [[max(0.0, r[key][0] - r[key][1]) for r in rows], [max(0.0, r[key][2] - r[key][0]) for r in rows]]
        ax.bar(xs, vals, w, yerr=err, capsize=2, color=colour, label=label)
    ax.set_xticks(range(n))
    ax.set_xticklabels([r["label"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("retention (95% Wilson)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, folder, stem)


def sweep_curves(curves: dict[str, list[tuple[float, float, float, float]]], folder: Path, stem: str,
                 xlabel: str, title: str, marks: Sequence[float] = ()) -> list[Path]:
    """curves: name → [(x, rate, lo, hi)] sorted by x; ``marks``: x positions to mark (the edited layer)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, pts in curves.items():
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(xs, ys, marker="o", label=name)
        ax.fill_between(xs, [p[2] for p in pts], [p[3] for p in pts], alpha=0.15)
    for m in marks:
        ax.axvline(m, color="red", ls="--", lw=0.8)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("retention (95% Wilson)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, folder, stem)


def drift_panels(drifts: dict[str, list[list[float]]], sims: dict[str, list[list[float]]], edited: Sequence[int],
                 folder: Path, stem: str, title: str) -> list[Path]:
    """drifts/sims: name → per layer [subject's last token, prompt's last token]; edited layers marked."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    for col, pos in enumerate(("subject's last token", "prompt's last token")):
        for name, vals in drifts.items():
            axes[0][col].plot(range(len(vals)), [v[col] for v in vals], label=name)
        for name, vals in sims.items():
            axes[1][col].plot(range(len(vals)), [v[col] for v in vals], label=name)
        axes[0][col].set_title(f"activation drift ‖h − h_base‖, {pos}", fontsize=9)
        axes[1][col].set_title(f"directional similarity (cosine), {pos}", fontsize=9)
        axes[1][col].axhline(0, color="grey", lw=0.5)
        axes[1][col].set_xlabel("layer")
        for ax in (axes[0][col], axes[1][col]):
            if edited:
                ax.axvline(min(edited) - 0.5, color="red", ls="--", lw=0.8)
                ax.axvline(max(edited) + 0.5, color="red", ls="--", lw=0.8)
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, folder, stem)


def token_mass(steps: Sequence[int], masses: Sequence[dict], folder: Path, stem: str, title: str,
               labels: Sequence[str] | None = None) -> list[Path]:
    """Stacked first-token probability by category at each evaluation (step −1: base, 0: after the edit)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    xs = list(range(len(steps)))
    bottom = [0.0] * len(xs)
    for cat, colour in COLOURS.items():
        vals = [m[cat] for m in masses]
        ax.bar(xs, vals, 0.7, bottom=bottom, color=colour, label=cat)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(xs)
    ax.set_xticklabels(labels or [str(s) for s in steps], fontsize=8)
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("probability of the first token")
    ax.set_xlabel("stage / fine-tuning step")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, folder, stem)
