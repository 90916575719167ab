"""Surgical revert: remove only the low-rank edit components the scan found, keep every other change.

For each tensor the scan attributes to an edit, ΔW = W_suspect − W_base is decomposed and its top
``k`` singular components — ``k`` being the number the scan counted above the dtype's rounding noise
(rank-one: 1; low-rank: its rank; an edit hidden under a dense change: the components that stand out
of the bulk) — are subtracted from the suspect's tensor. Anything else in ΔW (a legitimate dense
fine-tune, say) stays in place, and tensors the scan did not attribute to an edit are not touched.

``edit_residual`` measures, in weight space, how much of each edit is still present in any later
version of the weights: the edit's own singular directions are projected out of (W_after − W_base).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Callable

from ..checkpoint.reader import TensorFile, to_torch
from ..errors import BadInput
from ..progress import Progress, Stage, Step, ignore
from .evidence import EditEvidence

STAGE = "reverting tensors"


@dataclass
class TensorRevert:
    name: str
    components: int  # singular components removed
    delta_norm: float  # ‖ΔW‖ before
    removed_norm: float  # ‖removed part‖
    residual_norm: float  # ‖ΔW‖ after (what stays: other changes and rounding)

    @property
    def removed_share(self) -> float:
        """Share of ΔW's energy removed."""
        return (self.removed_norm / self.delta_norm) ** 2 if self.delta_norm else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "removed_share": self.removed_share}


def read_tensor(ckpt, name: str):
    """One tensor of a checkpoint as float32."""
    fname, info = ckpt.tensors[name]
    with TensorFile(ckpt.file_path(fname)) as f:
        return to_torch(f.read_bytes(info), info)


def edit_components(delta, k: int):
    """Top-``k`` singular triplets of ΔW (exact SVD in float64: edited tensors are few)."""
    import torch

    if delta.ndim != 2:
        raise BadInput("only matrices can be reverted component by component")
    u, s, vh = torch.linalg.svd(delta.to(torch.float64), full_matrices=False)
    k = min(k, s.numel())
    return u[:, :k], s[:k], vh[:k]


def _check(suspect_ck, base_ck, evidence: EditEvidence) -> None:
    if not evidence.found:
        raise BadInput("the scan found no edit to revert")
    for name in evidence.tensors:
        if name not in suspect_ck.tensors or name not in base_ck.tensors:
            raise BadInput(f"tensor {name} named by the scan is missing from the suspect or the base")
        if tuple(suspect_ck.tensors[name][1].shape) != tuple(base_ck.tensors[name][1].shape):
            raise BadInput(f"tensor {name} has different shapes in the suspect and the base")


def surgical_revert(suspect_ck, base_ck, evidence: EditEvidence, cancel: threading.Event | None = None,
                    progress: Progress = ignore) -> tuple[dict, list[TensorRevert]]:
    """The reverted values of the edited tensors ({name: tensor}) and what was removed from each.

    ``progress`` receives typed events (editaudit.progress): the stage ``reverting tensors``, a Step per tensor."""
    _check(suspect_ck, base_ck, evidence)
    out: dict = {}
    reports: list[TensorRevert] = []
    n = len(evidence.tensors)
    progress(Stage(STAGE, n))
    for i, name in enumerate(evidence.tensors):
        if cancel is not None and cancel.is_set():
            raise KeyboardInterrupt
        progress(Step(STAGE, i, n))
        w = read_tensor(suspect_ck, name)
        delta = w - read_tensor(base_ck, name)
        u, s, vh = edit_components(delta, evidence.components.get(name, 1))
        removed = (u * s) @ vh
        new = (w.double() - removed).float()
        reports.append(TensorRevert(name, int(s.numel()), float(delta.norm()), float(removed.norm()),
                                    float((delta.double() - removed).norm())))
        out[name] = new
    progress(Step(STAGE, n, n))
    return out, reports


def edit_residual(suspect_ck, base_ck, evidence: EditEvidence, after: Callable[[str], object]) -> dict:
    """How much of each edit survives in ``after(name)`` (a tensor), measured in the edit's own subspace.

    ``share`` = ‖Uₖᵀ (W_after − W_base) Vₖ‖ / ‖Sₖ‖: 1 when the edit is intact, 0 when it is gone.
    """
    _check(suspect_ck, base_ck, evidence)
    per: dict[str, float] = {}
    for name in evidence.tensors:
        base = read_tensor(base_ck, name).double()
        u, s, vh = edit_components(read_tensor(suspect_ck, name).double() - base, evidence.components.get(name, 1))
        d = after(name).double() - base
        per[name] = float((u.T @ d @ vh.T).norm() / s.norm()) if float(s.norm()) > 0 else 0.0
    mean = sum(per.values()) / len(per) if per else 0.0
    return {"mean_share": mean, "tensors": per}
