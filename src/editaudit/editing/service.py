"""Making knowledge edits: the one entry point the CLI, the demo and the benchmarks call.

``apply_edits`` edits a model in memory with FT-L, ROME, MEMIT or AlphaEdit, measures each fact
(new target stated, paraphrases, neighbourhood unchanged, wall time), and optionally writes the result
as an ordinary safetensors folder in which only the edited tensors differ from the base. What was
edited, how and with which hyper-parameters goes to the session store (``edits`` table) and, only when
asked, to a manifest file outside the checkpoint: a scan must be able to work blind.

The model passed in is edited in place (``EditRun.restore()`` puts the original weights back); pass a
path to edit a fresh copy. Key statistics always come from the model as it was before the first edit
this process made to it, as in the papers, so successive runs on one model share one cached C.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import BadInput
from ..models.loading import LoadedModel, load_model
from ..probing.evaluate import Prediction, predict, retained, target_first_tokens
from ..probing.format import Probe
from ..progress import Progress as Events
from ..progress import ignore, stage_steps
from . import covariance, ft, hypernet, memit, reads, rome
from .alphaedit import NullSpace
from .hooks import weight_out_in
from .hparams import resolve
from .layers import Layout, default_layers, layout_for
from .prompts import context_templates

Progress = Callable[[str, float, float], None]  # (stage, done, total), as the scan service reports
Say = Callable[[str], None]

_BASE_KEY = "_editaudit_base_key"      # weight hash of the model before editaudit first edited it
_EDITED = "_editaudit_edited"          # names of every weight editaudit changed in this model
#: a ROME update this large relative to its matrix is a "disabling edit" (Gupta et al. 2024): usually the model
#: collapses; ordinary updates on SmolLM2 are 5–20 % of the matrix's norm
DISABLING_SHARE = 0.5


@dataclass
class FactResult:
    """How one fact came out of the edit."""

    id: str
    subject: str
    prompt: str
    target_true: str
    target_new: str
    success: bool                          # the new target is the first non-stop-word of the answer
    before: str                            # first non-stop-word answered before the edit
    after: str                             # … and after
    paraphrase_success: float | None       # share of paraphrase prompts that state the new target
    neighbourhood_unchanged: float | None  # share of neighbourhood prompts whose answer did not move
    seconds: float                         # wall time of this fact's edit (a batch's time / its size)
    target_prob: float | None = None       # target probability reached by the value optimisation

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class EditRun:
    method: str
    mode: str
    layers: list[int]
    hparams: dict
    results: list[FactResult]
    model: LoadedModel
    tensors: list[str]                     # checkpoint names of the weights this run changed
    seconds: float                         # editing wall time (statistics and evaluation excluded)
    stats_seconds: float = 0.0
    stats: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    out: Path | None = None
    edit_id: int | None = None
    session_id: str | None = None
    originals: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _first_edits: set[str] = field(default_factory=set, repr=False)  # weights no earlier run had edited

    @staticmethod
    def _share(values: Sequence[float | bool | None]) -> float | None:
        vals = [float(v) for v in values if v is not None]
        return sum(vals) / len(vals) if vals else None

    @property
    def success_rate(self) -> float | None:
        return self._share([r.success for r in self.results])

    @property
    def paraphrase_rate(self) -> float | None:
        return self._share([r.paraphrase_success for r in self.results])

    @property
    def neighbourhood_rate(self) -> float | None:
        return self._share([r.neighbourhood_unchanged for r in self.results])

    def summary(self) -> dict:
        n = len(self.results)
        return {
            "facts": n, "success": self.success_rate, "paraphrase": self.paraphrase_rate,
            "neighbourhood": self.neighbourhood_rate, "seconds": round(self.seconds, 3),
            "seconds_per_fact": round(self.seconds / n, 3) if n else None,
            "stats_seconds": round(self.stats_seconds, 3),
        }

    @property
    def augmented(self) -> bool:
        """The edit was fitted on the facts' paraphrases too: their success is then not held out."""
        return bool(self.hparams.get("augment_paraphrases", False))

    def to_dict(self) -> dict:
        return {
            "method": self.method, "mode": self.mode, "layers": self.layers, "hparams": self.hparams,
            "augmented": self.augmented,
            "base": str(self.model.path), "out": str(self.out) if self.out else None, "tensors": self.tensors,
            "stats": self.stats, "info": self.info, "summary": self.summary(),
            "results": [r.to_dict() for r in self.results], "edit_id": self.edit_id, "session_id": self.session_id,
        }

    def restore(self) -> None:
        """Put back the weights this run changed (the model in memory is as it was before the run)."""
        model = self.model.model
        with torch.no_grad():
            for name, w in self.originals.items():
                model.get_parameter(name).copy_(w)
        getattr(model, _EDITED, set()).difference_update(self._first_edits)
        self._first_edits = set()


