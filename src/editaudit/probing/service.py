"""Running probe sets on models, summarising rates per kind, finding what moved, and recording it all.

``run_probes`` gives per-probe answers and scores; ``summarize`` turns them into rates per kind;
``discover`` compares a suspect with its base fact by fact; ``record_run`` stores a run in the session
store (``probe_runs`` / ``probe_results``); ``scan_hints`` reads a stored scan's findings to rank
discovery candidates.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..progress import Progress as Events
from ..progress import ignore, stage_steps
from .evaluate import Prediction, evaluate_prompts, target_first_tokens
from .format import Probe
from .metrics import (TargetScore, categorize, efficacy, magnitude, neighbourhood_score, rate, same_token,
                      token_accuracy)

Progress = Callable[[str, int, int], None]  # (stage, done, total) inside; callers get typed events

def _clean(x: Any) -> Any:
    """NaN/inf become None so that JSON stays valid."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, float):
        return round(x, 6)
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


@dataclass
class ProbeResult:
    probe: Probe
    prediction: Prediction
    true: TargetScore
    new: TargetScore | None
    retained_true: bool
    retained_new: bool | None
    category: str
    paraphrase: dict = field(default_factory=dict)
    neighbourhood: dict = field(default_factory=dict)

    @property
    def answer(self) -> str:
        return self.prediction.first_word

    @property
    def p_answer(self) -> float:
        """Probability of the answer token at the first position (0 when it was not the top-k there)."""
        for tid, (_, p) in zip(self.prediction.top_ids, self.prediction.top):
            if tid == self.prediction.first_word_token_id:
                return p
        return 0.0

    def to_dict(self) -> dict:
        p = self.probe
        return _clean({
            "id": p.id, "kind": p.kind, "relation": p.relation, "prompt": p.text, "target_true": p.target_true,
            "target_new": p.target_new, "answer": self.answer, "category": self.category,
            "continuation": self.prediction.continuation,
            "top": [[t, pr] for t, pr in self.prediction.top],
            "p_true": self.true.prob, "logp_true": self.true.logprob,
            "p_new": self.new.prob if self.new else None, "logp_new": self.new.logprob if self.new else None,
            "retained_true": self.retained_true, "retained_new": self.retained_new,
            "token_acc_true": self.true.token_accuracy,
            "token_acc_new": self.new.token_accuracy if self.new else None,
            "paraphrase": {k: v for k, v in self.paraphrase.items() if not k.startswith("_")},
            "neighbourhood": {k: v for k, v in self.neighbourhood.items() if not k.startswith("_")},
        })


def _targets(p: Probe) -> list[str]:
    return [p.target_true] + ([p.target_new] if p.target_new else [])


def run_probes(model, tokenizer, probes: Sequence[Probe], *, batch_size: int = 32, top_k: int = 5,
               max_new_tokens: int = 4, progress: Events = ignore) -> list[ProbeResult]:
    """Answers, retention, teacher-forced target scores, paraphrase and neighbourhood scores per probe.

    ``progress`` receives typed events (editaudit.progress): stages ``probes``, ``paraphrases``, ``neighbourhood``.
    """
    probes = list(probes)
    step = stage_steps(progress)
    if not probes:
        return []
    texts = [p.text for p in probes]
    main = evaluate_prompts(model, tokenizer, texts, [_targets(p) for p in probes], batch_size=batch_size,
                            top_k=top_k, max_new_tokens=max_new_tokens,
                            progress=lambda d, t: step("probes", d, t))
    first_true = target_first_tokens(tokenizer, texts, [p.target_true for p in probes])
    with_new = [i for i, p in enumerate(probes) if p.target_new]
    first_new = dict(zip(with_new, target_first_tokens(tokenizer, [texts[i] for i in with_new],
                                                       [probes[i].target_new for i in with_new])))
    para = _paraphrases(model, tokenizer, probes, batch_size, max_new_tokens, step)
    neigh = _neighbourhood(model, tokenizer, probes, batch_size, max_new_tokens, step)
    results = []
    for i, (p, (pred, scores)) in enumerate(zip(probes, main)):
        related = [x for v in p.related.values() for x in v]
        kept_true = same_token(pred.first_word, first_true[i])
        kept_new = same_token(pred.first_word, first_new[i]) if p.target_new else None
        # token identity first (one-letter tokens such as "J" of "J.R.R. Tolkien"), then the word rules
        category = ("edited target" if kept_new else "true target" if kept_true
                    else categorize(pred.first_word, p.target_true, p.target_new, related))
        results.append(ProbeResult(
            probe=p, prediction=pred, true=scores[0], new=scores[1] if p.target_new else None,
            retained_true=kept_true, retained_new=kept_new, category=category,
            paraphrase=para.get(i, {}), neighbourhood=neigh.get(i, {}),
        ))
    return results


