"""MEND (Mitchell et al., 2022): a learned map from an edit's gradient to a weight change.

For each edited MLP output matrix W_ℓ the fine-tuning gradient of one fact is rank one, δ uᵀ (key u,
output gradient δ, at the new target's first token). MEND transforms the pair with a small network
g (``hypernet.ShiftNet``, shared by layers of one shape, with a per-layer scale and shift) and writes

    (u', δ') = g_ℓ(u, δ),   ΔW_ℓ = −η_ℓ δ' u'ᵀ

with a learned step η_ℓ per layer. One fact changes every edited layer (the last ``span``) by a rank-one
matrix; the network is trained so that the edited model states the new target on the prompt and its
rephrasings while its next-token distribution on unrelated prompts stays put (KL). Facts edited in one
batch add their rank-one terms.
"""

from __future__ import annotations

import torch


def group_factors(u_prime: torch.Tensor, d_prime: torch.Tensor, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ΔW = L Rᵀ for the facts of one batch: L = −η [δ'_i] ([d_out, n]), R = [u'_i] ([d_in, n])."""
    return -lr * d_prime.T, u_prime.T
