"""ROME (Meng et al., 2022): one fact, one layer, one rank-one update of the MLP output matrix W.

Read as a linear associative memory, W maps keys k (the MLP's hidden activation at the subject's last
token) to values v. ROME asks for the smallest change, measured against the keys of ordinary text
(second moment C), that stores a new pair (k*, v*):

    ΔW = (v* − W k) ⊗ u / (uᵀ k),   u = C⁻¹ k*

- k* is the key averaged over the fact's prompt in a handful of generated contexts;
- v* = v₀ + δ is found by optimising δ at the MLP output (``values.optimise_values``);
- k, v₀ are the key and MLP output in the fact's own prompt, so that prompt maps to v* exactly. That is
  the original implementation's choice; when k and k* differ much, uᵀk is small and ΔW huge (a "disabling
  edit": the model collapses, most often late in a sequence). ``consistent_keys`` uses k* in both places,
  k = k*, v₀ = W k* (r-ROME, Gupta et al. 2024), which bounds ΔW by the key statistics alone.

``augment_paraphrases`` adds the fact's paraphrases to the prompts v* is fitted on; k* stays as above.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..probing.format import Probe
from . import reads
from .hooks import add_delta, weight_out_in
from .layers import Layout
from .values import ValueSettings, optimise_values


@dataclass
class RomeUpdate:
    delta: torch.Tensor      # [out, in], rank one
    left: torch.Tensor       # u = C⁻¹ k*  (unit norm)
    right: torch.Tensor      # (v* − v₀) / (uᵀ k)
    target_prob: float       # target probability reached while optimising v*
    steps: int


def value_settings(hp: dict) -> ValueSettings:
    return ValueSettings(lr=hp["v_lr"], steps=hp["v_steps"], weight_decay=hp["v_weight_decay"],
                         kl_factor=hp["kl_factor"], clamp=hp["clamp"], stop_loss=hp["v_stop_loss"],
                         batch=hp["v_batch"] or 1, augment_paraphrases=bool(hp.get("augment_paraphrases", False)))


def solve_psd(C: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """C⁻¹ rhs in float64 (C is a symmetric second moment; Cholesky, falling back to a general solve).

    Solved where ``rhs`` lives: cached statistics load on the CPU, keys come from the model's device.
    """
    b = rhs.to(torch.float64)
    A = C.to(device=b.device, dtype=torch.float64)
    chol, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        return torch.cholesky_solve(b if b.ndim == 2 else b[:, None], chol).reshape(b.shape)
    return torch.linalg.lstsq(A, b if b.ndim == 2 else b[:, None]).solution.reshape(b.shape)


def compute_update(model, tokenizer, layout: Layout, fact: Probe, layer: int, C: torch.Tensor | None,
                   contexts: list[str], hp: dict) -> RomeUpdate:
    """The rank-one update for one fact (``C=None`` means the identity)."""
    rewrite = layout.rewrite_name(layer)
    k_star = reads.keys(model, tokenizer, [fact], rewrite, contexts)[0]
    u = k_star.double() if C is None else solve_psd(C, k_star)
    u = (u / u.norm()).float()
    values = optimise_values(model, tokenizer, [fact], layout.mlp_name(layer), contexts, value_settings(hp))
    v_star = values.target[0]
    if hp.get("consistent_keys"):
        k = k_star
        v0 = weight_out_in(model.get_submodule(rewrite)).detach().float() @ k_star
    else:
        k = reads.plain(model, tokenizer, [fact], rewrite, "in")[0]
        v0 = reads.plain(model, tokenizer, [fact], rewrite, "out")[0]
    right = (v_star - v0) / torch.dot(u, k)
    return RomeUpdate(torch.outer(right, u), u, right, values.prob[0], values.steps[0])


def apply(model, layout: Layout, layer: int, update: RomeUpdate) -> None:
    module = model.get_submodule(layout.rewrite_name(layer))
    if tuple(weight_out_in(module).shape) != tuple(update.delta.shape):
        raise ValueError("update does not match the layer's weight")
    add_delta(module, update.delta)
