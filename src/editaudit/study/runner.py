"""Running a study: every cell a stored run, finished cells skipped, a killed study resumed.

One process holds the base model in memory and, for each cell, puts the base weights back, edits
(``editing.apply_edits``), measures, fine-tunes (``study.finetune``) while measuring at every
evaluation, measures again and stores the cell's numbers in the study store; its activations go to
``OUT/acts/<cell id>.safetensors`` (drift and directional similarity are computed from them by the
report, pairing each edited cell with the control cell of the same fine-tuning). A cell that is
interrupted or fails is marked so and run again next time; a finished one is never redone.

Equal impact: for each task, the reference arm (``[stopping] reference_*``) is fine-tuned on the
unedited model for ``reference_steps`` steps; the validation loss it reaches is the target at which
every cell of that task stops (or at the step cap, recorded as ``stop_reason = cap``).

Progress goes to one callback as the project's typed events (``editaudit.progress``): a :class:`Stage` of
the grid (cells done of the total), of each edit and of each fine-tuning (evaluation steps of the cap), a
:class:`Note` for a line worth telling; what only a study has (which cell starts, the losses measured at
an evaluation) comes as a :class:`StudyEvent` through the same callback, which other renderers ignore.
"""

from __future__ import annotations

import random
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import torch

from ..errors import BadInput
from ..probing.format import Probe
from ..progress import Event, Note, Stage, Step
from ..store.studies import StudyStore
from . import metrics as M
from .config import StudyConfig
from .finetune import FtSettings, decoder_blocks, encode_task, finetune
from .grid import Cell, expand, layer_set, reference_id


@dataclass(frozen=True)
class StudyEvent:
    """What only a study reports: ``cell`` {id, label} starts; ``eval`` {stage, step, of, val_loss, …} measured."""

    kind: str
    data: dict


StudyProgress = Callable[[Union[Event, StudyEvent]], None]


def ignore(event: Event | StudyEvent) -> None:
    """The default callback: nobody is watching."""


def grid_stage(cfg: StudyConfig) -> str:
    """The name of the grid's Stage (cells finished of all cells), so a renderer can give it its own bar."""
    return f"{cfg.study.name}: cells"


@dataclass
class StudyOutcome:
    total: int
    skipped: int
    ran: int
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0


