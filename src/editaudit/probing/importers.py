"""Importers for the benchmark files knowledge-editing papers use: CounterFact and zsRE.

Both are published as a JSON array (``counterfact.json``, ``zsre_mem_eval.json``) and sometimes
re-shared as JSONL; either layout is read. Each record becomes one ``edited`` probe. A malformed
record is reported as ``file:line: field 'a.b': problem`` and skipped, and the rest still load
(in a JSON array, a syntax error stops the reading at that line since the array cannot be resynced).

CounterFact record -> probe::

    requested_rewrite.{prompt, subject, target_true.str, target_new.str, relation_id}
        -> prompt, subject, target_true, target_new, relation
    paraphrase_prompts -> paraphrases; neighborhood_prompts -> neighbourhood (answer: target_true)
    attribute_prompts, generation_prompts -> kept as they are; case_id -> id "cf-<case_id>"

zsRE record -> probe::

    src -> prompt (a question containing the subject), subject, answers[0] -> target_true,
    alt -> target_new, rephrase -> paraphrases, loc -> neighbourhood, loc_ans -> neighbourhood_targets
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from .format import Probe, ProbeLoadError, load_probes, probe_from_dict

FORMATS = ("counterfact", "zsre", "probes")


def _records(path: Path, errors: list[str] | None) -> Iterator[tuple[str, Any]]:
    """(where, record) for each record of a JSON array or JSONL file; syntax errors are reported."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        decoder = json.JSONDecoder()
        pos = len(text) - len(stripped) + 1
        while True:
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(text) or text[pos] == "]":
                return
            line = text.count("\n", 0, pos) + 1
            try:
                rec, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                _fail(errors, f"{path.name}:{exc.lineno}: not valid JSON ({exc.msg}); stopped reading the array here")
                return
            yield f"{path.name}:{line}", rec
            pos = end
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                _fail(errors, f"{path.name}:{lineno}: not valid JSON ({exc.msg})")
                continue
            yield f"{path.name}:{lineno}", rec


def _fail(errors: list[str] | None, message: str) -> None:
    if errors is None:
        raise ProbeLoadError(message)
    errors.append(message)


def _get(rec: Any, dotted: str, where: str, kind: type = str, required: bool = True) -> Any:
    cur = rec
    for part in dotted.split("."):
        if not isinstance(cur, dict):
            raise ProbeLoadError(f"{where}: field {dotted!r}: expected an object at {part!r}")
        if part not in cur:
            if required:
                raise ProbeLoadError(f"{where}: field {dotted!r} is missing")
            return None
        cur = cur[part]
    if kind is str:
        if not isinstance(cur, str) or not cur.strip():
            raise ProbeLoadError(f"{where}: field {dotted!r} must be a non-empty string")
    elif kind is list:
        if not isinstance(cur, list) or not all(isinstance(x, str) for x in cur):
            raise ProbeLoadError(f"{where}: field {dotted!r} must be a list of strings")
    return cur


def _str_list(rec: dict, key: str, where: str) -> list[str]:
    value = _get(rec, key, where, list, required=False)
    return list(value) if value is not None else []


def counterfact_record(rec: Any, where: str, n: int) -> Probe:
    if not isinstance(rec, dict):
        raise ProbeLoadError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    rw = "requested_rewrite"
    prompt = _get(rec, f"{rw}.prompt", where)
    subject = _get(rec, f"{rw}.subject", where)
    if "{}" not in prompt:
        raise ProbeLoadError(f"{where}: field '{rw}.prompt' has no '{{}}' for the subject")
    relation = _get(rec, f"{rw}.relation_id", where, required=False)
    case_id = rec.get("case_id", n)
    meta: dict[str, Any] = {"source": "counterfact", "case_id": case_id if isinstance(case_id, (int, str)) else n}
    for key in ("pararel_idx",):
        if isinstance(rec.get(key), (int, str)):
            meta[key] = rec[key]
    record = {
        "id": f"cf-{meta['case_id']}", "relation": relation if isinstance(relation, str) else "",
        "subject": subject, "prompt": prompt,
        "target_true": _get(rec, f"{rw}.target_true.str", where),
        "target_new": _get(rec, f"{rw}.target_new.str", where),
        "kind": "edited",
        "paraphrases": _str_list(rec, "paraphrase_prompts", where),
        "neighbourhood": _str_list(rec, "neighborhood_prompts", where),
        "attribute_prompts": _str_list(rec, "attribute_prompts", where),
        "generation_prompts": _str_list(rec, "generation_prompts", where),
        "meta": meta,
    }
    return probe_from_dict(record, where)


