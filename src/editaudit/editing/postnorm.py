"""What an MLP must output so that a block with a post-MLP norm adds a given change to the residual.

MEMIT and AlphaEdit write each layer's share R of the residual change through the MLP's output matrix, which
assumes the MLP output joins the residual as it is. Gemma 2/3 and OLMo 2 normalise it first,

    residual += N(x),   N(x) = g ⊙ x / rms(x)   (g: the norm's gain, Gemma's 1 + weight)

and on Gemma 3 270M N amplifies the MLP output ~150× (‖x‖ ≈ 5, ‖N(x)‖ ≈ 700 at layer 3), so writing R into x
directly breaks the model. N is scale-invariant: its outputs are the sphere {g ⊙ u : rms(u) = 1}. The
reachable output nearest the wanted y* = N(x) + R is g ⊙ u with

    u = g ⊙ y* / (g² + μ),   μ > −min g² such that rms(u) = 1   (a Lagrange multiplier, found by bisection)

and x' = s·u for any s > 0; s = ⟨u, x⟩/‖u‖² (or rms(x) when that is not positive) keeps the MLP's change x' − x
smallest, so the least-squares solve spends the least on it. The change returned is x' − x, per key.
"""

from __future__ import annotations

import torch


def norm_gain(norm: torch.nn.Module, offset: float) -> tuple[torch.Tensor, float]:
    """(g, eps) of an RMS norm module: its weight plus the family's offset, and its epsilon."""
    g = norm.weight.detach().double() + offset
    eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6)))
    return g, eps


def apply_norm(x: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    """N(x) = g ⊙ x / sqrt(mean(x²) + eps), in float64."""
    x = x.double()
    return g * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def mlp_change(x: torch.Tensor, R: torch.Tensor, g: torch.Tensor, eps: float, iters: int = 200) -> torch.Tensor:
    """The change of the MLP output ``x`` [n, d] that moves N(x) by ``R`` [n, d] as closely as N allows.
    Coordinates whose gain is zero (Gemma has them) reach nothing; they are free to take up the rms, so where
    the other coordinates need less than rms 1 at μ = 0 they reach the target exactly and the free ones fill in."""
    x, R, g = x.double(), R.double(), g.double().to(x.device)
    target = apply_norm(x, g, eps) + R
    free = g.abs() <= 1e-6 * float(g.abs().max())
    g2 = (g * g).masked_fill(free, float("inf"))            # u = 0 on free coordinates in the bisection
    lo_bound = -float(g2.min())
    scale = float(g2[~free].max()) + 1.0
    # bisection on μ = lo_bound + t, t in (0, ∞) on a log scale, for every row at once; rms(u) falls as μ grows
    lo = torch.full((x.shape[0], 1), -40.0, dtype=torch.float64, device=x.device)
    hi = torch.full_like(lo, 40.0)

    def solve(mu: torch.Tensor) -> torch.Tensor:
        return g * target / (g2 + mu)

    for _ in range(iters):
        mid = (lo + hi) / 2
        too_big = solve(lo_bound + scale * torch.exp(mid)).pow(2).mean(-1, keepdim=True) > 1.0
        lo = torch.where(too_big, mid, lo)
        hi = torch.where(too_big, hi, mid)
    mu = lo_bound + scale * torch.exp((lo + hi) / 2)
    if bool(free.any()):
        exact = solve(torch.zeros_like(mu))                 # μ = 0: the target itself, where g reaches
        short = 1.0 - exact.pow(2).mean(-1, keepdim=True)
        room = x.masked_fill(~free, 0.0)
        fill = room * torch.sqrt(short.clamp_min(0) * x.shape[1] / (room * room).sum(-1, keepdim=True).clamp_min(1e-300))
        u = torch.where((mu < 0) | (short >= 0), exact + fill, solve(mu))
    else:
        u = solve(mu)
    s = (u * x).sum(-1, keepdim=True) / (u * u).sum(-1, keepdim=True).clamp_min(1e-300)
    rms_x = torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    s = torch.where(s > 0, s, rms_x)
    return (s * u - x).float()
