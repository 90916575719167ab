"""The fine-tuning and surgical-revert arms of a mitigation run, each taking the run's ``RunContext``.

(The base-free erase arm is in ``erase.py``.) An arm records itself in the store through ``ctx.runs``,
writes its checkpoint (the main arm) and measures the checkpoint exactly as written. It reports a ``start`` and a
``result`` event around its stages, each stage named after the arm (``RunContext.stage``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, replace
from pathlib import Path

from ..errors import BadInput
from ..progress import Step
from .context import RunContext
from .data import TaskData
from .output import storage, write_result
from .plan import Plan
from .train import TASK_PIECES, TrainConfig, TrainOutcome, encode, known_mask, train
from .types import ArmResult


def arm_config(options, name: str) -> TrainConfig:
    """The arm's own training configuration (a copy: the caller's options are never changed)."""
    if name == "full":
        return replace(copy.deepcopy(options.train), method="full", target_modules=None)
    return replace(copy.deepcopy(options.train), method=options.method)


def run_dtype(options) -> str:
    """The dtype the run's models are loaded in, resolved (``auto`` depends on the device), for the stored settings."""
    from ..models.loading import dtype_name, resolve_dtype

    return dtype_name(resolve_dtype(options.dtype, options.device))


def train_arm(ctx: RunContext, name: str, lm, plan: Plan, task: TaskData, cfg: TrainConfig,
              out: Path | None) -> tuple[ArmResult, list[str]]:
    """Train one arm, write its checkpoint (when ``out``), and measure it as written."""
    from .resume import write_json

    config = {"train": asdict(cfg), "layers_strategy": plan.strategy, "modules": plan.modules,
              "params": len(plan.params), "task": task.task, "data": task.source, "dtype": run_dtype(ctx.options),
              "out_format": ctx.options.out_format}
    run_ids = ctx.run_state.setdefault("runs", {})
    run_id = run_ids.get(name) if ctx.resume else None
    if not ctx.runs.reopen(run_id):
        run_id = ctx.runs.start(name, cfg.method, plan.layers, task.task, config, out)
        run_ids[name] = run_id
    if ctx.main and ctx.state_root is not None:
        write_json(ctx.state_root / "run.json", ctx.run_state)
    state_dir = ctx.state_root / name if ctx.state_root is not None else None
    arm_resume = ctx.resume and state_dir is not None and (state_dir / "state.json").exists()
    t0 = time.perf_counter()
    ctx.event("start", name, {"method": plan.method, "layers": plan.layers, "run_id": run_id})
    stage = ctx.stage(f"training ({plan.method}, layers {plan.layers[0]}–{plan.layers[-1]}"
                      f"{', embeddings, final norm and head' if plan.strategy == 'full-model' else ''})",
                      cfg.steps, name)

    def on(kind: str, data: dict) -> None:
        """``train``'s events: a step is a Step of the stage and its loss; an evaluation is stored, then reported."""
        if kind == "step":
            ctx.emit(Step(stage, data["step"], data["total"]))
            ctx.event("loss", name, {"stage": stage, **data})
        elif kind == "resume":
            ctx.event("resume", name, {"stage": stage, **data})
            ctx.emit(Step(stage, data["step"], cfg.steps))
        elif kind == "eval":
            ctx.runs.record_eval(run_id, data)
            ctx.event("eval", name, data)

    with ctx.runs.marked_on_failure(run_id):
        outcome: TrainOutcome = train(
            lm, plan, task, cfg, evaluate=ctx.evaluate if ctx.main else None, emit=on, cancel=ctx.cancel,
            state_dir=state_dir, resume=arm_resume,
            run_info={"suspect": ctx.suspect_ck.fingerprint(), "params": plan.params, "arm": name},
        )
        if not ctx.main:
            return ArmResult(name, plan.method, None, plan.layers, {}, {}, [], outcome.steps, outcome.stop_reason), []
        stored = storage(ctx.suspect_ck)  # an adapter suspect's tensors are stored in its base's dtypes
        tensors = round_trip(outcome, stored)
        after = dict(outcome.history[-1])
        exact = outcome.merge_check is None and all(stored.tensors[n][1].dtype == "F32" for n in tensors)
        if not exact:  # measure the model as written: adapters merged, weights in the stored dtype
            load_into(outcome.model, tensors)
            after = final_metrics(outcome, ctx.evaluate, lm.tokenizer, task, cfg)
        skipped: list[str] = []
        if out is not None:
            ctx.stage(f"writing {out}", arm=name)
            # the trained values as they ran (a merged output rounds them to the stored dtypes as it writes)
            skipped = write_result(ctx, out, outcome.tensors, outcome.extra_files, run_dtype(ctx.options))
        residual = None
        if ctx.base_ck is not None and ctx.evidence is not None and ctx.evidence.found:
            residual = edit_residual(ctx, tensors)
        arm = ArmResult(name, plan.method, run_id, plan.layers, outcome.history[0], after, outcome.history,
                        outcome.steps, outcome.stop_reason, outcome.merge_check, residual, [],
                        None, str(out) if out else None, round(time.perf_counter() - t0, 1))
        ctx.runs.finish(run_id, {k: v for k, v in arm.to_dict().items() if k != "history"})
        ctx.event("result", name, arm.to_dict())
        return arm, skipped


