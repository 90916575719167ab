"""Loading a checkpoint into transformers, safely: safetensors only, never remote code."""

from __future__ import annotations

import inspect

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import BadInput, ModelUnloadable


@dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel
    tokenizer: Any
    path: Path

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype


def pick_device(device: str | None = None) -> str:
    """The device to run on: ``device`` as given (checked to exist), or CUDA when present, else the CPU."""
    import torch

    if not device or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise BadInput(f"--device {device!r} is not a device (cpu, cuda, cuda:1, mps …)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInput(f"--device {device}: no CUDA device is available here (torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BadInput(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here (cuda:0 …)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise BadInput(f"--device {device}: MPS is not available here")
    return device


DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
_ALIASES = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16", "fp16": "float16", "f16": "float16",
            "half": "float16"}


def resolve_dtype(name: str | None, device: str | None = None):
    """The torch dtype a model runs in: ``name`` (float32, bfloat16, float16) or ``auto``.

    ``auto`` is bfloat16 on a CUDA device that supports it (Ampere and newer: half the memory of float32
    at float32's range) and float32 everywhere else (CPUs, older GPUs, MPS), where 16-bit compute is
    slow or loses range. ``device`` is resolved as :func:`pick_device` resolves it.
    """
    import torch

    key = _ALIASES.get((name or "auto").lower(), (name or "auto").lower())
    if key not in DTYPE_NAMES:
        raise BadInput(f"--dtype {name!r} is not one of {', '.join(DTYPE_NAMES)}")
    if key != "auto":
        return getattr(torch, key)
    dev = torch.device(pick_device(device))
    if dev.type == "cuda" and torch.cuda.is_available():
        with torch.cuda.device(dev.index if dev.index is not None else torch.cuda.current_device()):
            if torch.cuda.is_bf16_supported():
                return torch.bfloat16
    return torch.float32


def dtype_name(dtype) -> str:
    """``torch.bfloat16`` → ``bfloat16`` (for reports and stored settings)."""
    return str(dtype).removeprefix("torch.")


def _tokenizer(folder: str | Path, name: str | Path) -> Any:
    """The tokenizer in ``folder`` (already opened with editaudit's checks), or ``ModelUnloadable`` naming ``name``."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelUnloadable(f"transformers could not load the tokenizer of {name}: {exc}") from None


def load_model(spec: str | Path, dtype: str = "float32", device: str | None = None,
               say: Callable[[str], None] = lambda s: None, tokenizer_fallback: str | Path | None = None) -> LoadedModel:
    """Load a model folder (or registry name, or Hub id) with its tokenizer, in ``dtype`` on ``device``.

    ``dtype`` is a name :func:`resolve_dtype` takes (``auto``: bfloat16 on a capable GPU, else float32).
    ``tokenizer_fallback``: a folder whose tokenizer is taken when this one has none that loads (a suspect shipped
    as weights and config only is read through its base's vocabulary, which the scan has already matched).
    The folder is opened with editaudit's own checks first (pickle refused, shard paths checked),
    and transformers is told ``trust_remote_code=False`` and ``use_safetensors=True``.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    # transformers draws a "Loading weights" bar on stderr for every load, in the middle of editaudit's own progress
    hf_logging.disable_progress_bar()

    from ..checkpoint import open_checkpoint
    from .registry import resolve_model

    dev = pick_device(device)  # a bad --device fails before anything is read
    torch_dtype = resolve_dtype(dtype, dev)
    path = resolve_model(str(spec), say)
    from ..checkpoint.adapter import is_adapter_dir

    if is_adapter_dir(path):
        return _load_adapted(path, dtype, dev, say)
    ckpt = open_checkpoint(path)
    if ckpt.layout == "file" or ckpt.config is None:
        raise BadInput(f"{path} is not a model folder with config.json; a bare .safetensors file can be scanned but not run")
    say(f"loading {path} ({dtype_name(torch_dtype)} on {dev})")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            ckpt.folder, trust_remote_code=False, use_safetensors=True, dtype=torch_dtype
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelUnloadable(f"transformers could not load {path}: {exc}") from None
    try:
        tokenizer = _tokenizer(ckpt.folder, path)
    except ModelUnloadable:
        if tokenizer_fallback is None:
            raise
        say(f"{path} has no tokenizer that loads: reading it through {tokenizer_fallback}'s")
        tokenizer = _tokenizer(open_checkpoint(Path(tokenizer_fallback)).folder, tokenizer_fallback)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(dev)
    model.eval()
    return LoadedModel(model, tokenizer, Path(ckpt.folder))


def _load_adapted(folder: Path, dtype: str, device: str, say: Callable[[str], None]) -> LoadedModel:
    """A peft LoRA adapter folder as a runnable model: its base with ΔW added in memory (peft not needed)."""
    from ..checkpoint import open_checkpoint
    from ..checkpoint.adapter import LoraAdapter, apply_to_model, base_for

    base = base_for(folder, say)
    lm = load_model(base, dtype=dtype, device=device, say=say)
    n = apply_to_model(lm.model, LoraAdapter(Path(folder), open_checkpoint(base)))
    say(f"applied the adapter {folder} to {n} weight(s) of {base}")
    return LoadedModel(lm.model, lm.tokenizer, Path(folder))


def precision_note(spec: str | Path, dtype: str, device: str | None = None) -> str | None:
    """A warning when an edit would run in 16 bits on a checkpoint that stores float32 matrices.

    The edited matrices are written back from the model as it ran, so each one then carries 16-bit
    rounding in every element: a scan sees a dense change with the edit standing out of it, not the
    clean low-rank change the method made. None when there is nothing to say (or the spec is unusable:
    loading reports that)."""
    import torch

    try:
        torch_dtype = resolve_dtype(dtype, device)
        if torch_dtype not in (torch.bfloat16, torch.float16):
            return None
        from ..checkpoint import open_checkpoint
        from .registry import resolve_model

        ckpt = open_checkpoint(resolve_model(str(spec)))
    except BadInput:
        return None
    if not any(info.dtype == "F32" and len(info.shape) == 2 for _, info in ckpt.tensors.values()):
        return None
    return (f"editing in {dtype_name(torch_dtype)} a checkpoint stored in float32: every element of the edited "
            "matrices will carry 16-bit rounding when written (a scan then sees a dense change around the edit); "
            "pass --dtype float32 for an edit that changes only what the method changes")


def cache_kw(model) -> str:
    """The forward keyword for a KV cache: ``cache`` in current transformers, ``past_key_values`` before."""
    name = getattr(model, "_editaudit_cache_kw", None)
    if name is None:
        name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        try:
            model._editaudit_cache_kw = name
        except Exception:  # pragma: no cover - exotic module classes
            pass
    return name
