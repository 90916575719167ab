"""Surgical revert: remove only the low-rank edit components the scan found, keep every other change.

For each tensor the scan attributes to an edit, ΔW = W_suspect − W_base is decomposed and its top
``k`` singular components — ``k`` being the number the scan counted above the dtype's rounding noise
(rank-one: 1; low-rank: its rank; an edit hidden under a dense change: the components that stand out
of the bulk) — are subtracted from the suspect's tensor. Anything else in ΔW (a legitimate dense
fine-tune, say) stays in place, and tensors the scan did not attribute to an edit are not touched. A peft adapter
suspect's ΔW comes from its factors; where the removed components are all of it, the base's values are written exactly
(no float32 remainder to be mistaken for a change).

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
    whole: bool = False  # an adapter suspect whose whole ΔW in this tensor was the edit: the base's values restored

    @property
    def removed_share(self) -> float:
        """Share of ΔW's energy removed."""
        return (self.removed_norm / self.delta_norm) ** 2 if self.delta_norm else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "removed_share": self.removed_share}


def read_tensor(ckpt, name: str):
    """One tensor of a checkpoint as float32 (of a peft adapter suspect: the base's value plus its ΔW)."""
    adapter = getattr(ckpt, "adapter", None)
    if adapter is not None and name in adapter.modules:  # computed, never stored
        return adapter.suspect(name, read_tensor(adapter.base, name))
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


#: an adapter's ΔW is all edit when what the removal leaves is below this share of it (float32 factors' rounding)
WHOLE_TOL = 1e-5


def _adapter_lora(suspect_ck, base_ck, name: str):
    """The suspect's ``LoraAdapter`` when ``name`` is one of its plain LoRA modules over ``base_ck``, else None."""
    adapter = getattr(suspect_ck, "adapter", None)
    if adapter is None or (adapter.base is not base_ck and adapter.base.fingerprint() != base_ck.fingerprint()):
        return None
    m = adapter.modules.get(name)
    return adapter if m is not None and m.kind == "lora" and m.whole is None else None


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
        base = read_tensor(base_ck, name)
        module = _adapter_lora(suspect_ck, base_ck, name)
        if module is not None:  # an adapter suspect: ΔW from its factors, not through base + ΔW's rounding
            delta = module.delta(name)
            w = base + delta
        else:
            w = read_tensor(suspect_ck, name)
            delta = w - base
        u, s, vh = edit_components(delta, evidence.components.get(name, 1))
        removed = (u * s) @ vh
        left = delta.double() - removed
        whole = module is not None and float(left.norm()) <= WHOLE_TOL * float(delta.norm())
        if whole:  # the adapter's change to this tensor was all edit: its base, exactly
            out[name], removed, left = base, delta.double(), left * 0
        else:
            out[name] = (w.double() - removed).float()
        reports.append(TensorRevert(name, int(s.numel()), float(delta.norm()), float(removed.norm()),
                                    float(left.norm()), whole))
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
