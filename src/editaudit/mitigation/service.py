"""``run_mitigation``: plan, run and verify a mitigation of a suspect checkpoint, as one service call.

Used by the CLI (``editaudit mitigate``) and the app. Stages: find the scan's edit evidence (a stored
scan of this exact suspect, or a scan run now against ``base``) → plan the layers and modules → the
arms: selective fine-tuning (or surgical revert with the base, or the training-free projection erase
``method="project"`` from the scan's readings, no base needed), and optionally plain full fine-tuning
with the same budget for comparison → verification (edits erased or kept, intrinsic knowledge retained, downstream
metric, before and after; with a base, how much of each edit survives in weight space).

Every arm is a ``finetune_runs`` row (running → done with its result in one transaction; interrupted
on Ctrl-C or cancel; failed on error) with its metric history in ``metrics``. The output folder is
written atomically; the resumable state lives next to it (``.<out>.resume``) until the run completes.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..checkpoint import open_checkpoint
from ..errors import BadInput
from ..probing.format import Probe
from .data import TaskData, load_task_data
from .erase import ERASE_METHODS
from .evidence import EditEvidence, stored_evidence
from .plan import Plan, plan_for_checkpoint
from .train import TrainConfig, TrainOutcome, encode, known_mask, train


@dataclass
class MitigationOptions:
    base: str | None = None
    out: Path | None = None
    method: str = "full"  # full | lora | dora | project | unlearn | project+unlearn (base-free erase, mitigation/erase.py)
    layers: str = "auto"
    modules: str = "all"
    task: str = "lm"
    data: Path | None = None
    max_examples: int | None = None
    val_size: int = 64
    train: TrainConfig = field(default_factory=TrainConfig)
    probes: list[Probe] = field(default_factory=list)  # edited and intrinsic probes (by their kind)
    watch: list[str] = field(default_factory=list)  # probe ids whose top-3 tokens are recorded
    compare_full: bool = False
    revert: bool = False
    overwrite: bool = False
    device: str | None = None
    keep_known_facts: bool = False  # facts task: keep facts the model already answers
    subjects: list[dict] = field(default_factory=list)  # project: user-given {subject, prompt?, layer?}
    project: dict = field(default_factory=dict)  # project: settings (PROJECT_DEFAULTS' keys)
    unlearn: dict = field(default_factory=dict)  # unlearn: settings (unlearn.UNLEARN_DEFAULTS' keys)


#: Settings of the projection erase (``--hparam`` for ``--method project``). ``cov_tokens``/``corpus`` should
#: be the editor's: the default is what ``editaudit edit`` uses.
PROJECT_DEFAULTS: dict[str, Any] = {"target": "mean", "key_mode": "auto", "directions": "ckey",
                                    "nullspace_rel": 0.5, "rekey": False, "subject_alone": True, "corpus": None,
                                    "cov_tokens": 20000,
                                    "cov_seq_len": 256, "contexts": 5, "context_length": 10, "seed": 0}


def split_hparams(values: dict, method: str) -> tuple[dict, dict]:
    """``--hparam`` assignments split into (projection settings, unlearning settings) by their names; ``seed``
    goes to both. A name neither method takes is BadInput."""
    from .unlearn import UNLEARN_DEFAULTS

    project, unlearn = {}, {}
    for key, value in values.items():
        if key not in PROJECT_DEFAULTS and key not in UNLEARN_DEFAULTS:
            raise BadInput(f"--hparam {key}: no such setting; projection: {', '.join(sorted(PROJECT_DEFAULTS))}; "
                           f"unlearning: {', '.join(sorted(UNLEARN_DEFAULTS))}")
        if key in PROJECT_DEFAULTS:
            project[key] = value
        if key in UNLEARN_DEFAULTS:
            unlearn[key] = value
    return project, unlearn


def project_settings(overrides: dict | None) -> dict:
    """The projection erase's settings with ``overrides`` checked (unknown keys and wrong types are BadInput)."""
    from .project import DIRECTIONS, KEY_MODES, TARGETS

    hp = dict(PROJECT_DEFAULTS)
    for key, value in (overrides or {}).items():
        if key not in hp:
            raise BadInput(f"the project method has no setting {key!r}; it takes: {', '.join(sorted(hp))}")
        default = hp[key]
        if key == "corpus":
            ok = value is None or isinstance(value, str)
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            value = float(value) if ok else value
        else:
            ok = isinstance(value, str)
        if not ok:
            raise BadInput(f"project setting {key!r}: bad value {value!r}")
        hp[key] = value
    for key, choices in (("target", TARGETS), ("key_mode", KEY_MODES), ("directions", DIRECTIONS)):
        if hp[key] not in choices:
            raise BadInput(f"project setting {key} must be one of {', '.join(choices)}, not {hp[key]!r}")
    if hp["cov_tokens"] < 1 or hp["cov_seq_len"] < 1:
        raise BadInput("cov_tokens and cov_seq_len must be at least 1")
    return hp


