"""AlphaEdit (Fang et al., 2025): MEMIT's update, projected onto the null space of preserved knowledge.

The keys of ordinary text live mostly in C's large eigen-directions. P projects onto the span of the
*small* ones (eigenvalue below ``nullspace_rel`` × the median eigenvalue), so an update of the form
ΔW = ΔP·P leaves every preserved key's output unchanged: ΔW K₀ ≈ 0. Within that room the update solves

    ΔPᵀ = (P (K Kᵀ + K_p K_pᵀ) + α I)⁻¹ P K Rᵀ

where K_p are the keys of edits made earlier in the same sequential run (kept so that later batches do
not undo them) and α a small ridge. The solution already lies in P's range (α ΔPᵀ = P(…)), so
ΔW = ΔP exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .memit import Solver


def null_projector(C: torch.Tensor, nullspace_rel: float) -> tuple[torch.Tensor, int]:
    """P = U₀U₀ᵀ over C's eigenvectors with eigenvalue < nullspace_rel · median eigenvalue; and its rank.

    The median, not the mean: LLM activations have a few huge outlier directions (on SmolLM2 layer 2 the
    largest eigenvalue is 1200× the mean) that would drag a mean-relative threshold across most of the
    spectrum. An isotropic C (the ``C = I`` mode) prefers no direction, so nothing is preserved and P = I.
    """
    evals, evecs = torch.linalg.eigh(C.to(torch.float64))
    if float(evals.max() - evals.min()) <= 1e-9 * float(evals.abs().max()):
        return torch.eye(C.shape[0], dtype=torch.float64), C.shape[0]
    keep = evals < nullspace_rel * evals.median()
    U0 = evecs[:, keep]
    return (U0 @ U0.T).to(torch.float64), int(keep.sum())


@dataclass
class NullSpace:
    """Per-layer projectors and the running sum of edited keys' outer products (sequential editing)."""

    P: dict[int, torch.Tensor]
    alpha: dict[int, float]
    rank: dict[int, int]
    previous: dict[int, torch.Tensor] = field(default_factory=dict)   # Σ K_p K_pᵀ per layer

    @classmethod
    def build(cls, C: dict[int, torch.Tensor], nullspace_rel: float, l2_rel: float) -> "NullSpace":
        P, alpha, rank = {}, {}, {}
        for layer, c in C.items():
            P[layer], rank[layer] = null_projector(c, nullspace_rel)
            alpha[layer] = l2_rel * float(c.diagonal().sum())
        return cls(P, alpha, rank)

    def remember(self, layer: int, K: torch.Tensor) -> None:
        """Add a finished batch's keys (K: [n, d_in]) to the preserved set of later batches."""
        Kd = K.to(torch.float64)
        prev = self.previous.get(layer)
        self.previous[layer] = Kd.T @ Kd if prev is None else prev + Kd.T @ Kd

    def solver(self) -> Solver:
        def solve(layer: int, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
            P = self.P[layer]
            Kd, Rd = K.to(torch.float64), R.to(torch.float64)
            M = Kd.T @ Kd
            if layer in self.previous:
                M = M + self.previous[layer]
            A = P @ M + self.alpha[layer] * torch.eye(P.shape[0], dtype=torch.float64)
            X = torch.linalg.solve(A, P @ Kd.T @ Rd)   # [d_in, d_out]
            return X.T.to(torch.float32)
        return solve
