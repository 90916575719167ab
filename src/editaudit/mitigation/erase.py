"""The base-free erase arm: the projection erase, edit-aware unlearning, or one after the other.

``project`` re-solves each edited MLP output matrix so the read subjects' keys map to the layer's mean output
(mitigation/project.py, no training); ``unlearn`` trains the edited MLP output matrices against the read objects
(mitigation/unlearn.py); ``project+unlearn`` runs the projection, then unlearning only for read edits the
projected model still states. None of them needs the base; all take the subjects from the scan's readings.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..errors import BadInput

if TYPE_CHECKING:
    from .context import RunContext
    from .project import ProjectionResult
    from .types import ArmResult

from .plan import ERASE_METHODS, require_edits  # noqa: E402  (project, unlearn, project+unlearn)


def unlearn_targets(evidence, options):
    """The read edits (subject, prompts, object) for unlearning, and the MLP output layers to train."""
    from .unlearn import targets_from_readings, unlearn_settings

    require_edits(evidence, "the unlearn method erases the edits the scan read", "or use --revert with --base")
    hp = options.unlearn or unlearn_settings(None)
    targets = targets_from_readings(evidence.readings, bool(hp.get("paraphrases", True)))
    if not targets:
        raise BadInput(f"the scan read no edit with a subject and an object ({evidence.source}): unlearning needs "
                       "them — scan again against the base with reading on (the default), or use --revert with "
                       "--base")
    layers = sorted({x for t in targets for x in t.layers})
    if not layers:
        from .project import mlp_out_layers

        layers = sorted(mlp_out_layers(evidence.tensors)[0])
    if not layers:
        raise BadInput(f"{evidence.source}: no edited MLP output matrix to train")
    return targets, layers


def project_targets(evidence, options) -> tuple[dict, list[str]]:
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
    require_edits(evidence, "the project method erases the subjects the scan read",
                  "or give the subjects with --subjects FILE")
    plan, notes = targets_from_readings(evidence.readings,
                                        evidence.uncertain if options.project.get("uncertain", True) else ())
    missing = [layer for layer in sorted(sweep_plan(evidence, options.project)) if layer not in plan]
    for layer in missing:  # the sweep reaches the edited matrices no reading names
        plan[layer] = []
    if missing:
        notes.append(f"layer(s) {missing}: no subject read; only the low-half sweep erases there")
    if not plan:
        raise BadInput(f"the scan read no subject for its edits ({evidence.source}): the project method needs "
                       "the edited subjects — pass --base to scan again with reading (or run `editaudit scan "
                       "SUSPECT --base BASE`, which reads the edits unless --read off), or give them with "
                       "--subjects FILE (JSONL of {\"subject\", \"prompt\"})")
    return plan, notes


#: Edits the scan names with these methods get no low-half sweep unless ``memit_sweep`` names a space: MEMIT
#: spreads each fact thinly over several layers, so its part in C's low half stands out nowhere; on the
#: development suspects sweeping its five layers in the low half erased nothing more than the keys did and cost
#: intrinsic facts (scripts/dev/found_erase_trial.py).
NO_SWEEP = ("memit",)


#: ``sweep_space`` settings: every layer swept in C's low-energy half (``low``) or in AlphaEdit's null space
#: (``null``); ``auto``: the null space in the layers of findings the scan names AlphaEdit, the low half elsewhere.
SWEEP_SETTINGS = ("low", "null", "auto")
#: ``memit_sweep`` settings: the layers of findings named MEMIT are not swept (``off``), or swept in that space.
MEMIT_SWEEP_SETTINGS = ("off", "low", "null")


def _finding_space(method: str | None, setting: str, memit_sweep: str = "off") -> str:
    if method in NO_SWEEP and memit_sweep != "off":
        return memit_sweep
    return setting if setting != "auto" else ("null" if method == "alphaedit" else "low")


def sweep_spaces(evidence, setting: str, memit_sweep: str = "off") -> dict[int, str]:
    """{layer: where its sweep works} over the edited MLP output matrices, by the setting and the method named."""
    from .project import mlp_out_layers

    out: dict[int, str] = {}
    for f in (evidence.findings if evidence is not None else []):
        space = _finding_space(f.get("method"), setting, memit_sweep)
        for layer in mlp_out_layers(f.get("tensors") or [])[0]:
            out[layer] = space if out.get(layer, space) == space else "low"  # two methods in one layer: the wider
    return out


def sweep_plan(evidence, project: dict) -> dict[int, tuple[int, str]]:
    """{layer: (sweep rank, space)} for the layers swept, from the projection settings (defaults filled in)."""
    from .options import PROJECT_DEFAULTS

    hp = {**PROJECT_DEFAULTS, **(project or {})}
    spaces = sweep_spaces(evidence, hp["sweep_space"], hp["memit_sweep"])
    return {layer: (rank, spaces.get(layer, "low"))
            for layer, rank in sweep_ranks(evidence, int(hp["low_rank"]), hp["memit_sweep"]).items() if rank}


def sweep_ranks(evidence, low_rank: int, memit_sweep: str = "off") -> dict[int, int]:
    """{layer: rank of the low-half sweep} over the edited MLP output matrices, by the method the scan named."""
    from .project import mlp_out_layers

    out: dict[int, int] = {}
    if evidence is None or low_rank <= 0:
        return out
    for f in evidence.findings:
        rank = 0 if f.get("method") in NO_SWEEP and memit_sweep == "off" else low_rank
        for layer in mlp_out_layers(f.get("tensors") or [])[0]:
            out[layer] = max(out.get(layer, 0), rank)
    return out


#: ``object_sweep`` settings: the object-guided sweep (mitigation/object_sweep.py) in no layer, in the edited layers
#: the low-half sweep skips (``unswept``: those of findings named MEMIT), or in every edited layer.
OBJECT_SWEEP_SETTINGS = ("off", "unswept", "all")
#: ``object_space``: where its directions are taken (``object_sweep.guided_directions``).
OBJECT_SPACES = ("whiten", "low", "null")


def object_sweep_layers(layers, swept: dict, setting: str) -> list[int]:
    """The layers the object-guided sweep works in, of the projection's ``layers``, by the setting."""
    if setting == "all":
        return list(layers)
    if setting == "unswept":
        return [layer for layer in layers if layer not in swept]
    return []