@dataclass
class MitigationEvent:
    """One thing for a progress display: stage, plan, step, eval, arm (finished), resume."""

    kind: str
    arm: str = ""
    data: dict = field(default_factory=dict)


@dataclass
class ArmResult:
    name: str  # "selective", "full" (comparison) or "revert"
    method: str
    run_id: int | None
    layers: list[int]
    before: dict
    after: dict
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    stop_reason: str = ""
    merge_check: float | None = None
    residual: dict | None = None  # weight-space share of each edit still present (needs a base)
    reverted: list[dict] = field(default_factory=list)
    rescan: dict | None = None
    out: str | None = None
    seconds: float = 0.0
    project: dict | None = None  # the projection erase's report (per layer and subject)
    unlearn: dict | None = None  # the unlearning erase's report (steps, stop, targets)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MitigationResult:
    session_id: str | None
    goal: str
    suspect: str
    base: str | None
    out: str | None
    plan: Plan | None
    evidence: EditEvidence | None
    arms: dict[str, ArmResult]
    verification: dict
    task: dict
    skipped_files: list[str] = field(default_factory=list)
    main: bool = True  # False in the helper processes of `accelerate launch` (they report nothing)

    def to_dict(self) -> dict:
        return {
            "schema": "editaudit.mitigation/1", "session_id": self.session_id, "goal": self.goal,
            "suspect": self.suspect, "base": self.base, "out": self.out,
            "plan": self.plan.to_dict() if self.plan else None,
            "evidence": self.evidence.to_dict() if self.evidence else None,
            "task": self.task, "arms": {k: v.to_dict() for k, v in self.arms.items()},
            "verification": self.verification, "skipped_files": self.skipped_files,
        }


Progress = Callable[[MitigationEvent], None]


# -- evidence, probes, evaluation -----------------------------------------------------------------

def find_evidence(suspect_ck, base_ck, store, say, session_id: str | None, device: str | None,
                  cancel: threading.Event | None, read_store=None, readings: bool = False) -> EditEvidence | None:
    """The newest stored scan of this suspect (against this base); else a scan now, if a base is given.

    ``read_store`` is where stored scans are looked up (default ``store``); a new scan is recorded in
    ``store`` (None: not recorded, as in the helper processes of a multi-process run). With ``readings``
    (the project method needs the edited subjects) a stored scan that found edits but read no subject is
    replaced by a scan now that reads them, when the base is at hand.
    """
    from .evidence import evidence_from_report

    reader = read_store if read_store is not None else store
    if reader is not None:
        ev = stored_evidence(reader, suspect_ck.fingerprint(), base_ck.fingerprint() if base_ck else None)
        if ev is not None and not (readings and ev.found and not ev.readings and base_ck is not None):
            return ev
        if ev is not None:
            say(f"{ev.source} read no subject: scanning again against the base, reading the edits")
    if base_ck is None:
        return None
    from ..scan.service import ScanOptions, run_scan

    if not readings:
        say("no stored scan of this suspect: scanning it against the base now")
    report = run_scan(suspect_ck.root, base_ck.root, ScanOptions(read_edits=readings, device=device), store=store,
                      say=say, cancel=cancel, session_id=session_id)
    return evidence_from_report(report.to_dict(), "scan run now")


