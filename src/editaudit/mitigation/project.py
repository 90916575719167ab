"""Training-free, base-free erase: re-solve each edited MLP output matrix so the edited subjects' keys
stop carrying the edit.

ROME writes ΔW = δ uᵀ with u ∝ C⁻¹k* (``editing/rome.py``); MEMIT writes ΔW = R Kᵀ(λC + KKᵀ)⁻¹, whose
rows are again in span(C⁻¹K) because (λC + KKᵀ)⁻¹K = C⁻¹K(λ + KᵀC⁻¹K)⁻¹. So the edit's *input*
directions are C⁻¹k for the keys k of the edited subjects, and those keys can be read from the suspect
itself: the input of the edited matrix does not depend on that matrix, only on the layers below.

Given the suspect's W, the keys K = [k₁ … kₙ] (each subject's input at its last token in its prompt and
on its own, averaged over a few generated contexts as ROME does, or one per context) and the key second
moment C, ROME's own least-change solve with equality constraints

    W' = argmin ‖(W' − W) C^½‖_F  s.t.  W' K = V   ⇒   W' = W + (V − W K)(Kᵀ C⁻¹ K)⁻¹ Kᵀ C⁻¹

only changes W along the rows span(C⁻¹K): the very rows the edit wrote. Whatever V, the edit's part in
those rows is overwritten, and W' − W_base = (V − W_base K)(KᵀC⁻¹K)⁻¹KᵀC⁻¹: what is left is how far the
target V is from the base's own output W_base K, which is unknown without the base. Targets:

- ``mean`` (default): V = the layer's mean output over ordinary text, for every key: a neutral value.
  It pins the keys' outputs whatever directions the solve uses, so it still erases when C (and so
  C⁻¹K) differs from the editor's;
- ``project``: V = W (I − Q) K, Q the orthogonal projector onto span(C⁻¹K) — the suspect's
  output for each key with the key's component along the edit's input directions removed. Off those
  directions W equals W_base, so this is W_base's output for the nearest key the edit cannot see. In
  closed form the solve becomes

      W' = W (I − Q)          (= W_base (I − Q) when the keys and C match the edit's)

  i.e. the edited matrix with its action on the n directions C⁻¹kᵢ removed. Closest to the base's
  output when C matches the editor's, but what the directions miss of the edit stays in V;
- ``zero``: V = 0 (the least output energy).

Several subjects in one matrix are solved jointly (one Q for all their keys, as MEMIT's batch solve).
Several edited layers are fixed lowest first: the keys are read on the suspect before any change (the
keys MEMIT itself wrote at each layer, with the layers below already edited), while C for a layer is
asked for only once the layers below it are fixed, so that it comes from a model that is (nearly) the
base below that layer — as the editor's C was. ``rekey=True`` re-reads the keys after each lower fix
instead; on tiny MEMIT edits that leaves most of the upper layers' edits in place, because those keys
are no longer the ones MEMIT wrote. The base is never needed; C comes from the cached second moments
(``editing/covariance.py``) and should be the editor's (same corpus and token budget): the directions
C⁻¹k match the edit's only as far as C does. AlphaEdit's update has its rows in span(PK) instead (P its
null-space projector): ``directions="null"`` or ``"both"``.

The **low-half sweep** (``low_rank = r``) needs no subject at all. An edit's input directions C⁻¹k (ROME, MEMIT)
or PK (AlphaEdit) lie mostly in C's low-energy eigen-directions, where a trained W has little action (its
gradients δkᵀ come from keys, which have little energy there); the no-base scan finds edits by the outliers
of σ(W Q), Q that half (``scan/nobase.py``). After the subjects' solve, each edited matrix loses its action on
the top r right singular directions of W Q:

    W' = W − (W D) Dᵀ,   D = Q V_r,   W Q = U Σ Vᵀ

This takes what the recovered keys missed of the edit — all of an AlphaEdit edit, which lives in that half —
and on the development suspects also undid the collateral damage of a disabling ROME edit; a layer with no
subject read gets the sweep alone. The edit's part in C's high-energy half stays; that is the keys' job, or:
``sweep_reach`` = R > 0.5 takes the same components further: with P = U_r U_rᵀ their output directions,
W' = W − P W Q_R Q_Rᵀ, Q_R the lowest R share of C's eigen-directions — the part of a ROME edit's uᵀk that lies above
the median eigenvalue goes too, while ordinary text, whose energy is in C's top directions, barely moves.
``sweep_space="null"`` restricts Q to AlphaEdit's null space (eigenvalues below ``nullspace_rel`` × the median),
where all of its edit is and a trained W acts least: the same edit swept, less of W's own action taken with it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence

import torch

from ..editing import reads
from ..editing.hooks import StopForward, add_delta, by_token, weight_out_in
from ..editing.layers import Layout, layout_for
from ..editing.prompts import context_templates, pad_id, right_pad
from ..editing.rome import solve_psd
from ..editing.span import orthonormal_span  # keys of one subject in several contexts are nearly collinear
from ..errors import BadInput
from ..probing.format import Probe
from ..progress import Progress, Stage, Step, ignore

TARGETS = ("project", "mean", "zero")
KEY_MODES = ("auto", "mean", "each")
DIRECTIONS = ("ckey", "null", "both")
#: where the low-half sweep works: C's low-energy half, or AlphaEdit's null space within it
SWEEP_SPACES = ("low", "null")

CovForLayer = Callable[[int], torch.Tensor]
#: the stage ``erase_by_projection`` reports (a Step per layer re-solved)
STAGE = "re-solving layers"


@dataclass
class EraseSubject:
    """One edited subject: its name and the prompts to read its key in (filled or with ``{}``)."""

    subject: str
    prompts: list[str] = field(default_factory=list)  # none: the subject on its own, in the contexts

    def probes(self) -> list[Probe]:
        """One probe per prompt (a template with ``{}``), as the key readers take them."""
        found: list[Probe] = []
        for i, text in enumerate(self.prompts or ["{}"]):
            p = Probe(id=f"{self.subject}#{i}", subject=self.subject, prompt=text, target_true="")
            if "{}" not in p.template:
                raise BadInput(f"prompt {text!r} does not contain its subject {self.subject!r}")
            found.append(p)
        return found


@dataclass
class SubjectReport:
    subject: str
    layer: int
    prompts: list[str]
    keys: int            # keys read for it (prompts × contexts in ``each`` mode)
    gain: float          # ‖W u‖ over W's RMS gain, u ∝ C⁻¹k̄ its mean key's edit direction (see below)
    change: float        # ‖(W' − W) k‖ / ‖W k‖: how far its output at this layer moved
    before: list[str] = field(default_factory=list)   # first answer word per prompt, before and after
    after: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LayerReport:
    layer: int
    param: str           # the model's parameter name
    directions: int      # rank of the change (independent directions C⁻¹k)
    weight_change: float  # ‖ΔW‖ / ‖W‖
    text_change: float   # √(tr ΔW C ΔWᵀ / tr W C Wᵀ): how much ordinary text's outputs move
    swept: int = 0       # rank of the low-half sweep (0: none)
    guided: int = 0      # directions of the object-guided sweep (mitigation/object_sweep.py)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ProjectionResult:
    tensors: dict[str, torch.Tensor]   # parameter name -> new weight (storage orientation, float32)
    layers: list[LayerReport]
    subjects: list[SubjectReport]
    target: str
    key_mode: str
    contexts: list[str]
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"target": self.target, "key_mode": self.key_mode, "contexts": self.contexts,
                "seconds": round(self.seconds, 3), "layers": [r.to_dict() for r in self.layers],
                "subjects": [r.to_dict() for r in self.subjects]}


# -- the algebra --------------------------------------------------------------------------------------

def edit_directions(C: torch.Tensor, K: torch.Tensor, directions: str = "ckey",
                    nullspace_rel: float = 0.5) -> torch.Tensor:
    """An orthonormal basis [d_in, r] of the rows an edit of the keys K [n, d_in] writes.

    ``ckey``: span(C⁻¹K) (ROME, MEMIT); ``null``: span(PK), P the projector onto C's eigen-directions
    below ``nullspace_rel`` × the median eigenvalue (AlphaEdit: (PKKᵀ + αI)⁻¹PK = PK(KᵀPK + αI)⁻¹);
    ``both``: the union, for an edit of unknown method.
    """
    if directions not in DIRECTIONS:
        raise BadInput(f"directions must be one of {', '.join(DIRECTIONS)}, not {directions!r}")
    Kt = K.T.to(torch.float64)
    parts = []
    if directions in ("ckey", "both"):
        parts.append(solve_psd(C, Kt))                          # [d_in, n]
    if directions in ("null", "both"):
        from ..editing.alphaedit import null_projector

        parts.append(null_projector(C, nullspace_rel)[0] @ Kt)
    return orthonormal_span(torch.cat(parts, 1))


def sweep_basis(C: torch.Tensor, space: str = "low", nullspace_rel: float = 0.5) -> torch.Tensor:
    """The eigen-directions of C [d_in, m] the sweep works in: ``low``, the low-energy half; ``null``, those
    below ``nullspace_rel`` × the median eigenvalue (AlphaEdit's null space, a part of that half)."""
    from ..scan.nobase import KeyEig

    if space not in SWEEP_SPACES:
        raise BadInput(f"sweep_space must be one of {', '.join(SWEEP_SPACES)}, not {space!r}")
    eig = KeyEig.of(C.to(torch.float64))
    if space == "low":
        return eig.low
    return eig.Q[:, eig.ev < nullspace_rel * float(eig.ev.median())]


def low_half_sweep(W: torch.Tensor, C: torch.Tensor, rank: int, space: str = "low",
                   nullspace_rel: float = 0.5, reach: float = 0.5) -> torch.Tensor:
    """ΔW [out, in] (float64) = −(W D) Dᵀ, D the top ``rank`` right singular directions of W restricted to C's
    low-energy half of eigen-directions, or to its null space (``space``; see the module docstring).

    ``reach`` > 0.5 (space ``low`` only): W's output along those components' output directions P = U_r U_rᵀ is
    removed over the lowest ``reach`` share of C's eigen-directions, ΔW = −P W Q_f Q_fᵀ (at 0.5 exactly the
    sweep above). An edit's u = C⁻¹k keeps part of its action on k above the median eigenvalue (a quarter of uᵀk on a
    development ROME sequence), which the low half leaves in place; ordinary text, whose energy is in C's top
    directions, is barely touched."""
    from ..scan.nobase import KeyEig

    Wd = W.to(torch.float64)
    # one eigen-decomposition serves both the low half and the reach
    eig = KeyEig.of(C.to(torch.float64)) if space == "low" and reach > 0.5 else None
    low = eig.low if eig is not None else sweep_basis(C, space, nullspace_rel)
    if low.shape[1] == 0:
        return torch.zeros_like(Wd)
    rank = min(rank, low.shape[1])
    U, _, Vh = torch.linalg.svd(Wd @ low, full_matrices=False)
    if eig is None:
        D = low @ Vh[:rank].T
        return -(Wd @ D) @ D.T
    Qf = eig.Q[:, : int(round(min(reach, 1.0) * eig.Q.shape[1]))]  # ascending: the lowest-energy directions first
    P = U[:, :rank]
    return -(P @ ((P.T @ Wd) @ Qf)) @ Qf.T


def solve_layer(W: torch.Tensor, K: torch.Tensor, C: torch.Tensor, target: str = "project",
                mean_out: torch.Tensor | None = None, directions: str = "ckey",
                nullspace_rel: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """ΔW [out, in] (float64) that maps the keys K [n, in] to the target, changing only span(C⁻¹K); and that basis.

    ``project``: ΔW = −W B Bᵀ. Otherwise ΔW = (V − W K)(Bᵀ K)⁺ Bᵀ, which equals ROME's
    (V − W K)(KᵀC⁻¹K)⁻¹KᵀC⁻¹ when the keys are independent (Bᵀ K is then invertible).
    """
    if target not in TARGETS:
        raise BadInput(f"target must be one of {', '.join(TARGETS)}, not {target!r}")
    Wd = W.to(torch.float64)
    Kd = K.to(device=Wd.device, dtype=torch.float64)
    B = edit_directions(C.to(Wd.device), Kd, directions, nullspace_rel)
    if target == "project":
        return -(Wd @ B) @ B.T, B
    if target == "mean":
        if mean_out is None:
            raise BadInput("the mean target needs the layer's mean output")
        V = mean_out.to(device=Wd.device, dtype=torch.float64)[:, None].expand(-1, Kd.shape[0])
    else:
        V = torch.zeros(Wd.shape[0], Kd.shape[0], dtype=torch.float64, device=Wd.device)
    X = (V - Wd @ Kd.T) @ torch.linalg.pinv(B.T @ Kd.T)       # [out, r]
    return X @ B.T, B


# -- reading the model ----------------------------------------------------------------------------------

def mean_output(model, tokenizer, module: str, texts: Sequence[str], tokens: int = 4096,
                seq_len: int = 256) -> torch.Tensor:
    """The mean output of ``module`` over the first ``tokens`` tokens of ``texts`` (padding excluded)."""
    from ..editing.covariance import token_windows

    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if isinstance(limit, int) and limit > 0:
        seq_len = min(seq_len, limit)
    windows = token_windows(tokenizer, texts, tokens, seq_len)
    if not windows:
        raise BadInput("no text to take the layer's mean output from")
    device = next(model.parameters()).device
    total, count = None, 0
    seen: dict[str, torch.Tensor] = {}

    def hook(mod, args, out):
        seen["y"] = out[0] if isinstance(out, tuple) else out
        raise StopForward

    handle = model.get_submodule(module).register_forward_hook(hook)
    try:
        for start in range(0, len(windows), 4):
            ids, mask = right_pad(windows[start:start + 4], pad_id(tokenizer), device)
            try:
                with torch.no_grad():
                    model(input_ids=ids, attention_mask=mask, use_cache=False)
            except StopForward:
                pass
            y = by_token(seen["y"], mask.shape[0])[mask.bool()].to(torch.float64)
            total = y.sum(0) if total is None else total + y.sum(0)
            count += y.shape[0]
    finally:
        handle.remove()
    return (total / count).cpu()


def _with_alone(s: EraseSubject | str, alone: bool) -> EraseSubject:
    """A copy of the subject, with the subject on its own as one more prompt when ``alone``: a prompt read
    from the scan's relation library is seldom the edited one, and the key depends on what precedes the
    subject, while many edited prompts begin with it."""
    s = s if isinstance(s, EraseSubject) else EraseSubject(str(s))
    prompts = list(s.prompts)
    if alone and prompts and "{}" not in prompts and s.subject not in prompts:
        prompts.append("{}")
    return EraseSubject(s.subject, prompts)


def _subject_keys(model, tokenizer, module: str, subjects: Sequence[EraseSubject], contexts: list[str],
                  key_mode: str) -> tuple[torch.Tensor, list[int]]:
    """Keys [n, d_in] for all subjects (one per prompt, or per prompt and context) and the owner of each row."""
    rows, owner = [], []
    for i, s in enumerate(subjects):
        K = reads.keys(model, tokenizer, s.probes(), module, contexts, average=key_mode == "mean")
        K = K if K.ndim == 2 else K.reshape(-1, K.shape[-1])
        rows.append(K.cpu())
        owner += [i] * len(K)
    return torch.cat(rows, 0), owner


def _answers(model, tokenizer, subjects: Sequence[EraseSubject]) -> list[list[str]]:
    from ..probing.evaluate import predict

    texts = [[p.text for p in s.probes()] if s.prompts else [] for s in subjects]
    flat = [t for ts in texts for t in ts]
    preds = predict(model, tokenizer, flat, top_k=1, max_new_tokens=4) if flat else []
    out, i = [], 0
    for ts in texts:
        out.append([p.first_word for p in preds[i:i + len(ts)]])
        i += len(ts)
    return out


# -- the entry point --------------------------------------------------------------------------------------

def erase_by_projection(model, tokenizer, targets: Mapping[int, Sequence[EraseSubject | str]],
                        cov_for_layer: CovForLayer, *, layout: Layout | None = None, target: str = "mean",
                        key_mode: str = "auto", directions: str = "ckey", nullspace_rel: float = 0.5,
                        contexts: list[str] | None = None, rekey: bool = False,
                        texts: Sequence[str] | None = None, text_seq_len: int = 256, subject_alone: bool = True,
                        answers: bool = True, low_rank: int | Mapping[int, int] = 0,
                        sweep_space: str | Mapping[int, str] = "low", sweep_reach: float = 0.5,
                        guides: Mapping[int, torch.Tensor] | None = None, object_space: str = "whiten",
                        progress: Progress = ignore) -> ProjectionResult:
    """Erase the edits of ``targets`` ({layer: subjects}) from ``model`` in place; see the module docstring.

    ``cov_for_layer(layer)`` gives C = E[kkᵀ] for that layer's edited matrix (ideally the one the editor
    used: ``editing.covariance.second_moments``). ``layout`` names the edited module per family (default:
    from the model's config). ``contexts`` default to ROME's: the subject alone plus five 10-token openings
    generated by the model (seed 0). ``texts`` feed the ``mean`` target (default: the key-statistics
    corpus, in windows of ``text_seq_len`` tokens). ``key_mode``: ``mean`` reads one key per subject and
    prompt (averaged over the contexts, as ROME writes it), ``each`` one per context (as MEMIT/AlphaEdit write
    here); ``auto`` is ``mean``: on SmolLM2's 10-fact MEMIT batch ``each`` re-solved 78 directions per layer
    instead of 13 and cost 8.1 points of intrinsic facts for the same 9 of 10 erased (docs/mitigation.md). ``subject_alone`` adds the subject on
    its own as one more prompt of every subject that has prompts. Returns the new weights and, per
    subject, its ``gain``: ‖W u‖ for u ∝ C⁻¹k̄ over W's RMS gain ‖W‖_F/√d_in — where an edit was written
    for that key, it stands out (a rough, base-free check of a reading) — and its answers before and after.
    ``low_rank`` > 0 adds the low-half sweep of that rank to every layer of ``targets`` (see the module
    docstring), or ``{layer: rank}`` to the layers named; a layer whose subject list is empty gets the sweep alone.
    ``sweep_space`` (one for all layers, or ``{layer: space}``, default ``low``) is where each layer's sweep works;
    ``sweep_reach`` how far up C's eigen-directions a ``low`` sweep removes its components' output (``low_half_sweep``).
    ``guides`` ({layer: [n, d_out] object gradients}, ``object_sweep.object_gradients``) add the object-guided
    sweep to those layers after the subjects' solve and the low-half sweep, its directions C⁻¹Wᵀg
    (``object_space="whiten"``) or in a sweep space (``low``, ``null``).
    ``progress`` receives typed events (editaudit.progress): the stage ``re-solving layers``, a Step per layer.
    """
    import time

    t0 = time.perf_counter()
    if target not in TARGETS:
        raise BadInput(f"target must be one of {', '.join(TARGETS)}, not {target!r}")
    if directions not in DIRECTIONS:
        raise BadInput(f"directions must be one of {', '.join(DIRECTIONS)}, not {directions!r}")
    if key_mode not in KEY_MODES:
        raise BadInput(f"key_mode must be one of {', '.join(KEY_MODES)}, not {key_mode!r}")
    ranks = {int(layer): int(low_rank.get(layer, 0)) for layer in targets} if isinstance(low_rank, Mapping) else \
        {int(layer): int(low_rank) for layer in targets}
    if any(r < 0 for r in ranks.values()):
        raise BadInput(f"low_rank must be 0 or more, not {low_rank}")
    plan = {int(layer): [_with_alone(s, subject_alone) for s in subs] for layer, subs in targets.items()
            if subs or ranks[int(layer)]}
    if not plan:
        raise BadInput("no subjects to erase")
    layout = layout or layout_for(model)
    layers = layout.check_layers(sorted(plan))
    for subs in plan.values():
        for s in subs:
            s.probes()  # fail on a prompt without its subject before any work
    if contexts is None:
        contexts = context_templates(model, tokenizer, 5, 10, 0)
    all_subjects = list({s.subject: s for subs in plan.values() for s in subs}.values())
    if key_mode == "auto":
        key_mode = "mean"
    before = _answers(model, tokenizer, all_subjects) if answers else [[] for _ in all_subjects]

    keys: dict[int, tuple[torch.Tensor, list[int]]] = {}
    if not rekey:  # every layer's keys as the edit saw them: on the suspect, before any change
        for layer in layers:
            if plan[layer]:
                keys[layer] = _subject_keys(model, tokenizer, layout.rewrite_name(layer), plan[layer], contexts,
                                            key_mode)
    tensors: dict[str, torch.Tensor] = {}
    layer_reports: list[LayerReport] = []
    subject_reports: list[SubjectReport] = []
    progress(Stage(STAGE, len(layers)))
    for n, layer in enumerate(layers):
        progress(Step(STAGE, n, len(layers)))
        name = layout.rewrite_name(layer)
        module = model.get_submodule(name)
        W = weight_out_in(module).detach().to("cpu", torch.float64)
        C = cov_for_layer(layer).to("cpu", torch.float64)
        if C.shape != (W.shape[1], W.shape[1]):
            raise BadInput(f"layer {layer}: key statistics of shape {tuple(C.shape)} do not fit {name} "
                           f"(input width {W.shape[1]})")
        delta = torch.zeros_like(W)
        n_dirs = 0
        if plan[layer]:
            K, owner = keys[layer] if not rekey else _subject_keys(model, tokenizer, name, plan[layer], contexts,
                                                                   key_mode)
            K = K.to("cpu")  # solved on the CPU in float64 with W and C, whatever the model's device
            m = None
            if target == "mean":
                from ..editing import corpus as corpus_mod

                m = mean_output(model, tokenizer, name, texts if texts is not None else corpus_mod.texts(),
                                seq_len=text_seq_len)
            delta, B = solve_layer(W, K, C, target, m, directions, nullspace_rel)
            n_dirs = int(B.shape[1])
            Kd = K.to(torch.float64)
            out_before = Kd @ W.T                                    # [n, out]
            rms_gain = float(W.norm()) / W.shape[1] ** 0.5
            change = (Kd @ delta.T).norm(dim=1) / out_before.norm(dim=1).clamp_min(1e-30)
            for i, s in enumerate(plan[layer]):
                rows = [j for j, o in enumerate(owner) if o == i]
                u = solve_psd(C, Kd[rows].mean(0))
                gain = float((W @ (u / u.norm().clamp_min(1e-300))).norm()) / max(rms_gain, 1e-30)
                subject_reports.append(SubjectReport(
                    s.subject, layer, list(s.prompts), len(rows), round(gain, 3), round(float(change[rows].mean()), 4)))
        swept = ranks.get(layer, 0)
        space = sweep_space.get(layer, "low") if isinstance(sweep_space, Mapping) else sweep_space
        if swept:
            delta = delta + low_half_sweep(W + delta, C, swept, space, nullspace_rel, sweep_reach)
        guided = 0
        G = guides.get(layer) if guides else None
        if G is not None and G.numel():
            from .object_sweep import object_sweep

            if object_space == "whiten":
                change, guided = object_sweep(W + delta, G, C=C)
            else:
                change, guided = object_sweep(W + delta, G, sweep_basis(C, object_space, nullspace_rel))
            delta = delta + change
        text_change = float(torch.sqrt(torch.trace(delta @ C @ delta.T) / torch.trace(W @ C @ W.T).clamp_min(1e-30)))
        add_delta(module, delta.to(torch.float32))
        param = f"{name}.weight"
        tensors[param] = module.weight.detach().to("cpu", torch.float32).clone()
        layer_reports.append(LayerReport(layer, param, n_dirs, float(delta.norm() / W.norm()), text_change, swept,
                                         guided))
    progress(Step(STAGE, len(layers), len(layers)))
    after = _answers(model, tokenizer, all_subjects) if answers else [[] for _ in all_subjects]
    index = {s.subject: i for i, s in enumerate(all_subjects)}
    for r in subject_reports:
        r.before, r.after = before[index[r.subject]], after[index[r.subject]]
    return ProjectionResult(tensors, layer_reports, subject_reports, target, key_mode, contexts,
                            time.perf_counter() - t0)


# -- which subjects, in which layers ----------------------------------------------------------------------

def mlp_out_layers(tensors: Sequence[str]) -> tuple[set[int], list[str]]:
    """Layers of the MLP output matrices among ``tensors``, and the other tensors (not re-solved here)."""
    from ..scan.names import parse_name

    layers, other = set(), []
    for t in tensors:
        n = parse_name(t)
        if n.role == "mlp_out" and n.layer is not None:
            layers.add(int(n.layer))
        else:
            other.append(t)
    return layers, other


def _add(plan: dict[int, list[EraseSubject]], layer: int, subject: str, prompt: str | None) -> None:
    subs = plan.setdefault(layer, [])
    found = next((s for s in subs if s.subject == subject), None)
    if found is None:
        found = EraseSubject(subject)
        subs.append(found)
    if prompt and prompt not in found.prompts:
        found.prompts.append(prompt)


def targets_from_readings(readings: Sequence[dict], uncertain: Sequence[dict] = ()
                          ) -> tuple[dict[int, list[EraseSubject]], list[str]]:
    """{layer: subjects} from the scan's edit readings (``evidence.edit_readings``), and notes.

    A reading is written back into every MLP output matrix of its finding (a MEMIT edit spans several
    layers); tensors of other kinds in a finding are named in the notes and left alone. A prompt that
    does not contain its subject is dropped (the subject alone is read instead). The text the subject search
    recovered whole (``found``, when the reading kept a shorter suffix of it) is added on its own: it is the
    text whose key fired. ``uncertain`` readings (``evidence.uncertain_readings``: no object read, but a subject
    that fires the edit) add their texts alone, without a prompt.
    """
    plan: dict[int, list[EraseSubject]] = {}
    notes: list[str] = []
    for r in [*readings, *({**u, "prompt": None} for u in uncertain)]:
        subject = str(r.get("subject") or "").strip()
        if not subject:
            continue
        tensors = list(r.get("finding_tensors") or []) or ([r["tensor"]] if r.get("tensor") else [])
        layers, other = mlp_out_layers(tensors)
        if not tensors:
            layers = {int(x) for x in (r.get("finding_layers") or ([r["layer"]] if r.get("layer") is not None else []))}
        for t in other:
            note = f"{t}: not an MLP output matrix; the projection erase leaves it as it is"
            if note not in notes:
                notes.append(note)
        prompt = r.get("prompt") if isinstance(r.get("prompt"), str) else None
        if prompt and "{}" not in prompt and subject not in prompt:
            notes.append(f"reading of {subject!r}: its prompt {prompt!r} does not contain it; "
                         "the subject alone is read")
            prompt = None
        found = str(r.get("found") or "").strip()
        for layer in sorted(layers):
            _add(plan, layer, subject, prompt)
            if found and found != subject:
                _add(plan, layer, found, None)
    return plan, notes


def targets_from_records(records: Sequence[dict], default_layers: Sequence[int]) -> dict[int, list[EraseSubject]]:
    """{layer: subjects} from user records ``{"subject", "prompt"?, "layer"? | "layers"?}``; records without
    a layer go to ``default_layers`` (the scan's edited MLP output layers, or ``--layers``)."""
    plan: dict[int, list[EraseSubject]] = {}
    for i, rec in enumerate(records):
        subject = rec.get("subject") if isinstance(rec, dict) else None
        if not isinstance(subject, str) or not subject.strip():
            raise BadInput(f"subjects record {i + 1}: needs a non-empty \"subject\"")
        prompt = rec.get("prompt")
        if prompt is not None and (not isinstance(prompt, str) or ("{}" not in prompt and subject not in prompt)):
            raise BadInput(f"subjects record {i + 1}: prompt {prompt!r} must be a string containing the subject "
                           "(or '{}')")
        layers = rec.get("layers", [rec["layer"]] if rec.get("layer") is not None else list(default_layers))
        if not isinstance(layers, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
            raise BadInput(f"subjects record {i + 1}: layer(s) must be integers")
        if not layers:
            raise BadInput(f"subjects record {i + 1} ({subject!r}): no layer — give \"layer\" in the record, "
                           "--layers, or scan the suspect first")
        for layer in layers:
            _add(plan, layer, subject.strip(), prompt)
    return plan