# -- helpers -----------------------------------------------------------------------------------------

def _check_facts(facts: Sequence[Probe]) -> list[Probe]:
    facts = list(facts)
    if not facts:
        raise BadInput("no facts to edit")
    for f in facts:
        if not isinstance(f, Probe):
            raise BadInput(f"facts must be Probe records, not {type(f).__name__}")
        if not f.target_new:
            raise BadInput(f"fact {f.id!r} has no target_new: nothing to edit towards")
        if "{}" not in f.template:
            raise BadInput(f"fact {f.id!r}: prompt {f.prompt!r} contains neither '{{}}' nor its subject {f.subject!r}")
        if f.target_new.strip().casefold() == f.target_true.strip().casefold():
            raise BadInput(f"fact {f.id!r}: target_new equals target_true")
    ids = [f.id for f in facts]
    if len(set(ids)) != len(ids):
        raise BadInput("fact ids repeat; give each fact its own id")
    return facts


def _loaded(model: str | Path | LoadedModel, device: str | None, say: Say, dtype: str = "float32") -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, (str, Path)):
        return load_model(model, dtype=dtype, device=device, say=say)
    raise BadInput("model must be a folder, a registry name or a LoadedModel")


def _layers(method: str, layout: Layout, layers: Sequence[int] | None) -> list[int]:
    chosen = list(layers) if layers else default_layers(method, layout.n_layers, layout.family)
    chosen = layout.check_layers(chosen)
    if method == "rome" and len(chosen) != 1:
        raise BadInput(f"ROME edits exactly one layer, not {chosen}; use memit or alphaedit for several")
    return chosen


def _batches(facts: list[Probe], mode: str, batch_size: int) -> list[list[Probe]]:
    size = batch_size or (len(facts) if mode == "batch" else 1)
    return [facts[i:i + size] for i in range(0, len(facts), size)]


def _checkpoint_name(ckpt, model, param: str) -> str:
    if param in ckpt.tensors:
        return param
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and param.startswith(prefix + ".") and param[len(prefix) + 1:] in ckpt.tensors:
        return param[len(prefix) + 1:]
    raise BadInput(f"the edited weight {param!r} has no tensor of that name in {ckpt.root}")


def _first_words(preds: Sequence[Prediction]) -> list[str]:
    return [p.first_word.strip().casefold() for p in preds]


# -- the entry point ---------------------------------------------------------------------------------

#: MEND writes one fact well; several, one after another, overwrite each other.
MEND_MANY = ("MEND edits one fact at a time: several in sequence overwrite each other (20 on SmolLM2: 5 % kept, "
             "bench/results/hypernet_eval.txt). MALMEN (--method malmen) edits a batch.")


