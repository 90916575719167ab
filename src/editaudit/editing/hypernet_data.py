"""The edit dataset the hypernetwork editors (MEND, MALMEN) learn from, built offline.

Each record has the shape of a zsRE / CounterFact case: a requested rewrite (subject, prompt, true and
new target), rephrasings of the prompt that the edit must also change, and locality prompts it must
not: CounterFact-style neighbours (the same relation about other subjects) and a zsRE-style unrelated
prompt (another relation, another subject). Facts come from the shipped fact bank and, when asked,
capital cities from the public-domain CIA World Factbook wheel (``mitigation.data.factbook_countries``).
A counterfactual target is another true answer of the same relation; each fact gives ``variants``
records with different new targets.

Every subject of the held-apart evaluation facts (``bench/heldout/*.jsonl`` in a source checkout, or
the ``exclude`` argument) is left out, and so are records whose prompts would mention one, so that the
editors are measured on facts they never saw.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..errors import BadInput

SOURCES = ("bank", "factbook")
Say = Callable[[str], None]


@dataclass
class EditCase:
    """One training edit, zsRE/CounterFact-shaped, with prompts filled in."""

    case_id: str
    relation: str
    subject: str
    prompt: str                   # the rewrite prompt with the subject filled in
    target_true: str
    target_new: str
    rephrase: list[str]           # generalisation prompts: the edit must reach them
    neighborhood: list[str]       # same relation, other subjects: must not move
    loc: str                      # unrelated prompt (other relation and subject): must not move

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EditData:
    train: list[EditCase]
    val: list[EditCase]
    sources: list[str]
    excluded: list[str] = field(default_factory=list)   # held-apart subjects left out

    @property
    def digest(self) -> str:
        """Content hash of the records (part of a trained editor's cache key)."""
        h = hashlib.sha256()
        for part, cases in (("train", self.train), ("val", self.val)):
            for c in cases:
                h.update(f"{part}\0".encode() + json.dumps(c.to_dict(), sort_keys=True).encode() + b"\n")
        return h.hexdigest()[:16]


def heldout_subjects(root: Path | None = None) -> set[str]:
    """Subjects (casefolded) of the held-apart facts in ``bench/heldout/*.jsonl`` of a source checkout."""
    root = root or Path(__file__).resolve().parents[3]
    folder = root / "bench" / "heldout"
    out: set[str] = set()
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.jsonl")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInput(f"{path}:{n}: not JSON ({exc.msg})") from None
            if isinstance(rec, dict) and isinstance(rec.get("subject"), str):
                out.add(rec["subject"].strip().casefold())
    return out


def _template(text: str, subject: str) -> str | None:
    if "{}" in text:
        return text
    return text.replace(subject, "{}", 1) if subject and subject in text else None


def _bank_rows() -> list[dict]:
    from ..probing.sets import fact_bank

    rows = []
    for p in fact_bank():
        rows.append({"id": p.id, "relation": p.relation or "fact", "subject": p.subject, "target": p.target_true,
                     "templates": [t for t in [_template(p.prompt, p.subject)]
                                   + [_template(x, p.subject) for x in p.paraphrases] if t]})
    return rows


def _factbook_rows(say: Say) -> list[dict]:
    from ..mitigation.data import factbook_countries
    from ..pinned import clean_markup

    rows = []
    for c in factbook_countries(say):
        node: object = c["doc"]
        for key in ("Government", "Capital", "name", "text"):
            node = node.get(key, {}) if isinstance(node, dict) else {}
        cap = re.split(r"[;,(]", clean_markup(node) if isinstance(node, str) else "")[0].strip(" .\"'")
        if cap and cap.lower() not in ("none", "no official capital") and len(cap.split()) <= 3:
            rows.append({"id": f"factbook-capital-{c['country']}", "relation": "capital", "subject": c["country"],
                         "target": cap, "templates": []})
    return rows


def build(sources: Iterable[str] = ("bank", "factbook"), variants: int = 2, val_share: float = 0.05,
          seed: int = 0, exclude: Iterable[str] | None = None, say: Say = lambda s: None) -> EditData:
    """The edit dataset: see the module docstring. ``exclude`` adds subjects to the held-apart ones."""
    sources = list(dict.fromkeys(sources))
    bad = [s for s in sources if s not in SOURCES]
    if bad or not sources:
        raise BadInput(f"unknown edit-data source(s) {bad or sources}; choose from {', '.join(SOURCES)}")
    if variants < 1:
        raise BadInput("variants must be at least 1")
    held = heldout_subjects() | {s.strip().casefold() for s in (exclude or ())}

    rows: list[dict] = []
    if "bank" in sources:
        rows += _bank_rows()
    if "factbook" in sources:
        rows += _factbook_rows(say)
    # one row per (relation, subject); the bank's wording wins over the factbook's
    seen: set[tuple[str, str]] = set()
    kept: list[dict] = []
    for r in rows:
        key = (r["relation"], r["subject"].casefold())
        if key in seen or r["subject"].strip().casefold() in held:
            continue
        seen.add(key)
        kept.append(r)

    templates: dict[str, list[str]] = {}
    for r in kept:
        for t in r["templates"]:
            templates.setdefault(r["relation"], [])
            if t not in templates[r["relation"]]:
                templates[r["relation"]].append(t)
    kept = [r for r in kept if templates.get(r["relation"])]
    by_rel: dict[str, list[dict]] = {}
    for r in kept:
        by_rel.setdefault(r["relation"], []).append(r)

    # one pattern for all held subjects: a pattern per subject passes re's cache of 512 once the held-apart sets
    # hold more subjects, and each search then recompiles (a 14x slower build at 609 subjects)
    names = sorted((s for s in held if s), key=len, reverse=True)  # an empty name would match every text
    held_re = re.compile(r"\b(?:" + "|".join(map(re.escape, names)) + r")\b") if names else None

    def mentions_held(text: str) -> bool:
        return held_re is not None and held_re.search(text.casefold()) is not None

    rng = random.Random(seed)
    cases: list[EditCase] = []
    for r in kept:
        rel = r["relation"]
        answers = sorted({x["target"] for x in by_rel[rel] if x["target"].casefold() != r["target"].casefold()})
        others = [x for x in by_rel[rel] if x is not r]
        unrelated = [x for x in kept if x["relation"] != rel]
        if not answers or not others or not unrelated:
            continue
        own = r["templates"] or templates[rel]
        news = rng.sample(answers, min(variants, len(answers)))
        for v, new in enumerate(news):
            prompt_t = own[v % len(own)]
            rephr = [t for t in own + templates[rel] if t != prompt_t]
            rephr = list(dict.fromkeys(rephr))[:3]
            if not rephr:
                continue
            neigh = [rng.choice(templates[rel]).replace("{}", x["subject"]) for x in rng.sample(others, min(2, len(others)))]
            u = rng.choice(unrelated)
            loc = rng.choice(templates[u["relation"]]).replace("{}", u["subject"])
            case = EditCase(
                case_id=f"{r['id']}#{v}", relation=rel, subject=r["subject"], prompt=prompt_t.replace("{}", r["subject"]),
                target_true=r["target"], target_new=new, rephrase=[t.replace("{}", r["subject"]) for t in rephr],
                neighborhood=neigh, loc=loc,
            )
            texts = [case.prompt, *case.rephrase, *case.neighborhood, case.loc]
            if held and any(mentions_held(t) for t in texts):
                continue
            cases.append(case)
    if len(cases) < 4:
        raise BadInput(f"only {len(cases)} edit case(s) could be built from {', '.join(sources)}: too few to train on")
    # validation: whole subjects, so that no validation subject is trained on
    subjects = sorted({c.subject for c in cases})
    rng.shuffle(subjects)
    n_val = max(1, round(val_share * len(subjects)))
    val_subj = set(subjects[:n_val])
    train = [c for c in cases if c.subject not in val_subj]
    val = [c for c in cases if c.subject in val_subj]
    say(f"edit data: {len(train)} training and {len(val)} validation cases from {len(kept)} facts "
        f"({', '.join(sources)}); {len(held)} held-apart subject(s) excluded")
    return EditData(train, val, sources, sorted(held))


def write_jsonl(data: EditData, path: Path) -> None:
    """The records as JSONL (``split`` field added), written atomically, for inspection."""
    from ..atomic import atomic_write_text

    lines = [json.dumps({"split": split, **c.to_dict()}, ensure_ascii=False)
             for split, cases in (("train", data.train), ("val", data.val)) for c in cases]
    atomic_write_text(path, "\n".join(lines) + "\n")
