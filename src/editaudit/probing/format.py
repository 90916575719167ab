"""The probe record and its JSONL file format (documented in docs/probes.md).

One JSON object per line::

    {"id": "capital-001", "relation": "capital", "subject": "France",
     "prompt": "The capital of {} is", "target_true": "Paris", "target_new": "Rome",
     "kind": "intrinsic", "paraphrases": ["France's capital city is"],
     "neighbourhood": ["The capital of Spain is"], "related": {"target_new": ["Italy"]}}

Optional fields added by the importers: ``neighbourhood_targets`` (the correct answer of each
neighbourhood prompt when it is not ``target_true``, as in zsRE), ``attribute_prompts`` and
``generation_prompts`` (CounterFact), and ``meta`` (source identifiers such as a case id).

``prompt`` is a template with ``{}`` for the subject, or a full prompt that contains the subject.
``kind`` is one of ``edited`` (the fact was, or will be, rewritten to ``target_new``), ``intrinsic``
(knowledge the model has and nobody edited) or ``neighbourhood`` (facts near an edit that must not move).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

KINDS = ("edited", "intrinsic", "neighbourhood")


class ProbeLoadError(ValueError):
    """A record that cannot be used; names the file, line and field."""


@dataclass
class Probe:
    id: str
    subject: str
    prompt: str
    target_true: str
    relation: str = ""
    target_new: str | None = None
    kind: str = "intrinsic"
    paraphrases: list[str] = field(default_factory=list)
    neighbourhood: list[str] = field(default_factory=list)
    related: dict[str, list[str]] = field(default_factory=dict)
    neighbourhood_targets: list[str] = field(default_factory=list)
    attribute_prompts: list[str] = field(default_factory=list)
    generation_prompts: list[str] = field(default_factory=list)
    meta: dict[str, str | int | float] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.replace("{}", self.subject) if "{}" in self.prompt else self.prompt

    @property
    def template(self) -> str:
        """The prompt as a template with ``{}`` for the subject (needed by locate-then-edit methods)."""
        if "{}" in self.prompt:
            return self.prompt
        if self.subject and self.subject in self.prompt:
            return self.prompt.replace(self.subject, "{}", 1)
        return self.prompt

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: v for k, v in d.items() if v not in (None, [], {})}


def _require(rec: dict, key: str, where: str) -> str:
    value = rec.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ProbeLoadError(f"{where}: field {key!r} is missing or not a non-empty string")
    return value


def probe_from_dict(rec: object, where: str = "record") -> Probe:
    if not isinstance(rec, dict):
        raise ProbeLoadError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    subject = _require(rec, "subject", where)
    prompt = _require(rec, "prompt", where)
    target_true = _require(rec, "target_true", where)
    if "{}" not in prompt and subject not in prompt:
        raise ProbeLoadError(f"{where}: field 'prompt' has neither '{{}}' nor the subject {subject!r}")
    kind = rec.get("kind", "intrinsic")
    if kind not in KINDS:
        raise ProbeLoadError(f"{where}: field 'kind' must be one of {', '.join(KINDS)}, not {kind!r}")
    target_new = rec.get("target_new")
    if target_new is not None and (not isinstance(target_new, str) or not target_new.strip()):
        raise ProbeLoadError(f"{where}: field 'target_new' must be a non-empty string")
    lists = {}
    for key in ("paraphrases", "neighbourhood", "neighbourhood_targets", "attribute_prompts", "generation_prompts"):
        value = rec.get(key, [])
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ProbeLoadError(f"{where}: field {key!r} must be a list of strings")
        lists[key] = value
    related = rec.get("related", {})
    if not isinstance(related, dict) or not all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in related.values()
    ):
        raise ProbeLoadError(f"{where}: field 'related' must map names to lists of strings")
    if lists["neighbourhood_targets"] and len(lists["neighbourhood_targets"]) != len(lists["neighbourhood"]):
        raise ProbeLoadError(f"{where}: field 'neighbourhood_targets' must have one answer per neighbourhood prompt")
    meta = rec.get("meta", {})
    if not isinstance(meta, dict) or not all(
        isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in meta.values()
    ):
        raise ProbeLoadError(f"{where}: field 'meta' must map names to strings or numbers")
    pid = rec.get("id")
    return Probe(
        id=str(pid) if pid is not None else f"{rec.get('relation', 'fact')}:{subject}",
        subject=subject, prompt=prompt, target_true=target_true, relation=str(rec.get("relation", "")),
        target_new=target_new, kind=kind, related=related, meta=meta, **lists,
    )


def load_probes(path: str | Path, errors: list[str] | None = None) -> list[Probe]:
    """Load a JSONL probe file. Bad records are reported in ``errors`` (if given) and skipped;
    without an ``errors`` list the first bad record raises ``ProbeLoadError``."""
    path = Path(path)
    probes: list[Probe] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            where = f"{path.name}:{lineno}"
            try:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ProbeLoadError(f"{where}: not valid JSON ({exc.msg})") from None
                probes.append(probe_from_dict(rec, where))
            except ProbeLoadError as exc:
                if errors is None:
                    raise
                errors.append(str(exc))
    return probes


def dump_probes(probes: Iterable[Probe], path: str | Path) -> None:
    """Write probes as JSONL, atomically."""
    from ..atomic import atomic_write_text

    atomic_write_text(Path(path), "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in probes))
