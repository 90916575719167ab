"""``editaudit mitigate SUSPECT --goal erase|preserve --out DIR``: the base-free erase (projection, unlearning),
guided selective fine-tuning, or surgical revert."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..mitigation.summary import kept_vs_full, pct, verification_rows
from ..mitigation.types import MitigationEvent
from ..progress import Event, Note, Stage, Step
from . import common


class Goal(str, Enum):
    erase = "erase"
    preserve = "preserve"


class Method(str, Enum):
    auto = "auto"
    project = "project"
    unlearn = "unlearn"
    project_unlearn = "project+unlearn"
    full = "full"
    lora = "lora"
    dora = "dora"


class Task(str, Enum):
    lm = "lm"
    facts = "facts"
    sentiment = "sentiment"
    sft = "sft"


class Modules(str, Enum):
    all = "all"
    mlp = "mlp"
    mlp_out = "mlp_out"
    attn = "attn"


class Fmt(str, Enum):
    rich = "rich"
    json = "json"


class OutFormat(str, Enum):
    merged = "merged"
    adapter = "adapter"


def register(app: typer.Typer) -> None:
    @app.command("mitigate")
    def mitigate(
        ctx: typer.Context,
        suspect: str = typer.Argument(..., help="Suspect checkpoint folder (or model name), or a peft LoRA adapter folder: the suspect is then its base (--base, else the one its adapter_config.json names) with the adapter's ΔW, never merged on disk."),
        goal: Goal = typer.Option(..., "--goal", "-g", help="erase the edits, or preserve them while fine-tuning."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write the mitigated checkpoint, or adapter with --out-format adapter (atomically)."),
        out_format: OutFormat = typer.Option(OutFormat.merged, "--out-format", help="merged: a checkpoint folder; adapter: a peft LoRA adapter over the base (adapter_config.json + adapter_model.safetensors) whose ΔW reproduces the mitigated weights. Refused when a norm, bias or embedding changed or a change is not low-rank (needs the base)."),
        base: Optional[str] = typer.Option(None, "--base", "-b", help="Base checkpoint: scan against it if no scan is stored; needed for --revert."),
        method: Method = typer.Option(Method.auto, "--method", "-m", help="auto: for erase, the base-free erase of the subjects the scan read (project), for preserve full fine-tuning. project: re-solve the edited MLP matrices (no training, no base); unlearn: train the edited MLP matrices against the objects the scan read (no base); project+unlearn: both; full, lora, dora: fine-tuning of the planned layers."),
        layers: str = typer.Option("auto", "--layers", help="auto | edited | non-edited | threshold:L | window:C:W | a list like 3,4,7-9."),
        modules: Modules = typer.Option(Modules.all, "--modules", help="Which matrices of the chosen layers: all, mlp, mlp_out or attn."),
        task: Task = typer.Option(Task.lm, "--task", help="Downstream task: lm (prose), facts, sentiment, sft."),
        data: Optional[Path] = typer.Option(None, "--data", help="Your own data: text (lm) or JSONL (any task)."),
        steps: int = typer.Option(50, "--steps", help="Step budget."),
        eval_every: int = typer.Option(10, "--eval-every", help="Evaluate (and save resumable state) every N steps."),
        stop_loss: Optional[float] = typer.Option(None, "--stop-loss", help="Stop when validation loss < X."),
        stop_acc: Optional[float] = typer.Option(None, "--stop-acc", help="Stop when validation accuracy > Y (0–1)."),
        stop_drop: Optional[float] = typer.Option(None, "--stop-drop", help="Stop when validation loss is this share below its start (0.05: the lm task's preset target; 0.10: sft's)."),
        lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default 5e-5 for lm, 2e-5 otherwise)."),
        batch_size: int = typer.Option(8, "--batch-size", help="Examples per step."),
        seq_len: int = typer.Option(128, "--seq-len", help="Tokens per example (longer ones are cut)."),
        rank: int = typer.Option(8, "--rank", help="LoRA/DoRA rank."),
        alpha: float = typer.Option(16.0, "--alpha", help="LoRA/DoRA alpha."),
        target_modules: Optional[str] = typer.Option(None, "--target-modules", help="LoRA/DoRA: only these module names, e.g. q_proj,v_proj."),
        probes: List[Path] = typer.Option([], "--probes", "-p", help="Probe JSONL: edited facts (kind edited, with target_new) and intrinsic facts to track."),
        watch: List[str] = typer.Option([], "--watch", help="Probe id whose top-3 tokens to show at each evaluation (repeatable)."),
        max_examples: Optional[int] = typer.Option(None, "--max-examples", help="Use at most this many examples."),
        val_size: int = typer.Option(64, "--val-size", help="Validation examples."),
        compare_full: bool = typer.Option(False, "--compare-full", help="Equal-impact comparison: first full fine-tuning of the whole model (embeddings, norm and head included) to the task's stopping target, then the planned arm to the same validation loss (step cap 4x); steps reported."),
        revert: bool = typer.Option(False, "--revert", help="Surgical revert instead of fine-tuning: remove only the scan's edit components."),
        subjects: Optional[Path] = typer.Option(None, "--subjects", help="--method project: the edited subjects, JSONL of {\"subject\", \"prompt\"?, \"layer\"?} (default: the scan's readings)."),
        hparam: List[str] = typer.Option([], "--hparam", help="Base-free erase setting, KEY=VALUE (repeatable). project: target=mean|project|zero, key_mode=auto|mean|each, directions=ckey|null|both, cov_tokens=N (the editor's), corpus=NAME; unlearn: lr, max_steps, kl_weight, lm_weight, margin, stop_prob, text_blocks, text_len, paraphrases."),
        resume: bool = typer.Option(False, "--resume", help="Continue a stopped run from its last evaluation."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
        plan_only: bool = typer.Option(False, "--plan-only", help="Show the plan and why, then stop."),
        keep_known_facts: bool = typer.Option(False, "--keep-known-facts", help="facts task: also train on facts the model already knows."),
        seed: int = typer.Option(0, "--seed", help="Seed for data order and initialisation."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 … (default: cuda when present)."),
        dtype: common.Dtype = typer.Option(common.Dtype.float32, "--dtype", help="Weights and compute dtype while mitigating: float32 (default: fine-tuning steps are below bfloat16's rounding of typical weights), bfloat16, float16, or auto (bfloat16 on a GPU that supports it)."),
        fmt: Fmt = typer.Option(Fmt.rich, "--format", "-f", help="rich (terminal) or json on stdout."),
    ) -> None:
        """Erase (or preserve) knowledge edits, then prove it.

        --goal erase (--method auto): erase the edits the scan read, without the base (the projection erase).
        For fine-tuning, --layers auto trains the edited range (or a 5-layer window centred on a single edited
        layer) to erase, and only layers far downstream of the edit to preserve.

        The plan and its reasons are shown before anything runs. Each evaluation shows (and stores) edited and
        intrinsic retention and the top-3 tokens of watched probes.

        --revert removes only the low-rank edit components found by the scan (needs --base), then re-scans.

        --method project (goal erase) needs no training and no base: each edited subject's key is read from the
        suspect and the edited MLP output matrix is re-solved so those keys no longer carry the edit. The
        subjects come from the scan's readings, or from --subjects.

        Exit codes: 0 done, 2 bad input or error, 130 interrupted (continue with --resume).
        """
        from ..editing.hparams import parse_assignments
        from ..errors import BadInput
        from ..mitigation.plan import ERASE_METHODS
        from ..mitigation.service import (MitigationOptions, prepare, process_state, project_settings,
                                          run_mitigation, split_hparams)
        from ..mitigation.train import TrainConfig
        from ..mitigation.unlearn import unlearn_settings

        if out is None and not plan_only:
            raise BadInput("--out DIR is required (where the mitigated checkpoint goes)")
        erasing = method.value in ERASE_METHODS or (method == Method.auto and goal == Goal.erase and not revert)
        if not erasing and (subjects is not None or hparam):
            raise BadInput("--subjects and --hparam belong to the base-free erase (--goal erase, --method auto, "
                           "project, unlearn or project+unlearn)")
        project, unlearn = split_hparams(parse_assignments(hparam), method.value) if erasing else ({}, {})
        if erasing:
            project, unlearn = project_settings(project), unlearn_settings(unlearn)
        trains = method.value in ("full", "lora", "dora")
        cfg = TrainConfig(method=method.value if trains else "full", steps=steps,
                          eval_every=eval_every, batch_size=batch_size, seq_len=seq_len, lr=lr, stop_loss=stop_loss, stop_acc=stop_acc, stop_loss_drop=stop_drop, rank=rank, alpha=alpha,
                          target_modules=[t.strip() for t in target_modules.split(",") if t.strip()] if target_modules else None,
                          seed=seed)
        cfg.check()
        opts = MitigationOptions(
            base=base, out=out, method=method.value, layers=layers, modules=modules.value, task=task.value,
            data=data, max_examples=max_examples, val_size=val_size, train=cfg, probes=_load_probes(probes),
            watch=list(watch), compare_full=compare_full, revert=revert, overwrite=overwrite, device=device,
            dtype=dtype.value, out_format=out_format.value,
            keep_known_facts=keep_known_facts, subjects=_load_subjects(subjects) if subjects else [],
            project=project, unlearn=unlearn,
        )
        store = _open_store(ctx, device)
        if plan_only:
            _, _, evidence, plan = prepare(suspect, goal.value, opts, store, common.say)
            if opts.method in ("project", "project+unlearn"):
                from ..mitigation.service import project_targets

                from ..mitigation.erase import sweep_plan
                from ..mitigation.options import project_settings

                targets, notes = project_targets(evidence, opts)
                show_project_plan(targets, notes, evidence.source if evidence and not opts.subjects else "--subjects",
                                  sweep_plan(evidence, opts.project), project_settings(opts.project)["sweep_reach"])
            if opts.method in ("unlearn", "project+unlearn"):
                from ..mitigation.erase import unlearn_targets

                show_unlearn_plan(*unlearn_targets(evidence, opts))
            if opts.method in ERASE_METHODS:
                return
            show_plan(plan.to_dict() if plan else None, evidence.to_dict() if evidence else None, revert)
            return
        if not revert and (overwrite or resume or not out.exists()) and process_state(device)[0]:
            _precision_note(suspect, base, dtype.value, device)
        view = LiveView()
        with common.progress() as bar:
            view.bar = bar
            result = run_mitigation(suspect, goal.value, opts, store=store, progress=view, resume=resume,
                                    say=common.say)
        if not result.main:  # a helper process under `accelerate launch`: the main process reports
            return
        doc = result.to_dict()
        if fmt == Fmt.json:
            common.out.file.write(json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n")
            common.out.file.flush()
        else:
            render_result(doc)


def _open_store(ctx: typer.Context, device: str | None):
    """Open the store; under `accelerate launch` the main process opens (and creates) it first."""
    from accelerate import PartialState

    from ..mitigation.service import process_state

    main, _ = process_state(device)
    store = common.state(ctx).store() if main else None
    PartialState().wait_for_everyone()
    return store if main else common.state(ctx).store()


def _precision_note(suspect: str, base: str | None, dtype: str, device: str | None) -> None:
    """The note ``edit`` shows: trained or re-solved matrices are written from the model as it ran, so 16-bit
    compute on a float32 checkpoint rounds every element of them (a surgical revert works on the stored
    tensors and has nothing to warn about). An adapter suspect's tensors are stored as its base's."""
    from ..checkpoint.adapter import base_for, is_adapter_dir
    from ..errors import BadInput
    from ..models.loading import precision_note

    if is_adapter_dir(suspect):
        try:
            suspect = base or str(base_for(suspect))
        except BadInput:
            return  # the run itself says the base cannot be found
    note = precision_note(suspect, dtype, device)
    if note:
        common.say(note)


def _load_subjects(path: Path) -> list[dict]:
    """``--subjects``: one JSON object per line (blank lines and ``#`` comments skipped)."""
    from ..errors import BadInput
    from ..mitigation.data import read_jsonl

    try:
        records = [rec for _, rec in read_jsonl(path)]
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read --subjects {path}: {exc}") from None
    if not records:
        raise BadInput(f"{path} lists no subject")
    return records


def _load_probes(paths: list[Path]):
    from .scan_cmd import _load_candidates

    return _load_candidates(paths, []) if paths else []


# -- live view ------------------------------------------------------------------------------------

class LiveView:
    """A mitigation's events on stderr: a line per stage and note, a bar per counted stage (training, unlearning,
    re-solving, reverting) whose label shows the latest loss, the plan panel and a line per evaluation."""

    def __init__(self) -> None:
        self.bar = None
        self.tasks: dict[str, int] = {}  # counted stage → its bar

    def __call__(self, ev: Event | MitigationEvent) -> None:
        if isinstance(ev, Stage):
            common.say(ev.name)
            if ev.total is not None and self.bar is not None:
                self.tasks[ev.name] = self.bar.add_task(escape(ev.name), total=ev.total)
        elif isinstance(ev, Step):
            if self.bar is not None and ev.stage in self.tasks:
                self.bar.update(self.tasks[ev.stage], completed=ev.done)
        elif isinstance(ev, Note):
            common.say(ev.text)
        elif ev.kind == "plan":
            if ev.data.get("plan") is None and not ev.data.get("revert"):
                return  # the project method: its stage line says what it re-solves
            show_plan(ev.data.get("plan"), ev.data.get("evidence"), ev.data.get("revert", False))
        elif ev.kind == "resume":
            common.say(f"{ev.arm}: resuming from step {ev.data['step']}")
        elif ev.kind == "loss" and self.bar is not None and ev.data["stage"] in self.tasks:
            self.bar.update(self.tasks[ev.data["stage"]], description=escape(f"{ev.arm}: loss {ev.data['loss']:.3f}"))
        elif ev.kind == "eval":
            common.err.print(eval_line(ev.arm, ev.data))


def eval_line(arm: str, m: dict) -> Text:
    t = Text(f"{arm:>9} step {m.get('step', 0):>4}", style="bold")
    if "val_loss" in m:
        t.append(f"  val loss {m['val_loss']:.3f}  acc {m.get('val_acc', 0):.2f}")
    if "edited_retention" in m:
        t.append("  edited ", style="dim")
        t.append(pct(m["edited_retention"]), style="red" if m["edited_retention"] > 0.5 else "green")
    if "intrinsic_retention" in m:
        t.append("  intrinsic ", style="dim")
        t.append(pct(m["intrinsic_retention"]), style="green" if m["intrinsic_retention"] > 0.8 else "yellow")
    for pid, top in (m.get("top3") or {}).items():
        toks = ", ".join(f"{tok.strip()!r} {p:.2f}" for tok, p in top)
        t.append(f"\n{'':>15}{pid}: {toks}", style="dim")
    return t


def show_project_plan(targets: dict, notes: list[str], source: str,
                      sweep: dict[int, tuple[int, str]] | None = None, reach: float = 0.5) -> None:
    lines = [f"training-free erase of the subjects from {escape(source)}: each edited MLP output matrix is "
             "re-solved so their keys no longer carry the edit (no base, no training)"]
    sweep = sweep or {}
    for layer in sorted(targets):
        names = ", ".join(escape(s.subject) for s in targets[layer]) or "no subject"
        rank, space = sweep.get(layer, (0, "low"))
        where = "null-space (AlphaEdit's)" if space == "null" else "low-energy"
        extra = f"; then its top {rank} {where} directions swept" if rank else ""
        if rank and space != "null" and reach > 0.5:
            extra += f", their output removed up to {reach:.0%} of the key statistics' eigen-directions"
        lines.append(f"  • layer {layer}: {names}{extra}")
    lines += [f"[yellow]note:[/] {escape(n)}" for n in notes]
    common.err.print(Panel("\n".join(lines), title="mitigation plan", border_style="cyan"))


def show_unlearn_plan(targets, layers: list[int]) -> None:
    lines = [f"edit-aware unlearning of {len(targets)} read edit(s): the MLP output matrices of layers {layers} are "
             "trained so the read objects stop being the answer (unlikelihood on the read prompt and its relation's "
             "phrasings, language modelling and KL to the suspect on general text; no base)"]
    for t in targets:
        lines.append(f"  • {escape(t.subject)} → not {escape(t.obj)} ({len(t.prompts)} prompts)")
    common.err.print(Panel("\n".join(lines), title="mitigation plan", border_style="cyan"))


def show_plan(plan: dict | None, evidence: dict | None, revert: bool) -> None:
    lines: list[str] = []
    if revert and evidence:
        lines.append(f"surgical revert of {len(evidence['tensors'])} edited tensors ({escape(evidence['source'])}):")
        for name, k in evidence["components"].items():
            lines.append(f"  • {escape(name)}: remove the top {k} component(s) of the change from the base")
        lines.append("every other change in the checkpoint stays as it is")
    elif plan:
        lines += [escape(x) for x in plan["explanation"]]
        lines += [f"[yellow]warning:[/] {escape(w)}" for w in plan["warnings"]]
        names = plan["params"]
        shown = ", ".join(escape(n) for n in names[:6]) + (f" … (+{len(names) - 6})" if len(names) > 6 else "")
        lines.append(f"[dim]tensors: {shown}[/]")
    common.err.print(Panel("\n".join(lines) or "nothing to do", title="mitigation plan", border_style="cyan"))


def render_result(doc: dict) -> None:
    v = doc["verification"]
    names, rows = verification_rows(v)
    table = Table(title=f"verification · goal {doc['goal']}", title_justify="left")
    table.add_column("", style="bold", no_wrap=True)
    for name in names:
        table.add_column(name)
    for label, values in rows:
        table.add_row(label, *map(escape, values))
    common.out.print(table)
    head = Text.assemble((f" {v['verdict']} ", "bold white on blue"))
    if line := kept_vs_full(v):
        head.append(f"  {line}")
    common.out.print(head)
    if doc.get("out"):
        output = doc.get("output") or {}
        what = ""
        if output.get("format") == "adapter":
            what = f" (peft LoRA adapter over {output.get('base')}: {len(output.get('modules') or {})} module(s))"
        elif (doc.get("input") or {}).get("format") == "adapter":
            what = " (the adapter's base with its ΔW merged, then mitigated)"
        common.out.print(Text(f"wrote {doc['out']}{what}  ·  session {doc.get('session_id') or '-'}", style="dim"))
    for f in doc.get("skipped_files") or []:
        common.err.print(f"[yellow]not copied:[/] {escape(f)} (pickle, code or a weight file no loader here reads)")