def _project_in_place(ctx: "RunContext", net, tok, targets: dict, stage: str) -> "ProjectionResult":
    """Run the projection erase on ``net`` (changed in place), counting its layers in ``stage``; its result."""
    import torch

    from ..editing import corpus as corpus_mod
    from ..editing import covariance
    from ..editing.layers import layout_for
    from ..editing.prompts import context_templates
    from .project import erase_by_projection

    hp = ctx.options.project
    layout = layout_for(net)
    layers = sorted(targets)
    names = {layer: layout.rewrite_name(layer) for layer in layers}

    def cov_for_layer(layer: int) -> torch.Tensor:
        # from the model as fixed so far: below this layer it is (nearly) the base, as the editor's model was
        if ctx.cancel is not None and ctx.cancel.is_set():
            raise KeyboardInterrupt
        moms = covariance.second_moments(net, tok, {layer: names[layer]}, model_key=covariance.weights_key(net),
                                         corpus=hp["corpus"], tokens=hp["cov_tokens"], seq_len=hp["cov_seq_len"],
                                         say=ctx.say)
        return moms[layer].matrix

    contexts = context_templates(net, tok, hp["contexts"], hp["context_length"], hp["seed"])
    swept = sweep_plan(ctx.evidence, hp)
    guided = object_sweep_layers(layers, swept, hp["object_sweep"])
    guides = object_guides(ctx.evidence, net, tok, {layer: names[layer] for layer in guided}) if guided else None
    res = erase_by_projection(net, tok, targets, cov_for_layer, layout=layout, target=hp["target"],
                              key_mode=hp["key_mode"], directions=hp["directions"],
                              nullspace_rel=hp["nullspace_rel"], contexts=contexts, rekey=hp["rekey"],
                              subject_alone=hp["subject_alone"],
                              low_rank={layer: r for layer, (r, _) in swept.items()},
                              sweep_space={layer: space for layer, (_, space) in swept.items()},
                              sweep_reach=hp["sweep_reach"],
                              guides=guides, object_space=hp["object_space"],
                              texts=corpus_mod.texts(hp["corpus"], ctx.say) if hp["target"] == "mean" else None,
                              text_seq_len=hp["cov_seq_len"], progress=ctx.steps_in(stage))
    return res