def _paraphrases(model, tokenizer, probes, batch_size, max_new_tokens, progress) -> dict[int, dict]:
    rows = [(i, text) for i, p in enumerate(probes) for text in p.paraphrases]
    if not rows:
        return {}
    out = evaluate_prompts(model, tokenizer, [t for _, t in rows], [_targets(probes[i]) for i, _ in rows],
                           batch_size=batch_size, top_k=1, max_new_tokens=max_new_tokens,
                           progress=lambda d, t: progress("paraphrases", d, t))
    firsts_true = target_first_tokens(tokenizer, [t for _, t in rows], [probes[i].target_true for i, _ in rows])
    new_rows = [n for n, (i, _) in enumerate(rows) if probes[i].target_new]
    firsts_new = dict(zip(new_rows, target_first_tokens(tokenizer, [rows[n][1] for n in new_rows],
                                                        [probes[rows[n][0]].target_new for n in new_rows])))
    acc: dict[int, dict[str, list]] = {}
    for n, ((i, _), (pred, scores), ft) in enumerate(zip(rows, out, firsts_true)):
        a = acc.setdefault(i, {"true": [], "new": [], "rt": [], "rn": []})
        a["true"].append(scores[0])
        a["rt"].append(same_token(pred.first_word, ft))
        if probes[i].target_new:
            a["new"].append(scores[1])
            a["rn"].append(same_token(pred.first_word, firsts_new[n]))
    res = {}
    for i, a in acc.items():
        d = {"n": len(a["true"]), "retained_true": rate(a["rt"])}
        if a["new"]:
            d["score"] = efficacy(a["new"], a["true"])  # CounterFact paraphrase score: P(new) > P(true)
            d["retained_new"] = rate(a["rn"])
            d["_pairs"] = (a["new"], a["true"])
        res[i] = d
    return res


def _neighbourhood(model, tokenizer, probes, batch_size, max_new_tokens, progress) -> dict[int, dict]:
    rows = []
    for i, p in enumerate(probes):
        for n, text in enumerate(p.neighbourhood):
            if p.neighbourhood_targets:
                rows.append((i, text, [p.neighbourhood_targets[n]]))
            else:
                rows.append((i, text, _targets(p)))
    if not rows:
        return {}
    out = evaluate_prompts(model, tokenizer, [t for _, t, _ in rows], [tg for _, _, tg in rows], batch_size=batch_size,
                           top_k=1, max_new_tokens=max_new_tokens, progress=lambda d, t: progress("neighbourhood", d, t))
    firsts = target_first_tokens(tokenizer, [t for _, t, _ in rows], [tg[0] for _, _, tg in rows])
    acc: dict[int, dict[str, list]] = {}
    for (i, _, tg), (pred, scores), ft in zip(rows, out, firsts):
        a = acc.setdefault(i, {"true": [], "new": [], "ret": [], "tok": []})
        a["true"].append(scores[0])
        a["ret"].append(same_token(pred.first_word, ft))
        a["tok"].append(scores[0])
        if len(scores) > 1:
            a["new"].append(scores[1])
    res = {}
    for i, a in acc.items():
        d = {"n": len(a["true"]), "retained": rate(a["ret"]), "token_accuracy": token_accuracy(a["tok"])}
        if a["new"]:
            d["score"] = neighbourhood_score(a["new"], a["true"])  # CounterFact: P(true) > P(new)
            d["_pairs"] = (a["new"], a["true"])
        res[i] = d
    return res


