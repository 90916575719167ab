"""The main job on the embedded default model, end to end: make a suspect with hidden edits, scan it
blind, and put what the scan found beside the truth.

Used by ``editaudit demo`` and by ``scripts/blind_reading.py`` (which runs the same comparison over
many edits per method).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .probing.format import Probe
from .progress import Progress, ignore, stage_steps
from .scan.rules import EDIT_RULES

Say = Callable[[str], None]


@dataclass
class Planted:
    """One edit the demo made (the truth the scan is judged against)."""

    method: str
    layers: list[int]
    facts: list[Probe]
    success: list[bool] = field(default_factory=list)


def _norm(token: str) -> str:
    return token.strip().lower()


def _same_word(token: str, word: str) -> bool:
    """Does a read token name the target's first word? ("J" names "J.K.", "Ukrain" names "Ukrainian")."""
    if not token or not word:
        return False
    return token == word or (word.startswith(token) and (len(token) > 2 or not word[len(token):][:1].isalpha()))


def _names_subject(read: str, subject: str) -> bool:
    """A recovered subject names the planted one when it holds it whole or ends in its last word."""
    a, b = _norm(read), _norm(subject)
    return b in a or (bool(a.split()) and a.split()[-1] == b.split()[-1])


def match(planted: list[Planted], doc: dict) -> list[dict]:
    """Per planted fact: was its layer flagged, is its new object read from the edit, and where does its
    subject rank among the candidates?

    The object counts as read when it is among the tokens the edit promotes through the model for the
    scan's top-ranked candidates (top 1, or the top n for a finding that holds n edits), or among the
    logit-lens tokens of the edit's output directions; both come from the scan alone.
    """
    # every edit finding, and dense fine-tuning too (an FT-L edit under other changes is only seen as that)
    edits = [f for f in doc["findings"] if f["rule"] in EDIT_RULES | {"EA105"}]
    rows = []
    for p in planted:
        covering = [f for f in edits if set(p.layers) & set(f["layers"])]
        n_in_finding = sum(len(q.facts) for q in planted if set(q.layers) & {x for f in covering for x in f["layers"]})
        for i, fact in enumerate(p.facts):
            new_first = _norm(fact.target_new or "").split(" ")[0]
            lens = [_norm(t["token"]) for f in covering for t in f.get("promoted_tokens", [])]
            candidates = [s for f in covering for s in f.get("candidate_subjects", [])]
            subjects = [s["subject"] for s in candidates]
            top_reads = [_norm(t) for f in covering for s in f.get("candidate_subjects", [])[:max(n_in_finding, 1)]
                         for t in s.get("promotes", [])]
            own = [_norm(t) for s in candidates if s["subject"] == fact.subject for t in s.get("promotes", [])]
            opened = [r for f in covering for r in f.get("readings", [])]
            mine = [r for r in opened if _names_subject(r["subject"], fact.subject)]
            rows.append({
                "method": p.method, "layers": p.layers, "subject": fact.subject, "prompt": fact.text,
                "target_true": fact.target_true, "target_new": fact.target_new,
                "edit_succeeded": p.success[i] if i < len(p.success) else None,
                "layer_found": bool(covering),
                "found_as": sorted({f["kind"] for f in covering}),
                "object_in_lens": any(_same_word(t, new_first) for t in lens),
                "object_read": any(_same_word(t, new_first) for t in top_reads + lens),
                "object_read_for_subject": any(_same_word(t, new_first) for t in own),
                "subject_rank": (subjects.index(fact.subject) + 1) if fact.subject in subjects else None,
                # read with no list: the subject recovered from the weights, and what the suspect says of it
                "subject_open": bool(mine),
                "object_open": any(r["status"] == "edit" and _same_word(_norm(r["after"]).split(" ")[0], new_first)
                                   for r in mine),
                "read_open": next((f"{r['subject']} · {r['after']} (was {r['before']})" for r in mine), None),
                "n_edits_in_finding": n_in_finding,
            })
    return rows


def summarise(rows: list[dict]) -> dict:
    n = len(rows) or 1
    ranked_first = 0
    for r in rows:
        # in a batch edit every edited subject belongs at the top: rank ≤ the number of facts in it
        if r["subject_rank"] is not None and r["subject_rank"] <= max(r["n_edits_in_finding"], 1):
            ranked_first += 1
    return {
        "edits": len(rows),
        "layer_found": sum(r["layer_found"] for r in rows) / n,
        "object_read": sum(r["object_read"] for r in rows) / n,
        "object_in_lens": sum(r["object_in_lens"] for r in rows) / n,
        "subject_top": ranked_first / n,
        "subject_open": sum(r["subject_open"] for r in rows) / n,
        "object_open": sum(r["object_open"] for r in rows) / n,
    }