class _Context:
    """What every cell of a study shares: model, base weights, probes, task data, base measurements."""

    def __init__(self, cfg: StudyConfig, say: Callable[[str], None]) -> None:
        from ..models.loading import load_model
        from ..probing.sets import load_set

        self.cfg = cfg
        s = cfg.study
        self.lm = load_model(s.model, device=s.device, say=say)
        self.model, self.tok = self.lm.model, self.lm.tokenizer
        self.block, self.n_layers = decoder_blocks(self.model)
        self.base = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        self.facts = [p for p in load_set(s.facts) if p.target_new]
        if not self.facts:
            raise BadInput(f"probe set {s.facts!r} has no fact with a target_new to edit towards")
        self.intrinsic = load_set(s.intrinsic)[: s.n_intrinsic]
        bank = load_set(s.related) if s.related else []
        self.related = M.related_objects(list(bank) + self.facts + self.intrinsic)
        self.cats = {p.id: M.category_tokens(self.tok, p, self.related) for p in self.facts + self.intrinsic}
        mx = cfg.metrics.max_new_tokens
        self.intrinsic_base_preds = M.answers(self.model, self.tok, self.intrinsic, mx)
        self.intrinsic_base = M.stated(self.tok, self.intrinsic, self.intrinsic_base_preds, "true")
        self.tasks: dict[str, Any] = {}
        self.base_acts: dict[str, torch.Tensor] = {}
        self.edited: dict[tuple, tuple] = {}   # (method, fact ids) → the edit's weights and measurements
        self.say = say

    def remember_edit(self, key: tuple, value: tuple, keep: int = 4) -> None:
        """Keep the last few edits: cells of one edit that differ only in fine-tuning follow each other."""
        self.edited[key] = value
        while len(self.edited) > keep:
            self.edited.pop(next(iter(self.edited)))

    def restore(self) -> None:
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                p.copy_(self.base[n])

    def task(self, name: str):
        if name not in self.tasks:
            from ..mitigation.data import load_task_data

            f = self.cfg.finetune
            data = f.data.get(name)
            if data is not None and self.cfg.path is not None and not Path(data).is_absolute():
                data = str(self.cfg.path.parent / data)
            td = load_task_data(name, Path(data) if data else None, max_examples=f.train_examples + f.val_size,
                                val_size=f.val_size, seed=0, say=self.say)
            self.tasks[name] = encode_task(td, self.tok, f.seq_len)
        return self.tasks[name]

    def chosen_facts(self, n: int, seed: int) -> list[Probe]:
        """The facts of (n, seed): a seeded sample, the same for every method and fine-tuning arm."""
        if n > len(self.facts):
            raise BadInput(f"n_edits {n} exceeds the {len(self.facts)} facts of {self.cfg.study.facts!r}")
        return random.Random(seed).sample(self.facts, n)

    def acts_base(self, facts: list[Probe]) -> torch.Tensor:
        missing = [f for f in facts if f.id not in self.base_acts]
        if missing:
            self.restore()
            got = M.activations(self.model, self.tok, missing, self.block, self.n_layers)
            for f, a in zip(missing, got):
                self.base_acts[f.id] = a
        return torch.stack([self.base_acts[f.id] for f in facts])

    def ft_settings(self, ft: str, layers: list[int], task: str, seed: int, max_steps: int,
                    target: float | None) -> FtSettings:
        f = self.cfg.finetune
        lr = f.lr.get(task, 5e-5 if task == "lm" else 2e-5)
        return FtSettings(method=ft, layers=layers, lr=lr, max_steps=max_steps, target_loss=target,
                          batch_size=f.batch_size, seq_len=f.seq_len, weight_decay=f.weight_decay, rank=f.rank,
                          alpha=f.alpha, head_lr=f.head_lr, eval_every=f.eval_every, seed=seed)


def _edit_requests(facts: list[Probe], augment: bool) -> list[Probe]:
    """The facts to write; with paraphrase augmentation each paraphrase that names the subject is a request too."""
    if not augment:
        return facts
    from ..editing.service import paraphrase_requests

    return paraphrase_requests(facts)


def _snapshot(ctx: _Context, facts: list[Probe]) -> dict:
    edited = M.token_snapshot(ctx.model, ctx.tok, facts, [ctx.cats[f.id] for f in facts])
    intr = M.token_snapshot(ctx.model, ctx.tok, ctx.intrinsic, [ctx.cats[p.id] for p in ctx.intrinsic])
    return {"mass_edited": edited["mass"], "mass_intrinsic": intr["mass"], "top3": edited["top3"]}


def _measure(ctx: _Context, facts: list[Probe]) -> dict:
    """Retention of the edited facts (new and true target), efficacy, paraphrases, intrinsic, neighbourhood."""
    mx = ctx.cfg.metrics.max_new_tokens
    preds = M.answers(ctx.model, ctx.tok, facts, mx)
    ipreds = M.answers(ctx.model, ctx.tok, ctx.intrinsic, mx)
    rels = {f.relation for f in facts}
    neigh = [a.first_word.strip().casefold() == b.first_word.strip().casefold()
             for p, a, b in zip(ctx.intrinsic, ipreds, ctx.intrinsic_base_preds) if p.relation in rels]
    return {
        "new": M.stated(ctx.tok, facts, preds, "new"),
        "true": M.stated(ctx.tok, facts, preds, "true"),
        "efficacy": M.efficacy_flags(ctx.model, ctx.tok, facts),
        "paraphrase": M.paraphrase_flags(ctx.model, ctx.tok, facts, mx),
        "intrinsic": M.stated(ctx.tok, ctx.intrinsic, ipreds, "true"),
        "neighbourhood": neigh,
        "answers": [p.first_word for p in preds],
    }