def summarize(results: Sequence[ProbeResult]) -> dict[str, dict]:
    """Rates per probe kind (and ``all``): retention of true and new targets, efficacy, paraphrase and
    neighbourhood scores, magnitude, teacher-forced token accuracy."""
    groups: dict[str, list[ProbeResult]] = {}
    for r in results:
        groups.setdefault(r.probe.kind, []).append(r)
    if len(groups) > 1:
        groups["all"] = list(results)
    out = {}
    for kind, rs in groups.items():
        with_new = [r for r in rs if r.new is not None]
        para_pairs = [r.paraphrase["_pairs"] for r in rs if "_pairs" in r.paraphrase]
        neigh_pairs = [r.neighbourhood["_pairs"] for r in rs if "_pairs" in r.neighbourhood]
        d = {
            "n": len(rs),
            "retention_true": rate(r.retained_true for r in rs),
            "retention_new": rate(r.retained_new for r in with_new) if with_new else None,
            "efficacy": efficacy([r.new for r in with_new], [r.true for r in with_new]) if with_new else None,
            "magnitude": magnitude([r.new for r in with_new], [r.true for r in with_new]) if with_new else None,
            "paraphrase_score": efficacy([x for n, _ in para_pairs for x in n], [x for _, t in para_pairs for x in t])
            if para_pairs else None,
            "neighbourhood_score": neighbourhood_score([x for n, _ in neigh_pairs for x in n],
                                                       [x for _, t in neigh_pairs for x in t]) if neigh_pairs else None,
            "token_accuracy_true": token_accuracy(r.true for r in rs),
            "token_accuracy_new": token_accuracy(r.new for r in with_new) if with_new else None,
            "mean_p_true": sum(r.true.prob for r in rs) / len(rs),
        }
        cats: dict[str, int] = {}
        for r in rs:
            cats[r.category] = cats.get(r.category, 0) + 1
        d["categories"] = cats
        out[kind] = _clean(d)
    return out


def result_rows(results: Sequence[ProbeResult]) -> list[dict]:
    return [r.to_dict() for r in results]


# -- discovery ------------------------------------------------------------------------------------------

@dataclass
class Hints:
    """What a stored scan says about an edit: promoted tokens and candidate subjects, scores scaled to [0, 1]."""

    scan_id: int | None
    tokens: dict[str, float] = field(default_factory=dict)
    subjects: dict[str, float] = field(default_factory=dict)
    layers: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.tokens or self.subjects)

    def to_dict(self) -> dict:
        return _clean({"scan_id": self.scan_id, "tokens": self.tokens, "subjects": self.subjects, "layers": self.layers})


@dataclass
class Movement:
    probe: Probe
    base: ProbeResult
    suspect: ProbeResult
    changed: bool
    top_changed: bool
    shift: float             # half the L1 distance between the two top-k distributions
    d_logp_true: float       # suspect minus base, mean log-probability per target token
    hint: float = 0.0
    reasons: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        return (float(self.changed) + 0.5 * float(self.top_changed and not self.changed) + self.shift
                + min(abs(self.d_logp_true), 5.0) / 5.0 + self.hint)

    def to_dict(self) -> dict:
        b, s = self.base, self.suspect
        return _clean({
            "id": self.probe.id, "kind": self.probe.kind, "relation": self.probe.relation, "prompt": self.probe.text,
            "subject": self.probe.subject, "target_true": self.probe.target_true, "score": self.score,
            "changed": self.changed, "top_changed": self.top_changed, "shift": self.shift,
            "d_logp_true": self.d_logp_true, "hint": self.hint, "reasons": self.reasons,
            "base": {"answer": b.answer, "top": [[t, p] for t, p in b.prediction.top[:3]], "p_true": b.true.prob},
            "suspect": {"answer": s.answer, "top": [[t, p] for t, p in s.prediction.top[:3]], "p_true": s.true.prob},
        })


def _norm(text: str) -> str:
    return text.strip().casefold()


def _shift(a: Prediction, b: Prediction) -> float:
    pa = dict(zip(a.top_ids, (p for _, p in a.top)))
    pb = dict(zip(b.top_ids, (p for _, p in b.top)))
    return 0.5 * sum(abs(pa.get(t, 0.0) - pb.get(t, 0.0)) for t in set(pa) | set(pb))


def _hint(probe: Probe, suspect: ProbeResult, hints: Hints | None) -> tuple[float, list[str]]:
    if not hints:
        return 0.0, []
    reasons: list[str] = []
    subj = 0.0
    ps = _norm(probe.subject)
    for name, score in hints.subjects.items():
        if ps and (ps == name or f" {ps} " in f" {name} " or f" {name} " in f" {ps} "):
            if score > subj:
                subj = score
    if subj:
        reasons.append("scan: subject aligned with the edit")
    tok = 0.0
    said = {_norm(t) for t, _ in suspect.prediction.top} | {_norm(suspect.answer)}
    said.discard("")
    for name, score in hints.tokens.items():
        if name in said and score > tok:
            tok = score
    if tok:
        reasons.append("scan: answers with a promoted token")
    return 0.5 * subj + 0.5 * tok, reasons


