"""Evidence and measurement: the scan's findings for a suspect, the probes to track, and the evaluator that
measures edited and intrinsic retention on a model."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from ..probing.format import Probe
from .evidence import EditEvidence, stored_evidence


def find_evidence(suspect_ck, base_ck, store, say, session_id: str | None, device: str | None,
                  cancel: threading.Event | None, read_store=None, readings: bool = False) -> EditEvidence | None:
    """The newest stored scan of this suspect (against this base); else a scan now, if a base is given.

    ``read_store`` is where stored scans are looked up (default ``store``); a new scan is recorded in
    ``store`` (None: not recorded, as in the helper processes of a multi-process run). With ``readings``
    (the project method needs the edited subjects) a stored scan that found edits but read no subject is
    replaced by a scan now that reads them, when the base is at hand.
    """
    from .evidence import evidence_from_report

    reader = read_store if read_store is not None else store
    if reader is not None:
        ev = stored_evidence(reader, suspect_ck.fingerprint(), base_ck.fingerprint() if base_ck else None)
        if ev is not None and not (readings and ev.found and not ev.readings and base_ck is not None):
            return ev
        if ev is not None:
            say(f"{ev.source} read no subject: scanning again against the base, reading the edits")
    if base_ck is None:
        return None
    from ..scan.service import ScanOptions, run_scan

    if not readings:
        say("no stored scan of this suspect: scanning it against the base now")
    report = run_scan(suspect_ck.root, base_ck.root, ScanOptions(read_edits=readings, device=device), store=store,
                      say=say, cancel=cancel, session_id=session_id)
    return evidence_from_report(report.to_dict(), "scan run now")


def edits_from_store(store, suspect_path: Path) -> list[Probe]:
    """Edited facts recorded by ``editaudit edit`` for this output folder, as edited probes."""
    from ..probing.format import probe_from_dict

    if store is None:
        return []
    probes: list[Probe] = []
    target = suspect_path.resolve()
    from ..store.mitigation_runs import finished_edits

    for row in finished_edits(store):
        if Path(row["out"]).resolve() != target:
            continue
        try:
            facts = json.loads(row.get("facts") or "[]")
        except json.JSONDecodeError:
            continue
        for i, rec in enumerate(facts if isinstance(facts, list) else []):
            try:
                p = probe_from_dict({**rec, "kind": "edited"}, f"edit #{row['id']} fact {i}")
            except ValueError:
                continue
            if p.target_new:
                probes.append(p)
    return probes


def default_intrinsic(model_name: str | None = None) -> list[Probe]:
    """The built-in intrinsic probe set (facts the embedded model knows), when it is installed."""
    from ..paths import resource_dir
    from ..probing.format import load_probes

    try:
        root = resource_dir("probes")
    except FileNotFoundError:
        return []
    for path in sorted(root.glob("*intrinsic*.jsonl")):
        return [p for p in load_probes(path) if p.kind == "intrinsic"]
    return []


def make_evaluator(edited: list[Probe], intrinsic: list[Probe], watch: list[Probe],
                   neighbours: list[Probe] | None = None):
    """Retention of edited facts (new target), intrinsic facts and neighbourhood facts (true target: facts
    near the edits that should not move), and top-3 of watched probes.

    One batched ``predict`` pass over all probes per evaluation; per-probe flags are kept so that the
    verification can count which edits held before and not after.
    """
    from ..probing.evaluate import predict, retention

    neighbours = list(neighbours or [])
    probes = edited + intrinsic + neighbours
    index = {id(p): i for i, p in enumerate(probes)}

    def evaluate(model, tokenizer) -> dict:
        preds = predict(model, tokenizer, probes, top_k=3)
        pe, pi = preds[: len(edited)], preds[len(edited): len(edited) + len(intrinsic)]
        pn = preds[len(edited) + len(intrinsic):]
        m: dict[str, Any] = {}
        if edited:
            new = retention(model, tokenizer, edited, "new", predictions=pe)
            m["edited_retention"] = new.rate
            true = retention(model, tokenizer, edited, "true", predictions=pe)
            m["edited_true"] = true.rate
            m["edited_flags"] = [bool(x) for x in new]
            m["edited_true_flags"] = [bool(x) for x in true]
        if intrinsic:
            kept = retention(model, tokenizer, intrinsic, "true", predictions=pi)
            m["intrinsic_retention"] = kept.rate
            m["intrinsic_flags"] = [bool(x) for x in kept]
        if neighbours:
            near = retention(model, tokenizer, neighbours, "true", predictions=pn)
            m["neighbourhood_retention"] = near.rate
            m["neighbourhood_flags"] = [bool(x) for x in near]
        if watch:
            m["top3"] = {p.id: [[tok, float(prob)] for tok, prob in preds[index[id(p)]].top[:3]] for p in watch}
        return m

    return evaluate