def _merge_measures(parts: list[dict]) -> dict:
    out: dict = {}
    for part in parts:
        for k, v in part.items():
            out.setdefault(k, []).extend(v)
    return out


def _reference(ctx: _Context, store: StudyStore, cfg: StudyConfig, task: str,
               progress: StudyProgress) -> float | None:
    """The equal-impact target of ``task``: a fixed one from the file, or the reference arm's final loss. None when
    the reference did not lower its validation loss (a fresh classification head can raise it at first): a target
    at or above every arm's starting loss would stop them all before their first step, so they train the cap."""
    s = cfg.stopping
    if task in s.target_loss:
        return float(s.target_loss[task])
    rid = reference_id(task, cfg)
    row = store.cell(rid)
    if row and row["status"] == "done":
        done = row["metrics"]["target_loss"]
        return None if done is None else float(done)
    settings = {"task": task, "ft": s.reference_ft, "layers": s.reference_layers, "steps": s.reference_steps}
    store.start_cell(rid, cfg.study.name, "reference", "reference", settings)
    stage = f"reference · {task}: fine-tuning"
    progress(Note(f"reference arm of {task}: {s.reference_steps} steps on the unedited model set the target loss"))
    progress(Stage(stage, s.reference_steps))
    t0 = time.perf_counter()
    try:
        ctx.restore()
        ft = ctx.ft_settings(s.reference_ft, layer_set(s.reference_layers, ctx.n_layers, []), task, 0,
                             s.reference_steps, None)
        res = finetune(ctx.model, ctx.tok, ctx.task(task), ft, _eval_events(progress, stage, s.reference_steps))
    except BaseException as exc:
        store.fail_cell(rid, "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", repr(exc))
        raise
    finally:
        ctx.restore()
    start, reached = res.history[0]["val_loss"], res.history[-1]["val_loss"]
    target = reached if reached < start else None
    store.finish_cell(rid, {"target_loss": target, "reached": reached, "steps": res.steps}, res.history,
                      time.perf_counter() - t0)
    if target is None:
        progress(Note(f"the reference did not lower {task}'s validation loss ({start:.3f} → {reached:.3f}): "
                      f"no equal-impact target, every {task} arm trains {s.max_steps} steps"))
    else:
        progress(Note(f"target loss of {task}: {target:.3f}"))
    return target


def _eval_events(progress: StudyProgress, stage: str, cap: int) -> Callable[[int, dict], None]:
    """An evaluation is a Step of the fine-tuning's stage (steps of the cap) and a StudyEvent with its losses."""
    def on_eval(step: int, m: dict) -> None:
        progress(Step(stage, step, cap))
        progress(StudyEvent("eval", {"stage": stage, "step": step, "of": cap, **m}))

    return on_eval