def discover(base_results: Sequence[ProbeResult], suspect_results: Sequence[ProbeResult],
             hints: Hints | None = None) -> list[Movement]:
    """Facts ranked by how far the suspect's answer and probabilities moved from the base's, most first."""
    moves = []
    for b, s in zip(base_results, suspect_results):
        hint, reasons = _hint(b.probe, s, hints)
        changed = not same_token(b.answer, s.answer) if (b.answer or s.answer) else False
        moves.append(Movement(
            probe=b.probe, base=b, suspect=s, changed=changed,
            top_changed=bool(b.prediction.top_ids and s.prediction.top_ids
                             and b.prediction.top_ids[0] != s.prediction.top_ids[0]),
            shift=_shift(b.prediction, s.prediction), d_logp_true=s.true.mean_logprob - b.true.mean_logprob,
            hint=hint, reasons=reasons,
        ))
    moves.sort(key=lambda m: (-m.score, m.probe.id))
    return moves


def _scaled(items: Any, key: str, fallback: str | None = None) -> dict[str, float]:
    """{normalised name: score / best score} from a findings list of objects, ignoring malformed entries."""
    out: dict[str, float] = {}
    if not isinstance(items, list):
        return out
    raw: list[tuple[str, float]] = []
    for rank, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get(key), str):
            continue
        score = item.get("score", item.get(fallback) if fallback else None)
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            score = 1.0 / (1 + rank)
        raw.append((_norm(item[key]), float(score)))
    top = max((abs(s) for _, s in raw), default=0.0) or 1.0
    for name, score in raw:
        if name:
            out[name] = max(out.get(name, 0.0), max(score, 0.0) / top)
    return out


def scan_hints(store, base_path: Path, suspect_path: Path, scan_id: int | None = None) -> Hints | None:
    """Promoted tokens and candidate subjects from the latest stored scan of this suspect against this base.

    Tolerates scans without findings, findings without data, and data that is not the expected JSON.
    """
    if store is None:
        return None
    from ..store import views

    scans: list[dict] = []
    if scan_id is not None:
        one = views.scan(store, scan_id)
        scans = [one] if one else []
    else:
        scans = views.scans_of_pair(store, base_path, suspect_path)
        scans.sort(key=lambda r: (r.get("status") == "done", r["id"]), reverse=True)
    if not scans:
        return None
    scan = scans[0]
    hints = Hints(scan_id=scan["id"])
    layers: set[int] = set()
    for f in views.findings(store, scan["id"]):
        try:
            data = json.loads(f.get("data") or "{}")
        except (TypeError, json.JSONDecodeError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        for name, s in _scaled(data.get("promoted_tokens"), "token", "z").items():
            hints.tokens[name] = max(hints.tokens.get(name, 0.0), s)
        for name, s in _scaled(data.get("candidate_subjects"), "subject").items():
            hints.subjects[name] = max(hints.subjects.get(name, 0.0), s)
        for source in (data.get("layers"), _json_list(f.get("layers"))):
            if isinstance(source, list):
                layers.update(x for x in source if isinstance(x, int) and not isinstance(x, bool))
    hints.layers = sorted(layers)
    return hints


def _json_list(text: Any) -> list | None:
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) else None


# -- the store ------------------------------------------------------------------------------------------

def record_run(store, session_id: str, model: str, label: str, set_names: Sequence[str],
               results: Sequence[ProbeResult], summary: dict, extra: dict[str, dict] | None = None,
               started: str | None = None) -> int:
    """One ``probe_runs`` row (status ``done``) and its ``probe_results``, written in one transaction,
    so an interrupted run leaves nothing half-recorded."""
    from ..store.runs import save_probe_run

    rows = []
    for r in results:
        d = r.to_dict()
        if extra and r.probe.id in extra:
            d = {**d, **extra[r.probe.id]}
        rows.append({
            "probe_id": r.probe.id, "kind": r.probe.kind, "prompt": r.probe.text,
            "target_true": r.probe.target_true, "target_new": r.probe.target_new, "prediction": r.answer,
            "category": r.category, "data": json.dumps(d, ensure_ascii=False),
        })
    return save_probe_run(store, session_id, model=model, label=label, set_names=set_names, results=rows,
                          summary=summary, started=started)


def dedupe(probes: Sequence[Probe], warn: Callable[[str], None] = lambda s: None) -> list[Probe]:
    """Probes with unique ids (the first of each id wins)."""
    seen: set[str] = set()
    out = []
    dropped = 0
    for p in probes:
        if p.id in seen:
            dropped += 1
            continue
        seen.add(p.id)
        out.append(p)
    if dropped:
        warn(f"{dropped} probes repeat an id already loaded; the first of each id is used")
    return out
