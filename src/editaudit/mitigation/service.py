"""``run_mitigation``: plan, run and verify a mitigation of a suspect checkpoint, as one service call.

Used by the CLI (``editaudit mitigate``) and the app. Stages: find the scan's edit evidence (a stored
scan of this exact suspect, or a scan run now against ``base``; ``evaluation.py``) → plan the layers and
modules (``plan.py``) → the arms (``arms.py``: selective fine-tuning, surgical revert with the base; ``erase.py``:
the base-free erase from the scan's readings), with ``--compare-full`` a truly full fine-tuning arm first and the
selective arm then trained to the same validation loss (equal impact) → verification (``verification.py``).

Every arm is a ``finetune_runs`` row (``store/mitigation_runs.py``) with its metric history in ``metrics``.
The output folder is written atomically, as a merged checkpoint or a peft adapter over the base (``output.py``,
which also covers a suspect that is itself an adapter); the resumable state lives next to it (``resume.py``)
until the run completes. The option and result types live in ``options.py`` and ``types.py`` and are re-exported here.

Progress goes to one callback as the project's typed events (``editaudit.progress``): a :class:`Stage` per phase
(named after its arm inside one: ``selective: training (…)``), :class:`Step` counts of training, unlearning,
re-solving and reverting, a :class:`Note` for a line worth telling; what only a mitigation has (the plan, an
arm's start and result, step losses, evaluation metrics, resume) comes as a ``MitigationEvent`` through the same
callback, as the study's ``StudyEvent`` does.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Callable

from ..checkpoint import open_checkpoint
from ..errors import BadInput
from ..progress import Note, Stage
from ..store.mitigation_runs import session_exists
from .context import RunContext, Runs
from .data import drop_mentions, load_task_data
from .erase import project_targets
from .evaluation import default_intrinsic, edits_from_store, find_evidence, make_evaluator
from .options import PROJECT_DEFAULTS, MitigationOptions, project_settings, split_hparams
from .output import OUT_FORMATS, describe_input, open_suspect
from .plan import ERASE_METHODS, full_model_plan, plan_for_checkpoint
from .resume import check_same_run, read_json, state_root, write_json
from .train import TASK_STOP, StopRule, TrainConfig
from .types import ArmResult, MitigationEvent, MitigationProgress, MitigationResult
from .verification import verify

__all__ = ["ArmResult", "MitigationEvent", "MitigationOptions", "MitigationProgress", "MitigationResult",
           "PROJECT_DEFAULTS", "default_intrinsic", "edits_from_store", "find_evidence", "make_evaluator", "prepare",
           "process_state", "project_settings", "project_targets", "run_mitigation", "split_hparams"]

#: the other arms of an equal-impact comparison may take up to this many times the full arm's steps
EQUAL_IMPACT_CAP = 4


def prepare(suspect: str | Path, goal: str, options: MitigationOptions, store=None,
            say: Callable[[str], None] = lambda s: None, session_id: str | None = None,
            cancel: threading.Event | None = None, read_store=None):
    """Open the checkpoints, find the edit evidence and make the plan (no model is loaded).

    ``options.method == "auto"`` is resolved here (``plan.resolve_method``), once the evidence is known."""
    from ..models.registry import resolve_model

    if options.method == "auto" and (options.revert or goal != "erase"):
        options.method = "full"
    suspect_path = resolve_model(str(suspect), say)
    # a peft adapter folder: the suspect is its base plus ΔW, and that base is at hand
    suspect_ck, base_ck = open_suspect(suspect_path, str(options.base) if options.base else None, say)
    if base_ck is not None:
        from ..scan.compare import require_compatible

        require_compatible(base_ck, suspect_ck)
    erase = options.method in ERASE_METHODS or options.method == "auto"
    needs = options.revert or erase or options.layers.strip().lower() in ("auto", "edited", "non-edited")
    evidence = find_evidence(suspect_ck, base_ck, store, say, session_id, options.device, cancel, read_store,
                             readings=erase and not options.subjects) \
        if (needs or base_ck is not None or store is not None or read_store is not None) else None
    if options.revert:
        if base_ck is None and evidence is not None and evidence.base:
            base_ck = open_checkpoint(evidence.base)
        if base_ck is None:
            raise BadInput("surgical revert needs the base checkpoint: pass --base")
        if evidence is None or not evidence.found:
            raise BadInput("surgical revert needs a scan that found edits; the scan of this suspect found none")
        return suspect_ck, base_ck, evidence, None
    if options.out_format == "adapter":
        base_ck = _base_for_adapter_output(suspect_ck, base_ck, evidence, say)
    if suspect_ck.layout == "file" or suspect_ck.config is None:
        raise BadInput(f"{suspect_path} is not a model folder with config.json; it cannot be fine-tuned")
    if erase:  # fail on missing subjects now, before any model is loaded
        from .erase import unlearn_targets
        from .plan import resolve_method

        if options.method == "auto":
            options.method = resolve_method("auto", goal, evidence, bool(options.subjects))
            say(f"method auto → {options.method}")

        if "project" in options.method:
            project_targets(evidence, options)
        if "unlearn" in options.method:
            unlearn_targets(evidence, options)
        return suspect_ck, base_ck, evidence, None
    plan = plan_for_checkpoint(suspect_ck, options.layers, goal, options.modules, options.method, evidence)
    if options.train.target_modules and options.method != "full":
        wanted = set(options.train.target_modules)
        keep = [m for m in plan.lora_targets if m.rsplit(".", 1)[-1] in wanted]
        if not keep:
            raise BadInput(f"--target-modules {sorted(wanted)} matches none of the planned modules")
        plan.lora_targets = keep
        plan.params = [n for n in plan.params if n.rsplit(".", 1)[0] in set(keep)]
        plan.explanation.append(f"LoRA target modules narrowed to {sorted(wanted)}: {len(keep)} modules")
    if options.out_format == "adapter":
        _check_plan_for_adapter(plan, suspect_ck, say)
    return suspect_ck, base_ck, evidence, plan


def _base_for_adapter_output(suspect_ck, base_ck, evidence, say):
    """The base an adapter output is written against (--base, else the stored scan's); BadInput without one."""
    if base_ck is None and evidence is not None and evidence.base:
        base_ck = open_checkpoint(evidence.base)
        from ..scan.compare import require_compatible

        require_compatible(base_ck, suspect_ck)
        say(f"--out-format adapter: the adapter is written over {base_ck.root}, the base of {evidence.source}")
    if base_ck is None:
        raise BadInput("--out-format adapter writes the change relative to the base: pass --base BASE")
    return base_ck


def _check_plan_for_adapter(plan, suspect_ck, say) -> None:
    """Refuse a plan that trains what a LoRA adapter cannot hold, before any training; say when it will likely be
    refused at the end (full fine-tuning changes whole matrices)."""
    vectors = [n for n in plan.params if len(suspect_ck.tensors[n][1].shape) != 2 or not n.endswith(".weight")]
    if vectors:
        raise BadInput(f"--out-format adapter: the plan trains {len(vectors)} tensor(s) a LoRA adapter cannot hold "
                       f"(norms, biases, embeddings: {', '.join(vectors[:4])}{' …' if len(vectors) > 4 else ''}); "
                       "use --method lora, narrow --modules, or --out-format merged")
    if plan.method != "lora":
        say(f"--out-format adapter: {plan.method} fine-tuning usually changes whole matrices, which an adapter "
            "cannot hold (the run is then refused at the end); --method lora keeps the change low-rank")


def run_mitigation(suspect: str | Path, goal: str = "erase", options: MitigationOptions | None = None, *,
                   store=None, progress: MitigationProgress | None = None, cancel: threading.Event | None = None,
                   resume: bool = False, say: Callable[[str], None] = lambda s: None) -> MitigationResult:
    """Plan, run and verify a mitigation; see the module docstring. ``progress`` gets the typed events and
    ``MitigationEvent``; ``say`` the lines of the checks before the run and of the helpers it calls (resolving,
    scanning, loading). Raises BadInput on bad input and KeyboardInterrupt (``Interrupted`` when ``cancel`` is set)
    when stopped."""
    options = options or MitigationOptions()
    if goal not in ("erase", "preserve"):
        raise BadInput(f"goal must be erase or preserve, not {goal!r}")
    if options.revert and goal != "erase":
        raise BadInput("surgical revert removes edits: use it with --goal erase")
    if options.revert and options.method == "auto":
        options.method = "full"
    if options.method == "auto" and goal != "erase":
        options.method = "full"
    if options.method in ERASE_METHODS or options.method == "auto":
        from .unlearn import unlearn_settings

        if goal != "erase":
            raise BadInput(f"the {options.method} method erases edits: use it with --goal erase")
        if options.revert:
            raise BadInput(f"choose one of --revert (needs the base) and --method {options.method} (no base needed)")
        if options.subjects and "unlearn" in options.method:
            raise BadInput("--subjects gives subjects without their objects: it works with --method project only")
        options.project = project_settings(options.project)
        options.unlearn = unlearn_settings(options.unlearn)
    if options.out is None:
        raise BadInput("an output folder is required (--out DIR)")
    if options.out_format not in OUT_FORMATS:
        raise BadInput(f"--out-format must be one of {', '.join(OUT_FORMATS)}, not {options.out_format!r}")
    out = Path(options.out)
    from ..atomic import check_writable, refuse_output_over_inputs

    refuse_output_over_inputs(out, (suspect, options.base))
    main, device = process_state(options.device)
    if not main:  # a helper process under `accelerate launch`: train its share, write nothing, say nothing
        reader, store, progress, say = store, None, None, (lambda s: None)
    else:
        reader = store
    options.device = device
    from ..models.loading import dtype_name, resolve_dtype

    # a bad dtype fails now, not after a scan or a first arm; the resolved one must match a resumed run's
    same = {"dtype": dtype_name(resolve_dtype(options.dtype, device)), "out_format": options.out_format}
    emit = progress or (lambda ev: None)
    root = state_root(out)
    saved_run = read_json(root / "run.json") if resume else None
    if resume and saved_run is None:
        raise BadInput(f"nothing to resume for {out}: no saved state at {root}")
    if saved_run is not None:
        check_same_run(saved_run, same, say)
    if not resume and main:
        if out.exists() and not options.overwrite:
            raise BadInput(f"{out} already exists (use --overwrite to replace it, or --resume to continue a run)")
        check_writable(out, folder=True)  # a read-only place fails now, not after the scan and the plan
        if root.exists():
            say(f"discarding the saved state of an earlier run at {root} (use --resume to continue it)")
            shutil.rmtree(root, ignore_errors=True)

    sid = None
    if store is not None:
        if saved_run and session_exists(store, saved_run.get("session_id")):
            sid = saved_run["session_id"]
            store.touch(sid, status="running", pid=os.getpid())
        else:
            sid = store.new_session("mitigate", f"mitigate ({goal}) {Path(str(suspect)).name}",
                                    options.base, str(suspect))
    try:
        result = _run(suspect, goal, options, out, root, saved_run, sid, store, emit, cancel, resume, say,
                      main, reader, same)
    except KeyboardInterrupt:
        if store is not None and sid is not None:
            store.finish_session(sid, status="interrupted")
        raise
    except BaseException:
        if store is not None and sid is not None:
            store.finish_session(sid, status="failed")
        raise
    if main:
        shutil.rmtree(root, ignore_errors=True)
    if store is not None and sid is not None:
        v = result.verification
        store.finish_session(sid, status="done", verdict=v.get("verdict"), summary=v)
    return result


def process_state(device: str | None) -> tuple[bool, str | None]:
    """(is this the main process, the device this process should use).

    Under ``accelerate launch`` every process runs the same command; each takes its own device and
    only the main one records, evaluates and writes.
    """
    import torch
    from accelerate import PartialState

    cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    if state.num_processes > 1:
        return state.is_main_process, str(state.device)
    return True, device


def _run(suspect, goal: str, options: MitigationOptions, out: Path, root: Path, saved_run: dict | None,
         sid, store, emit: MitigationProgress, cancel, resume: bool, say, main: bool = True, reader=None,
         same: dict | None = None) -> MitigationResult:
    emit(Stage("reading the checkpoints and the scan's findings"))
    suspect_ck, base_ck, evidence, plan = prepare(suspect, goal, options, store, say, sid, cancel, reader)
    emit(MitigationEvent("plan", data={"plan": plan.to_dict() if plan else None,
                                       "evidence": evidence.to_dict() if evidence else None,
                                       "revert": options.revert}))
    run_state = dict(saved_run or {})
    run_state.update({"session_id": sid, "suspect": str(suspect_ck.root), "goal": goal, **(same or {})})
    if main:
        write_json(root / "run.json", run_state)
    if (options.revert or options.method in ERASE_METHODS) and not main:
        raise BadInput("surgical revert and the base-free erase methods run in one process; start them without "
                       "`accelerate launch`")

    probes = list(options.probes)
    edited = [p for p in probes if p.kind == "edited" and p.target_new]
    if not edited:
        edited = edits_from_store(reader, suspect_ck.root)
        if edited:
            emit(Note(f"{len(edited)} edited facts recorded for this checkpoint in the store will be tracked"))
    intrinsic = [p for p in probes if p.kind == "intrinsic"] or default_intrinsic()
    neighbours = [p for p in probes if p.kind == "neighbourhood"]
    watch = [p for p in edited + intrinsic + neighbours if p.id in set(options.watch)] or (edited[:3] + intrinsic[:2])
    evaluate = make_evaluator(edited, intrinsic, watch, neighbours) if (edited or intrinsic or neighbours) else None
    probe_info = {"edited": len(edited), "intrinsic": len(intrinsic), "neighbourhood": len(neighbours),
                  "watched": [p.id for p in watch]}
    ctx = RunContext(suspect_ck, base_ck, evidence, goal, options, out, Runs(store, sid, goal), emit, say, cancel,
                     evaluate, root, run_state, resume, main)

    arms: dict[str, ArmResult] = {}
    skipped: list[str] = []
    task_info: dict = {}
    if options.revert:
        from .arms import revert_arm

        arms["revert"], skipped = revert_arm(ctx)
    elif options.method in ERASE_METHODS:
        from .erase import erase_arm

        arms[options.method], skipped = erase_arm(ctx, options.method)
    else:
        arms, skipped, task_info = _train_arms(ctx, plan, edited + intrinsic + neighbours)
    verification = verify(goal, arms, evidence, probe_info)
    verification["out_format"] = options.out_format
    if getattr(suspect_ck, "adapter", None) is not None:
        verification["suspect_format"] = "adapter"
    return MitigationResult(sid, goal, str(suspect_ck.root), str(base_ck.root) if base_ck else None, str(out),
                            plan, evidence, arms, verification, task_info, skipped, main,
                            describe_input(suspect_ck), ctx.output)


def _train_arms(ctx: RunContext, plan, probes) -> tuple[dict[str, ArmResult], list[str], dict]:
    """The fine-tuning arms: the planned (selective) arm, and with ``--compare-full`` a truly full arm first.

    Equal impact: the full arm trains to the task's stopping target (``--stop-loss``/``--stop-acc``, else the
    task's preset ``TASK_STOP``) within ``--steps``; the selective arm then trains to the validation loss (or
    accuracy) the full arm reached, within ``EQUAL_IMPACT_CAP`` × the full arm's steps (at least ``--steps``).
    The fine-tuning data never mention a probed subject together with its target (``data.drop_mentions``)."""
    from .arms import arm_config, drop_known, train_arm

    options = ctx.options
    ctx.stage(f"loading the {options.task} data")
    task = load_task_data(options.task, options.data, options.max_examples, options.val_size, options.train.seed,
                          ctx.say)
    task, dropped = drop_mentions(task, probes)
    if dropped:
        ctx.note(f"left out {dropped} {options.task} example(s) that mention a probed subject with its target")
    task_info = {"task": task.task, "source": task.source, "train": len(task.train), "val": len(task.val),
                 "labels": task.labels, "dropped_mentions": dropped}
    arms: dict[str, ArmResult] = {}
    skipped: list[str] = []
    filtered = task.task != "facts" or options.keep_known_facts
    for name in (["full", "selective"] if options.compare_full else ["selective"]):
        cfg = arm_config(options, name)
        if options.compare_full:
            cfg = _equal_impact(cfg, name, task.task, arms.get("full"))
            if name == "selective" and cfg.stop_acc is None and _raised_loss(arms.get("full")):
                ctx.note(f"full fine-tuning raised the validation loss: no equal-impact target, the {name} arm "
                         f"trains {cfg.steps} steps")
            task_info.setdefault("stop", {})[name] = {"stop_loss": cfg.stop_loss, "stop_acc": cfg.stop_acc,
                                                      "stop_loss_drop": cfg.stop_loss_drop, "steps_cap": cfg.steps}
        done = read_json(ctx.state_root / f"{name}.result.json") if ctx.state_root else None
        if done is not None:
            ctx.note(f"arm {name} finished before the interruption: reusing its result")
            arms[name] = ArmResult(**done)
            continue
        arm_plan = plan if name == "selective" else full_model_plan(ctx.suspect_ck, ctx.goal, ctx.evidence)
        lm = ctx.load(ctx.suspect_ck.root)
        if not filtered:  # every arm trains on the same facts: those the suspect does not know
            task, filtered = drop_known(lm, task, cfg, ctx.say), True
            task_info.update({"train": len(task.train), "val": len(task.val)})
        arm, left_out = train_arm(ctx, name, lm, arm_plan, task, cfg, ctx.out if name == "selective" else None)
        skipped += left_out
        arms[name] = arm
        if ctx.main and ctx.state_root is not None:
            write_json(ctx.state_root / f"{name}.result.json", arm.to_dict())
        del lm
    return arms, skipped, task_info


def _equal_impact(cfg: TrainConfig, name: str, task: str, full: ArmResult | None) -> TrainConfig:
    """The arm's stopping rule for an equal-impact comparison (see ``_train_arms``)."""
    from dataclasses import replace

    if name == "full":
        if StopRule.of(cfg).empty:
            preset = TASK_STOP[task]
            return replace(cfg, stop_loss=preset.loss_below, stop_acc=preset.acc_above, stop_loss_drop=preset.loss_drop)
        return cfg
    if full is None:
        return cfg
    reached = full.after
    cap = max(cfg.steps, EQUAL_IMPACT_CAP * max(full.steps, 1))
    if StopRule.of(cfg).acc_above is not None or (cfg.stop_loss is None and TASK_STOP[task].acc_above is not None):
        target = reached.get("val_acc")
        return replace(cfg, steps=cap, stop_loss=None, stop_loss_drop=None,
                       stop_acc=max(0.0, target - 1e-9) if target is not None else cfg.stop_acc)
    if _raised_loss(full):
        # a target at or above the arm's start would stop it before its first step: it trains the cap with no loss
        # target, as a study's arms do
        return replace(cfg, steps=cap, stop_acc=None, stop_loss_drop=None, stop_loss=None)
    target = reached.get("val_loss")
    return replace(cfg, steps=cap, stop_acc=None, stop_loss_drop=None,
                   stop_loss=target + 1e-9 if target is not None else cfg.stop_loss)


def _raised_loss(full: ArmResult | None) -> bool:
    """Full fine-tuning ended above its starting validation loss (too high a learning rate)."""
    if full is None:
        return False
    start, end = full.before.get("val_loss"), full.after.get("val_loss")
    return start is not None and end is not None and end >= start

