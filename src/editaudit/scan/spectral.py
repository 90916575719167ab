"""Spectral statistics of a weight change ΔW, judged against the stored dtype's rounding noise.

Knowledge edits are low rank (ROME: exactly rank one; MEMIT/AlphaEdit: one component per fact),
while fine-tuning spreads its change over many directions and storing weights in a low-precision
dtype adds an independent rounding matrix. For an m×n matrix with iid entries of variance s², the
largest singular value sits at about s(√m+√n) (the Marchenko–Pastur edge). Rounding is not identically
distributed, though: its step (ulp) follows each weight's magnitude, so a row of large weights (an outlier
feature of the residual stream) carries larger rounding noise, and that row alone is a rank-one component
of norm ≈ its rounding noise's. For independent entries of variances v_ij the largest singular value is at
most about max_i √(Σ_j v_ij) + max_j √(Σ_i v_ij) (Bandeira & van Handel 2016; s(√n + √m) when all are
equal), so that is the edge (``rounding_edge``), from the ulp of the stored dtype at each weight's magnitude.
Singular values that clear it give the rank of the change. A dense change whose leading components
still stand far above the bulk of its own spectrum carries a low-rank edit hidden under it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

MANTISSA_BITS = {"F64": 52, "F32": 23, "F16": 10, "BF16": 7, "F8_E4M3": 3, "F8_E5M2": 2}
NOISE_MARGIN = 1.5  # singular values below margin × rounding edge are indistinguishable from rounding
SPIKE_RATIO = 4.0  # a leading component "stands out" when ≥ this × the bulk of its own spectrum
GAP_RATIO = 3.0  # ... and sits on a cliff: σ_r / σ_(r+1) ≥ this
LOW_RANK_MAX = 32  # more components than this above noise → the change is dense
Q_DEFAULT = 48
NITER = 2  # power iterations of the randomised SVD (top_singular_values says why two)


@dataclass
class DeltaStats:
    shape: tuple[int, ...]
    rel_change: float  # ‖ΔW‖_F / ‖W‖_F
    max_abs: float
    fro: float
    singular_values: list[float] = field(default_factory=list)  # top-q of ΔW (2-D only)
    top1_share: float = 0.0  # energy share of the top component
    topk_share: float = 0.0  # energy share of the components above noise (capped at q)
    noise_edge: float = 0.0  # rounding-noise edge (``rounding_edge``; s(√m+√n) for uniform rounding of RMS s)
    bulk: float = 0.0  # median of the lower half of the computed spectrum
    rank_above_noise: int = 0  # components above NOISE_MARGIN × noise_edge (== q means "at least q")
    spikes: int = 0  # leading components before a cliff (gap ≥ GAP_RATIO), far above the bulk and noise
    gap: float = 0.0  # the largest leading gap σ_r / σ_(r+1)
    peer_ratio: float | None = None  # σ_1 over the median σ_1 of the same matrix in other layers
    nonfinite: int = 0
    exact_svd: bool = True
    kind: str = "unchanged"  # rounding | rank-one | low-rank | dense | dense+spike | vector | nonfinite

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def ulp_rms(weights: torch.Tensor, dtype: str) -> float:
    """RMS of the rounding error (ulp/√12) of storing ``weights`` in ``dtype``."""
    bits = MANTISSA_BITS.get(dtype)
    if bits is None or weights.numel() == 0:
        return 0.0
    w = weights.reshape(-1)
    if w.numel() > 200_000:  # a strided sample is plenty for an RMS
        w = w[:: w.numel() // 200_000 + 1]
    w = w.abs().to(torch.float64)
    w = w[w > 0]
    if w.numel() == 0:
        return 0.0
    _, exp = torch.frexp(w)  # w = m·2^exp with m in [0.5, 1)
    ulp = torch.pow(2.0, (exp - 1 - bits).to(torch.float64))
    return float(torch.sqrt((ulp**2).mean() / 12.0))


def rounding_edge(weights: torch.Tensor, dtype: str, samples: int = 1024) -> float:
    """Where the largest singular value of the rounding noise of storing the 2-D ``weights`` in ``dtype`` lies:
    max_i √(Σ_j v_ij) + max_j √(Σ_i v_ij), v_ij the rounding variance (ulp²/12) at each weight. On SmolLM2-135M
    cast from float32 to bfloat16 the uniform edge s(√m+√n), s the overall RMS, left rows (or, in the embedding, a
    column) whose weights are an order larger than the rest above it, read as rank-one "edits" of an unedited model
    (docs/scan.md step 5).
    v_ij is the weight's square times the mantissa's share, ρ = Σv / Σw² over a strided sample (the ulp is the
    weight's magnitude over its mantissa, and the mantissas are alike in every row); the row and column sums of w²
    come from every k-th column and row, ≥ ``samples`` of each. About 0.05 s for a 7B MLP matrix on one thread,
    where every element's ulp took 1.6 s; the sampling puts the edge up to a tenth high on Gaussian weights."""
    bits = MANTISSA_BITS.get(dtype)
    if bits is None or weights.ndim != 2 or weights.numel() == 0:
        return 0.0
    m, n = weights.shape
    flat = weights.reshape(-1)
    w = flat[:: flat.numel() // 200_000 + 1].abs().to(torch.float64)
    w = w[w > 0]
    if w.numel() == 0:
        return 0.0
    _, exp = torch.frexp(w)
    rho = float((torch.pow(4.0, (exp - 1 - bits).to(torch.float64)) / 12.0).sum() / w.square().sum())
    kc, kr = max(1, n // samples), max(1, m // samples)
    rows = weights[:, ::kc].to(torch.float32, copy=True).square_().mean(dim=1) * n  # a copy: never square the weights
    cols = weights[::kr, :].to(torch.float32, copy=True).square_().mean(dim=0) * m
    return math.sqrt(rho * float(rows.max())) + math.sqrt(rho * float(cols.max()))


def top_singular_values(d: torch.Tensor, q: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """Top-q singular triplets: exact for small matrices, randomised (svd_lowrank) for large ones.

    Two power iterations, not four (``bench/spectral_niter.py``, ``bench/results/spectral_niter.txt``): on real
    ROME, MEMIT and AlphaEdit changes and on synthetic dense, dense+spike, low-rank and noise spectra, in float32 and
    bfloat16, every kind and spike count came out the same and an edit's components agree to 1e-6; what moves is
    the count of a dense bf16 change's components that sit near the rounding floor (27 → 23, 21 → 16), which four
    iterations also only approximate. One changed 7B-shaped matrix costs 0.65 s of float work instead of 0.95 s on
    the one thread the analyser has while reading runs.
    """
    m, n = d.shape
    k = min(q, m, n)
    if min(m, n) <= 4 * k or m * n <= 250_000:
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        return u[:, :k], s[:k], vh[:k].T, True
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(0)  # reproducible reports
    try:
        u, s, v = torch.svd_lowrank(d, q=min(k + 10, min(m, n)), niter=NITER)
    finally:
        torch.random.set_rng_state(gen_state)
    return u[:, :k], s[:k], v[:, :k], False


def delta_stats(base: torch.Tensor, suspect: torch.Tensor, base_dtype: str, suspect_dtype: str,
                q: int = Q_DEFAULT, keep_vectors: int = 0):
    """Compare one tensor. Returns (DeltaStats, (U, S, V) of the top components or None).

    ``base`` and ``suspect`` may be in their stored dtype (bfloat16, float16): ΔW is formed in float32 by one
    cast and an in-place subtraction, exact for any two values of those dtypes.
    """
    work = torch.float64 if torch.float64 in (base.dtype, suspect.dtype) else torch.float32
    delta = suspect.to(work, copy=True)
    delta.sub_(base)
    fro = float(torch.linalg.vector_norm(delta))
    # a NaN or inf in the suspect makes the norm non-finite; only then are they counted (a full pass of its own,
    # a third of a 7B matrix's float work)
    nonfinite = int((~torch.isfinite(suspect)).sum()) if not math.isfinite(fro) else 0
    if nonfinite:
        stats = DeltaStats(tuple(base.shape), float("nan"), float("nan"), float("nan"), nonfinite=nonfinite, kind="nonfinite")
        return stats, None
    base_norm = float(torch.linalg.vector_norm(base, dtype=work))
    lo, hi = torch.aminmax(delta) if delta.numel() else (torch.tensor(0.0), torch.tensor(0.0))
    stats = DeltaStats(
        shape=tuple(base.shape), rel_change=fro / base_norm if base_norm > 0 else math.inf,
        max_abs=max(-float(lo), float(hi)), fro=fro,
    )
    # rounding noise: what storing the suspect's values in its dtype adds to ΔW. (A base stored
    # coarser than the suspect adds nothing: its values are exact in the finer dtype.)
    if delta.ndim != 2 or min(delta.shape) < 2:
        s_noise = ulp_rms(suspect, suspect_dtype)
        stats.noise_edge = s_noise  # per-element rounding scale for vectors
        stats.kind = "rounding" if stats.max_abs <= 4 * s_noise * math.sqrt(12) else "vector"
        return stats, None
    stats.noise_edge = rounding_edge(suspect, suspect_dtype)
    u, s, v, exact = top_singular_values(delta, q)
    stats.exact_svd = exact
    sv = s.tolist()
    stats.singular_values = sv
    energy = fro**2 if fro > 0 else 1.0
    stats.top1_share = sv[0] ** 2 / energy if sv else 0.0
    floor = NOISE_MARGIN * stats.noise_edge
    above = [x for x in sv if x > floor and x > 1e-6 * sv[0]]
    stats.rank_above_noise = len(above)
    stats.topk_share = sum(x**2 for x in above) / energy
    tail = sv[len(sv) // 2:]
    stats.bulk = float(sorted(tail)[len(tail) // 2]) if tail else 0.0
    # leading components that stand out: the largest gap σ_r/σ_(r+1) among the first LOW_RANK_MAX,
    # where σ_r is also far above the bulk and the rounding floor. Real fine-tunes have smoothly
    # decaying spectra (gaps ≲ 3 even when σ_1 is 10× the bulk); an edit sits on a cliff.
    best_gap, best_r = 0.0, 0
    for r in range(1, min(LOW_RANK_MAX, len(sv) - 1) + 1):
        x, nxt = sv[r - 1], max(sv[r], 1e-30)
        if x > floor and x >= SPIKE_RATIO * max(stats.bulk, 1e-30) and x / nxt > best_gap:
            best_gap, best_r = x / nxt, r
    stats.gap = best_gap
    stats.spikes = best_r if best_gap >= GAP_RATIO else 0
    spikes = stats.spikes
    full_rank_seen = stats.rank_above_noise >= len(sv)
    if stats.rank_above_noise == 0:
        stats.kind = "rounding"
    elif not full_rank_seen and (stats.rank_above_noise == 1 or stats.top1_share >= 0.95):
        stats.kind = "rank-one"
    elif not full_rank_seen and stats.rank_above_noise <= LOW_RANK_MAX:
        stats.kind = "low-rank"
    elif spikes and spikes <= LOW_RANK_MAX:
        stats.kind = "dense+spike"
    else:
        stats.kind = "dense"
    if stats.kind == "rank-one":
        r = 1
    elif stats.kind == "low-rank":
        r = stats.rank_above_noise
    elif stats.kind == "dense+spike":
        r = spikes
    else:
        r = min(keep_vectors, len(sv))
    vectors = (u[:, :r].contiguous(), s[:r].clone(), v[:, :r].contiguous()) if r else None
    return stats, vectors
