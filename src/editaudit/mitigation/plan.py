"""Which parameters to fine-tune, and why.

A plan is made from the checkpoint's tensor names alone (no model load), a layer strategy and a
module choice, and the scan's evidence of edits:

- ``auto``: erase → only the edited layers; preserve → every layer except the edited ones.
- ``edited`` / ``non-edited``: the same layer sets, whatever the goal.
- ``threshold:L``: only layers ≥ L.  ``window:C:W``: W consecutive layers centred on C.
- an explicit list: ``3,4,7-9``.

Module choice: ``mlp`` (MLP input and output matrices), ``mlp_out`` (the MLP output matrix, where
ROME/MEMIT write), ``attn`` (attention projections) or ``all`` (both, plus the layer's norms for full
fine-tuning). LoRA/DoRA adapt only the 2-D linear weights among them.

The grounding: fine-tuning only the edited layers erases edits most effectively (at a small cost
downstream), tuning layers away from the edit preserves edits, and intrinsic knowledge is far more
robust to either than edited knowledge.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from ..errors import BadInput
from ..layerspec import parse_layer_list
from ..scan.names import SHORT, num_layers, parse_name
from .evidence import EditEvidence

GOALS = ("erase", "preserve")
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
        s = "edited" if goal == "erase" else "non-edited"
        if goal == "erase":
            why = (f"auto for erase → the edited layers {edited}: fine-tuning only the edited layers erases edits "
                   "most effectively, at a small downstream cost")
        else:
            why = (f"auto for preserve → every layer except the edited layers {edited}: freezing them keeps the "
                   "edits, while the rest of the model learns the task")
        layers = edited if goal == "erase" else [x for x in range(n_layers) if x not in edited]
        return layers, why
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
        start = max(0, min(centre - width // 2, n_layers - width))
        layers = [x for x in range(start, start + width) if 0 <= x < n_layers]
        return layers, f"window:{centre}:{width} → layers {layers[0]}–{layers[-1]}"
    if re.fullmatch(r"[\d\s,\-]+", s):
        layers = parse_layer_list(s, n_layers)
        return layers, f"explicit layers {layers}"
    raise BadInput(
        f"unknown layer strategy {strategy!r}: use auto, edited, non-edited, threshold:L, window:C:W or a list like 3,4,7-9"
    )


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
        if goal == "erase" and overlap and modules in ("attn",):
            warnings.append("edits live in MLP output matrices, which attention-only training leaves untouched")
    return Plan(goal, strategy, modules, method, n_layers, sorted(chosen), params, lora_targets, n_trainable,
                n_total, edited, explanation, warnings)


def plan_for_checkpoint(ckpt, strategy: str = "auto", goal: str = "erase", modules: str = "all",
                        method: str = "full", evidence: EditEvidence | None = None) -> Plan:
    """``make_plan`` over an opened ``Checkpoint``."""
    shapes = {name: tuple(info.shape) for name, (_, info) in ckpt.tensors.items()}
    return make_plan(shapes, ckpt.config, strategy, goal, modules, method, evidence)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
