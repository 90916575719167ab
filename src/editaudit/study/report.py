"""A study's Markdown report and figures, from the finished cells in its store.

Only the cells of the study file as it is now count (ids are content hashes, so cells of an older
version of the file are ignored, not mixed in). Rates are pooled over facts and seeds with 95%
Wilson intervals; the numbers behind every figure also go to ``summary.json``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..store.studies import StudyStore
from . import figures as F
from .config import StudyConfig
from .grid import Cell, expand, reference_id
from .metrics import CATEGORIES, direction_similarity, drift, wilson


def _rate(flags: list) -> tuple[float, float, float]:
    n = len(flags)
    k = sum(bool(x) for x in flags)
    lo, hi = wilson(k, n)
    return (k / n if n else math.nan, lo, hi)


def _fmt(r: tuple[float, float, float], flags: list | None = None) -> str:
    if math.isnan(r[0]):
        return "–"
    count = f" ({sum(bool(x) for x in flags)}/{len(flags)})" if flags is not None else ""
    return f"{r[0]:.0%} [{r[1]:.0%}, {r[2]:.0%}]{count}"


def _arm(c: Cell) -> str:
    return f"{c.edit}·{c.ft}·{c.layers}·{c.task}" + (f"·n{c.n_edits}" if c.n_edits != 1 else "")


def collect(cfg: StudyConfig, store: StudyStore) -> list[dict]:
    """The finished cells of the current study file, in grid order."""
    rows = {r["id"]: r for r in store.cells(cfg.study.name, "done")}
    out = []
    for cid, cell in expand(cfg):
        r = rows.get(cid)
        if r is not None:
            out.append({"id": cid, "cell": cell, "m": r["metrics"], "h": r["history"] or [], "seconds": r["seconds"]})
    return out


def _pool(cells: list[dict], stage: str, key: str) -> list:
    return [x for c in cells for x in c["m"][stage][key]]


def _conditional(cells: list[dict]) -> list:
    """After fine-tuning, among the facts the edit had written: still stating the new target?"""
    out = []
    for c in cells:
        out += [a for e, a in zip(c["m"]["edited"]["new"], c["m"]["after"]["new"]) if e]
    return out


def _load_acts(out: Path, cid: str):
    from safetensors.torch import load_file

    path = out / "acts" / f"{cid}.safetensors"
    return load_file(str(path)) if path.is_file() else None


def _drift_analysis(rows: list[dict], out: Path) -> list[dict]:
    """Per edited cell with a control of the same fine-tuning: drifts of M_ed, M_ft, M_ed_ft and their cosines."""
    controls = {(r["cell"].n_edits, r["cell"].ft, r["cell"].layers, r["cell"].task, r["cell"].seed): r
                for r in rows if r["cell"].edit == "none"}
    found = []
    for r in rows:
        c = r["cell"]
        ctrl = controls.get((c.n_edits, c.ft, c.layers, c.task, c.seed))
        if c.edit == "none" or ctrl is None:
            continue
        a, b = _load_acts(out, r["id"]), _load_acts(out, ctrl["id"])
        if a is None or b is None or a["base"].shape != b["base"].shape:
            continue
        base, ed, edft, ft = a["base"], a["edited"], a["after"], b["after"]
        found.append({
            "cell": c, "edited_layers": r["m"]["edited_layers"],
            "drift": {"M_ed": drift(base, ed).tolist(), "M_ft": drift(base, ft).tolist(),
                      "M_ed_ft": drift(base, edft).tolist()},
            "sim": {"M_ed – M_ft": direction_similarity(base, ed, ft).tolist(),
                    "M_ed_ft – M_ft": direction_similarity(base, edft, ft).tolist(),
                    "M_ed_ft – M_ed": direction_similarity(base, edft, ed).tolist()},
        })
    return found


def _mass_by_step(cells: list[dict], which: str) -> tuple[list[int], list[dict]]:
    acc: dict[int, list[dict]] = defaultdict(list)
    for c in cells:
        for h in c["h"]:
            if which in h:
                acc[h["step"]].append(h[which])
    steps = sorted(acc)
    return steps, [{k: sum(m[k] for m in acc[s]) / len(acc[s]) for k in CATEGORIES} for s in steps]


def write_report(cfg: StudyConfig, store: StudyStore, out: str | Path, to: str | Path | None = None) -> Path:
    """Write ``report.md``, ``summary.json`` and ``figures/`` into ``to`` (default: OUT/report)."""
    out = Path(out)
    dest = Path(to) if to else out / "report"
    figs = dest / "figures"
    rows = collect(cfg, store)
    total = len(expand(cfg))
    name = cfg.study.name
    summary: dict[str, Any] = {"study": name, "cells_done": len(rows), "cells_total": total, "arms": {}}
    L: list[str] = [f"# Study `{name}`", ""]
    if cfg.study.description:
        L += [cfg.study.description, ""]
    s, f = cfg.stopping, cfg.finetune
    L += [f"- model: `{cfg.study.model}`; facts: `{cfg.study.facts}`; intrinsic: first {cfg.study.n_intrinsic} of "
          f"`{cfg.study.intrinsic}`; edit protocol: {cfg.edit.protocol}"
          + ("; paraphrase-augmented edits" if cfg.edit.paraphrase_augment else ""),
          f"- fine-tuning: batch {f.batch_size} × {f.seq_len} tokens, AdamW (wd {f.weight_decay}), lr "
          f"{f.lr or 'task default (5e-5 lm, 2e-5 others)'}, LoRA/DoRA rank {f.rank} α {f.alpha}, "
          f"evaluation every {f.eval_every} steps on {f.val_size} validation examples; the layer strategies "
          "select decoder blocks (embeddings and final norm frozen)"]
    refs = {}
    if s.mode == "equal-impact":
        for task in sorted({r["cell"].task for r in rows}):
            if task in s.target_loss:
                refs[task] = (s.target_loss[task], "fixed in the study file")
            else:
                ref = store.cell(reference_id(task, cfg))
                if ref and ref["status"] == "done":
                    refs[task] = (ref["metrics"]["target_loss"],
                                  f"{s.reference_ft} fine-tuning of the unedited model, layers {s.reference_layers}, "
                                  f"{s.reference_steps} steps")
        L.append(f"- stopping: **equal impact** — every arm stops at the first evaluation whose validation loss is at "
                 f"or below the task's target, or at the cap of {s.max_steps} steps: "
                 + "; ".join(f"{t}: {v:.3f} ({how})" if v is not None else
                             f"{t}: none — the reference ({how}) did not lower the loss, so its arms train the cap"
                             for t, (v, how) in refs.items()))
    else:
        L.append(f"- stopping: **fixed budget** of {s.max_steps} steps for every arm")
    summary["targets"] = {t: v for t, (v, _) in refs.items()}
    secs = sum(r["seconds"] or 0 for r in rows)
    L += [f"- cells: {len(rows)} of {total} finished; cell wall time {secs / 60:.1f} min in all",
          f"- retention rule: the first greedy token (of up to {cfg.metrics.max_new_tokens}) that is not a stop word "
          "must be the target's first such token; intervals are 95% Wilson over facts (and seeds)", ""]

    # -- per cell
    L += ["## Cells", "", "| arm | seed | steps (stop) | val loss | edit wrote | retained after FT | of those written "
          "| true target after FT | intrinsic after FT (base) | neighbourhood kept | edit left in W |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c, m = r["cell"], r["m"]
        ib = _rate(m["intrinsic_base"])
        res = m.get("residual") or {}
        L.append(
            f"| {_arm(c)} | {c.seed} | {','.join(map(str, m['steps']))} ({','.join(sorted(set(m['stop'])))}) | "
            f"{m['val_loss_start']:.3f}→{m['val_loss_end']:.3f} | "
            f"{_fmt(_rate(m['edited']['new']), m['edited']['new'])} | {_fmt(_rate(m['after']['new']), m['after']['new'])} | "
            f"{_fmt(_rate(_conditional([r])), _conditional([r]))} | {_fmt(_rate(m['after']['true']))} | "
            f"{_fmt(_rate(m['after']['intrinsic']))} ({ib[0]:.0%}) | {_fmt(_rate(m['after']['neighbourhood']))} | "
            + (f"{res['edit_left']:.2f}" if res.get("edit_left") is not None else "–") + " |")
    L.append("")

    # -- arms pooled over seeds
    arms: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        arms[_arm(r["cell"])].append(r)
    L += ["## Arms (pooled over seeds)", "", "| arm | cells | edit wrote | efficacy (after edit → FT) | paraphrase "
          "(after edit → FT) | retained after FT | of those written | intrinsic after edit | intrinsic after FT "
          "| neighbourhood kept (after edit → FT) | edit left in W |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    bars = []
    for arm, cells in arms.items():
        e_new, a_new = _pool(cells, "edited", "new"), _pool(cells, "after", "new")
        cond = _conditional(cells)
        intr = _pool(cells, "after", "intrinsic")
        intr_ed = _pool(cells, "edited", "intrinsic")
        neigh = (_pool(cells, "edited", "neighbourhood"), _pool(cells, "after", "neighbourhood"))
        eff = (_rate(_pool(cells, "edited", "efficacy")), _rate(_pool(cells, "after", "efficacy")))
        par = (_rate(_pool(cells, "edited", "paraphrase")), _rate(_pool(cells, "after", "paraphrase")))
        left = [c["m"]["residual"]["edit_left"] for c in cells if c["m"].get("residual")]
        summary["arms"][arm] = {
            "cells": len(cells), "edit_wrote": _rate(e_new), "retained_after_ft": _rate(a_new),
            "retained_of_written": _rate(cond), "n_written": len(cond), "intrinsic_after_ft": _rate(intr),
            "intrinsic_after_edit": _rate(intr_ed), "neighbourhood": (_rate(neigh[0]), _rate(neigh[1])),
            "intrinsic_base": _rate([x for c in cells for x in c["m"]["intrinsic_base"]]),
            "efficacy": eff, "paraphrase": par, "edit_left": sum(left) / len(left) if left else None,
            "steps": [x for c in cells for x in c["m"]["steps"]],
            "stop": [x for c in cells for x in c["m"]["stop"]],
        }
        L.append(f"| {arm} | {len(cells)} | {_fmt(_rate(e_new), e_new)} | {eff[0][0]:.0%} → {eff[1][0]:.0%} | "
                 + (f"{par[0][0]:.0%} → {par[1][0]:.0%}" if not math.isnan(par[0][0]) else "–")
                 + f" | {_fmt(_rate(a_new), a_new)} | {_fmt(_rate(cond), cond)} | {_fmt(_rate(intr_ed), intr_ed)} | "
                 f"{_fmt(_rate(intr), intr)} | {_fmt(_rate(neigh[0]), neigh[0])} → {_fmt(_rate(neigh[1]), neigh[1])} | "
                 + (f"{sum(left) / len(left):.2f}" if left else "–") + " |")
        bars.append({"label": arm, "edit": _rate(e_new), "after": _rate(a_new), "intrinsic": _rate(intr)})
    L.append("")
    if bars:
        F.retention_bars(bars, figs, "retention", f"{name}: retention per arm")
        L += ["![retention per arm](figures/retention.png)", ""]

    # -- sweeps
    for kind, xlabel in (("threshold", "fine-tuned layers start at"), ("window", "window centre")):
        curves: dict[str, list] = defaultdict(list)
        for arm, cells in arms.items():
            c0 = cells[0]["cell"]
            if not c0.layers.startswith(kind + ":"):
                continue
            x = float(c0.layers.split(":")[1].split("/")[0])
            for series, flags in ((f"{c0.edit} edited", _pool(cells, "after", "new")),
                                  (f"{c0.edit} intrinsic", _pool(cells, "after", "intrinsic"))):
                curves[f"{series} · {c0.ft} · {c0.task}"].append((x, *_rate(flags)))
        if curves:
            curves = {k: sorted(v) for k, v in curves.items()}
            marks = sorted({l for r in rows if r["cell"].layers.startswith(kind) for l in r["m"]["edited_layers"]})
            F.sweep_curves(curves, figs, f"sweep-{kind}", xlabel, f"{name}: {kind} sweep", marks)
            summary[f"sweep_{kind}"] = curves
            L += [f"## {kind.title()} sweep", "", f"![{kind} sweep](figures/sweep-{kind}.png)", "",
                  "| series | " + " | ".join(f"{x:g}" for x, *_ in next(iter(curves.values()))) + " |",
                  "|---|" + "---|" * len(next(iter(curves.values())))]
            for k, pts in curves.items():
                L.append(f"| {k} | " + " | ".join(f"{p[1]:.0%} [{p[2]:.0%}, {p[3]:.0%}]" for p in pts) + " |")
            L.append("")

    # -- drift and directional similarity
    pairs = _drift_analysis(rows, out)
    if pairs:
        L += ["## Activation drift and directional similarity", "",
              "Per layer, at the subject's last token and the prompt's last token of the edited facts: ‖h − h_base‖ "
              "of M_ed (edited), M_ft (the control arm: the unedited model fine-tuned alike) and M_ed_ft (edited, "
              "then fine-tuned), and the mean cosine between two models' drifts. Red dashed lines bound the edited "
              "layers.", "",
              "| edited cell | mean \\|cos\\| M_ed – M_ft (subject / last) | mean cos M_ed_ft – M_ed (subject / last) "
              "| mean cos M_ed_ft – M_ft (subject / last) |", "|---|---|---|---|"]
        summary["drift"] = {}
        for p in pairs:
            c = p["cell"]
            stem = f"drift-{c.edit}-{c.ft}-{c.layers.replace(':', '').replace('/', '-')}-{c.task}-s{c.seed}"
            F.drift_panels(p["drift"], p["sim"], p["edited_layers"], figs, stem, f"{name}: {_arm(c)} seed {c.seed}")

            def mean(vals, col, absolute=False):
                xs = [abs(v[col]) if absolute else v[col] for v in vals]
                return sum(xs) / len(xs)

            sims = p["sim"]
            row = {k: [mean(v, 0), mean(v, 1)] for k, v in sims.items()}
            row["abs M_ed – M_ft"] = [mean(sims["M_ed – M_ft"], 0, True), mean(sims["M_ed – M_ft"], 1, True)]
            summary["drift"][f"{_arm(c)}·s{c.seed}"] = {"edited_layers": p["edited_layers"], "means": row,
                                                        "drift": p["drift"], "sim": sims}
            a = row["abs M_ed – M_ft"]
            L.append(f"| [{_arm(c)} s{c.seed}](figures/{stem}.png) | {a[0]:.2f} / {a[1]:.2f} | "
                     f"{row['M_ed_ft – M_ed'][0]:.2f} / {row['M_ed_ft – M_ed'][1]:.2f} | "
                     f"{row['M_ed_ft – M_ft'][0]:.2f} / {row['M_ed_ft – M_ft'][1]:.2f} |")
        first = pairs[0]["cell"]
        L += ["", f"![drift](figures/drift-{first.edit}-{first.ft}-{first.layers.replace(':', '').replace('/', '-')}"
                  f"-{first.task}-s{first.seed}.png)", ""]

    # -- token categories over fine-tuning, and the top-3 table
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["cell"].edit != "none":
            by_method[r["cell"].edit].append(r)
    if any(c["h"] for cells in by_method.values() for c in cells):
        L += ["## First-token probability by category", "",
              "Mean probability of the first answer token: the edited target's, the true target's, related terms' "
              "(other objects of the same relation) and the rest (they add up to 1). Step −1 is the base model, "
              "0 the edited model before fine-tuning.", ""]
        summary["mass"] = {}
        for method, cells in by_method.items():
            for which, what in (("mass_edited", "edited facts"), ("mass_intrinsic", "intrinsic facts")):
                steps, masses = _mass_by_step(cells, which)
                if not steps:
                    continue
                labels = ["base" if st < 0 else str(st) for st in steps]
                stem = f"mass-{method}-{which.split('_')[1]}"
                F.token_mass(steps, masses, figs, stem, f"{name}: {method}, {what}", labels)
                summary["mass"][f"{method}/{which}"] = {"steps": steps, "mass": masses}
                L += [f"**{method}, {what}** ![{stem}](figures/{stem}.png)", "",
                      "| step | " + " | ".join(CATEGORIES) + " |", "|---|" + "---|" * len(CATEGORIES)]
                for lab, m in zip(labels, masses):
                    L.append(f"| {lab} | " + " | ".join(f"{m[k]:.3f}" for k in CATEGORIES) + " |")
                L.append("")
        L += ["## Top-3 tokens through fine-tuning", ""]
        for method, cells in by_method.items():
            c = cells[0]
            fact_id = c["m"]["facts"][0]
            hist = [h for h in c["h"] if h.get("unit") == 0 and h.get("top3")]
            L += [f"**{method}** ({_arm(c['cell'])}, seed {c['cell'].seed}), fact `{fact_id}`:", "",
                  "| stage | top-3 (probability) |", "|---|---|"]
            for h in hist:
                stage = "base" if h["step"] < 0 else ("after the edit" if h["step"] == 0 else f"step {h['step']}")
                tops = ", ".join(f"`{t.strip() or repr(t)}` {p:.3f}" for t, p in h["top3"][0])
                L.append(f"| {stage} | {tops} |")
            L.append("")

    atomic_write_text(dest / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    atomic_write_text(dest / "report.md", "\n".join(L) + "\n")
    return dest / "report.md"


def arm_rows(cells: list[dict]) -> list[dict]:
    """Finished cells of a store (``StudyStore.cells``) grouped into arms, for views without the study file.

    Each row: arm label, cells, rates (rate, lo, hi) of the edit writing the facts, of the edits retained and of
    intrinsic facts after fine-tuning, the mean weight residual, and the curves over fine-tuning steps
    (validation loss, edited-target mass of the edited facts).
    """
    groups: dict[str, list[dict]] = defaultdict(list)
    for c in cells:
        if c.get("kind") != "cell" or c.get("status") != "done" or not c.get("metrics"):
            continue
        s = c["settings"]
        cell = Cell("", s["edit"], s["n_edits"], s["ft"], s["layers"], s["task"], s["seed"])
        groups[_arm(cell)].append({"cell": cell, "m": c["metrics"], "h": c.get("history") or []})
    rows = []
    for arm, cs in groups.items():
        left = [c["m"]["residual"]["edit_left"] for c in cs if c["m"].get("residual")]
        loss: dict[int, list[float]] = defaultdict(list)
        for c in cs:
            for h in c["h"]:
                if h.get("stage") == "ft" and "val_loss" in h:
                    loss[h["step"]].append(h["val_loss"])
        steps, masses = _mass_by_step(cs, "mass_edited")
        rows.append({
            "arm": arm, "cells": len(cs), "edit_wrote": _rate(_pool(cs, "edited", "new")),
            "retained": _rate(_pool(cs, "after", "new")), "intrinsic": _rate(_pool(cs, "after", "intrinsic")),
            "edit_left": sum(left) / len(left) if left else None,
            "loss_curve": [sum(loss[k]) / len(loss[k]) for k in sorted(loss)],
            "mass_curve": [m["edited"] for m in masses],
        })
    return rows
