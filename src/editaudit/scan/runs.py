"""A batch editor's run of layers, mapped without the base from a layer the key-gain screen flagged.

MEMIT and AlphaEdit give each subject one residual r and spread it over a run of consecutive layers: at every layer l
of the run the update maps the subject's edit direction û_l = C_l⁻¹k_l / ‖C_l⁻¹k_l‖ (k_l its key there) to a share of
r. Every MLP output matrix writes into the residual stream, so for the text that made layer l* stand out

    c_l = cos(W_l û_l, W_l* û_l*)

is large at every layer of the run and near zero elsewhere: a trained matrix's own action along û_l has no reason to
follow the edit's. The run is the layers walked outward from l* while c_l ≥ ``RUN_COS``. A single ROME edit writes one
layer, so its run is that layer alone.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

#: Set on development suspects of spent facts (bench/results/run_mapping_dev.txt): inside the run the flagged starts'
#: cosines were 0.51-0.81 on an AlphaEdit batch and 0.31-0.43 on a MEMIT batch, outside it at most 0.14.
RUN_COS = 0.2


def directions(model: Any, tokenizer: Any, modules: dict[int, str], eigs: dict[int, Any], ids: Sequence[int],
               transposed: bool = False) -> dict[int, torch.Tensor]:
    """W_l û_l for one text (``ids`` after the neutral context) at every layer of ``modules`` ({layer: module path});
    ``eigs``: {layer: nobase.KeyEig}. One forward pass gives every layer's key."""
    from .gain import FLOOR
    from .keys import context_ids, keys_of

    keys = keys_of(model, list(modules.values()), [context_ids(tokenizer) + list(ids)])
    out = {}
    for layer, path in modules.items():
        eig = eigs[layer]
        ev = eig.ev.double().clamp_min(FLOOR * float(eig.ev.max()))  # as the gain screen floors C
        u = eig.Q.double() @ ((eig.Q.double().T @ keys[path][0].double()) / ev)
        w = model.get_submodule(path).weight.detach().cpu().double()
        out[layer] = (w.T if transposed else w) @ (u / u.norm().clamp_min(1e-300))
    return out


def cosines(vectors: dict[int, torch.Tensor], layer: int) -> dict[int, float]:
    """cos(v_l, v_layer) for every layer."""
    ref = vectors[layer] / vectors[layer].norm().clamp_min(1e-300)
    return {lay: float(v @ ref / v.norm().clamp_min(1e-300)) for lay, v in vectors.items()}


def walk(cos: dict[int, float], layer: int, bar: float = RUN_COS) -> list[int]:
    """The consecutive layers around ``layer`` whose cosine stays at or above ``bar``."""
    lo = hi = layer
    while lo - 1 in cos and cos[lo - 1] >= bar:
        lo -= 1
    while hi + 1 in cos and cos[hi + 1] >= bar:
        hi += 1
    return list(range(lo, hi + 1))


def map_run(model: Any, tokenizer: Any, modules: dict[int, str], eigs: dict[int, Any], layer: int, ids: Sequence[int],
            transposed: bool = False, bar: float = RUN_COS) -> tuple[list[int], dict[int, float]]:
    """The run of layers the edit seen at ``layer`` through the text ``ids`` spans, and every layer's cosine."""
    cos = cosines(directions(model, tokenizer, modules, eigs, ids, transposed), layer)
    return walk(cos, layer, bar), cos
