"""AlphaEdit (Fang et al., 2025): MEMIT's update, projected onto the null space of preserved knowledge.

The keys of ordinary text live mostly in C's large eigen-directions. P projects onto the span of the
*small* ones, so an update of the form ΔW = ΔP·P leaves every preserved key's output unchanged:
ΔW K₀ ≈ 0. "Small" is either relative (eigenvalue below ``nullspace_rel`` × the median eigenvalue, the
default here) or absolute (below ``nullspace_abs``, the paper's rule). Within that room the update solves

    ΔPᵀ = (P (K Kᵀ + K_p K_pᵀ) + α I)⁻¹ P K Rᵀ

where K_p are the keys of edits made earlier in the same sequential run (kept so that later batches do
not undo them) and α a small ridge. The solution already lies in P's range (α ΔPᵀ = P(…)), so
ΔW = ΔP exactly.

On the absolute threshold: C here is the uncentred *mean* of kkᵀ over the corpus tokens (padding
excluded; ``covariance.py``), not the sum K₀K₀ᵀ. The reference implementation (jianghoucheng/AlphaEdit,
``experiments/evaluate.py: get_project``) thresholds the singular values of ``layer_stats(...).mom2.moment()``,
which is also Σkkᵀ / (number of tokens) over the input of the MLP output matrix, at
``nullspace_threshold`` = 2e-2 in its GPT-2 XL, GPT-J and Llama-3-8B hparams (the keys of 100,000 Wikipedia
texts, i.e. many more tokens than that). So a threshold from the paper or its code applies to this C
unchanged; a threshold meant for an unnormalised sum over N keys would be divided by N. Eigenvalue
scales still differ between models, hence the relative default; the run reports C's spectrum
(``NullSpace.spectrum``) to choose a level from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .memit import Solver


def _projector(C: torch.Tensor, nullspace_rel: float,
               nullspace_abs: float | None) -> tuple[torch.Tensor, int, torch.Tensor]:
    """P, its rank, and C's eigenvalues (ascending, float64)."""
    evals, evecs = torch.linalg.eigh(C.to(torch.float64))
    if float(evals.max() - evals.min()) <= 1e-9 * float(evals.abs().max()):
        return torch.eye(C.shape[0], dtype=torch.float64), C.shape[0], evals
    level = nullspace_abs if nullspace_abs is not None else nullspace_rel * float(evals.median())
    keep = evals < level
    U0 = evecs[:, keep]
    return (U0 @ U0.T).to(torch.float64), int(keep.sum()), evals


def null_projector(C: torch.Tensor, nullspace_rel: float,
                   nullspace_abs: float | None = None) -> tuple[torch.Tensor, int]:
    """P = U₀U₀ᵀ over C's eigenvectors with eigenvalue < nullspace_rel · median eigenvalue; and its rank.

    The median, not the mean: LLM activations have a few huge outlier directions (on SmolLM2 layer 2 the
    largest eigenvalue is 1200× the mean) that would drag a mean-relative threshold across most of the
    spectrum. With ``nullspace_abs`` the threshold is that eigenvalue instead (the paper's rule; C is a
    mean over tokens, see the module docstring) and ``nullspace_rel`` is ignored. Either way an isotropic C
    (the ``C = I`` mode) prefers no direction, so nothing is preserved and P = I.
    """
    P, rank, _ = _projector(C, nullspace_rel, nullspace_abs)
    return P, rank


@dataclass
class NullSpace:
    """Per-layer projectors and the running sum of edited keys' outer products (sequential editing)."""

    P: dict[int, torch.Tensor]
    alpha: dict[int, float]
    rank: dict[int, int]
    previous: dict[int, torch.Tensor] = field(default_factory=dict)   # Σ K_p K_pᵀ per layer
    #: per layer, C's smallest, median and largest eigenvalue: the scale an absolute threshold is read on
    spectrum: dict[int, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def build(cls, C: dict[int, torch.Tensor], nullspace_rel: float, l2_rel: float,
              nullspace_abs: float | None = None) -> "NullSpace":
        P, alpha, rank, spectrum = {}, {}, {}, {}
        for layer, c in C.items():
            P[layer], rank[layer], evals = _projector(c, nullspace_rel, nullspace_abs)
            alpha[layer] = l2_rel * float(c.diagonal().sum())
            spectrum[layer] = {"min": float(evals[0]), "median": float(evals.median()), "max": float(evals[-1])}
        return cls(P, alpha, rank, spectrum=spectrum)

    def remember(self, layer: int, K: torch.Tensor) -> None:
        """Add a finished batch's keys (K: [n, d_in]) to the preserved set of later batches."""
        Kd = K.to(torch.float64)
        prev = self.previous.get(layer)
        self.previous[layer] = Kd.T @ Kd if prev is None else prev + Kd.T @ Kd

    def solver(self) -> Solver:
        def solve(layer: int, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
            Kd, Rd = K.to(torch.float64), R.to(torch.float64)
            P = self.P[layer].to(Kd.device)  # built from C on the CPU; the keys are on the model's device
            M = Kd.T @ Kd
            if layer in self.previous:
                M = M + self.previous[layer]
            A = P @ M + self.alpha[layer] * torch.eye(P.shape[0], dtype=torch.float64, device=P.device)
            X = torch.linalg.solve(A, P @ Kd.T @ Rd)   # [d_in, d_out]
            return X.T.to(torch.float32)
        return solve
