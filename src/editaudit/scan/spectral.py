"""Spectral statistics of a weight change ΔW, judged against the stored dtype's rounding noise.

Knowledge edits are low rank (ROME: exactly rank one; MEMIT/AlphaEdit: one component per fact),
while fine-tuning spreads its change over many directions and storing weights in a low-precision
dtype adds an iid-like rounding matrix. For an m×n matrix with iid entries of variance s², the
largest singular value sits at about s(√m+√n) (the Marchenko–Pastur edge). We estimate s from the
rounding step (ulp) of the stored dtype at the base weights' magnitudes, and count the singular
values that clear that edge: that is the rank of the change. A dense change whose leading components
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
    noise_edge: float = 0.0  # rounding-noise edge s(√m+√n)
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
    s_noise = ulp_rms(suspect, suspect_dtype)
    if delta.ndim != 2 or min(delta.shape) < 2:
        stats.noise_edge = s_noise  # per-element rounding scale for vectors
        stats.kind = "rounding" if stats.max_abs <= 4 * s_noise * math.sqrt(12) else "vector"
        return stats, None
    m, n = delta.shape
    stats.noise_edge = s_noise * (math.sqrt(m) + math.sqrt(n))
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