def edits_from_store(store, suspect_path: Path) -> list[Probe]:
    """Edited facts recorded by ``editaudit edit`` for this output folder, as edited probes."""
    from ..probing.format import probe_from_dict

    if store is None:
        return []
    probes: list[Probe] = []
    target = suspect_path.resolve()
    for row in store.rows("edits", "out is not null and status = 'done'", order_by="id"):
        if Path(row["out"]).resolve() != target:
            continue
        try:
            facts = json.loads(row.get("facts") or "[]")
        except json.JSONDecodeError:
            continue
        for i, rec in enumerate(facts if isinstance(facts, list) else []):
            try:
                p = probe_from_dict({**rec, "kind": "edited"}, f"edit #{row['id']} fact {i}")
            except ValueError:
                continue
            if p.target_new:
                probes.append(p)
    return probes


def default_intrinsic(model_name: str | None = None) -> list[Probe]:
    """The built-in intrinsic probe set (facts the embedded model knows), when it is installed."""
    from ..paths import resource_dir
    from ..probing.format import load_probes

    try:
        root = resource_dir("probes")
    except FileNotFoundError:
        return []
    for path in sorted(root.glob("*intrinsic*.jsonl")):
        return [p for p in load_probes(path) if p.kind == "intrinsic"]
    return []


def make_evaluator(edited: list[Probe], intrinsic: list[Probe], watch: list[Probe]):
    """Retention of edited facts (new target) and intrinsic facts (true target), and top-3 of watched probes.

    One batched ``predict`` pass over all probes per evaluation; per-probe flags are kept so that the
    verification can count which edits held before and not after.
    """
    from ..probing.evaluate import predict, retention

    probes = edited + intrinsic
    index = {id(p): i for i, p in enumerate(probes)}

    def evaluate(model, tokenizer) -> dict:
        preds = predict(model, tokenizer, probes, top_k=3)
        pe, pi = preds[: len(edited)], preds[len(edited):]
        m: dict[str, Any] = {}
        if edited:
            new = retention(model, tokenizer, edited, "new", predictions=pe)
            m["edited_retention"] = new.rate
            m["edited_true"] = retention(model, tokenizer, edited, "true", predictions=pe).rate
            m["edited_flags"] = [bool(x) for x in new]
        if intrinsic:
            kept = retention(model, tokenizer, intrinsic, "true", predictions=pi)
            m["intrinsic_retention"] = kept.rate
            m["intrinsic_flags"] = [bool(x) for x in kept]
        if watch:
            m["top3"] = {p.id: [[tok, float(prob)] for tok, prob in preds[index[id(p)]].top[:3]] for p in watch}
        return m

    return evaluate


# -- store helpers (the SQL is in store/mitigation_runs.py) ---------------------------------------------

from ..store.mitigation_runs import finish_run as _finish_run  # noqa: E402
from ..store.mitigation_runs import mark_run as _mark_run  # noqa: E402,F401
from ..store.mitigation_runs import marked_on_failure as _marked_on_failure  # noqa: E402
from ..store.mitigation_runs import record_eval as _record_eval  # noqa: E402
from ..store.mitigation_runs import start_run as _start_run  # noqa: E402


# -- the service ------------------------------------------------------------------------------------

def prepare(suspect: str | Path, goal: str, options: MitigationOptions, store=None,
            say: Callable[[str], None] = lambda s: None, session_id: str | None = None,
            cancel: threading.Event | None = None, read_store=None):
    """Open the checkpoints, find the edit evidence and make the plan (no model is loaded).

    ``options.method == "auto"`` is resolved here (``plan.resolve_method``), once the evidence is known."""
    from ..models.registry import resolve_model

    if options.method == "auto" and (options.revert or goal != "erase"):
        options.method = "full"
    suspect_path = resolve_model(str(suspect), say)
    suspect_ck = open_checkpoint(suspect_path)
    base_ck = open_checkpoint(resolve_model(str(options.base), say)) if options.base else None
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
    return suspect_ck, base_ck, evidence, plan


