"""Completion and validation for model and probe-file paths typed into the app.

Typing checks are cheap (no header is read): whether the path exists, is a safetensors file or a
folder holding one, or names the embedded default model. The service opens and validates the
checkpoint for real when the work starts, and its error is shown if that fails.
"""

from __future__ import annotations

import os
from pathlib import Path

from textual.suggester import Suggester
from textual.validation import ValidationResult, Validator

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl"}


def model_names() -> dict[str, str]:
    """Registry model names (and aliases) → their canonical name."""
    try:
        from editaudit.models.registry import pinned_models
    except Exception:  # a broken data folder must not stop typing
        return {}
    names: dict[str, str] = {}
    for key, spec in pinned_models().items():
        names[key] = key
        for alias in spec.get("aliases", []):
            names[alias] = key
    return names


def model_is_cached(name: str) -> bool:
    from editaudit.models.registry import model_dir

    folder = model_dir(name)
    return (folder / "config.json").exists() and (folder / "model.safetensors").exists()


def complete_path(value: str, suffixes: tuple[str, ...] = ()) -> str | None:
    """The first filesystem completion of ``value`` (folders end in ``/``), or None."""
    if not value:
        return None
    expanded = os.path.expanduser(value)
    head, tail = os.path.split(expanded)
    folder = Path(head or ".")
    try:
        entries = sorted(os.scandir(folder), key=lambda e: (not e.is_dir(), e.name))
    except OSError:
        return None
    for entry in entries:
        name = entry.name
        if not name.startswith(tail) or (name.startswith(".") and not tail.startswith(".")):
            continue
        is_dir = entry.is_dir()
        if not is_dir and suffixes and not name.endswith(suffixes):
            continue
        candidate = value + name[len(tail):] + ("/" if is_dir else "")
        if candidate != value:
            return candidate
    return None


class CheckpointSuggester(Suggester):
    """Suggests registry model names, then filesystem paths."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        if value and "/" not in value:
            for name in model_names():
                if name.startswith(value) and name != value:
                    return name
        return complete_path(value, (".safetensors",))


class FileSuggester(Suggester):
    """Suggests filesystem paths ending in one of ``suffixes`` (and folders on the way)."""

    def __init__(self, suffixes: tuple[str, ...]) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.suffixes = suffixes

    async def get_suggestion(self, value: str) -> str | None:
        return complete_path(value, self.suffixes)


def check_checkpoint(value: str) -> str | None:
    """Why ``value`` cannot be a checkpoint, or None when it looks usable."""
    value = value.strip()
    if not value:
        return "required: a safetensors folder or file, or smollm2-135m"
    path = Path(value).expanduser()
    if not path.exists():
        if value.lower() in model_names():
            return None
        return f"{value} does not exist (and is not a known model name)"
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            return f"{path.name} is a pickle file, never loaded: convert it to safetensors first"
        if path.suffix == ".gguf":
            return "GGUF: convert it first with `editaudit models convert`"
        if path.suffix != ".safetensors":
            return f"{path.name} is not a .safetensors file"
        return None
    if path.is_dir():
        try:
            names = [e.name for e in os.scandir(path)]
        except OSError as exc:
            return f"cannot read {path}: {exc.strerror}"
        if any(n.endswith(".safetensors") for n in names):
            return None
        if any(Path(n).suffix in PICKLE_SUFFIXES for n in names):
            return "only pickle weight files here: convert them to safetensors first"
        return "no .safetensors weights in this folder"
    return f"{path} is neither a file nor a folder"


class CheckpointPath(Validator):
    def validate(self, value: str) -> ValidationResult:
        problem = check_checkpoint(value)
        return self.failure(problem) if problem else self.success()


def check_file(value: str, suffixes: tuple[str, ...], required: bool = False) -> str | None:
    value = value.strip()
    if not value:
        return "required" if required else None
    path = Path(value).expanduser()
    if not path.is_file():
        return f"{value} is not a file"
    if suffixes and not path.name.endswith(suffixes):
        return f"expected a {' or '.join(suffixes)} file"
    return None


class OptionalFile(Validator):
    def __init__(self, suffixes: tuple[str, ...] = (), required: bool = False) -> None:
        super().__init__()
        self.suffixes = suffixes
        self.required = required

    def validate(self, value: str) -> ValidationResult:
        problem = check_file(value, self.suffixes, self.required)
        return self.failure(problem) if problem else self.success()


def check_output_folder(value: str, overwrite: bool = False) -> str | None:
    value = value.strip()
    if not value:
        return "required: where the mitigated checkpoint goes"
    path = Path(value).expanduser()
    if path.exists() and not overwrite:
        return f"{value} already exists (tick overwrite to replace it)"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        return f"cannot write in {parent}"
    return None


def probe_sets() -> list[tuple[str, Path, int]]:
    """Named probe sets (the user's built sets, then the shipped ones) as (name, path, count)."""
    try:
        from editaudit.probing.sets import list_sets

        return [(s.name, s.path, s.count) for s in list_sets()]
    except Exception:  # a broken set must not stop the form from opening
        return []
