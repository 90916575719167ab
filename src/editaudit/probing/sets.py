"""Finding probe sets by name: the user's built sets first, then the ones shipped with editaudit.

``facts`` is the fact bank; ``<model>-edit`` / ``<model>-intrinsic`` are sets filtered for a model
by ``editaudit probes build``. A name can also be a path to a probe, CounterFact or zsRE file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput
from .format import Probe, ProbeLoadError

FACT_BANK = "facts"


def user_probe_dir() -> Path:
    """Where ``editaudit probes build`` writes by default (``EDITAUDIT_PROBES`` overrides)."""
    env = os.environ.get("EDITAUDIT_PROBES")
    if env:
        return Path(env)
    from ..paths import data_dir

    return data_dir() / "probes"


def search_dirs() -> list[Path]:
    dirs = [user_probe_dir()]
    try:
        from ..paths import resource_dir

        dirs.append(resource_dir("probes"))
    except FileNotFoundError:
        pass
    return [d for d in dirs if d.is_dir()]


@dataclass
class SetInfo:
    name: str
    path: Path
    count: int
    shipped: bool
    manifest: dict | None

    def to_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "count": self.count, "shipped": self.shipped,
                "kind": (self.manifest or {}).get("kind"), "model": ((self.manifest or {}).get("model") or {}).get("name")}


def _manifest(path: Path) -> dict | None:
    m = path.with_name(path.stem + ".manifest.json")
    if not m.is_file():
        return None
    try:
        doc = json.loads(m.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def list_sets() -> list[SetInfo]:
    """Every named set, user sets shadowing shipped ones of the same name."""
    seen: dict[str, SetInfo] = {}
    shipped_dir = None
    try:
        from ..paths import resource_dir

        shipped_dir = resource_dir("probes").resolve()
    except FileNotFoundError:
        pass
    for d in search_dirs():
        for path in sorted(d.glob("*.jsonl")):
            if path.stem in seen:
                continue
            with path.open(encoding="utf-8") as fh:
                count = sum(1 for line in fh if line.strip() and not line.lstrip().startswith("#"))
            seen[path.stem] = SetInfo(path.stem, path, count, d.resolve() == shipped_dir, _manifest(path))
    return list(seen.values())


def resolve_set(name: str) -> Path:
    """A set name (``facts``, ``smollm2-135m-intrinsic``) or a path, as a file path."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    stem = name[:-6] if name.endswith(".jsonl") else name
    for d in search_dirs():
        cand = d / f"{stem}.jsonl"
        if cand.is_file():
            return cand
    avail = ", ".join(s.name for s in list_sets()) or "none"
    raise BadInput(f"no probe set or file {name!r} (named sets: {avail})")


def load_set(name: str, errors: list[str] | None = None) -> list[Probe]:
    """Load a named set or a probe/CounterFact/zsRE file; a malformed record raises BadInput unless
    ``errors`` is given, in which case it is listed there and skipped."""
    from .importers import import_file

    path = resolve_set(name)
    try:
        return import_file(path, "auto", errors)
    except ProbeLoadError as exc:
        raise BadInput(str(exc)) from None


def fact_bank() -> list[Probe]:
    return load_set(FACT_BANK)


def round_robin(facts: list[Probe]) -> list[Probe]:
    """Facts taken round-robin over relations (file order within each), so that any leading slice spans
    several relations: how the evaluation scripts split one fact file over their arms."""
    by_rel: dict[str, list[Probe]] = {}
    for f in facts:
        by_rel.setdefault(f.relation, []).append(f)
    out, queues = [], list(by_rel.values())
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out