def run_mitigation(suspect: str | Path, goal: str = "erase", options: MitigationOptions | None = None, *,
                   store=None, progress: Progress | None = None, cancel: threading.Event | None = None,
                   resume: bool = False, say: Callable[[str], None] = lambda s: None) -> MitigationResult:
    """Plan, run and verify a mitigation; see the module docstring. Raises BadInput on bad input and
    KeyboardInterrupt (``Interrupted`` when ``cancel`` is set) when stopped."""
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
    out = Path(options.out)
    main, device = process_state(options.device)
    if not main:  # a helper process under `accelerate launch`: train its share, write nothing, say nothing
        reader, store, progress, say = store, None, None, (lambda s: None)
    else:
        reader = store
    options.device = device
    emit = progress or (lambda ev: None)
    state_root = out.parent / f".{out.name}.resume"
    saved_run = _read_json(state_root / "run.json") if resume else None
    if resume and saved_run is None:
        raise BadInput(f"nothing to resume for {out}: no saved state at {state_root}")
    if not resume and main:
        if out.exists() and not options.overwrite:
            raise BadInput(f"{out} already exists (use --overwrite to replace it, or --resume to continue a run)")
        if state_root.exists():
            say(f"discarding the saved state of an earlier run at {state_root} (use --resume to continue it)")
            shutil.rmtree(state_root, ignore_errors=True)

    sid = None
    if store is not None:
        if saved_run and saved_run.get("session_id") and store.rows("sessions", "id = ?", [saved_run["session_id"]]):
            sid = saved_run["session_id"]
            store.touch(sid, status="running", pid=os.getpid())
        else:
            sid = store.new_session("mitigate", f"mitigate ({goal}) {Path(str(suspect)).name}",
                                    options.base, str(suspect))
    try:
        result = _run(suspect, goal, options, out, state_root, saved_run, sid, store, emit, cancel, resume, say,
                      main, reader)
    except KeyboardInterrupt:
        if store is not None and sid is not None:
            store.finish_session(sid, status="interrupted")
        raise
    except BaseException:
        if store is not None and sid is not None:
            store.finish_session(sid, status="failed")
        raise
    if main:
        shutil.rmtree(state_root, ignore_errors=True)
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


