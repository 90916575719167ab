"""The verification report: per arm, before → after — edits erased or kept, intrinsic retention, the task
metric, the edit's weight residual (with a base) — and the run's verdict."""

from __future__ import annotations

from typing import Any

from .evidence import EditEvidence
from .plan import ERASE_METHODS
from .types import ArmResult


def arm_summary(arm: ArmResult) -> dict:
    b, a = arm.before, arm.after
    s: dict[str, Any] = {"method": arm.method, "steps": arm.steps, "stop": arm.stop_reason}
    if "edited_retention" in b and "edited_retention" in a:
        s["edited_before"], s["edited_after"] = b["edited_retention"], a["edited_retention"]
        held = [i for i, f in enumerate(b.get("edited_flags", [])) if f]
        if held:  # of the edits the suspect states, how many it no longer states
            gone = sum(1 for i in held if not a["edited_flags"][i])
            s["edits_held_before"] = len(held)
            s["edits_erased"] = gone / len(held)
            s["edits_kept"] = 1 - gone / len(held)
            if "edited_true_flags" in a:  # erased to the true answer, not to a third one
                s["edits_true_back"] = sum(1 for i in held if a["edited_true_flags"][i]) / len(held)
        if "edited_true" in a:
            s["edited_true_after"] = a["edited_true"]
    if "intrinsic_retention" in b and "intrinsic_retention" in a:
        ib, ia = b["intrinsic_retention"], a["intrinsic_retention"]
        s["intrinsic_before"], s["intrinsic_after"] = ib, ia
        s["intrinsic_points"] = (ia - ib) * 100
        s["intrinsic_retained"] = ia / ib if ib > 0 else None
    if "neighbourhood_retention" in b and "neighbourhood_retention" in a:
        s["neighbourhood_before"], s["neighbourhood_after"] = b["neighbourhood_retention"], a["neighbourhood_retention"]
        held = [i for i, f in enumerate(b.get("neighbourhood_flags", [])) if f]
        if held:
            s["neighbourhood_kept"] = sum(1 for i in held if a["neighbourhood_flags"][i]) / len(held)
    for k in ("val_loss", "val_acc"):
        if k in b and k in a:
            s[f"{k}_before"], s[f"{k}_after"] = b[k], a[k]
    if arm.residual is not None:
        s["edit_weight_share_left"] = arm.residual["mean_share"]
    if arm.project is not None:
        subjects = {r["subject"]: r for r in arm.project.get("subjects", [])}
        s["subjects"] = len(subjects)
        s["subjects_answer_moved"] = sum(1 for r in subjects.values() if r.get("before") != r.get("after"))
        s["layers_resolved"] = [r["layer"] for r in arm.project.get("layers", [])]
    if arm.rescan is not None:
        s["rescan_verdict"] = arm.rescan["verdict"]
        s["rescan_edited_tensors_left"] = len(arm.rescan["edited_tensors_left"])
    return s


def verify(goal: str, arms: dict[str, ArmResult], evidence: EditEvidence | None, probe_info: dict) -> dict:
    v: dict[str, Any] = {"goal": goal, "probes": probe_info, "arms": {k: arm_summary(a) for k, a in arms.items()}}
    main = next((v["arms"][k] for k in ("revert", *ERASE_METHODS, "selective") if k in v["arms"]), {})
    erased = main.get("edits_erased")
    if erased is not None:
        v["edits_erased"] = erased
        v["edits_kept"] = 1.0 - erased
    for key in ("intrinsic_points", "neighbourhood_kept", "edit_weight_share_left"):
        if key in main:
            v[key] = main[key]
    if "full" in v["arms"]:  # an equal-impact comparison: what each arm needed to reach the same target
        v["equal_impact"] = {k: {"steps": a["steps"], "stop": a["stop"], "val_loss_after": a.get("val_loss_after"),
                                 "val_acc_after": a.get("val_acc_after")} for k, a in v["arms"].items()}
    full = v["arms"].get("full")
    if full and "edits_kept" in full and "edits_kept" in main:
        v["full_edits_kept"] = full["edits_kept"]
        v["kept_vs_full"] = main["edits_kept"] - full["edits_kept"]
    if erased is None and "edit_weight_share_left" in main:
        gone = min(1.0, max(0.0, 1 - main["edit_weight_share_left"]))
        v["verdict"] = f"{gone:.0%} of the edit components gone from the weights " \
                       "(no edit probes to measure behaviour)"
    elif erased is None:
        v["verdict"] = "no edit probes to measure"
    elif goal == "erase":
        v["verdict"] = f"{erased:.0%} of edits erased"
    else:
        v["verdict"] = f"{1 - erased:.0%} of edits kept"
    return v