def revert_arm(ctx: RunContext) -> tuple[ArmResult, list[str]]:
    """Surgical revert: remove the scan's low-rank edit components (needs the base), then re-scan."""
    from ..scan.service import ScanOptions, run_scan
    from .evidence import evidence_from_report
    from .revert import surgical_revert

    ev, out = ctx.evidence, ctx.out
    t0 = time.perf_counter()
    run_id = ctx.runs.start("revert", "revert", ev.layers, "-", {"components": ev.components, "evidence": ev.source,
                                                               "dtype": run_dtype(ctx.options),
                                                               "out_format": ctx.options.out_format}, out)
    ctx.event("start", "revert", {"method": "revert", "layers": ev.layers, "run_id": run_id})
    with ctx.runs.marked_on_failure(run_id):
        before: dict = {"step": 0}
        if ctx.evaluate is not None and ctx.suspect_ck.config is not None:
            ctx.stage("measuring the suspect", arm="revert")
            lm = ctx.load(ctx.suspect_ck.root)
            before.update(ctx.evaluate(lm.model, lm.tokenizer))
            ctx.runs.record_eval(run_id, before)
        ctx.event("eval", "revert", before)
        stage = ctx.stage(f"removing edit components from {len(ev.tensors)} tensors", len(ev.tensors), "revert")
        tensors, reports = surgical_revert(ctx.suspect_ck, ctx.base_ck, ev, ctx.cancel, ctx.steps_in(stage))
        skipped = write_result(ctx, out, tensors)  # computed in float32 from the stored tensors
        after: dict = {"step": 1}
        if ctx.evaluate is not None and ctx.suspect_ck.config is not None:
            ctx.stage("measuring the reverted checkpoint", arm="revert")
            lm = ctx.load(out)
            after.update(ctx.evaluate(lm.model, lm.tokenizer))
            ctx.runs.record_eval(run_id, after)
        ctx.event("eval", "revert", after)
        ctx.stage("re-scanning the reverted checkpoint", arm="revert")
        rescan = run_scan(out, ctx.base_ck.root, ScanOptions(read_edits=False, use_cache=True), store=None,
                          cancel=ctx.cancel)
        doc = rescan.to_dict()
        left = evidence_from_report(doc, "re-scan")
        rescan_info = {"verdict": doc["verdict"], "kind": doc["kind"], "edit_findings": left.findings,
                       "edited_tensors_left": [t for t in left.tensors if t in set(ev.tensors)]}
        residual = edit_residual(ctx, tensors)
        arm = ArmResult("revert", "revert", run_id, ev.layers, before, after, [before, after], 0,
                        "surgical revert", None, residual, [r.to_dict() for r in reports], rescan_info, str(out),
                        round(time.perf_counter() - t0, 1))
        ctx.runs.finish(run_id, arm.to_dict())
        ctx.event("result", "revert", arm.to_dict())
        return arm, skipped