def _run(suspect, goal: str, options: MitigationOptions, out: Path, state_root: Path, saved_run: dict | None,
         sid, store, emit: Progress, cancel, resume: bool, say, main: bool = True, reader=None) -> MitigationResult:
    emit(MitigationEvent("stage", data={"text": "reading the checkpoints and the scan's findings"}))
    suspect_ck, base_ck, evidence, plan = prepare(suspect, goal, options, store, say, sid, cancel, reader)
    emit(MitigationEvent("plan", data={"plan": plan.to_dict() if plan else None,
                                       "evidence": evidence.to_dict() if evidence else None,
                                       "revert": options.revert}))
    run_state = dict(saved_run or {})
    run_state.update({"session_id": sid, "suspect": str(suspect_ck.root), "goal": goal})
    if main:
        _write_json(state_root / "run.json", run_state)
    if (options.revert or options.method in ERASE_METHODS) and not main:
        raise BadInput("surgical revert and the base-free erase methods run in one process; start them without "
                       "`accelerate launch`")

    from ..models.loading import load_model

    probes = list(options.probes)
    edited = [p for p in probes if p.kind == "edited" and p.target_new]
    if not edited:
        edited = edits_from_store(reader, suspect_ck.root)
        if edited:
            say(f"{len(edited)} edited facts recorded for this checkpoint in the store will be tracked")
    intrinsic = [p for p in probes if p.kind in ("intrinsic", "neighbourhood")] or default_intrinsic()
    watch = [p for p in edited + intrinsic if p.id in set(options.watch)] or (edited[:3] + intrinsic[:2])
    evaluate = make_evaluator(edited, intrinsic, watch) if (edited or intrinsic) else None
    probe_info = {"edited": len(edited), "intrinsic": len(intrinsic), "watched": [p.id for p in watch]}

    arms: dict[str, ArmResult] = {}
    skipped: list[str] = []
    task_info: dict = {}
    if options.revert:
        arms["revert"], skipped = _revert_arm(suspect_ck, base_ck, evidence, goal, options, out, sid, store, emit,
                                              cancel, evaluate, say)
    elif options.method in ERASE_METHODS:
        from .context import RunContext, Runs
        from .erase import erase_arm

        ctx = RunContext(suspect_ck, base_ck, evidence, goal, options, out, Runs(store, sid, goal), emit, say, cancel,
                         evaluate, state_root, run_state, resume, main)
        arms[options.method], skipped = erase_arm(ctx, options.method)
    else:
        emit(MitigationEvent("stage", data={"text": f"loading the {options.task} data"}))
        task = load_task_data(options.task, options.data, options.max_examples, options.val_size,
                              options.train.seed, say)
        task_info = {"task": task.task, "source": task.source, "train": len(task.train), "val": len(task.val),
                     "labels": task.labels}
        arm_names = ["selective"] + (["full"] if options.compare_full else [])
        filtered = task.task != "facts" or options.keep_known_facts
        for name in arm_names:
            done = _read_json(state_root / f"{name}.result.json")
            if done is not None:
                say(f"arm {name} finished before the interruption: reusing its result")
                arms[name] = ArmResult(**done)
                continue
            arm_plan = plan if name == "selective" else plan_for_checkpoint(
                suspect_ck, f"0-{plan.n_layers - 1}", goal, "all", "full", evidence)
            arm_opts = options if name == "selective" else _full_options(options)
            lm = load_model(suspect_ck.root, device=options.device)
            if not filtered:  # every arm trains on the same facts: those the suspect does not know
                task, filtered = _drop_known(lm, task, options.train, say), True
                task_info.update({"train": len(task.train), "val": len(task.val)})
            arm, left_out = _train_arm(name, lm, arm_plan, task, arm_opts, goal,
                                       out if name == "selective" else None, state_root, run_state, sid, store,
                                       emit, cancel, resume, evaluate if main else None, suspect_ck, base_ck,
                                       evidence, main)
            skipped += left_out
            arms[name] = arm
            if main:
                _write_json(state_root / f"{name}.result.json", arm.to_dict())
            del lm
    verification = _verify(goal, arms, evidence, probe_info)
    return MitigationResult(sid, goal, str(suspect_ck.root), str(base_ck.root) if base_ck else None, str(out),
                            plan, evidence, arms, verification, task_info, skipped, main)


def _full_options(options: MitigationOptions) -> MitigationOptions:
    import copy

    o = copy.copy(options)
    o.method = "full"
    o.train = copy.copy(options.train)
    o.train.method = "full"
    o.train.target_modules = None
    return o


def _drop_known(lm, task: TaskData, cfg: TrainConfig, say) -> TaskData:
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


