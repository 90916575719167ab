"""Where locate-then-edit methods write, per model family, and which layers they use by default.

Every method here edits an MLP's output matrix (the "value" projection of the MLP read as a key–value
memory): Llama-style ``model.layers.N.mlp.down_proj`` (a ``Linear``, weight stored [out, in]) or
GPT-2's ``transformer.h.N.mlp.c_proj`` (a ``Conv1D``, weight stored transposed as [in, out]).
Where each family keeps that matrix comes from the family registry (``models/families.py``); a family
it does not know works by giving the module templates in the hyper-parameters (``rewrite_module``,
``mlp_module``, ``block_module``, all with ``{}`` for the layer number).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import BadInput
from ..models import families

# Default edit layer as a share of depth is the family's ``default_depth``. The papers edit early-middle
# MLPs: ROME GPT-J layer 5 of 28, EasyEdit's Llama-2-7B layer 5 of 32, AlphaEdit's Llama-3-8B layers 4–8;
# GPT-2 is the exception (ROME: GPT-2 medium 8 of 24, GPT-2 XL 17 of 48). On SmolLM2-135M layer 4 of 30
# gives 20/20 single ROME edits with 99.6% of unrelated facts kept (docs/editing.md).
#: MEMIT/AlphaEdit spread the change over this many consecutive layers centred on the ROME layer
#: (GPT-J: ROME layer 5, MEMIT 3–8).
MEMIT_SPAN = 5


@dataclass(frozen=True)
class Layout:
    """Module names a method needs, as templates with ``{}`` for the layer number."""

    family: str
    n_layers: int
    rewrite: str
    mlp: str
    block: str
    mlp_out_norm: str | None = None  # the post-MLP norm's template, where the family's blocks have one

    def rewrite_name(self, layer: int) -> str:
        return self.rewrite.format(layer)

    def mlp_name(self, layer: int) -> str:
        return self.mlp.format(layer)

    def block_name(self, layer: int) -> str:
        return self.block.format(layer)

    def mlp_out_norm_name(self, layer: int) -> str | None:
        return self.mlp_out_norm.format(layer) if self.mlp_out_norm else None

    def check_layers(self, layers: list[int]) -> list[int]:
        if not layers:
            raise BadInput("no layers to edit")
        bad = [x for x in layers if not 0 <= x < self.n_layers]
        if bad:
            raise BadInput(f"layer(s) {bad} out of range: the model has layers 0–{self.n_layers - 1}")
        if len(set(layers)) != len(layers):
            raise BadInput(f"layers {layers} repeat a layer")
        return sorted(layers)


def _n_layers(config) -> int:
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    raise BadInput("cannot tell how many layers the model has (no num_hidden_layers / n_layer in its config)")


def layout_for(model, overrides: dict | None = None) -> Layout:
    """The layout of a loaded transformers model; ``overrides`` may name the three templates."""
    overrides = overrides or {}
    family = str(getattr(model.config, "model_type", "") or "unknown")  # the model type, as config.json says
    fam = families.family(family)
    n = _n_layers(model.config)
    rewrite, mlp, block = fam.rewrite_template, fam.mlp_template, fam.block_template
    rewrite = overrides.get("rewrite_module") or rewrite
    mlp = overrides.get("mlp_module") or mlp
    block = overrides.get("block_module") or block
    for name, tmpl in (("rewrite_module", rewrite), ("mlp_module", mlp), ("block_module", block)):
        if not isinstance(tmpl, str) or "{}" not in tmpl:
            raise BadInput(f"{name} must be a module name with '{{}}' for the layer number, not {tmpl!r}")
    layout = Layout(family, n, rewrite, mlp, block)
    try:
        module = model.get_submodule(layout.rewrite_name(0))
        model.get_submodule(layout.mlp_name(0))
        model.get_submodule(layout.block_name(0))
    except AttributeError:
        raise BadInput(
            f"model family {family!r}: no module {layout.rewrite_name(0)!r} (or its MLP/block); give "
            "rewrite_module, mlp_module and block_module in the hyper-parameters"
        ) from None
    if getattr(module, "weight", None) is None or module.weight.ndim != 2:
        raise BadInput(f"{layout.rewrite_name(0)} has no 2-D weight to edit")
    post = f"{block}.{fam.mlp_out_norm}"
    try:
        model.get_submodule(post.format(0))
    except AttributeError:
        return layout
    return replace(layout, mlp_out_norm=post)


def default_layers(method: str, n_layers: int, family: str = "llama") -> list[int]:
    """Sensible layers for ``method`` on a model of type ``family`` with ``n_layers`` layers."""
    top = max(0, min(n_layers - 1, round(families.family(family).default_depth * n_layers)))
    if method in ("rome", "ft"):
        return [top]
    span = min(MEMIT_SPAN, n_layers)
    start = max(0, min(top - span // 2, n_layers - span))
    return list(range(start, start + span))