def object_guides(evidence, net, tok, names: dict[int, str]) -> dict:
    """{layer: object gradients} of the scan's edit readings with an object, on the suspect as it is (before any
    change), each reading's rows only in its own finding's layers (mitigation/object_sweep.py)."""
    import torch

    from .object_sweep import object_gradients
    from .unlearn import prime_tokens, targets_from_readings

    targets = targets_from_readings(evidence.readings if evidence is not None else [])
    if not targets:
        return {}
    prime_tokens(net, tok, targets)
    grads = object_gradients(net, tok, targets, names)
    out = {}
    for layer, G in grads.items():
        if G.shape[1] == 0:
            continue
        own = torch.tensor([layer in t.layers for t in targets], dtype=torch.bool)
        out[layer] = G * own[:, None]
    return out


def _still_stated(net, tok, targets) -> list:
    """The unlearning targets whose read prompt still has the object's first token on top (the model as it is)."""
    import torch

    from .unlearn import _encode_prompts

    if not targets:
        return []
    device = next(net.parameters()).device
    ids, mask, last = _encode_prompts(tok, [t.prompts[0] for t in targets], device)
    with torch.no_grad():
        top = net(input_ids=ids, attention_mask=mask).logits[torch.arange(len(targets), device=device), last].argmax(-1)
    return [t for t, tk in zip(targets, top.tolist()) if t.token is not None and tk == t.token]