def _train_arm(name: str, lm, plan: Plan, task: TaskData, options: MitigationOptions, goal: str, out: Path | None,
               state_root: Path, run_state: dict, sid, store, emit: Progress, cancel, resume: bool, evaluate,
               suspect_ck, base_ck, evidence, main: bool = True) -> tuple[ArmResult, list[str]]:
    """Train one arm, write its checkpoint (the selective arm), and measure it as written."""
    from .writer import write_checkpoint

    cfg = options.train
    cfg.method = options.method
    config = {"train": asdict(cfg), "layers_strategy": plan.strategy, "modules": plan.modules,
              "params": len(plan.params), "task": task.task, "data": task.source}
    run_ids = run_state.setdefault("runs", {})
    run_id = run_ids.get(name) if resume else None
    if run_id is not None and store is not None and store.rows("finetune_runs", "id = ?", [run_id]):
        store.update("finetune_runs", run_id, {"status": "running"})
    else:
        run_id = _start_run(store, sid, name, goal, options.method, plan.layers, task.task, config, out)
        run_ids[name] = run_id
    if main:
        _write_json(state_root / "run.json", run_state)
    state_dir = state_root / name
    arm_resume = resume and (state_dir / "state.json").exists()
    t0 = time.perf_counter()
    emit(MitigationEvent("stage", arm=name, data={"text": f"training ({name}: {plan.method}, layers {plan.layers})",
                                                  "total": cfg.steps}))

    def on(kind: str, data: dict) -> None:
        if kind == "eval":
            _record_eval(store, run_id, data)
        emit(MitigationEvent(kind, arm=name, data=data))

    with _marked_on_failure(store, run_id):
        outcome: TrainOutcome = train(
            lm, plan, task, cfg, evaluate=evaluate, emit=on, cancel=cancel, state_dir=state_dir, resume=arm_resume,
            run_info={"suspect": suspect_ck.fingerprint(), "params": plan.params, "arm": name},
        )
        if not main:
            return ArmResult(name, plan.method, None, plan.layers, {}, {}, [], outcome.steps, outcome.stop_reason), []
        tensors = _round_trip(outcome, suspect_ck)
        after = dict(outcome.history[-1])
        exact = outcome.merge_check is None and all(suspect_ck.tensors[n][1].dtype == "F32" for n in tensors)
        if not exact:  # measure the model as written: adapters merged, weights in the stored dtype
            _load_into(outcome.model, tensors)
            after = _final_metrics(outcome, evaluate, lm.tokenizer, task, cfg)
        skipped: list[str] = []
        if out is not None:
            emit(MitigationEvent("stage", arm=name, data={"text": f"writing {out}"}))
            skipped = write_checkpoint(suspect_ck, out, tensors, outcome.extra_files, overwrite=True)
        residual = None
        if base_ck is not None and evidence is not None and evidence.found:
            residual = _residual(suspect_ck, base_ck, evidence, tensors)
        arm = ArmResult(name, plan.method, run_id, plan.layers, outcome.history[0], after, outcome.history,
                        outcome.steps, outcome.stop_reason, outcome.merge_check, residual, [],
                        None, str(out) if out else None, round(time.perf_counter() - t0, 1))
        _finish_run(store, run_id, {k: v for k, v in arm.to_dict().items() if k != "history"})
        emit(MitigationEvent("arm", arm=name, data=arm.to_dict()))
        return arm, skipped


def _round_trip(outcome: TrainOutcome, suspect_ck) -> dict:
    """The trained tensors as they will be stored (the suspect's dtypes), back in float32."""
    from ..checkpoint.reader import to_torch
    from .writer import tensor_bytes

    out = {}
    for name, t in outcome.tensors.items():
        info = suspect_ck.tensors[name][1]
        out[name] = t.float() if info.dtype == "F32" else to_torch(bytearray(tensor_bytes(t, info.dtype)), info)
    return out


def _load_into(model, tensors: dict) -> None:
    import torch

    from .train import _name_map

    names = _name_map(model, set(tensors))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, c in names.items():
            params[n].copy_(tensors[c].to(params[n].device, params[n].dtype))


def _final_metrics(outcome: TrainOutcome, evaluate, tokenizer, task: TaskData, cfg: TrainConfig) -> dict:
    """Evaluate the model exactly as written (merged adapters, stored dtype)."""
    from .train import _task_module, validate

    last = dict(outcome.history[-1])
    metrics = {"step": outcome.steps}
    if evaluate is not None:
        metrics.update(evaluate(outcome.model, tokenizer))
    if task.task != "sentiment":  # the classifier head is not part of the model; keep its last validation
        tm = _task_module(outcome.model, task.task, 0, cfg.seed)
        feats = encode(task, tokenizer, cfg.seq_len)[1]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        metrics.update(validate(tm, feats, cfg.batch_size, pad, next(outcome.model.parameters()).device))
    else:
        metrics.update({k: last[k] for k in ("val_loss", "val_acc") if k in last})
    return metrics


def _residual(suspect_ck, base_ck, evidence: EditEvidence, current: dict) -> dict:
    from .revert import edit_residual, read_tensor

    return edit_residual(suspect_ck, base_ck, evidence,
                         lambda n: current[n] if n in current else read_tensor(suspect_ck, n))


