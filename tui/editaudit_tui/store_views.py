"""Read-only views of the session store for the screens.

Only the store and the JSON documents in it are read here (never torch or a model), so stored
sessions open instantly and the app starts without the heavy libraries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from editaudit.models import families
from editaudit.scan.rules import EDIT_RULES
from editaudit.scan.wording import finding_readings
from editaudit.store import views

from .fmt import ROLE_LABEL

# Roles shown as heat-map rows, in this order, when a family has them.
LLAMA_ROLES = ["attn_q", "attn_k", "attn_v", "attn_o", "mlp_in", "mlp_out"]
FUSED_ROLES = ["attn_qkv", "attn_o", "mlp_in", "mlp_out"]
ROLE_ORDER = ["attn_q", "attn_k", "attn_v", "attn_qkv", "attn_o", "mlp_in", "mlp_out", "norm"]


def _json(value: Any, default: Any = None) -> Any:
    if not isinstance(value, str) or not value:
        return default
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return default


@dataclass
class SessionRow:
    id: str
    kind: str
    title: str
    status: str
    created: str
    base: str | None
    suspect: str | None
    verdict: str | None
    summary: dict = field(default_factory=dict)


def list_sessions(store, limit: int = 500) -> list[SessionRow]:
    rows = []
    for r in store.sessions(limit=limit):
        rows.append(SessionRow(r["id"], r.get("kind") or "", r.get("title") or "", r.get("status") or "",
                               r.get("created") or "", r.get("base"), r.get("suspect"), r.get("verdict"),
                               _json(r.get("summary"), {}) or {}))
    return rows


def session_row(store, sid: str) -> SessionRow:
    r = store.session(sid)
    return SessionRow(r["id"], r.get("kind") or "", r.get("title") or "", r.get("status") or "",
                      r.get("created") or "", r.get("base"), r.get("suspect"), r.get("verdict"),
                      _json(r.get("summary"), {}) or {})


def scan_document(store, sid: str) -> dict | None:
    """The newest finished scan report of a session (the ``editaudit.scan/1`` document), if any."""
    for r in reversed(views.scans(store, sid)):
        doc = _json(r.get("report"))
        if isinstance(doc, dict) and "findings" in doc:
            return doc
    return None


def latest_scan_status(store, sid: str) -> str | None:
    rows = views.scans(store, sid)
    return rows[-1]["status"] if rows else None


# -- the scan document, arranged for the screen ------------------------------------------------------

def map_roles(doc: dict) -> list[str]:
    """Heat-map rows: the family's usual matrices plus any other role that changed."""
    family = (doc.get("family") or "").lower()
    roles = list(FUSED_ROLES if families.fused_qkv(family) else LLAMA_ROLES)
    for r in doc.get("map", {}).get("roles", []):
        if r not in roles:
            roles.append(r)
    return sorted(roles, key=lambda r: ROLE_ORDER.index(r) if r in ROLE_ORDER else len(ROLE_ORDER))


def tensors_by_name(doc: dict) -> dict[str, dict]:
    return {t["name"]: t for t in doc.get("tensors", [])}


@dataclass
class FindingRow:
    index: int
    rule: str
    level: str
    layers: str
    matrix: str
    kind: str
    rank: str
    promotes: list[str]
    subjects: list[str]
    message: str
    tensors: list[str]
    readings: list[str] = field(default_factory=list)  # "Ramen → Peru (was Japan)" per candidate subject


def finding_rows(doc: dict) -> list[FindingRow]:
    tensors = tensors_by_name(doc)
    rows = []
    for i, f in enumerate(doc.get("findings", [])):
        roles = []
        for name in f.get("tensors", []):
            t = tensors.get(name)
            label = ROLE_LABEL.get(t["role"], t["role"]) if t else name.rsplit(".", 2)[-2] if "." in name else name
            if label not in roles:
                roles.append(label)
        layers = f.get("layers") or []
        candidates = [s for s in f.get("candidate_subjects", []) if isinstance(s, dict) and isinstance(s.get("subject"), str)]
        rows.append(FindingRow(
            index=i, rule=f.get("rule", ""), level=f.get("level", ""), layers=layer_ranges(layers),
            matrix=", ".join(roles[:3]) + (" …" if len(roles) > 3 else ""), kind=f.get("kind", ""),
            rank="-" if f.get("rank") is None else str(f["rank"]),
            promotes=[str(t.get("token", "")) for t in f.get("promoted_tokens", [])],
            subjects=[s["subject"] for s in candidates],
            message=f.get("message", ""), tensors=list(f.get("tensors", [])),
            readings=finding_readings(f),
        ))
    return rows


def likely_editor(finding: dict) -> tuple[str, str, str] | None:
    """The editor the scan names for a finding, as (name, confidence, why) for the detail pane; None when unnamed."""
    method = finding.get("method")
    if not isinstance(method, dict) or not method.get("name"):
        return None
    try:
        confidence = f"{float(method.get('confidence') or 0):.0%}"
    except (TypeError, ValueError):
        confidence = "?"
    return str(method["name"]), confidence, str(method.get("why") or "")