# -- facts the model already knows --------------------------------------------------------------------

def drop_known(lm, task: TaskData, cfg: TrainConfig, say) -> TaskData:
    """Keep only facts the model does not know yet (the study's setting).

    Facts are checked in their shuffled order, a chunk at a time, until the step budget has enough
    training facts (one pass over ``steps × batch size``), so a short run does not check them all.
    """
    needed = {"val": len(task.val), "train": cfg.steps * cfg.batch_size}
    keep: dict[str, list] = {"train": [], "val": []}
    checked = 0
    for split in ("val", "train"):
        rows = getattr(task, split)
        for i in range(0, len(rows), 64):
            chunk = rows[i:i + 64]
            feats = encode(TaskData("facts", chunk, [], task.source), lm.tokenizer, cfg.seq_len)[0]
            if len(feats) != len(chunk):  # an example without answer tokens: keep the chunk as it is
                keep[split] += chunk
            else:
                known = known_mask(lm.model, lm.tokenizer, feats)
                keep[split] += [r for r, k in zip(chunk, known) if not k]
            checked += len(chunk)
            if len(keep[split]) >= needed[split]:
                break
    say(f"facts task: checked {checked} facts, kept {len(keep['train'])} + {len(keep['val'])} the model "
        "does not know yet")
    if not keep["train"] or not keep["val"]:
        raise BadInput("the facts task has nothing left that the model does not already know")
    return TaskData(task.task, keep["train"], keep["val"], task.source + " (unknown to the model)", task.labels)


# -- the model as written -----------------------------------------------------------------------------

def round_trip(outcome: TrainOutcome, suspect_ck) -> dict:
    """The trained tensors as they will be stored (the suspect's dtypes), back in float32."""
    from ..checkpoint.reader import to_torch
    from ..checkpoint.writer import tensor_bytes

    out = {}
    for name, t in outcome.tensors.items():
        info = suspect_ck.tensors[name][1]
        out[name] = t.float() if info.dtype == "F32" else to_torch(bytearray(tensor_bytes(t, info.dtype)), info)
    return out


def load_into(model, tensors: dict) -> None:
    import torch

    from .train import _name_map

    names = _name_map(model, set(tensors))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, c in names.items():
            params[n].copy_(tensors[c].to(params[n].device, params[n].dtype))


def final_metrics(outcome: TrainOutcome, evaluate, tokenizer, task: TaskData, cfg: TrainConfig) -> dict:
    """Evaluate the model exactly as written (merged adapters, stored dtype)."""
    from .train import _task_module, validate

    last = dict(outcome.history[-1])
    metrics = {"step": outcome.steps}
    if evaluate is not None:
        metrics.update(evaluate(outcome.model, tokenizer))
    if not TASK_PIECES[task.task].head:  # a classifier head is not part of the model; keep its last validation
        tm = _task_module(outcome.model, task.task, 0, cfg.seed)
        feats = encode(task, tokenizer, cfg.seq_len)[1]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        metrics.update(validate(tm, feats, cfg.batch_size, pad, next(outcome.model.parameters()).device))
    else:
        metrics.update({k: last[k] for k in ("val_loss", "val_acc") if k in last})
    return metrics


def edit_residual(ctx: RunContext, current: dict) -> dict:
    """How much of each edit is left in the weights (needs the base)."""
    from .revert import edit_residual as residual
    from .revert import read_tensor

    ck = ctx.suspect_ck
    return residual(ck, ctx.base_ck, ctx.evidence, lambda n: current[n] if n in current else read_tensor(ck, n))