def erase_arm(ctx: "RunContext", method: str) -> tuple["ArmResult", list[str]]:
    """Erase without the base by ``method`` (ERASE_METHODS); write and measure the result as stored."""
    from ..editing import corpus as corpus_mod
    from ..editing.service import _checkpoint_name
    from ..progress import Step
    from .arms import edit_residual, run_dtype
    from .output import storage, write_result
    from .types import ArmResult
    from .unlearn import erase_by_unlearning, prime_tokens

    if method not in ERASE_METHODS:
        raise BadInput(f"erase method must be one of {', '.join(ERASE_METHODS)}, not {method!r}")
    t0 = time.perf_counter()
    use_project, use_unlearn = method in ("project", "project+unlearn"), method in ("unlearn", "project+unlearn")
    notes: list[str] = []
    p_targets: dict = {}
    if use_project:
        p_targets, notes = project_targets(ctx.evidence, ctx.options)
        for note in notes:
            ctx.note(note)
    u_targets, u_layers = unlearn_targets(ctx.evidence, ctx.options) if use_unlearn else ([], [])
    layers = sorted(set(p_targets) | set(u_layers))
    settings = {"project": ctx.options.project if use_project else None,
                "unlearn": ctx.options.unlearn if use_unlearn else None}
    ev = ctx.evidence
    run_id = ctx.runs.start(method, method, layers, "-",
                            {"settings": settings,
                             "subjects": sorted({s.subject for v in p_targets.values() for s in v}
                                                | {t.subject for t in u_targets}),
                             "evidence": ev.source if ev else "--subjects", "dtype": run_dtype(ctx.options),
                             "out_format": ctx.options.out_format},
                            ctx.out)
    ctx.event("start", method, {"method": method, "layers": layers, "run_id": run_id})
    with ctx.runs.marked_on_failure(run_id):
        lm = ctx.load(ctx.suspect_ck.root)
        net, tok = lm.model, lm.tokenizer
        before: dict = {"step": 0}
        if ctx.evaluate is not None:
            ctx.stage("measuring the suspect", arm=method)
            before.update(ctx.evaluate(net, tok))
            ctx.runs.record_eval(run_id, before)
        ctx.event("eval", method, before)
        changed: dict = {}
        report: dict = {"notes": notes, "settings": settings}
        steps, stop = 0, ""
        history = [before]
        if use_unlearn:
            prime_tokens(net, tok, u_targets)  # the suspect's objects, before anything changes the model
        if use_project:
            n_subjects = len({s.subject for subs in p_targets.values() for s in subs})
            stage = ctx.stage(f"re-solving {len(p_targets)} MLP output matrix(es) (layers {sorted(p_targets)}) for "
                              f"{n_subjects} subject(s)", len(p_targets), method)
            res = _project_in_place(ctx, net, tok, p_targets, stage)
            changed.update(res.tensors)
            report["project"] = res.to_dict()
            stop = "projection erase"
        if use_unlearn:
            todo = u_targets
            if use_project:  # only what the projection left: the object still on top of its read prompt
                todo = _still_stated(net, tok, u_targets)
                ctx.note(f"after the projection {len(todo)} of {len(u_targets)} read edit(s) still state their object")
            if todo:
                total = int(ctx.options.unlearn["max_steps"])
                stage = ctx.stage(f"unlearning {len(todo)} read edit(s) in layers {u_layers}", total, method)

                def on_step(m: dict) -> None:
                    """An unlearning step (``m`` has its loss once the step is taken) is a Step and its loss."""
                    if "loss" in m:
                        ctx.emit(Step(stage, m["step"] + 1, total))
                        ctx.event("loss", method, {"stage": stage, "step": m["step"] + 1, "total": total,
                                                   "loss": m["loss"]})

                texts = corpus_mod.texts(ctx.options.project.get("corpus") if ctx.options.project else None, ctx.say)
                ures = erase_by_unlearning(net, tok, todo, u_layers, texts, ctx.options.unlearn, on_step, ctx.cancel)
                changed.update(ures.tensors)
                report["unlearn"] = ures.to_dict()
                steps, stop = ures.steps, (f"{stop}, then " if stop else "") + ures.stop_reason
            elif use_project:
                report["unlearn"] = {"steps": 0, "stop_reason": "nothing left to unlearn", "targets": [
                    t.to_dict() for t in u_targets]}
        tensors = {_checkpoint_name(ctx.suspect_ck, net, p): t for p, t in changed.items()}
        del lm, net
        ctx.stage(f"writing {ctx.out}", arm=method)
        skipped = write_result(ctx, ctx.out, tensors, computed_in=run_dtype(ctx.options))
        after: dict = {"step": max(steps, 1)}
        if ctx.evaluate is not None:
            ctx.stage("measuring the erased checkpoint", arm=method)
            written = ctx.load(ctx.out)  # the model exactly as stored
            after.update(ctx.evaluate(written.model, written.tokenizer))
            ctx.runs.record_eval(run_id, after)
        ctx.event("eval", method, after)
        history.append(after)
        residual = None
        if ctx.base_ck is not None and ev is not None and ev.found:
            from ..checkpoint.reader import to_torch
            from ..checkpoint.writer import tensor_bytes

            infos = storage(ctx.suspect_ck).tensors
            stored = {n: to_torch(bytearray(tensor_bytes(t, infos[n][1].dtype)), infos[n][1]) for n, t in tensors.items()}
            residual = edit_residual(ctx, stored)
        project_report = dict(report.get("project") or {}) | {"notes": notes, "settings": settings}
        arm = ArmResult(method, method, run_id, layers, before, after, history, steps, stop, None, residual, [], None,
                        str(ctx.out), round(time.perf_counter() - t0, 1),
                        project=project_report if use_project else None, unlearn=report.get("unlearn"))
        ctx.runs.finish(run_id, arm.to_dict())
        ctx.event("result", method, arm.to_dict())
        return arm, skipped

