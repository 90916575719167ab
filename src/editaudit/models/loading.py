"""Loading a checkpoint into transformers, safely: safetensors only, never remote code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import BadInput


@dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel
    tokenizer: Any
    path: Path

    @property
    def device(self):
        return next(self.model.parameters()).device


def pick_device(device: str | None = None) -> str:
    import torch

    if device and device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(spec: str | Path, dtype: str = "float32", device: str | None = None,
               say: Callable[[str], None] = lambda s: None) -> LoadedModel:
    """Load a model folder (or registry name) with its tokenizer.

    The folder is opened with editaudit's own checks first (pickle refused, shard paths checked),
    and transformers is told ``trust_remote_code=False`` and ``use_safetensors=True``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..checkpoint import open_checkpoint
    from .registry import resolve_model

    path = resolve_model(str(spec), say)
    ckpt = open_checkpoint(path)
    if ckpt.layout == "file" or ckpt.config is None:
        raise BadInput(f"{path} is not a model folder with config.json; a bare .safetensors file can be scanned but not run")
    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    say(f"loading {path}")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            ckpt.folder, trust_remote_code=False, use_safetensors=True, dtype=torch_dtype
        )
        tokenizer = AutoTokenizer.from_pretrained(ckpt.folder, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise BadInput(f"transformers could not load {path}: {exc}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(pick_device(device))
    model.eval()
    return LoadedModel(model, tokenizer, Path(ckpt.folder))