def run_cell(ctx: _Context, cell: Cell, target: float | None, out: Path, cell_id: str,
             progress: StudyProgress = ignore) -> tuple[dict, list]:
    """Edit, measure, fine-tune (measuring at each evaluation), measure again; returns (metrics, history)."""
    cfg = ctx.cfg
    facts = ctx.chosen_facts(cell.n_edits, cell.seed)
    units = [[f] for f in facts] if cfg.edit.protocol == "single" else [facts]
    cap = cfg.stopping.max_steps
    target = target if cfg.stopping.mode == "equal-impact" else None
    edit_parts, after_parts, history, residuals = [], [], [], []
    acts = {"base": [], "edited": [], "after": []}
    info: dict[str, Any] = {"units": len(units), "steps": [], "stop": [], "edited_layers": [], "ft_layers": [],
                            "edit_seconds": 0.0, "ft_seconds": 0.0}
    starts: list[float] = []
    ends: list[float] = []
    accs: list[float] = []
    label = cell.label()
    for u, unit in enumerate(units):
        of_units = f" {u + 1}/{len(units)}" if len(units) > 1 else ""  # single protocol: a model per fact
        ctx.restore()
        if cfg.metrics.drift:
            acts["base"].append(ctx.acts_base(unit))
        if cfg.metrics.categories:
            history.append({"unit": u, "stage": "base", "step": -1, **_snapshot(ctx, unit)})
        key = (cell.edit, tuple(f.id for f in unit))
        cached = ctx.edited.get(key)
        if cached is not None:  # the same edit of the same facts: arms differ only in their fine-tuning
            edited_layers, edited_w, part, acts_ed, snap = cached
            with torch.no_grad():
                for n, w in edited_w.items():
                    ctx.model.get_parameter(n).copy_(w)
            info["edit_reused"] = True
        else:
            edited_layers, names = [], []
            if cell.edit != "none":
                from ..editing.service import apply_edits

                t0 = time.perf_counter()
                stage = f"{label}: {cell.edit} editing {len(unit)} fact(s){of_units}"
                progress(Stage(stage, 1))
                progress(Step(stage, 0, 1))
                run = apply_edits(ctx.lm, _edit_requests(unit, cfg.edit.paraphrase_augment), cell.edit,
                                  layers=cfg.edit.layers.get(cell.edit), hparams=cfg.edit.hparams.get(cell.edit),
                                  evaluate=False, device=cfg.study.device)
                progress(Step(stage, 1, 1))
                info["edit_seconds"] += time.perf_counter() - t0
                edited_layers, names = list(run.layers), sorted(run.originals)
            edited_w = {n: ctx.model.get_parameter(n).detach().clone() for n in names}
            part = _measure(ctx, unit)
            acts_ed = M.activations(ctx.model, ctx.tok, unit, ctx.block, ctx.n_layers) if cfg.metrics.drift else None
            snap = _snapshot(ctx, unit) if cfg.metrics.categories else None
            ctx.remember_edit(key, (edited_layers, edited_w, part, acts_ed, snap))
        names = sorted(edited_w)
        edit_parts.append(part)
        if acts_ed is not None:
            acts["edited"].append(acts_ed)
        ft_layers = layer_set(cell.layers, ctx.n_layers, edited_layers)
        info["edited_layers"], info["ft_layers"] = edited_layers, ft_layers

        ft_stage = f"{label}: fine-tuning{of_units}"
        progress(Stage(ft_stage, cap))
        report = _eval_events(progress, ft_stage, cap)

        def on_eval(step: int, m: dict, _u=u, _unit=unit, _snap=snap) -> None:
            row = {"unit": _u, "stage": "ft", **m}
            if cfg.metrics.categories:  # step 0 is the edited model: its snapshot was taken with the edit
                row |= _snap if step == 0 and _snap is not None else _snapshot(ctx, _unit)
            history.append(row)
            report(step, m)

        res = finetune(ctx.model, ctx.tok, ctx.task(cell.task),
                       ctx.ft_settings(cell.ft, ft_layers, cell.task, cell.seed, cap, target), on_eval)
        info["ft_seconds"] += res.seconds
        info["steps"].append(res.steps)
        info["stop"].append(res.stop_reason)
        starts.append(res.history[0]["val_loss"])
        ends.append(res.history[-1]["val_loss"])
        if "val_acc" in res.history[-1]:
            accs.append(res.history[-1]["val_acc"])
        after_parts.append(_measure(ctx, unit))
        if cfg.metrics.drift:
            acts["after"].append(M.activations(ctx.model, ctx.tok, unit, ctx.block, ctx.n_layers))
        if names:
            residuals.append(M.weight_residual({n: ctx.base[n] for n in names}, edited_w,
                                               {n: ctx.model.get_parameter(n).detach() for n in names}))
    ctx.restore()
    if cfg.metrics.drift:
        from safetensors.torch import save_file

        from ..atomic import atomic_write_bytes

        tensors = {k: torch.cat(v).contiguous() for k, v in acts.items()}
        tmp = out / "acts" / f".{cell_id}.tmp"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp))
        atomic_write_bytes(out / "acts" / f"{cell_id}.safetensors", tmp.read_bytes())
        tmp.unlink()
    info["val_loss_start"] = sum(starts) / len(starts)  # the mean over the cell's models (single protocol: one per fact)
    info["val_loss_end"] = sum(ends) / len(ends)
    if accs:
        info["val_acc_end"] = sum(accs) / len(accs)
    metrics = {
        **info, "facts": [f.id for f in facts], "target_loss": target,
        "edited": _merge_measures(edit_parts), "after": _merge_measures(after_parts),
        "intrinsic_base": ctx.intrinsic_base,
        "residual": {k: sum(r[k] for r in residuals) / len(residuals) for k in residuals[0]} if residuals else None,
    }
    return metrics, history