def zsre_record(rec: Any, where: str, n: int) -> Probe:
    if not isinstance(rec, dict):
        raise ProbeLoadError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    src = _get(rec, "src", where)
    subject = _get(rec, "subject", where)
    answers = _get(rec, "answers", where, list)
    if not answers or not answers[0].strip():
        raise ProbeLoadError(f"{where}: field 'answers' must hold at least one non-empty answer")
    if subject not in src:
        raise ProbeLoadError(f"{where}: field 'src' does not contain the subject {subject!r}")
    loc = rec.get("loc")
    loc_ans = rec.get("loc_ans")
    neighbourhood, targets = [], []
    if loc is not None or loc_ans is not None:
        loc = _get(rec, "loc", where)
        loc_ans = _get(rec, "loc_ans", where)
        neighbourhood, targets = [loc], [loc_ans]
    rephrase = rec.get("rephrase")
    if rephrase is not None:
        rephrase = _get(rec, "rephrase", where)
    case_id = rec.get("case_id", n)
    record = {
        "id": f"zsre-{case_id if isinstance(case_id, (int, str)) else n}", "relation": "zsre",
        "subject": subject, "prompt": src, "target_true": answers[0], "target_new": _get(rec, "alt", where),
        "kind": "edited", "paraphrases": [rephrase] if rephrase else [],
        "neighbourhood": neighbourhood, "neighbourhood_targets": targets,
        "meta": {"source": "zsre", "record": n},
    }
    return probe_from_dict(record, where)


def detect_format(path: str | Path) -> str:
    """'counterfact', 'zsre' or 'probes', from the first record's keys."""
    path = Path(path)
    for _, rec in _records(path, errors=[]):
        if isinstance(rec, dict):
            if "requested_rewrite" in rec:
                return "counterfact"
            if "src" in rec and "alt" in rec:
                return "zsre"
            return "probes"
        break
    return "probes"


def import_file(path: str | Path, fmt: str = "auto", errors: list[str] | None = None,
                limit: int | None = None) -> list[Probe]:
    """Probes from a CounterFact, zsRE or probe file. Bad records go to ``errors`` (or raise without it)."""
    try:
        return _import_file(Path(path), fmt, errors, limit)
    except UnicodeDecodeError:  # a binary file given as probes: its name and what is wrong, not a codec error
        raise ProbeLoadError(f"{path}: not UTF-8 text; probe files are JSONL or JSON") from None


def _import_file(path: Path, fmt: str, errors: list[str] | None, limit: int | None) -> list[Probe]:
    if not path.is_file():
        raise ProbeLoadError(f"{path}: no such file")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise ProbeLoadError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)}, auto)")
    if fmt == "probes":
        probes = load_probes(path, errors)
        return probes[:limit] if limit is not None else probes
    convert = counterfact_record if fmt == "counterfact" else zsre_record
    probes: list[Probe] = []
    seen: set[str] = set()
    for n, (where, rec) in enumerate(_records(path, errors)):
        if limit is not None and len(probes) >= limit:
            break
        try:
            probe = convert(rec, where, n)
            if probe.id in seen:
                raise ProbeLoadError(f"{where}: field 'case_id' repeats {probe.id!r}")
            seen.add(probe.id)
            probes.append(probe)
        except ProbeLoadError as exc:
            _fail(errors, str(exc))
    return probes
