"""MALMEN (Tan et al., 2024): MEND's shift network, with the batch's shifts combined by least squares.

Summing each fact's own update (MEND) lets many edits in one batch interfere. MALMEN keeps the
network's value shifts d_i = −η δ'_i (``hypernet.ShiftNet``) but asks for the one change S of W_ℓ that
maps every edited key u_i to its shift, with a ridge penalty:

    S = argmin Σ_i ‖S u_i − d_i‖² + λ‖S‖²_F = D (KᵀK + λI)⁻¹ Kᵀ,   K = [u_i], D = [d_i]

solved in the n×n key Gram (the normal equation), λ = ridge · mean ‖u_i‖². One batch of n facts gives a
change of rank ≤ n in each edited layer (the last ``span``), many edits at once.
"""

from __future__ import annotations

import torch


def group_factors(keys: torch.Tensor, d_prime: torch.Tensor, lr: torch.Tensor,
                  ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ΔW = L Rᵀ for one batch: L = −η [δ'_i] (KᵀK + λI)⁻¹ ([d_out, n]), R = K ([d_in, n])."""
    G = keys @ keys.T
    eye = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    lam = ridge * G.diagonal().mean()
    M = torch.linalg.solve(G + lam * eye, eye)
    return -lr * (d_prime.T @ M), keys.T