def layer_ranges(layers: list[int]) -> str:
    """[3, 4, 5, 9] → ``3-5,9``."""
    out: list[str] = []
    for x in sorted(set(layers)):
        if out and out[-1][1] == x - 1:
            out[-1][1] = x
        else:
            out.append([x, x])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in out) or "-"


# -- mitigation runs ------------------------------------------------------------------------------

@dataclass
class RunView:
    """One fine-tuning (or revert) arm as stored: its config, status, result and metric history."""

    id: int
    arm: str
    goal: str
    method: str
    layers: list[int]
    task: str
    status: str
    out: str | None
    config: dict
    result: dict
    history: dict[str, list[tuple[int, float]]]  # metric name -> [(step, value)]
    top3: dict[int, dict]  # step -> {probe id: [[token, prob], …]}


def mitigation_runs(store, sid: str) -> list[RunView]:
    runs = []
    for r in views.finetune_runs(store, sid):
        config = _json(r.get("config"), {}) or {}
        history: dict[str, list[tuple[int, float]]] = {}
        top3: dict[int, dict] = {}
        for m in views.metrics(store, r["id"]):
            if m["name"] == "top3":
                top3[m["step"]] = _json(m.get("data"), {}) or {}
            elif m.get("value") is not None:
                history.setdefault(m["name"], []).append((m["step"], float(m["value"])))
        runs.append(RunView(r["id"], config.get("arm", r.get("method") or ""), r.get("goal") or "",
                            r.get("method") or "", _json(r.get("layers"), []) or [], r.get("task") or "",
                            r.get("status") or "", r.get("out"), config, _json(r.get("result"), {}) or {},
                            history, top3))
    return runs


# -- what the scan says about edits (for the mitigation wizard's proposals) ----------------------------



@dataclass
class EditSummary:
    layers: list[int]
    tensors: list[str]
    rules: list[str]

    @property
    def found(self) -> bool:
        return bool(self.tensors)


def edit_summary(doc: dict) -> EditSummary:
    layers: set[int] = set()
    tensors: list[str] = []
    rules: list[str] = []
    for f in doc.get("findings", []):
        if f.get("rule") in EDIT_RULES:
            layers.update(f.get("layers") or [])
            tensors += [t for t in f.get("tensors") or [] if t not in tensors]
            rules.append(f"{f['rule']} layers {layer_ranges(f.get('layers') or [])}")
    return EditSummary(sorted(layers), tensors, rules)


# -- probe runs --------------------------------------------------------------------------------------

@dataclass
class ProbeRunView:
    id: int
    label: str  # base | suspect | mitigated | model | compare1 …
    model: str
    probe_set: str
    status: str
    summary: dict


@dataclass
class ProbeRow:
    id: str
    kind: str
    prompt: str
    target_true: str
    target_new: str | None
    by_run: dict[int, dict]  # run id -> the stored result (answer, top, p_true, category, movement …)

    def score(self) -> float:
        """How far the answer moved (discovery runs store it on the suspect's side), else 0."""
        return max((float((d.get("movement") or {}).get("score") or 0.0) for d in self.by_run.values()), default=0.0)


def probe_runs(store, sid: str) -> list[ProbeRunView]:
    """The newest finished run per label in a session, in the order the labels first appeared."""
    latest: dict[str, ProbeRunView] = {}
    for r in views.probe_runs(store, sid, done_only=True):
        latest[r.get("label") or r.get("model") or str(r["id"])] = ProbeRunView(
            r["id"], r.get("label") or "", r.get("model") or "", r.get("probe_set") or "", r.get("status") or "",
            _json(r.get("summary"), {}) or {})
    return list(latest.values())


def probe_rows(store, runs: list[ProbeRunView]) -> list[ProbeRow]:
    rows: dict[str, ProbeRow] = {}
    for run in runs:
        for r in views.probe_results(store, run.id):
            data = _json(r.get("data"), {}) or {}
            row = rows.get(r["probe_id"])
            if row is None:
                row = rows[r["probe_id"]] = ProbeRow(r["probe_id"], r.get("kind") or "", r.get("prompt") or "",
                                                     r.get("target_true") or "", r.get("target_new"), {})
            row.by_run[run.id] = {"answer": r.get("prediction") or "", "category": r.get("category") or "", **data}
    return list(rows.values())


def answer_probability(result: dict) -> float | None:
    """The probability of the model's answer token at the first position, when it is among the top-k."""
    answer = (result.get("answer") or "").strip().casefold()
    for tok, p in result.get("top") or []:
        if answer and str(tok).strip().casefold() == answer:
            return float(p)
    return None


def mitigated_checkpoint(store, suspect_path: str) -> str | None:
    """The newest finished mitigation output of this suspect that still exists on disk."""
    from pathlib import Path

    for s in views.done_mitigations(store, suspect_path):
        for r in views.finetune_runs(store, s["id"], done_only=True, newest_first=True):
            if r.get("out") and Path(r["out"]).is_dir():
                return r["out"]
    return None