def pick_facts(facts: list[Probe], n: int, exclude: set[str] = frozenset()) -> list[Probe]:
    """``n`` facts with distinct relations where possible, skipping subjects in ``exclude``."""
    chosen, relations = [], set()
    for pass_ in (0, 1):
        for f in facts:
            if len(chosen) == n:
                return chosen
            if f.subject in exclude or f in chosen or not f.target_new:
                continue
            if pass_ == 0 and f.relation in relations:
                continue
            chosen.append(f)
            relations.add(f.relation)
    return chosen


def _precompute_statistics(lm, layers: list[int], progress: Progress, say: Say) -> None:
    """Key statistics for every layer the demo edits, in one pass over the corpus (then cached)."""
    from .editing import covariance
    from .editing.layers import layout_for

    layout = layout_for(lm.model)
    step = stage_steps(progress)  # the counter only counts; the stage is announced once, as typed events
    covariance.second_moments(lm.model, lm.tokenizer, {layer: layout.rewrite_name(layer) for layer in layers},
                              model_key=covariance.weights_key(lm.model),
                              progress=lambda d, t: step("key statistics", d, t), say=say)


def run_demo(store, workdir: Path, say: Say = lambda s: None, progress: Progress = ignore,
             rome_layers: tuple[int, ...] = (10, 14), memit_facts: int = 4, device: str | None = None) -> dict:
    """Make the suspect, scan it blind, compare with the truth; everything goes into one session.

    ``progress`` receives typed events (editaudit.progress), the edit and scan services' own, passed through.
    """
    from .editing.layers import default_layers
    from .editing.service import apply_edits
    from .models.loading import load_model
    from .models.registry import ensure_model
    from .probing.sets import fact_bank, load_set
    from .scan.service import ScanOptions, run_scan

    t0 = time.perf_counter()
    base = ensure_model("smollm2-135m", say)
    edit_set = load_set("smollm2-135m-edit")
    bank = fact_bank()
    sid = store.new_session("demo", "demo: hidden ROME and MEMIT edits in SmolLM2-135M", str(base), str(workdir / "suspect"))
    with store.running(sid):
        lm = load_model(base, device=device, say=say)
        n_layers = lm.model.config.num_hidden_layers
        memit_layers = default_layers("memit", n_layers)
        rome = pick_facts(edit_set, len(rome_layers))
        memit = pick_facts(edit_set, memit_facts, exclude={f.subject for f in rome})
        _precompute_statistics(lm, sorted({*memit_layers, *rome_layers}), progress, say)
        planted: list[Planted] = []
        plan = [("rome", [layer], [fact]) for layer, fact in zip(rome_layers, rome)] + [("memit", memit_layers, memit)]
        for i, (method, layers, facts) in enumerate(plan):
            last = i == len(plan) - 1
            say(f"editing with {method.upper()} at layer(s) {layers[0]}–{layers[-1]}: "
                + "; ".join(f"{f.text} → {f.target_new}" for f in facts))
            run = apply_edits(lm, facts, method, layers=layers, store=store, session_id=sid, progress=progress,
                              out=workdir / "suspect" if last else None, overwrite=True, say=say)
            planted.append(Planted(method, layers, facts, [r.success for r in run.results]))
        del lm
        say("scanning the suspect blind against the base")
        asked = edit_set + load_set("smollm2-135m-intrinsic")
        report = run_scan(workdir / "suspect", base,
                          ScanOptions(facts=bank + edit_set, run_probes=True, probe_facts=asked, device=device),
                          store=store, progress=progress, say=say, session_id=sid)
        doc = report.to_dict()
        rows = match(planted, doc)
        summary = {"truth": rows, "scores": summarise(rows), "verdict": doc["verdict"], "kind": doc["kind"],
                   "seconds": round(time.perf_counter() - t0, 1), "suspect": str(workdir / "suspect")}
        store.finish_session(sid, status="done", verdict=doc["verdict"], summary=summary)
    return {"session_id": sid, "report": doc, **summary}