def _revert_arm(suspect_ck, base_ck, evidence: EditEvidence, goal: str, options: MitigationOptions, out: Path,
                sid, store, emit: Progress, cancel, evaluate, say) -> tuple[ArmResult, list[str]]:
    from ..models.loading import load_model
    from ..scan.service import ScanOptions, run_scan
    from .revert import surgical_revert
    from .writer import write_checkpoint

    t0 = time.perf_counter()
    run_id = _start_run(store, sid, "revert", goal, "revert", evidence.layers, "-",
                        {"components": evidence.components, "evidence": evidence.source}, out)
    with _marked_on_failure(store, run_id):
        before: dict = {"step": 0}
        if evaluate is not None and suspect_ck.config is not None:
            emit(MitigationEvent("stage", arm="revert", data={"text": "measuring the suspect"}))
            lm = load_model(suspect_ck.root, device=options.device)
            before.update(evaluate(lm.model, lm.tokenizer))
            _record_eval(store, run_id, before)
        emit(MitigationEvent("eval", arm="revert", data=before))
        emit(MitigationEvent("stage", arm="revert", data={"text": f"removing edit components from "
                                                                  f"{len(evidence.tensors)} tensors"}))
        tensors, reports = surgical_revert(suspect_ck, base_ck, evidence, cancel)
        skipped = write_checkpoint(suspect_ck, out, tensors, overwrite=True)
        after: dict = {"step": 1}
        if evaluate is not None and suspect_ck.config is not None:
            emit(MitigationEvent("stage", arm="revert", data={"text": "measuring the reverted checkpoint"}))
            lm = load_model(out, device=options.device)
            after.update(evaluate(lm.model, lm.tokenizer))
            _record_eval(store, run_id, after)
        emit(MitigationEvent("eval", arm="revert", data=after))
        emit(MitigationEvent("stage", arm="revert", data={"text": "re-scanning the reverted checkpoint"}))
        rescan = run_scan(out, base_ck.root, ScanOptions(read_edits=False, use_cache=True), store=None, cancel=cancel)
        doc = rescan.to_dict()
        from .evidence import evidence_from_report

        left = evidence_from_report(doc, "re-scan")
        rescan_info = {"verdict": doc["verdict"], "kind": doc["kind"], "edit_findings": left.findings,
                       "edited_tensors_left": [t for t in left.tensors if t in set(evidence.tensors)]}
        residual = _residual(suspect_ck, base_ck, evidence, tensors)
        arm = ArmResult("revert", "revert", run_id, evidence.layers, before, after, [before, after], 0,
                        "surgical revert", None, residual, [r.to_dict() for r in reports], rescan_info, str(out),
                        round(time.perf_counter() - t0, 1))
        _finish_run(store, run_id, arm.to_dict())
        emit(MitigationEvent("arm", arm="revert", data=arm.to_dict()))
        return arm, skipped


def project_targets(evidence: EditEvidence | None, options: MitigationOptions) -> tuple[dict, list[str]]:
    """{layer: [EraseSubject]} for the projection erase, and notes: the user's subjects (``--subjects``)
    when given, else the scan's readings with status "edit"."""
    from ..layerspec import parse_layer_list
    from .project import mlp_out_layers, targets_from_readings, targets_from_records

    if options.subjects:
        layers: list[int] = []
        if evidence is not None and evidence.found:
            layers = sorted(mlp_out_layers(evidence.tensors)[0])
        spec = options.layers.strip().lower()
        if spec not in ("auto", "edited", "non-edited"):
            layers = parse_layer_list(spec)
        return targets_from_records(options.subjects, layers), []
    if evidence is None:
        raise BadInput("the project method erases the subjects the scan read, but there is no scan of this "
                       "suspect: run `editaudit scan SUSPECT --base BASE` first, pass --base, or give the subjects "
                       "with --subjects FILE")
    if not evidence.found:
        raise BadInput(f"{evidence.source} found no edit to erase")
    plan, notes = targets_from_readings(evidence.readings)
    if not plan:
        raise BadInput(f"the scan read no subject for its edits ({evidence.source}): the project method needs "
                       "the edited subjects — pass --base to scan again with reading (or run `editaudit scan "
                       "SUSPECT --base BASE`, which reads the edits unless --read off), or give them with "
                       "--subjects FILE (JSONL of {\"subject\", \"prompt\"})")
    return plan, notes