def run_study(cfg: StudyConfig, store: StudyStore, out: str | Path, progress: StudyProgress = ignore,
              say: Callable[[str], None] = lambda s: None, only: int | None = None,
              shard: tuple[int, int] | None = None) -> StudyOutcome:
    """Run every cell of ``cfg`` not yet done in ``store``; ``only`` stops after that many cells ran.

    ``shard=(i, n)`` runs only worker i's share of the grid, so that n independent processes (Slurm array
    tasks, Ray tasks) can each write their own store, merged afterwards (``StudyStore.merge``).
    ``progress`` gets the typed events and :class:`StudyEvent` (see the module docstring).
    """
    from dataclasses import asdict

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if cfg.study.threads:
        torch.set_num_threads(cfg.study.threads)
    cells = expand(cfg)
    if shard is not None:
        from .grid import shard as take_shard

        cells = take_shard(cells, *shard)
    store.save_study(cfg.study.name, {"shared": cfg.shared(), "grids": [asdict(g) for g in cfg.grids]},
                     str(cfg.path) if cfg.path else None)
    done = store.done_ids(cfg.study.name)
    todo = [(cid, c) for cid, c in cells if cid not in done]
    outcome = StudyOutcome(total=len(cells), skipped=len(cells) - len(todo), ran=0)
    grid = grid_stage(cfg)
    progress(Stage(grid, len(cells)))
    progress(Step(grid, outcome.skipped, len(cells)))
    if not todo:
        return outcome
    ctx = _Context(cfg, say)
    for task in dict.fromkeys(c.task for _, c in todo):  # a data problem stops the study before any cell
        ctx.task(task)
    targets: dict[str, float | None] = {}
    try:
        for cid, cell in todo:
            if only is not None and outcome.ran >= only:
                break
            if cfg.stopping.mode == "equal-impact" and cell.task not in targets:
                targets[cell.task] = _reference(ctx, store, cfg, cell.task, progress)
            store.start_cell(cid, cfg.study.name, cell.grid, "cell", cell.settings())
            progress(StudyEvent("cell", {"id": cid, "label": cell.label()}))
            c0 = time.perf_counter()
            try:
                m, hist = run_cell(ctx, cell, targets.get(cell.task), out, cid, progress)
            except KeyboardInterrupt:
                store.fail_cell(cid, "interrupted", "interrupted")
                raise
            except Exception as exc:  # one broken cell must not lose the rest of the study
                store.fail_cell(cid, "failed", "".join(traceback.format_exception_only(type(exc), exc)).strip())
                outcome.failed.append(cid)
                progress(Note(f"failed {cell.label()}: {exc}"))
                ctx.restore()
                continue
            store.finish_cell(cid, m, hist, time.perf_counter() - c0)
            outcome.ran += 1
            progress(Step(grid, outcome.skipped + outcome.ran, len(cells)))
            progress(Note(f"done {cell.label()} ({time.perf_counter() - c0:.0f}s)"))
    finally:
        ctx.restore()
        outcome.seconds = time.perf_counter() - t0
    return outcome
