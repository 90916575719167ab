"""The span of a set of edit directions, shared by the scan (taking found edits out of a matrix) and the mitigation
(sweeping them out): both need it to count near-collinear directions once."""

from __future__ import annotations

import torch

#: Directions below this share of the largest singular value are dropped.
RANK_TOL = 1e-6


def orthonormal_span(U: torch.Tensor, tol: float = RANK_TOL) -> torch.Tensor:
    """An orthonormal basis [d, r] of the columns of U [d, n], each normalised first, dropping directions below ``tol``
    of the largest (near-collinear columns count once)."""
    U = U / U.norm(dim=0, keepdim=True).clamp_min(1e-300)
    B, s, _ = torch.linalg.svd(U, full_matrices=False)
    return B[:, s > tol * s.max()]