# -- verification -------------------------------------------------------------------------------------

def _arm_summary(arm: ArmResult) -> dict:
    b, a = arm.before, arm.after
    s: dict[str, Any] = {"method": arm.method, "steps": arm.steps, "stop": arm.stop_reason}
    if "edited_retention" in b and "edited_retention" in a:
        s["edited_before"], s["edited_after"] = b["edited_retention"], a["edited_retention"]
        held = [i for i, f in enumerate(b.get("edited_flags", [])) if f]
        if held:  # of the edits the suspect states, how many it no longer states
            gone = sum(1 for i in held if not a["edited_flags"][i])
            s["edits_held_before"] = len(held)
            s["edits_erased"] = gone / len(held)
            s["edits_kept"] = 1 - gone / len(held)
        if "edited_true" in a:
            s["edited_true_after"] = a["edited_true"]
    if "intrinsic_retention" in b and "intrinsic_retention" in a:
        ib, ia = b["intrinsic_retention"], a["intrinsic_retention"]
        s["intrinsic_before"], s["intrinsic_after"] = ib, ia
        s["intrinsic_points"] = (ia - ib) * 100
        s["intrinsic_retained"] = ia / ib if ib > 0 else None
    for k in ("val_loss", "val_acc"):
        if k in b and k in a:
            s[f"{k}_before"], s[f"{k}_after"] = b[k], a[k]
    if arm.residual is not None:
        s["edit_weight_share_left"] = arm.residual["mean_share"]
    if arm.project is not None:
        subjects = {r["subject"]: r for r in arm.project.get("subjects", [])}
        s["subjects"] = len(subjects)
        s["subjects_answer_moved"] = sum(1 for r in subjects.values() if r.get("before") != r.get("after"))
        s["layers_resolved"] = [r["layer"] for r in arm.project.get("layers", [])]
    if arm.rescan is not None:
        s["rescan_verdict"] = arm.rescan["verdict"]
        s["rescan_edited_tensors_left"] = len(arm.rescan["edited_tensors_left"])
    return s


def _verify(goal: str, arms: dict[str, ArmResult], evidence: EditEvidence | None, probe_info: dict) -> dict:
    v: dict[str, Any] = {"goal": goal, "probes": probe_info, "arms": {k: _arm_summary(a) for k, a in arms.items()}}
    main = next((v["arms"][k] for k in ("revert", *ERASE_METHODS, "selective") if k in v["arms"]), {})
    erased = main.get("edits_erased")
    if erased is not None:
        v["edits_erased"] = erased
        v["edits_kept"] = 1.0 - erased
    if "intrinsic_points" in main:
        v["intrinsic_points"] = main["intrinsic_points"]
    full = v["arms"].get("full")
    if full and "edits_kept" in full and "edits_kept" in main:
        v["full_edits_kept"] = full["edits_kept"]
        v["kept_vs_full"] = main["edits_kept"] - full["edits_kept"]
    if erased is None and "edit_weight_share_left" in main:
        gone = min(1.0, max(0.0, 1 - main["edit_weight_share_left"]))
        v["verdict"] = f"{gone:.0%} of the edit components gone from the weights " \
                       "(no edit probes to measure behaviour)"
    elif erased is None:
        v["verdict"] = "no edit probes to measure"
    elif goal == "erase":
        v["verdict"] = f"{erased:.0%} of edits erased"
    else:
        v["verdict"] = f"{1 - erased:.0%} of edits kept"
    return v


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_json(path: Path, doc: dict) -> None:
    from ..atomic import atomic_write_text

    atomic_write_text(path, json.dumps(doc, default=str))