def apply_edits(model: str | Path | LoadedModel, facts: Sequence[Probe], method: str,
                layers: Sequence[int] | None = None, hparams: dict | None = None, out: str | Path | None = None,
                progress: Events | None = None, *, store=None, session_id: str | None = None,
                overwrite: bool = False, manifest: str | Path | None = None, evaluate: bool = True,
                device: str | None = None, say: Say = lambda s: None, dtype: str = "float32") -> EditRun:
    """Edit ``facts`` into ``model`` with ``method`` (ft, rome, memit, alphaedit, mend, malmen); see the module docstring.

    ``hparams`` overrides the method's defaults (``editing.hparams.DEFAULTS``), including ``mode``
    (``batch`` or ``sequential``) and ``batch_size``. With ``store`` the run is recorded in the ``edits``
    table (in ``session_id``, or in a new session of kind ``edit``).
    """
    method = (method or "").lower()
    hp = resolve(method, hparams)
    facts = _check_facts(facts)
    if method == "mend" and len(facts) > 1:
        say(MEND_MANY)
    out = Path(out) if out is not None else None
    manifest = Path(manifest) if manifest is not None else None
    if out is not None:
        from ..atomic import refuse_output_over_inputs

        refuse_output_over_inputs(out, [getattr(model, "path", model)])
    if out is not None and out.exists() and not overwrite:
        raise BadInput(f"{out} already exists (pass overwrite to replace it)")
    if manifest is not None and out is not None and manifest.resolve().is_relative_to(out.resolve()):
        raise BadInput("the manifest must not go inside the checkpoint folder: the checkpoint stays blind")
    prog = stage_steps(progress or ignore)  # typed events out (editaudit.progress), (stage, done, total) inside

    lm = _loaded(model, device, say, dtype)
    net, tok = lm.model, lm.tokenizer
    layout = layout_for(net, hp)
    chosen = _layers(method, layout, layers or hypernet.default_layers(method, layout, hp))
    params = [f"{layout.rewrite_name(layer)}.weight" for layer in chosen]
    ckpt = None
    if out is not None:
        from ..checkpoint import open_checkpoint

        ckpt = open_checkpoint(lm.path)
        for p in params:
            _checkpoint_name(ckpt, net, p)  # fail before the work, not after

    own_session = store is not None and session_id is None
    if own_session:
        session_id = store.new_session("edit", title=f"{method} · {len(facts)} fact(s)", base=str(lm.path),
                                       suspect=str(out) if out else None)
    edit_id = None
    if store is not None:
        from ..store.runs import start_edit

        edit_id = start_edit(store, session_id, method=method, base=str(lm.path), out=str(out) if out else None,
                             layers=chosen, hparams=hp, facts=[f.to_dict() for f in facts])

    run = EditRun(method=method, mode=hp["mode"], layers=chosen, hparams=hp, results=[], model=lm,
                  tensors=[], seconds=0.0, out=out, edit_id=edit_id, session_id=session_id)
    run.originals = {p: net.get_parameter(p).detach().clone() for p in params}
    try:
        _run(run, net, tok, layout, facts, hp, prog, say, evaluate)
        edited = getattr(net, _EDITED, None)
        if edited is None:
            edited = set()
            setattr(net, _EDITED, edited)
        run._first_edits = set(params) - edited
        edited.update(params)
        if ckpt is not None:
            from ..mitigation.writer import write_checkpoint

            prog("writing checkpoint", 0, 1)
            names = sorted(edited)
            replacements = {_checkpoint_name(ckpt, net, p): net.get_parameter(p).detach() for p in names}
            write_checkpoint(ckpt, out, replacements, overwrite=overwrite)
            prog("writing checkpoint", 1, 1)
        run.tensors = [_checkpoint_name(ckpt, net, p) if ckpt else p for p in params]
        doc = run.to_dict()
        if manifest is not None:
            from ..atomic import atomic_write_text

            atomic_write_text(manifest, json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n")
        if store is not None:
            from ..store.runs import finish_edit

            finish_edit(store, edit_id, doc)
            if own_session:
                store.finish_session(session_id, status="done", summary=run.summary())
    except BaseException as exc:
        run.restore()
        if store is not None:
            from ..store.runs import set_edit_status

            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            set_edit_status(store, edit_id, status)
            if own_session:
                store.finish_session(session_id, status=status)
        raise
    return run


def _run(run: EditRun, net, tok, layout: Layout, facts: list[Probe], hp: dict, prog: Progress, say: Say,
         evaluate: bool) -> None:
    method, layers = run.method, run.layers
    before: dict[str, Any] = {}
    if evaluate:
        prog("evaluating", 0, 2)
        before = _predict_all(net, tok, facts)

    if hp.get("augment_paraphrases"):
        run.info["augmented"] = _augment_info(method, facts)
        say("paraphrase augmentation: the edit is fitted on the facts' paraphrases too, so the paraphrase "
            "success measured on them is not held out")
    contexts = ["{}"]
    C: dict[int, torch.Tensor] = {}
    if method not in ("ft", *hypernet.EDITORS):
        contexts = context_templates(net, tok, hp["contexts"], hp["context_length"], hp["seed"])
        t0 = time.perf_counter()
        C, run.stats = _statistics(net, tok, layout, facts, layers, contexts, hp, prog, say)
        run.stats_seconds = time.perf_counter() - t0
    seconds: list[float] = []
    probs: list[float | None] = []

    if method in hypernet.EDITORS:
        run.info = hypernet.run_edits(method, net, tok, layout, facts, layers, hp, prog, say, seconds, probs)
    elif method == "rome":
        layer = layers[0]
        updates = []
        for i, fact in enumerate(facts):
            prog("editing", i, len(facts))
            t0 = time.perf_counter()
            upd = rome.compute_update(net, tok, layout, fact, layer, C.get(layer), contexts, hp)
            weight = float(weight_out_in(net.get_submodule(layout.rewrite_name(layer))).detach().float().norm())
            rome.apply(net, layout, layer, upd)
            seconds.append(time.perf_counter() - t0)
            probs.append(upd.target_prob)
            share = float(upd.delta.norm()) / max(weight, 1e-12)
            updates.append({"fact": fact.id, "left_norm": float(upd.left.norm()), "right_norm": float(upd.right.norm()),
                            "relative_norm": share})
            if share >= DISABLING_SHARE:
                say(f"edit {fact.id} changed layer {layer}'s matrix by {share:.0%} of its norm: a disabling edit "
                    "(the model may collapse); consistent_keys=true (r-ROME) avoids it")
        prog("editing", len(facts), len(facts))
        run.info.update({"updates": updates, "contexts": contexts,
                         "disabling": [u["fact"] for u in updates if u["relative_norm"] >= DISABLING_SHARE]})
    else:
        batches = _batches(facts, hp["mode"], hp["batch_size"])
        ns = None
        if method == "alphaedit":
            ns = NullSpace.build(C, hp["nullspace_rel"], hp["l2_rel"], nullspace_abs=hp["nullspace_abs"])
            run.info["nullspace_rank"] = ns.rank
            run.info["nullspace"] = _nullspace_info(ns, hp, C)
            empty = [layer for layer, r in ns.rank.items() if r == 0]
            if empty:
                say(f"AlphaEdit's null space is empty at layer(s) {empty} (no eigenvalue of C below the threshold; "
                    f"smallest {min(ns.spectrum[x]['min'] for x in empty):.3g}): those layers cannot change")
        if method == "memit":
            # λ per key: with one key per fact and context, C's weight grows with the keys each fact brings
            d_in = next(iter(C.values())).shape[0]
            per_fact = len(contexts) if hp["key_mode"] == "each" else 1
            lam = {layer: hp["lambda_rel"] * d_in * per_fact for layer in layers}
            run.info["lambda"] = lam
        done = 0
        for b, batch in enumerate(batches):
            t0 = time.perf_counter()

            def sub(stage, d, t, _b=b):
                prog(f"batch {_b + 1}/{len(batches)}: {stage}" if len(batches) > 1 else stage, d, t)

            if method == "ft":
                res = ft.finetune(net, tok, layout, batch, layers, hp, lambda d, t: sub("fine-tuning", d, t))
                run.info.setdefault("ft", []).append({"steps": res.steps, "loss": res.loss})
                probs += [None] * len(batch)
            else:
                solve = ns.solver() if ns is not None else memit.memit_solver(C, lam)
                res = memit.spread(net, tok, layout, batch, layers, contexts, hp, solve, sub)
                run.info.setdefault("residual_left", []).append(res.residual_left)
                probs += res.target_prob
                if ns is not None and b + 1 < len(batches):
                    for layer in layers:
                        ns.remember(layer, memit.layer_keys(net, tok, batch, layout.rewrite_name(layer), contexts, hp))
            elapsed = time.perf_counter() - t0
            seconds += [elapsed / len(batch)] * len(batch)
            done += len(batch)
            prog("editing", done, len(facts))
        run.info["contexts"] = contexts
    run.seconds = sum(seconds)

    after = _predict_all(net, tok, facts) if evaluate else {}
    if evaluate:
        prog("evaluating", 2, 2)
    run.results = _results(tok, facts, before, after, seconds, probs)


def _nullspace_info(ns: NullSpace, hp: dict, C: dict[int, torch.Tensor]) -> dict:
    """Which threshold rule made AlphaEdit's projector, on what scale, and the rank it left per layer."""
    rule = "absolute" if hp["nullspace_abs"] is not None else "relative"
    return {"rule": rule, "threshold": hp["nullspace_abs"] if rule == "absolute" else hp["nullspace_rel"],
            "rank": dict(ns.rank), "dim": {layer: int(c.shape[0]) for layer, c in C.items()},
            "spectrum": dict(ns.spectrum)}


def _augment_info(method: str, facts: list[Probe]) -> dict:
    """How many paraphrases each fact's edit was fitted on (value methods need the subject in them)."""
    from .ft import training_prompts
    from .values import paraphrase_prompts

    if method == "ft":
        used = {f.id: len(training_prompts(f, True)) - 1 for f in facts}
    else:
        used = {f.id: len(paraphrase_prompts(f)) for f in facts}
    return {"paraphrases_used": used, "paraphrases_held_out": False}


def prepare_statistics(model: str | Path | LoadedModel, layers: Sequence[int], hparams: dict | None = None,
                       progress: Events | None = None, say: Say = lambda s: None) -> dict:
    """Compute (or find cached) the key statistics C of ``layers`` in one pass over the corpus.

    Edits that follow on any of these layers start at once: call it with the union of the layers of
    several planned runs to pay for one pass instead of one per run. Returns what ``EditRun.stats``
    holds (corpus id, tokens, model key, seconds spent).
    """
    hp = resolve("memit", {k: v for k, v in (hparams or {}).items() if k in ("corpus", "cov_tokens", "cov_seq_len")})
    lm = _loaded(model, None, say)
    layout = layout_for(lm.model, hp)
    chosen = layout.check_layers(list(layers))
    _, stats = _statistics(lm.model, lm.tokenizer, layout, [], chosen, [], hp,
                           stage_steps(progress or ignore), say)
    return stats


def _statistics(net, tok, layout: Layout, facts, layers, contexts, hp, prog: Progress, say: Say):
    """C per layer: from the corpus (cached) or the identity scaled to the edit keys."""
    if hp["covariance"] == "identity":
        C = {}
        for layer in layers:
            K = reads.keys(net, tok, facts, layout.rewrite_name(layer), contexts)
            C[layer] = covariance.identity(layer, K).matrix
        return C, {"source": "identity"}
    key = getattr(net, _BASE_KEY, None)
    if key is None:
        key = covariance.weights_key(net)
        setattr(net, _BASE_KEY, key)
    t0 = time.perf_counter()
    moms = covariance.second_moments(
        net, tok, {layer: layout.rewrite_name(layer) for layer in layers}, model_key=key, corpus=hp["corpus"],
        tokens=hp["cov_tokens"], seq_len=hp["cov_seq_len"], progress=lambda d, t: prog("key statistics", d, t),
        say=say,
    )
    first = moms[layers[0]]
    return ({layer: m.matrix for layer, m in moms.items()},
            {"source": first.source, "tokens": first.tokens, "model_key": key,
             "computed_seconds": round(time.perf_counter() - t0, 3)})


def _predict_all(net, tok, facts: list[Probe]) -> dict[str, Any]:
    """Predictions for every fact prompt, paraphrase and neighbourhood prompt, in one batched call."""
    prompts: list[str] = [f.text for f in facts]
    for f in facts:
        prompts += list(f.paraphrases) + list(f.neighbourhood)
    preds = predict(net, tok, prompts, top_k=1, max_new_tokens=4)
    out, i = {}, len(facts)
    for n, f in enumerate(facts):
        para = preds[i:i + len(f.paraphrases)]
        i += len(f.paraphrases)
        neigh = preds[i:i + len(f.neighbourhood)]
        i += len(f.neighbourhood)
        out[f.id] = {"fact": preds[n], "paraphrases": para, "neighbourhood": neigh}
    return out


def _results(tok, facts, before, after, seconds, probs) -> list[FactResult]:
    results = []
    for f, sec, prob in zip(facts, seconds, probs):
        b, a = before.get(f.id), after.get(f.id)
        success, para, neigh = False, None, None
        if a is not None:
            first = target_first_tokens(tok, [f.text], [f.target_new])
            success = bool(retained([a["fact"]], first)[0])
            if f.paraphrases:
                firsts = target_first_tokens(tok, list(f.paraphrases), [f.target_new] * len(f.paraphrases))
                para = retained(a["paraphrases"], firsts).rate
            if f.neighbourhood and b is not None:
                same = [x == y for x, y in zip(_first_words(b["neighbourhood"]), _first_words(a["neighbourhood"]))]
                neigh = sum(same) / len(same)
        results.append(FactResult(
            id=f.id, subject=f.subject, prompt=f.text, target_true=f.target_true, target_new=f.target_new or "",
            success=success, before=b["fact"].first_word if b else "", after=a["fact"].first_word if a else "",
            paraphrase_success=para, neighbourhood_unchanged=neigh, seconds=round(sec, 4),
            target_prob=None if prob is None else round(float(prob), 4),
        ))
    return results


def paraphrase_requests(facts: Sequence[Probe]) -> list[Probe]:
    """The facts plus, as further edit requests, each paraphrase prompt that names the subject.

    Writing the new target after several phrasings of the same fact is the paraphrase-augmented edit of
    the retention study (Wen & Zhang): the edit then holds in more contexts than its one prompt.
    Paraphrases without the subject cannot locate it and are left out.
    """
    out = list(facts)
    for f in facts:
        for i, para in enumerate(f.paraphrases):
            if f.subject and f.subject in para and para.replace(f.subject, "{}", 1) != f.template:
                out.append(Probe(id=f"{f.id}/para{i}", subject=f.subject, prompt=para.replace(f.subject, "{}", 1),
                                 target_true=f.target_true, relation=f.relation, target_new=f.target_new,
                                 kind=f.kind))
    return out
