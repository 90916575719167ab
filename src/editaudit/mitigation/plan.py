"""Which parameters to fine-tune, and why.

A plan is made from the checkpoint's tensor names alone (no model load), a layer strategy and a
module choice, and the scan's evidence of edits:

- ``auto``: erase → the edited range (lowest to highest edited layer), or a 5-layer window centred on a
  single-layer edit; preserve → every layer from ``preserve_threshold`` on (well downstream of the last
  edited layer).
- ``edited`` / ``non-edited``: the edited layers, or every other layer, whatever the goal.
- ``threshold:L``: only layers ≥ L.  ``window:C:W``: W consecutive layers centred on C.
- an explicit list: ``3,4,7-9``.

Module choice: ``mlp`` (MLP input and output matrices), ``mlp_out`` (the MLP output matrix, where
ROME/MEMIT write), ``attn`` (attention projections) or ``all`` (both, plus the layer's norms for full
fine-tuning). LoRA/DoRA adapt only the 2-D linear weights among them.

The grounding (docs/mitigation.md): Cheng et al. (2025) found that fine-tuning the edited layers erases edits
most effectively, and that tuning the *non-edited* layers impairs more edits than full fine-tuning; Wen & Zhang
(2025) erased best with a 5-layer window centred on the edited layer, and kept edits (as well as intrinsic
knowledge) by training only the layers past a threshold far downstream of the edit (layers ≥ 40 of GPT-2 XL's
48 for an edit at layer 1). So ``auto`` never trains layers upstream of an edit to preserve it, and warns when a
plan does.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from ..errors import BadInput
from ..layerspec import parse_layer_list
from ..scan.names import SHORT, num_layers, parse_name
from .evidence import EditEvidence

GOALS = ("erase", "preserve")
#: erase-auto around a single edited layer: Wen & Zhang's window width
ERASE_WINDOW = 5
#: preserve-auto trains layers from this share of the depth on (40 of 48 in Wen & Zhang) …
PRESERVE_DEPTH = 5 / 6
#: … and never closer than this many layers past the last edited layer
PRESERVE_GAP = 2
METHODS = ("full", "lora", "dora")
METHOD_NAMES = {"full": "full fine-tuning", "lora": "LoRA", "dora": "DoRA"}
MODULES = {
    "mlp": {"mlp_in", "mlp_out"},
    "mlp_out": {"mlp_out"},
    "attn": {"attn_q", "attn_k", "attn_v", "attn_o", "attn_qkv"},
    "all": {"mlp_in", "mlp_out", "attn_q", "attn_k", "attn_v", "attn_o", "attn_qkv", "norm"},
}


@dataclass
class Plan:
    goal: str
    strategy: str
    modules: str
    method: str
    n_layers: int
    layers: list[int]
    params: list[str]  # exact tensor names whose values the run may change
    lora_targets: list[str]  # module paths adapted by LoRA/DoRA (empty for full)
    n_trainable: int  # elements in ``params``
    n_total: int  # elements in the whole checkpoint
    edited_layers: list[int] = field(default_factory=list)
    explanation: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.n_trainable / self.n_total if self.n_total else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "share": self.share}


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadInput(f"{what} must be an integer, not {text!r}") from None


def select_layers(strategy: str, goal: str, n_layers: int, evidence: EditEvidence | None) -> tuple[list[int], str]:
    """The layers a strategy picks, with the reason in words."""
    s = strategy.strip().lower()
    edited = evidence.layers if evidence is not None else []
    needs_scan = s in ("auto", "edited", "non-edited")
    if needs_scan and (evidence is None or not evidence.found):
        where = "the scan found no edit" if evidence is not None else "no scan of this checkpoint is available"
        raise BadInput(
            f"layer strategy {strategy!r} needs the scan's edited layers, but {where}; "
            "pass --base to scan now, or choose threshold:L, window:C:W or an explicit layer list"
        )
    if s == "auto":
        if goal == "erase":
            return erase_layers(edited, n_layers)
        return preserve_layers(edited, n_layers)
    if s == "edited":
        return list(edited), f"edited layers {edited} (from the scan)"
    if s == "non-edited":
        return [x for x in range(n_layers) if x not in edited], f"every layer except the edited layers {edited}"
    if s.startswith("threshold:"):
        low = _int(s.split(":", 1)[1], "threshold layer")
        if not 0 <= low < n_layers:
            raise BadInput(f"threshold layer {low} is outside 0–{n_layers - 1}")
        return list(range(low, n_layers)), f"threshold:{low} → only layers ≥ {low}"
    if s.startswith("window:"):
        parts = s.split(":")
        if len(parts) != 3:
            raise BadInput(f"window strategy is window:CENTRE:WIDTH, not {strategy!r}")
        centre, width = _int(parts[1], "window centre"), _int(parts[2], "window width")
        if width < 1 or not 0 <= centre < n_layers:
            raise BadInput(f"window {strategy!r}: centre must be a layer 0–{n_layers - 1} and width ≥ 1")
        layers = window(centre, width, n_layers)
        return layers, f"window:{centre}:{width} → layers {layers[0]}–{layers[-1]}"
    if re.fullmatch(r"[\d\s,\-]+", s):
        layers = parse_layer_list(s, n_layers)
        return layers, f"explicit layers {layers}"
    raise BadInput(
        f"unknown layer strategy {strategy!r}: use auto, edited, non-edited, threshold:L, window:C:W or a list like 3,4,7-9"
    )


def window(centre: int, width: int, n_layers: int) -> list[int]:
    """``width`` consecutive layers centred on ``centre``, shifted (not cut) at the model's ends."""
    width = min(width, n_layers)
    start = max(0, min(centre - width // 2, n_layers - width))
    return list(range(start, start + width))


def erase_layers(edited: list[int], n_layers: int) -> tuple[list[int], str]:
    """Erase-auto: the edited range, or a 5-layer window centred on a single edited layer."""
    if len(edited) == 1:
        layers = window(edited[0], ERASE_WINDOW, n_layers)
        return layers, (f"auto for erase → a {len(layers)}-layer window {layers[0]}–{layers[-1]} centred on the "
                        f"edited layer {edited[0]}: the window around the edit erases best (Wen & Zhang), and "
                        "training the edited layer is what removes an edit (Cheng et al.)")
    layers = list(range(min(edited), max(edited) + 1))
    return layers, (f"auto for erase → the edited range {layers[0]}–{layers[-1]} (edited layers {edited}): "
                    "training the edited layers erases edits most effectively (Cheng et al.)")


def preserve_threshold(edited: list[int], n_layers: int) -> int:
    """First layer preserve-auto trains: max(⌈5/6 of the depth⌉, last edited layer + 2), at most the last layer.

    Wen & Zhang kept edits as well as intrinsic knowledge only with the threshold far downstream (40 of 48);
    a threshold past the top is clipped to the last layer (an edit there cannot be kept away from).
    """
    import math

    last = max(edited) if edited else -1
    return min(n_layers - 1, max(math.ceil(PRESERVE_DEPTH * n_layers), last + PRESERVE_GAP))


def preserve_layers(edited: list[int], n_layers: int) -> tuple[list[int], str]:
    """Preserve-auto: every layer from ``preserve_threshold`` on."""
    low = preserve_threshold(edited, n_layers)
    layers = list(range(low, n_layers))
    why = (f"auto for preserve → threshold:{low}, layers {low}–{n_layers - 1}: only layers well downstream of the "
           f"last edited layer {max(edited)} train (from max(⌈5/6 of {n_layers} layers⌉, last edited + "
           f"{PRESERVE_GAP})); a threshold far past the edit keeps edits as well as intrinsic facts (Wen & Zhang), "
           "while tuning all non-edited layers impairs more edits than full fine-tuning (Cheng et al.)")
    return layers, why


def make_plan(tensors: dict[str, tuple[int, ...]], config: dict | None, strategy: str = "auto", goal: str = "erase",
              modules: str = "all", method: str = "full", evidence: EditEvidence | None = None) -> Plan:
    """Plan a run over a checkpoint described by ``tensors`` ({name: shape}) and its config."""
    if goal not in GOALS:
        raise BadInput(f"goal must be one of {', '.join(GOALS)}, not {goal!r}")
    if method not in METHODS:
        raise BadInput(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if modules not in MODULES:
        raise BadInput(f"modules must be one of {', '.join(MODULES)}, not {modules!r}")
    n_layers = num_layers(config, list(tensors))
    if n_layers <= 0:
        raise BadInput("could not tell how many layers this checkpoint has (no config and no layer-numbered tensors)")
    layers, why_layers = select_layers(strategy, goal, n_layers, evidence)
    if not layers:
        raise BadInput(f"layer strategy {strategy!r} selects no layer for goal {goal}")
    roles = MODULES[modules]
    chosen = set(layers)
    params: list[str] = []
    lora_targets: list[str] = []
    skipped_vectors = 0
    for name, shape in tensors.items():
        t = parse_name(name)
        if t.layer not in chosen or t.role not in roles:
            continue
        if method == "full":
            params.append(name)
        elif t.param == "weight" and len(shape) == 2:
            params.append(name)
            lora_targets.append(t.module_path)
        else:
            skipped_vectors += 1
    if not params:
        raise BadInput(f"no {modules} parameters in layers {layers} of this checkpoint")
    numel = {n: _numel(s) for n, s in tensors.items()}
    n_trainable = sum(numel[n] for n in params)
    n_total = sum(numel.values())
    edited = list(evidence.layers) if evidence is not None else []

    explanation = [f"goal: {goal} the edits" + (f" found by {evidence.describe()}" if evidence is not None else "")]
    explanation.append(f"layers: {why_layers}")
    present = sorted({SHORT.get(parse_name(n).role, parse_name(n).role) for n in params})
    explanation.append(f"modules: {modules} ({', '.join(present)})")
    if method == "full":
        explanation.append(f"method: full fine-tuning of {len(params)} tensors "
                           f"({n_trainable:,} of {n_total:,} weights, {n_trainable / max(n_total, 1):.2%})")
    else:
        explanation.append(f"method: {METHOD_NAMES[method]} adapters on {len(lora_targets)} linear modules, merged into "
                           f"their weights at the end ({n_trainable:,} weights will change)")
        if skipped_vectors:
            explanation.append(f"{skipped_vectors} norm/bias vectors in those layers stay frozen ({METHOD_NAMES[method]} adapts "
                               "linear weights only)")
    warnings = []
    if edited:
        overlap = sorted(set(edited) & chosen)
        if goal == "erase" and not overlap:
            warnings.append(f"the edited layers {edited} stay frozen in this plan: edits usually survive it")
        if goal == "preserve" and overlap:
            warnings.append(f"this plan trains edited layers {overlap}: edits are likely to fade")
        upstream = sorted(x for x in chosen if x < max(edited) and x not in set(edited))
        if goal == "preserve" and upstream:
            warnings.append(f"this plan trains layers {_ranges(upstream)} upstream of the edit at layer(s) "
                            f"{_ranges(edited)}: tuning layers below an edit shifts its keys and impairs more edits "
                            "than full fine-tuning (Cheng et al.); auto trains only layers well downstream")
        if goal == "erase" and overlap and modules in ("attn",):
            warnings.append("edits live in MLP output matrices, which attention-only training leaves untouched")
    return Plan(goal, strategy, modules, method, n_layers, sorted(chosen), params, lora_targets, n_trainable,
                n_total, edited, explanation, warnings)


def full_model_plan(ckpt, goal: str = "erase", evidence: EditEvidence | None = None) -> Plan:
    """Truly full fine-tuning: every floating-point tensor of the checkpoint — all layers, the embeddings, the
    final norm and the output head (tied to the embeddings in many models)."""
    tensors = {name: (tuple(info.shape), info.dtype) for name, (_, info) in ckpt.tensors.items()}
    params = [n for n, (_, dtype) in tensors.items() if dtype in ("F32", "F16", "BF16", "F64")]
    if not params:
        raise BadInput("this checkpoint has no floating-point tensor to fine-tune")
    n_layers = num_layers(ckpt.config, list(tensors))
    numel = {n: _numel(shape) for n, (shape, _) in tensors.items()}
    n_trainable, n_total = sum(numel[n] for n in params), sum(numel.values())
    edited = list(evidence.layers) if evidence is not None else []
    explanation = [f"goal: {goal}; comparison arm: full fine-tuning of the whole model",
                   f"every one of the {len(params)} floating-point tensors, embeddings, final norm and head included "
                   f"({n_trainable:,} of {n_total:,} weights)"]
    return Plan(goal, "full-model", "everything", "full", n_layers, list(range(n_layers)), params, [], n_trainable,
                n_total, edited, explanation, [])


def plan_for_checkpoint(ckpt, strategy: str = "auto", goal: str = "erase", modules: str = "all",
                        method: str = "full", evidence: EditEvidence | None = None) -> Plan:
    """``make_plan`` over an opened ``Checkpoint``."""
    shapes = {name: tuple(info.shape) for name, (_, info) in ckpt.tensors.items()}
    return make_plan(shapes, ckpt.config, strategy, goal, modules, method, evidence)


def _ranges(layers: list[int]) -> str:
    """``[1, 2, 3, 7]`` → ``"1-3,7"`` (as the app writes layer sets)."""
    out: list[str] = []
    for x in sorted(set(layers)):
        if out and out[-1].split("-")[-1] == str(x - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{x}"
        else:
            out.append(str(x))
    return ",".join(out)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


# -- what to propose from a scan (the CLI's defaults and the app's wizard) ---------------------------------

#: ``--method auto`` for ``--goal erase`` when the scan read the edited subjects (docs/mitigation.md has the
#: measurements behind it: bench/results/erase_eval.txt)
ERASE_DEFAULT = "project"
ERASE_METHODS = ("project", "unlearn", "project+unlearn")


def resolve_method(method: str, goal: str, evidence: EditEvidence | None, subjects_given: bool = False) -> str:
    """``auto`` → the method the evidence supports: erase with readings (or ``--subjects``) → ERASE_DEFAULT;
    preserve → full fine-tuning of the planned layers. Any other method is returned as given."""
    if method != "auto":
        return method
    if goal != "erase":
        return "full"
    if subjects_given:
        return "project"
    if evidence is not None and evidence.found and evidence.readings:
        return ERASE_DEFAULT
    require_edits(evidence, "--goal erase without a base erases the edits the scan read",
                  "or choose a method (--method full fine-tunes the edited layers; it seldom erases)")
    other_ways = "give the subjects with --subjects FILE, or choose --method full to fine-tune the edited layers " \
                 "(it seldom erases)"
    if evidence.base:  # the scan had the base and still read no subject: the base itself is the way to erase
        raise BadInput(f"the scan read no edited subject ({evidence.source}), so there is no edit to erase by its "
                       "readings; with the base at hand, --revert subtracts the low-rank changes the scan found "
                       f"against it. Or {other_ways}")
    raise BadInput(f"the scan read no edited subject ({evidence.source}), so there is nothing to erase without the "
                   f"base: pass --base (a scan that reads the edits, or --revert), {other_ways}")


@dataclass
class Proposal:
    """What to preselect from a scan report, each choice with its reason in words a reviewer can check."""

    goal: str
    method: str
    layers: str
    modules: str
    task: str
    why: dict[str, str]


def propose(doc: dict) -> Proposal:
    """The proposal for a scan report (``ScanReport.to_dict()`` or the stored JSON), by the rules above."""
    from .evidence import evidence_from_report

    ev = evidence_from_report(doc, "scan")
    n = int(doc.get("layers") or 0) or num_layers(None, [t["name"] for t in doc.get("tensors", [])])
    has_base = bool((doc.get("base") or {}).get("path"))
    why: dict[str, str] = {}
    if ev.found:
        rules = "; ".join(f"{f['rule']} layers {_ranges(f['layers']) or '-'}" for f in ev.findings)
        goal, layers = "erase", "auto"
        why["goal"] = (f"the scan found knowledge edits ({rules}): erase them. Choose preserve to fine-tune for a "
                       "task while keeping them.")
        erase, _ = erase_layers(ev.layers, n) if n else (ev.layers, "")
        keep = preserve_layers(ev.layers, n)[0] if n else []
        why["layers"] = (f"auto: for erase, layers {_ranges(erase)} (the edited range, or a 5-layer window centred on "
                         "a single edited layer); for preserve, only layers "
                         f"{_ranges(keep) or '-'} well downstream of the edit (tuning every non-edited layer "
                         "impairs more edits than full fine-tuning).")
        if ev.readings:
            method = ERASE_DEFAULT
            subjects = sorted({r["subject"] for r in ev.readings})
            why["method"] = (f"{method}: the scan read {len(subjects)} edited subject(s) ({', '.join(subjects[:4])}"
                             f"{' …' if len(subjects) > 4 else ''}), so the edits can be erased without the base "
                             "and without training: each edited MLP matrix is re-solved so those subjects' keys map "
                             "to the layer's mean output.")
        else:
            method = "full"
            why["method"] = ("full fine-tuning of the planned layers: the scan read no edited subject, so the "
                             "base-free erase has nothing to aim at (fine-tuning seldom erases edits).")
        if has_base:
            why["method"] += (" With the base at hand, surgical revert removes only the scan's low-rank edit "
                              "components and leaves every other change in place.")
    else:
        goal, layers, method = "preserve", f"0-{max(n - 1, 0)}", "full"
        why["goal"] = "the scan found no knowledge edit, so there is nothing to erase: preserve tunes for a task."
        why["layers"] = "no edited layers to aim at: all layers (or threshold:L, window:C:W, a list like 3,4,7-9)."
        why["method"] = ("full fine-tuning of exactly the planned matrices; LoRA/DoRA adapt fewer weights and are "
                         "merged at the end.")
    why["modules"] = "every matrix of the chosen layers; ROME and MEMIT write into the MLP output matrix (mlp_out)."
    why["task"] = ("language modelling on prose needs no labels; its default data is the New York Times editorial "
                   "snippets of the vaderSentiment release, fetched once from PyPI (not the Factbook prose the key "
                   "statistics come from). Give a text or JSONL file to use your own.")
    why["stop"] = ("a step budget, evaluating every N steps (edited and intrinsic retention are measured and the "
                   "run can be resumed from there); optional early stops on validation loss or accuracy.")
    return Proposal(goal, method, layers, "all", "lm", why)


def require_edits(evidence, what: str, alternatives: str) -> None:
    """BadInput unless there is a stored scan of the suspect that found edits: ``what`` says why one is needed,
    ``alternatives`` what else the user can do."""
    if evidence is None:
        raise BadInput(f"{what}, but there is no scan of this suspect: run `editaudit scan SUSPECT` first (with "
                       f"--base BASE when you have it), pass --base, {alternatives}")
    if not evidence.found:
        blind = ("; it ran without a base, which finds single ROME edits but sees a MEMIT or AlphaEdit batch at few "
                 "of its layers or not at all: with the base, pass --base BASE to find edits by their difference"
                 if evidence.base is None else "")
        raise BadInput(f"{evidence.source} found no edit to erase{blind}")
