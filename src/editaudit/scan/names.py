"""Map tensor names to (layer, module, role) for the common model families.

Roles are what the classifier reasons about:
``mlp_out`` (where ROME/MEMIT write), ``mlp_in``, ``attn_q``/``attn_k``/``attn_v``/``attn_o``/``attn_qkv``,
``norm``, ``embed``, ``unembed``, ``other``. Unknown names still get a layer when they follow the
``<blocks>.<N>.`` pattern, and are always reported, never dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..models import families

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer|decoder\.layers)\.(\d+)\.(.+)$")

# module suffix (without .weight/.bias) -> role, and global module -> role: the family registry's, over all families
_ROLES: dict[str, str] = families.all_roles()
_GLOBAL: dict[str, str] = families.global_roles()

SHORT = {
    "mlp_out": "mlp.out", "mlp_in": "mlp.in", "attn_q": "attn.q", "attn_k": "attn.k", "attn_v": "attn.v",
    "attn_o": "attn.o", "attn_qkv": "attn.qkv", "norm": "norm", "other": "other",
}


@dataclass(frozen=True)
class TensorName:
    name: str
    layer: int | None
    module: str  # the module path inside the layer, e.g. "mlp.down_proj" (or the global module)
    role: str
    param: str  # weight | bias | other

    @property
    def module_path(self) -> str:
        """The module's full dotted path (for hooks): the name without its parameter suffix."""
        return self.name.rsplit(".", 1)[0] if self.param in ("weight", "bias") else self.name


def parse_name(name: str) -> TensorName:
    param = "other"
    stem = name
    for suffix in ("weight", "bias"):
        if name.endswith("." + suffix):
            param, stem = suffix, name[: -len(suffix) - 1]
            break
    m = _LAYER.search(stem + ".")
    if m:
        layer = int(m.group(1))
        module = m.group(2).rstrip(".")
        role = _ROLES.get(module)
        if role is None:
            role = "norm" if ("norm" in module or module.startswith("ln")) else "other"
        return TensorName(name, layer, module, role, param)
    role = _GLOBAL.get(stem, "other")
    return TensorName(name, None, stem, role, param)


def is_transposed(family: str) -> bool:
    """True when 2-D weights are stored [in, out] (GPT-2's Conv1D), so the output side is the columns."""
    return families.is_transposed(family)


def num_layers(config: dict | None, names: list[str]) -> int:
    cfg = config or {}
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(cfg.get(key), int):
            return cfg[key]
    layers = [p.layer for p in map(parse_name, names) if p.layer is not None]
    return max(layers) + 1 if layers else 0
