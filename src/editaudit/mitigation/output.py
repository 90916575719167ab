"""Where a mitigation's result goes, and what the suspect is when it is a peft adapter.

An adapter suspect (``checkpoint/adapter.py``) stays the base plus its ΔW, never merged on disk by anyone: its
tensors read as base + ΔW (``revert.read_tensor``), models load as the base with ΔW added in memory
(``models.loading``), and a merged output is the *base's* files with every adapted tensor, and every tensor the
arm changed, written over (so it is a checkpoint on its own).

``--out-format adapter`` writes the result as a peft LoRA adapter over the base instead: each changed weight's
W_out − W_base is factored exactly by SVD at its numerical rank (``RANK_TOL``), with per-module
``rank_pattern``/``alpha_pattern`` so that peft's scaling is 1. What an adapter cannot hold (a changed embedding,
norm or bias, or a change that is not low-rank) is refused before anything is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..checkpoint.folder import Checkpoint
from ..errors import BadInput

if TYPE_CHECKING:
    from .context import RunContext

OUT_FORMATS = ("merged", "adapter")
#: A singular value of ΔW = W_out − W_base counts towards its rank when it exceeds
#: RANK_TOL·ε·rms(W_out)·(√out + √in): twice the spectral size of W_out's own rounding (≈ 0.3·ε·rms·(√out + √in)
#: per rounding), ε the machine epsilon of the coarsest dtype the values went through (float32 at best). Relative
#: to the weight, not to ΔW's largest singular value: a ΔW made only of rounding has no rank rather than full rank.
RANK_TOL = 2.0
#: a change of rank above this share of min(out, in) is not low-rank: the factors would outweigh the matrix
MAX_RANK_SHARE = 0.5
_EPS = {"F64": 2.0 ** -52, "F32": 2.0 ** -23, "F16": 2.0 ** -10, "BF16": 2.0 ** -7, "F8_E4M3": 2.0 ** -3,
        "F8_E5M2": 2.0 ** -2, "float32": 2.0 ** -23, "float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}


def adapter_of(ck: Checkpoint | None):
    """The ``LoraAdapter`` of an adapter suspect, else None."""
    return getattr(ck, "adapter", None)


def storage(ck: Checkpoint) -> Checkpoint:
    """The checkpoint whose files a merged output copies: the suspect's own, or an adapter's base."""
    adapter = adapter_of(ck)
    return adapter.base if adapter is not None else ck


def open_suspect(path: Path, base: str | None, say: Callable[[str], None]) -> tuple[Checkpoint, Checkpoint | None]:
    """(suspect, base) opened: a peft adapter folder against ``base`` or the base its config names."""
    from ..checkpoint import open_checkpoint
    from ..checkpoint.adapter import base_for, is_adapter_dir, open_adapter
    from ..models.registry import resolve_model

    if not is_adapter_dir(path):
        return open_checkpoint(path), (open_checkpoint(resolve_model(base, say)) if base else None)
    base_ck = open_checkpoint(resolve_model(base, say) if base else base_for(path, say))
    if base_ck.config is None:
        raise BadInput(f"{base_ck.root} is not a model folder with config.json: an adapter's base must be one")
    suspect_ck = open_adapter(path, base_ck)
    say(f"{path} is a peft adapter: the suspect is {base_ck.root} with its ΔW "
        f"({len(suspect_ck.adapter.modules)} module(s)), never merged on disk")
    return suspect_ck, base_ck


def describe_input(ck: Checkpoint) -> dict:
    """What the suspect is, for the result: a checkpoint, or an adapter over its base (and what it changes)."""
    adapter = adapter_of(ck)
    if adapter is None:
        return {"format": "checkpoint", "path": str(ck.root)}
    return {"format": "adapter", "path": str(ck.root), "base": str(adapter.base.root),
            "modules": {n: {"kind": m.kind, "rank": m.rank} for n, m in adapter.modules.items()}}


def write_result(ctx: "RunContext", out: Path, tensors: dict, extra: dict[str, bytes] | None = None,
                 computed_in: str = "float32") -> list[str]:
    """Write the run's output in ``ctx.options.out_format``; ``ctx.output`` says what was written.

    ``tensors`` are the changed tensors' values as the arm computed them (``computed_in``: the dtype it ran in),
    not yet rounded to the stored dtype. Returns the files left out of a merged copy."""
    from ..checkpoint.writer import write_checkpoint
    from .revert import read_tensor

    if getattr(ctx.options, "out_format", "merged") == "adapter":
        ctx.output = write_adapter(ctx.suspect_ck, ctx.base_ck, out, tensors, extra, computed_in)
        return []
    adapter = adapter_of(ctx.suspect_ck)
    replacements = {n: read_tensor(ctx.suspect_ck, n) for n in (adapter.modules if adapter is not None else ())}
    replacements.update(tensors)
    skipped = write_checkpoint(storage(ctx.suspect_ck), out, replacements, extra, overwrite=True)
    ctx.output = {"format": "merged", "path": str(out)}
    if adapter is not None:
        ctx.output["adapter_merged_into"] = str(adapter.base.root)
    return skipped


# -- adapter output ---------------------------------------------------------------------------------------

@dataclass
class Factor:
    """One changed weight as LoRA factors (ΔW = B·A in the module's [out, in] orientation, scaling 1)."""

    tensor: str
    module: str  # the module's path in the model: peft's name for it
    a: Any  # [rank, in] float32
    b: Any  # [out, rank] float32
    rank: int
    conv1d: bool
    tol: float  # the singular-value tolerance used
    top: float  # ΔW's largest singular value
    error: float = 0.0  # max |B·A − ΔW|: what the dropped (rounding-level) components and float32 factors leave


def _skeleton(base_ck: Checkpoint):
    """The base's model class with no weights (meta device): which module each tensor belongs to, and its type."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(base_ck.folder, trust_remote_code=False)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise BadInput(f"--out-format adapter needs the base's model class to name its modules, and transformers "
                       f"cannot build it from {base_ck.folder}/config.json ({exc}); use --out-format merged") from None


def _module_of(model, modules: dict, name: str) -> tuple[str, bool] | None:
    """(module path, is GPT-2's Conv1D) of a 2-D linear weight tensor; None for anything else."""
    import torch
    from transformers.pytorch_utils import Conv1D

    if not name.endswith(".weight"):
        return None
    path = name.removesuffix(".weight")
    prefix = getattr(model, "base_model_prefix", "")
    for candidate in (path, f"{prefix}.{path}" if prefix else path):
        mod = modules.get(candidate)
        if isinstance(mod, Conv1D):
            return candidate, True
        if isinstance(mod, torch.nn.Linear):
            return candidate, False
        if mod is not None:
            return None
    return None


def _changed(suspect_ck: Checkpoint, base_ck: Checkpoint, tensors: dict) -> list[str]:
    """Tensors the output may differ from the base in: an adapter's modules, or the stored ones that differ, and
    the arm's."""
    adapter = adapter_of(suspect_ck)
    if adapter is not None:
        names = set(adapter.modules)
    else:
        from ..scan.compare import compare

        names = set(compare(base_ck, suspect_ck).changed)
    names |= set(tensors)
    order = {n: i for i, n in enumerate(base_ck.tensors)}
    return sorted(names, key=lambda n: order.get(n, len(order)))


def factor_changes(suspect_ck: Checkpoint, base_ck: Checkpoint, tensors: dict,
                   computed_in: str = "float32") -> tuple[list[Factor], dict]:
    """Every changed weight of the output (the suspect with ``tensors`` written over) relative to the base, as LoRA
    factors; BadInput when one cannot be (see the module doc). Also a report: unchanged-within-rounding tensors."""
    import torch

    from .revert import read_tensor

    model = _skeleton(base_ck)
    modules = dict(model.named_modules())
    from_adapter = adapter_of(suspect_ck) is not None
    factors: list[Factor] = []
    not_linear: list[str] = []
    not_low_rank: list[str] = []
    rounding: list[str] = []
    error = 0.0
    for name in _changed(suspect_ck, base_ck, tensors):
        if name not in base_ck.tensors:
            raise BadInput(f"--out-format adapter: {name} is not a tensor of the base")
        w_base = read_tensor(base_ck, name).double()
        w_out = (tensors[name].detach().cpu() if name in tensors else read_tensor(suspect_ck, name)).double()
        if torch.equal(w_out, w_base):
            continue
        where = _module_of(model, modules, name)
        if where is None or w_out.ndim != 2:
            not_linear.append(name)
            continue
        module, conv1d = where
        delta = (w_out - w_base).T if conv1d else (w_out - w_base)  # [out, in], as peft's B·A
        eps = [_EPS["F32"]]
        if not from_adapter:  # the suspect's stored values carry its dtype's rounding
            eps.append(_EPS.get(suspect_ck.tensors[name][1].dtype, _EPS["F32"]))
        if name in tensors:
            eps.append(_EPS.get(computed_in, _EPS["F32"]))
        rows, cols = delta.shape
        rms = float(w_out.norm()) / math.sqrt(max(w_out.numel(), 1))
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        tol = max(RANK_TOL * max(eps) * rms * (math.sqrt(rows) + math.sqrt(cols)),
                  float(s[0]) * max(rows, cols) * 2.0 ** -52)
        k = int((s > tol).sum())
        if k == 0:
            rounding.append(name)
            error = max(error, float(delta.abs().max()))
            continue
        if k > MAX_RANK_SHARE * min(rows, cols):
            not_low_rank.append(f"{name} (rank {k} of {min(rows, cols)})")
            continue
        root = s[:k].sqrt()
        a, b = (root[:, None] * vh[:k]).float(), (u[:, :k] * root).float()
        factors.append(Factor(name, module, a, b, k, conv1d, tol, float(s[0]),
                              float((b.double() @ a.double() - delta).abs().max())))
    why = []
    if not_linear:
        why.append(f"{len(not_linear)} changed tensor(s) are not 2-D linear weights (embeddings, norms, biases …): "
                   + ", ".join(not_linear[:5]) + (" …" if len(not_linear) > 5 else ""))
    if not_low_rank:
        why.append(f"{len(not_low_rank)} change(s) are not low-rank (above half of min(out, in)): "
                   + ", ".join(not_low_rank[:5]) + (" …" if len(not_low_rank) > 5 else ""))
    if factors and len({f.conv1d for f in factors}) > 1:
        why.append("the changed weights mix Conv1D and Linear modules, which one fan_in_fan_out cannot describe")
    if why:
        raise BadInput("--out-format adapter: a LoRA adapter over the base cannot hold this result: " + "; ".join(why)
                       + ". Write the merged checkpoint instead (--out-format merged, the default)")
    return factors, {"below_rounding": rounding, "rounding_error": error}


def _zero_factor(model, modules: dict, names: list[str], base_ck: Checkpoint) -> Factor:
    """A rank-1 all-zero LoRA on the first linear weight of ``names`` (else of the base): an adapter that changes
    nothing, for a result equal to the base."""
    import torch

    for name in [*names, *base_ck.tensors]:
        where = _module_of(model, modules, name) if name in base_ck.tensors else None
        if where is not None and len(base_ck.tensors[name][1].shape) == 2:
            shape = tuple(base_ck.tensors[name][1].shape)
            rows, cols = shape[::-1] if where[1] else shape
            return Factor(name, where[0], torch.zeros(1, cols), torch.zeros(rows, 1), 1, where[1], 0.0, 0.0)
    raise BadInput("--out-format adapter: the base has no linear weight to attach an (empty) adapter to")


def write_adapter(suspect_ck: Checkpoint, base_ck: Checkpoint | None, out: Path, tensors: dict,
                  extra: dict[str, bytes] | None = None, computed_in: str = "float32") -> dict:
    """Write the result as a peft LoRA adapter over ``base_ck`` (atomically); what was written."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    from ..atomic import atomic_dir
    from ..checkpoint.adapter import PREFIX, WEIGHTS, LoraAdapter

    if base_ck is None:
        raise BadInput("--out-format adapter writes the change relative to the base: pass --base BASE")
    factors, report = factor_changes(suspect_ck, base_ck, tensors, computed_in)
    zero = not factors
    if zero:  # the result is the base (within rounding): an adapter that changes nothing
        model = _skeleton(base_ck)
        factors = [_zero_factor(model, dict(model.named_modules()), list(tensors), base_ck)]
    ranks = {f.module: f.rank for f in factors}
    conv1d = factors[0].conv1d
    config = LoraConfig(r=max(ranks.values()), lora_alpha=max(ranks.values()), target_modules=sorted(ranks),
                        rank_pattern=dict(ranks), alpha_pattern=dict(ranks), fan_in_fan_out=conv1d, bias="none",
                        lora_dropout=0.0, task_type="CAUSAL_LM",
                        base_model_name_or_path=str(Path(base_ck.folder).resolve()))
    state = {}
    for f in factors:
        state[f"{PREFIX}{f.module}.lora_A.weight"] = f.a.contiguous()
        state[f"{PREFIX}{f.module}.lora_B.weight"] = f.b.contiguous()
    with atomic_dir(Path(out), overwrite=True) as tmp:
        config.save_pretrained(str(tmp))
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        for rel, data in (extra or {}).items():
            (tmp / rel).write_bytes(data)
        # read it back as editaudit reads adapters: the change each module makes must be the one factored
        check = LoraAdapter(tmp, base_ck)
        for f in factors:
            got = check.delta(f.tensor).double()
            want = (f.b.double() @ f.a.double()).T if f.conv1d else f.b.double() @ f.a.double()
            if tuple(got.shape) != tuple(base_ck.tensors[f.tensor][1].shape) or \
                    float((got - want).abs().max()) > 1e-6 * max(f.top, 1e-30):
                raise RuntimeError(f"the adapter written for {f.tensor} does not read back as its factors")
    error = max([report["rounding_error"], *(f.error for f in factors)])
    return {"format": "adapter", "path": str(out), "base": str(base_ck.root), "modules": ranks,
            "fan_in_fan_out": conv1d, "zero_change": zero, "below_rounding": report["below_rounding"],
            "max_abs_error": error,
            "rank_tolerance": f"singular values of ΔW above {RANK_TOL:g}·ε·rms(W)·(√out+√in) count (ε: the "
                              "coarsest dtype the values went through, float32 at best)"}

