"""What the scan says about a suspect's edits, in the form mitigation needs.

Mitigation plans (``auto``/``edited``/``non-edited`` layers) and surgical revert both start from the
scan's edit findings: which layers and tensors were edited, and how many low-rank components make up
each edit. The evidence is read from the scan report (the same JSON the store keeps in ``scans.report``),
so a stored scan and a fresh one are handled by one code path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

# Reports from before EA102 covered every rank reported an MLP output's low-rank change of rank > 8 as
# EA106; a stored scan of many ROME edits in one layer can still say so, so it counts as edit evidence too.
BATCH_RULE = "EA106"


@dataclass
class EditEvidence:
    """Edited layers and tensors from one scan, with the number of edit components per tensor."""

    layers: list[int]
    tensors: list[str]
    components: dict[str, int]  # tensor name -> low-rank components that make up the edit
    findings: list[dict] = field(default_factory=list)  # {rule, layers, tensors, message}
    scan_id: int | None = None
    session_id: str | None = None
    source: str = ""  # human description: "stored scan #3 (session …)" / "scan run now"
    base: str | None = None  # the base checkpoint the scan compared against
    readings: list[dict] = field(default_factory=list)  # the scan's readings with status "edit" (edit_readings)
    uncertain: list[dict] = field(default_factory=list)  # its other readings whose subject fires (uncertain_readings)

    @property
    def found(self) -> bool:
        return bool(self.tensors)

    def describe(self) -> str:
        if not self.found:
            return f"{self.source}: no edit found"
        parts = [f"{f['rule']} layers {','.join(map(str, f['layers'])) or '-'}" for f in self.findings]
        return f"{self.source}: " + "; ".join(parts)

    def to_dict(self) -> dict:
        return {"layers": self.layers, "tensors": self.tensors, "components": self.components,
                "findings": self.findings, "scan_id": self.scan_id, "session_id": self.session_id,
                "source": self.source, "base": self.base, "readings": self.readings, "uncertain": self.uncertain}


def _components(t: dict, finding_rank: int | None) -> int:
    kind = t.get("kind")
    if kind == "rank-one":
        return 1
    if kind == "low-rank":
        return max(1, int(t.get("rank_above_noise") or finding_rank or 1))
    if kind == "dense+spike":
        return max(1, int(t.get("spikes") or 1))
    return max(1, int(finding_rank or 1))


def _edit_findings(doc: dict):
    """The report's findings that are edits (EDIT_RULES, and EA106 on MLP output matrices only)."""
    from ..scan.rules import EDIT_RULES

    stats = {t["name"]: t for t in doc.get("tensors", [])}
    for f in doc.get("findings", []):
        rule = f.get("rule")
        names = list(f.get("tensors") or [])
        if rule == BATCH_RULE:
            if not names or any(stats.get(n, {}).get("role") != "mlp_out" for n in names):
                continue
        elif rule not in EDIT_RULES:
            continue
        yield f


#: An uncertain reading's subject is kept for the erase when its key fires the edit at least this much (the subject
#: search's own floor): its object was not read, but its key is one the edit acts on.
FIRE_MIN = 0.5


def edit_readings(doc: dict, status: str = "edit") -> list[dict]:
    """The scan's readings of its edit findings that it judged to be edits (status ``"edit"``; any other
    ``status``: the rest of them).

    Each edit finding may carry ``readings`` (in the report JSON the finding's data is spread into the
    finding; a stored ``findings`` row keeps it under ``data``): ``{subject, prompt, before, after,
    confidence, status, layer, tensor}``. A finding without them, or a report from before readings
    existed, gives none. Each reading comes back with its finding's rule, layers and tensors added
    (``finding_rule``, ``finding_layers``, ``finding_tensors``): an edit spread over several layers
    (MEMIT) is read once but written in all of them.
    """
    out: list[dict] = []
    for f in _edit_findings(doc):
        data = f.get("data") if isinstance(f.get("data"), dict) else {}
        readings = f.get("readings", data.get("readings"))
        if not isinstance(readings, list):
            continue
        # a base-free reading may hold the merged readings of its edit found again over a batch's run (``forms``,
        # scan.reading.merge_repeats): each is a text the edit acts on, so each is given back as a reading of its own
        unmerged = [y for r in readings if isinstance(r, dict)
                    for y in [r, *({**r, **x, "forms": []} for x in r.get("forms") or [] if isinstance(x, dict))]]
        for r in unmerged:
            if (r.get("status") == "edit") != (status == "edit"):
                continue
            subject = r.get("subject")
            if not isinstance(subject, str) or not subject.strip():
                continue
            out.append({**r, "finding_rule": f.get("rule"), "finding_layers": list(f.get("layers") or []),
                        "finding_tensors": list(f.get("tensors") or [])})
    return out


def uncertain_readings(doc: dict) -> list[dict]:
    """The scan's readings that it did not judge edits (no object read), whose subject still fires the edit
    (``fire`` ≥ FIRE_MIN): the projection erase needs only a key the edit acts on, not the object."""
    out = []
    for r in edit_readings(doc, status="uncertain"):
        try:
            fire = float(r.get("fire") or 0.0)
        except (TypeError, ValueError):
            continue
        if fire >= FIRE_MIN:
            out.append(r)
    return out


def evidence_from_report(doc: dict, source: str = "scan", scan_id: int | None = None) -> EditEvidence:
    """Edit evidence from a scan report dict (``ScanReport.to_dict()`` or the stored JSON)."""
    stats = {t["name"]: t for t in doc.get("tensors", [])}
    layers: set[int] = set()
    tensors: list[str] = []
    components: dict[str, int] = {}
    findings: list[dict] = []
    for f in _edit_findings(doc):
        rule = f.get("rule")
        names = list(f.get("tensors") or [])
        data = f.get("data") if isinstance(f.get("data"), dict) else {}
        method = f.get("method", data.get("method"))
        findings.append({"rule": rule, "layers": list(f.get("layers") or []), "tensors": names,
                         "message": f.get("message", ""), "rank": f.get("rank"),
                         "method": method.get("name") if isinstance(method, dict) else None})
        layers.update(f.get("layers") or [])
        for n in names:
            if n not in components:
                tensors.append(n)
                components[n] = _components(stats.get(n, {}), f.get("rank"))
    return EditEvidence(sorted(layers), tensors, components, findings, scan_id, doc.get("session_id"), source,
                        (doc.get("base") or {}).get("path"), edit_readings(doc), uncertain_readings(doc))


def stored_evidence(store, suspect_fingerprint: str, base_fingerprint: str | None = None) -> EditEvidence | None:
    """The newest finished scan of this exact suspect (against this base, if given), or None."""
    from ..store.mitigation_runs import finished_scans

    scans = finished_scans(store, suspect_fingerprint, base_fingerprint)
    for scan in scans:
        if not scan.get("report"):
            continue
        doc = json.loads(scan["report"])
        return evidence_from_report(doc, f"stored scan #{scan['id']} (session {scan['session_id']})", scan["id"])
    return None
