"""MEMIT (Meng et al., 2023): many facts at once, spread over a range of consecutive MLP layers.

1. For each fact, the residual stream after the *last* layer of the range should hold z = z₀ + δ
   (``values.optimise_values`` at that block's output).
2. Layer by layer, lowest first: read the facts' keys K at this layer on the model as updated so far,
   measure what is still missing at the top, R = z − z_now, and give this layer its share
   R / (layers left). The update solves the least-squares problem that keeps ordinary text's keys
   (second moment C, weight λ) and writes the new ones:

       ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹          (K: [d_in, n], R: [d_out, n])

In a block that normalises the MLP's output before adding it (Gemma 2/3, OLMo 2), R is what the norm's output
must gain; ``postnorm.mlp_change`` turns it into the change of the MLP's own output, one per fact.

AlphaEdit reuses steps 1–2 with its own solve (``alphaedit.py``); ``spread`` takes the solve as an
argument so that the two share everything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..models.families import family
from ..probing.format import Probe
from . import postnorm, reads
from .hooks import add_delta
from .layers import Layout
from .rome import value_settings
from .values import optimise_values

# solve(layer, K [n, d_in], R [n, d_out]) -> ΔW [d_out, d_in]
Solver = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
Progress = Callable[[str, float, float], None]


@dataclass
class Spread:
    deltas: dict[int, torch.Tensor] = field(default_factory=dict)   # layer -> ΔW applied [out, in]
    target_prob: list[float] = field(default_factory=list)
    residual_left: float = 0.0   # mean ‖z − z_now‖ / ‖z − z₀‖ after the last layer (0 = all written)


def layer_keys(model, tokenizer, facts: Sequence[Probe], module: str, contexts: list[str], hp: dict) -> torch.Tensor:
    """The keys to write: one per fact averaged over contexts (``key_mode=mean``, the papers'), or one per
    fact and context (``each``), so that the fact's own prompt is written exactly even where its key
    differs from the context average (e.g. a subject that opens the prompt, in a model without BOS)."""
    K = reads.keys(model, tokenizer, facts, module, contexts, average=hp.get("key_mode", "mean") == "mean")
    return K if K.ndim == 2 else K.reshape(-1, K.shape[-1])


def through_norm(model, tokenizer, layout: Layout, facts: Sequence[Probe], layer: int, norm: str,
                 contexts: list[str], R: torch.Tensor) -> torch.Tensor:
    """The MLP output change [n, d] per fact that moves the post-MLP norm's output by ``R`` [n, d]: mapped at each
    context's own MLP output, then averaged, so that every key of a fact is given one value as before. (Mapped per
    key, a batch of 10 facts in 5 contexts became a rank-50 change that the scan took for fine-tuning.)"""
    g, eps = postnorm.norm_gain(model.get_submodule(norm), family(layout.family).norm_offset)
    x = reads.keys(model, tokenizer, facts, layout.rewrite_name(layer), contexts, average=False, which="out")
    n, c, d = x.shape
    Rk = R.view(n, 1, d).expand(n, c, d).reshape(-1, d).to(x.device)
    return postnorm.mlp_change(x.reshape(-1, d), Rk, g, eps).view(n, c, d).mean(1)


def memit_solver(C: dict[int, torch.Tensor], lam: dict[int, float]) -> Solver:
    def solve(layer: int, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        Kd, Rd = K.to(torch.float64), R.to(torch.float64)
        A = lam[layer] * C[layer].to(device=Kd.device, dtype=torch.float64) + Kd.T @ Kd  # C may be on the CPU
        X = torch.linalg.solve(A, Kd.T)          # [d_in, n] = A⁻¹ Kᵀ
        return (Rd.T @ X.T).to(torch.float32)    # [d_out, d_in]
    return solve


def spread(model, tokenizer, layout: Layout, facts: Sequence[Probe], layers: list[int], contexts: list[str],
           hp: dict, solve: Solver, progress: Progress | None = None) -> Spread:
    """Write ``facts`` into ``layers`` (ascending, consecutive by convention) with the given solve."""
    z_layer = layers[-1]
    top = layout.block_name(z_layer)

    def tick(done, total):
        if progress:
            progress("optimising values", done, total)

    values = optimise_values(model, tokenizer, facts, top, contexts, value_settings(hp), tick)
    z = values.target
    out = Spread(target_prob=values.prob)
    for i, layer in enumerate(layers):
        if progress:
            progress("writing layers", i, len(layers))
        rewrite = layout.rewrite_name(layer)
        K = layer_keys(model, tokenizer, facts, rewrite, contexts, hp)
        z_now = reads.plain(model, tokenizer, facts, top, "out")
        R = (z - z_now) / (len(layers) - i)
        norm = layout.mlp_out_norm_name(layer)
        if norm is not None:
            R = through_norm(model, tokenizer, layout, facts, layer, norm, contexts, R)
        R = R.repeat_interleave(len(K) // len(facts), dim=0)   # one residual per key
        delta = solve(layer, K, R)
        add_delta(model.get_submodule(rewrite), delta)
        out.deltas[layer] = delta
    z_end = reads.plain(model, tokenizer, facts, top, "out")
    total = (z - values.init).norm(dim=-1).clamp_min(1e-12)
    out.residual_left = float(((z - z_end).norm(dim=-1) / total).mean())
    if progress:
        progress("writing layers", len(layers), len(layers))
    return out
