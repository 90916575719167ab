"""The scan report: one object, rendered as JSON (versioned schema, docs/scan-report.md), SARIF 2.1.0,
Markdown, or a rich terminal view with a layer × module map."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .. import __version__
from .classify import Changed, Finding
from .rules import LEVELS, RULES
from .wording import finding_readings, headline, nothing_found, without_base

SCHEMA = "editaudit.scan/1"

MAP_ROLES = ["attn_q", "attn_k", "attn_v", "attn_qkv", "attn_o", "mlp_in", "mlp_out", "norm"]


@dataclass
class ScanReport:
    base: dict
    suspect: dict
    family: str
    n_layers: int
    verdict: str
    kind: str
    findings: list[Finding]
    changed: list[Changed]
    n_tensors: int
    n_unchanged: int
    cast_only: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    bytes_read: int = 0
    used_cache: bool = False
    session_id: str | None = None
    fail_on: str = "error"
    probes: dict | None = None  # the probe stage: answers that moved between base and suspect

    def exit_code(self, fail_on: str | None = None) -> int:
        """0: nothing at or above ``fail_on``; 1: findings at or above it."""
        level = LEVELS[fail_on or self.fail_on]
        return 1 if any(LEVELS[f.level] >= level for f in self.findings) else 0

    def layer_map(self) -> dict:
        """Cells per (layer, role): relative change, low-rank energy share, kind. Only changed cells."""
        roles_present = sorted({c.name.role for c in self.changed if c.name.layer is not None},
                               key=lambda r: MAP_ROLES.index(r) if r in MAP_ROLES else 99)
        cells = {}
        for c in self.changed:
            if c.name.layer is None:
                continue
            key = f"{c.name.layer}:{c.name.role}"
            prev = cells.get(key)
            rel = c.stats.rel_change if math.isfinite(c.stats.rel_change) else None
            if prev is None or (rel or 0) > (prev["rel_change"] or 0):
                cells[key] = {"layer": c.name.layer, "role": c.name.role, "tensor": c.name.name, "kind": c.stats.kind,
                              "rel_change": rel, "lowrank_energy": round(c.stats.topk_share, 4)
                              if c.stats.kind in ("rank-one", "low-rank", "dense+spike") else 0.0}
        return {"layers": self.n_layers, "roles": roles_present or ["mlp_out"], "cells": list(cells.values())}

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "tool": {"name": "editaudit", "version": __version__},
            "session_id": self.session_id,
            "verdict": self.verdict,
            "kind": self.kind,
            "exit_code": self.exit_code(),
            "base": self.base,
            "suspect": self.suspect,
            "family": self.family,
            "layers": self.n_layers,
            "summary": {
                "tensors": self.n_tensors, "unchanged": self.n_unchanged, "changed": len(self.changed),
                "cast_only": len(self.cast_only), "bytes_read": self.bytes_read, "used_base_cache": self.used_cache,
                **self.timings,
            },
            "findings": [f.to_dict() for f in self.findings],
            "tensors": [
                {"name": c.name.name, "layer": c.name.layer, "module": c.name.module, "role": c.name.role,
                 **{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in c.stats.to_dict().items()}}
                for c in self.changed
            ],
            "map": self.layer_map(),
            "probes": self.probes,
        }


def to_sarif(doc: dict) -> dict:
    """SARIF 2.1.0: one run, stable rule ids, tensors as logical locations."""
    used = sorted({f["rule"] for f in doc["findings"]})
    rules = [
        {"id": rid, "name": RULES[rid][0], "shortDescription": {"text": RULES[rid][2]},
         "defaultConfiguration": {"level": RULES[rid][1]}}
        for rid in used
    ]
    results = []
    for f in doc["findings"]:
        text = f["message"]
        if f.get("promoted_tokens"):
            text += "; promotes " + ", ".join(repr(t["token"]) for t in f["promoted_tokens"][:5])
        if finding_readings(f):
            text += "; read: " + "; ".join(finding_readings(f)[:3])
        results.append({
            "ruleId": f["rule"], "ruleIndex": used.index(f["rule"]), "level": f["level"], "message": {"text": text},
            "locations": [
                {"physicalLocation": {"artifactLocation": {"uri": doc["suspect"]["path"]}},
                 "logicalLocations": [{"name": t, "fullyQualifiedName": t, "kind": "member"} for t in f["tensors"][:50]]}
            ],
            "properties": {k: f[k] for k in ("layers", "rank", "promoted_tokens", "readings", "candidate_subjects") if k in f},
        })
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "editaudit", "version": doc["tool"]["version"], "rules": rules}},
            "results": results,
            "properties": {"verdict": doc["verdict"], "kind": doc["kind"], "base": doc["base"]["path"]},
        }],
    }


def to_markdown(doc: dict) -> str:
    named = headline(doc)
    lines = [
        f"# editaudit scan: {doc['verdict']}", "",
        f"- suspect: `{doc['suspect']['path']}`", f"- base: `{doc['base']['path']}`" if not without_base(doc) else f"- base: none ({doc['base']['note']})",
        f"- family: {doc['family']}, {doc['layers']} layers; {doc['summary']['changed']} of "
        f"{doc['summary']['tensors']} tensors changed", f"- kind: {doc['kind']}" + (f" ({named})" if named != doc["kind"] else ""), "",
        "## Findings", "",
        "| rule | level | layers | message | promotes | read (subject · prompt · answer) |", "|---|---|---|---|---|---|",
    ]
    for f in doc["findings"]:
        promotes = ", ".join(f"`{t['token'].strip()}`" for t in f.get("promoted_tokens", [])[:5])
        subjects = "<br>".join(r.replace("|", "\\|") for r in finding_readings(f)[:6])
        layers = ",".join(map(str, f["layers"])) if f["layers"] else "-"
        msg = f["message"].replace("|", "\\|")
        lines.append(f"| {f['rule']} | {f['level']} | {layers} | {msg} | {promotes} | {subjects} |")
    if not doc["findings"]:
        lines.append(f"| - | - | - | {nothing_found(doc)} | | |")
    probes = doc.get("probes")
    if probes:
        lines += ["", f"## Answers that moved ({len(probes['changed'])} of {probes['n']} probes)", "",
                  "| subject | prompt | base | suspect | true | new |", "|---|---|---|---|---|---|"]
        for c in probes["changed"][:100]:
            lines.append(f"| {c['subject']} | {c['prompt']} | {c['base']} | {c['suspect']} | {c['target_true']} | "
                         f"{c.get('target_new') or ''} |")
    changed = [t for t in doc["tensors"] if t["kind"] not in ("rounding",)]
    if changed:
        lines += ["", "## Changed tensors", "", "| tensor | kind | rank | rel. change | top-1 energy |", "|---|---|---|---|---|"]
        for t in changed[:200]:
            rel = f"{t['rel_change']:.3%}" if t.get("rel_change") is not None else "-"
            lines.append(f"| `{t['name']}` | {t['kind']} | {t['rank_above_noise']} | {rel} | {t['top1_share']:.3f} |")
    return "\n".join(lines) + "\n"
