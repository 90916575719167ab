"""What a mitigation run is asked to do: ``MitigationOptions`` and the base-free erase's settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadInput
from ..probing.format import Probe
from .train import TrainConfig


@dataclass
class MitigationOptions:
    base: str | None = None
    out: Path | None = None
    method: str = "full"  # full | lora | dora | project | unlearn | project+unlearn (base-free erase, mitigation/erase.py)
    layers: str = "auto"
    modules: str = "all"
    task: str = "lm"
    data: Path | None = None
    max_examples: int | None = None
    val_size: int = 64
    train: TrainConfig = field(default_factory=TrainConfig)
    probes: list[Probe] = field(default_factory=list)  # edited and intrinsic probes (by their kind)
    watch: list[str] = field(default_factory=list)  # probe ids whose top-3 tokens are recorded
    compare_full: bool = False
    revert: bool = False
    overwrite: bool = False
    device: str | None = None
    # what the model runs (and trains) in: float32 | bfloat16 | float16 | auto (models.loading.resolve_dtype);
    # float32 by default, unlike probe/edit: AdamW steps at fine-tuning rates (5e-5 × a weight of ~0.02) are about
    # bf16's rounding step, so pure 16-bit weights drop many updates. The written tensors keep the suspect's dtypes.
    dtype: str = "float32"
    out_format: str = "merged"  # merged: a checkpoint; adapter: a peft LoRA adapter over the base (output.py)
    keep_known_facts: bool = False  # facts task: keep facts the model already answers
    subjects: list[dict] = field(default_factory=list)  # project: user-given {subject, prompt?, layer?}
    project: dict = field(default_factory=dict)  # project: settings (PROJECT_DEFAULTS' keys)
    unlearn: dict = field(default_factory=dict)  # unlearn: settings (unlearn.UNLEARN_DEFAULTS' keys)


#: Settings of the projection erase (``--hparam`` for ``--method project``). ``cov_tokens``/``corpus`` should
#: be the editor's: the default is what ``editaudit edit`` uses. ``sweep_reach`` 0.8 (0.5: the low half alone) from the
#: fourteenth use of v13 (bench/heldout/v13-plan.md: 25 → 29 of 29 ROME-sequence edits erased with no base anywhere).
PROJECT_DEFAULTS: dict[str, Any] = {"target": "mean", "key_mode": "auto", "directions": "ckey",
                                    "nullspace_rel": 0.5, "rekey": False, "subject_alone": True, "corpus": None,
                                    "cov_tokens": 20000,
                                    "cov_seq_len": 256, "contexts": 5, "context_length": 10, "seed": 0,
                                    "low_rank": 16, "sweep_space": "auto", "sweep_reach": 0.8, "memit_sweep": "off",
                                    "uncertain": True, "object_sweep": "off",
                                    "object_space": "whiten"}


def split_hparams(values: dict, method: str) -> tuple[dict, dict]:
    """``--hparam`` assignments split into (projection settings, unlearning settings) by their names; ``seed``
    goes to both. A name neither method takes is BadInput."""
    from .unlearn import UNLEARN_DEFAULTS

    project, unlearn = {}, {}
    for key, value in values.items():
        if key not in PROJECT_DEFAULTS and key not in UNLEARN_DEFAULTS:
            raise BadInput(f"--hparam {key}: no such setting; projection: {', '.join(sorted(PROJECT_DEFAULTS))}; "
                           f"unlearning: {', '.join(sorted(UNLEARN_DEFAULTS))}")
        if key in PROJECT_DEFAULTS:
            project[key] = value
        if key in UNLEARN_DEFAULTS:
            unlearn[key] = value
    return project, unlearn


def project_settings(overrides: dict | None) -> dict:
    """The projection erase's settings with ``overrides`` checked (unknown keys and wrong types are BadInput)."""
    from .project import DIRECTIONS, KEY_MODES, TARGETS
    from .erase import MEMIT_SWEEP_SETTINGS, OBJECT_SPACES, OBJECT_SWEEP_SETTINGS, SWEEP_SETTINGS

    hp = dict(PROJECT_DEFAULTS)
    for key, value in (overrides or {}).items():
        if key not in hp:
            raise BadInput(f"the project method has no setting {key!r}; it takes: {', '.join(sorted(hp))}")
        default = hp[key]
        if value is None and isinstance(default, str):
            value = "null"  # `--hparam directions=null` reads as JSON null; the setting's choice is meant
        if key == "corpus":
            ok = value is None or isinstance(value, str)
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            value = float(value) if ok else value
        else:
            ok = isinstance(value, str)
        if not ok:
            raise BadInput(f"project setting {key!r}: bad value {value!r}")
        hp[key] = value
    for key, choices in (("target", TARGETS), ("key_mode", KEY_MODES), ("directions", DIRECTIONS),
                         ("sweep_space", SWEEP_SETTINGS), ("memit_sweep", MEMIT_SWEEP_SETTINGS),
                         ("object_sweep", OBJECT_SWEEP_SETTINGS), ("object_space", OBJECT_SPACES)):
        if hp[key] not in choices:
            raise BadInput(f"project setting {key} must be one of {', '.join(choices)}, not {hp[key]!r}")
    if not 0.5 <= hp["sweep_reach"] <= 1.0:
        raise BadInput(f"project setting sweep_reach must be from 0.5 (the low half) to 1.0, not {hp['sweep_reach']}")
    if hp["cov_tokens"] < 1 or hp["cov_seq_len"] < 1:
        raise BadInput("cov_tokens and cov_seq_len must be at least 1")
    return hp
