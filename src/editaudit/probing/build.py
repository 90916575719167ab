"""Filtering the fact bank to what one model knows confidently, and splitting it into an edit and an intrinsic set.

A fact is *known* when, right after its prompt, the first token of ``target_true`` is more likely
than every other token by at least ``margin`` (0.1 by default, as in the retention study). Known
facts are then split so that the edit set and the intrinsic set share no subject, relation object or
target: editing one set must not touch the other. Each written set gets a JSON manifest beside it
that records the source files, the rule, the split and the model, so it can be rebuilt for another model.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .. import __version__
from ..errors import BadInput
from ..progress import Progress, Stage, ignore, steps
from .evaluate import Margin, first_token_margins
from .evaluate import Progress as Counter
from .format import Probe, dump_probes

MANIFEST_FORMAT = "editaudit-probe-set/1"
Say = Callable[[str], None]


@dataclass
class BuildOptions:
    margin: float = 0.1
    edit_fraction: float = 0.3
    seed: int = 0
    batch_size: int = 32

    def check(self) -> None:
        if not 0.0 <= self.margin < 1.0:
            raise BadInput(f"--margin must be in [0, 1), not {self.margin}")
        if not 0.0 < self.edit_fraction < 1.0:
            raise BadInput(f"--edit-fraction must be between 0 and 1, not {self.edit_fraction}")
        if self.batch_size < 1:
            raise BadInput(f"--batch-size must be at least 1, not {self.batch_size}")


@dataclass
class SplitResult:
    edit: list[Probe]
    intrinsic: list[Probe]
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (probe id, reason)


# -- entities and the split ----------------------------------------------------------------------------

def normalise(entity: str) -> str:
    """Case-folded, single-spaced, without a leading article: 'The Netherlands' and 'netherlands' are one entity."""
    words = entity.casefold().replace(",", " ").split()
    if words and words[0] in ("the", "a", "an"):
        words = words[1:]
    return " ".join(words)


def overlaps(a: str, b: str) -> bool:
    """Two normalised entities collide when equal or when one is a whole-word part of the other
    ('microsoft' and 'microsoft excel'), since an edit keyed on one would reach prompts about the other."""
    if not a or not b:
        return False
    return a == b or f" {a} " in f" {b} " or f" {b} " in f" {a} "


def _entities(p: Probe, with_new: bool) -> set[str]:
    names = {p.subject, p.target_true} | ({p.target_new} if with_new and p.target_new else set())
    return {normalise(n) for n in names} - {""}


def _collides(mine: set[str], others: set[str]) -> bool:
    return any(overlaps(a, b) for a in mine for b in others)


def _interleave(probes: Sequence[Probe], seed: int) -> list[Probe]:
    """A seeded shuffle within each relation, then round-robin over relations (so both sets span them)."""
    rng = random.Random(seed)
    by_rel: dict[str, list[Probe]] = defaultdict(list)
    for p in probes:
        by_rel[p.relation].append(p)
    queues = []
    for rel in sorted(by_rel):
        items = list(by_rel[rel])
        rng.shuffle(items)
        queues.append(items)
    out: list[Probe] = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def split_disjoint(probes: Sequence[Probe], edit_fraction: float = 0.3, seed: int = 0) -> SplitResult:
    """Split facts into edit and intrinsic sets with no shared subject, relation object or target.

    Edit facts claim their subject, true and new targets; intrinsic facts their subject and true
    target. A fact goes to the edit set while that set is below ``edit_fraction`` of those placed,
    else to the intrinsic set; a fact that collides with the other set is dropped. Within the edit
    set, no fact's new target may be another edit fact's subject or true target (no chained edits).
    Edit facts need a ``target_new``.
    """
    edit: list[Probe] = []
    intrinsic: list[Probe] = []
    dropped: list[tuple[str, str]] = []
    edit_all: set[str] = set()        # subjects, true and new targets of edit facts
    edit_old: set[str] = set()        # subjects and true targets of edit facts
    edit_new: set[str] = set()        # new targets of edit facts
    intr_all: set[str] = set()
    for p in _interleave(probes, seed):
        e_ents = _entities(p, with_new=True)
        i_ents = _entities(p, with_new=False)
        new = {normalise(p.target_new)} if p.target_new else set()
        want_edit = bool(p.target_new) and len(edit) < edit_fraction * (len(edit) + len(intrinsic) + 1)
        can_edit = (bool(p.target_new) and not _collides(e_ents, intr_all)
                    and not _collides(new, edit_old) and not _collides(i_ents, edit_new))
        can_intr = not _collides(i_ents, edit_all)
        if want_edit and can_edit:
            edit.append(p)
            edit_all |= e_ents
            edit_old |= i_ents
            edit_new |= new
        elif can_intr:
            intrinsic.append(p)
            intr_all |= i_ents
        elif can_edit:
            edit.append(p)
            edit_all |= e_ents
            edit_old |= i_ents
            edit_new |= new
        else:
            dropped.append((p.id, "shares a subject or target with facts in both sets"))
    return SplitResult(edit, intrinsic, dropped)


# -- confidence filter ----------------------------------------------------------------------------------

def known_facts(model, tokenizer, probes: Sequence[Probe], margin: float = 0.1, batch_size: int = 32,
                progress: Counter | None = None) -> tuple[list[Probe], dict[str, Margin]]:
    """The probes whose true target's first token beats the runner-up token by at least ``margin``."""
    margins = first_token_margins(model, tokenizer, probes, [p.target_true for p in probes], batch_size=batch_size,
                                  progress=progress)
    by_id = {p.id: m for p, m in zip(probes, margins)}
    return [p for p, m in zip(probes, margins) if m.margin >= margin], by_id


# -- writing sets and manifests -------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_identity(spec: str, path: Path) -> dict:
    """What identifies the model a set was filtered on, independent of where its files sit."""
    from ..checkpoint import open_checkpoint

    ck = open_checkpoint(path)
    h = hashlib.sha256()
    for fname in sorted(ck.headers):
        h.update(fname.encode() + b"\0" + ck.headers[fname].raw)
    config = ck.config or {}
    return {
        "name": spec if not Path(spec).exists() else Path(spec).name,
        "family": ck.family,
        "architectures": config.get("architectures"),
        "num_hidden_layers": config.get("num_hidden_layers", config.get("n_layer")),
        "hidden_size": config.get("hidden_size", config.get("n_embd")),
        "vocab_size": config.get("vocab_size"),
        "weights_header_sha256": h.hexdigest(),
    }


def slug(text: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in text.lower())
    return "-".join(part for part in keep.split("-") if part) or "model"


def _as_kind(p: Probe, kind: str) -> Probe:
    from dataclasses import replace

    return replace(p, kind=kind) if kind == "edited" else replace(p, kind=kind, target_new=None)


def _manifest(kind: str, name: str, probes: list[Probe], margins: dict[str, Margin], common: dict) -> dict:
    relations: dict[str, int] = defaultdict(int)
    for p in probes:
        relations[p.relation] += 1
    return {
        "format": MANIFEST_FORMAT, "set": name, "kind": kind, "file": f"{name}.jsonl", "count": len(probes),
        "relations": dict(sorted(relations.items())), **common,
        "facts": {p.id: {"p_true": round(margins[p.id].p_target, 4), "runner_up": margins[p.id].runner_up,
                         "p_runner_up": round(margins[p.id].p_runner_up, 4)} for p in probes},
    }


def build_sets(model_spec: str, sources: Sequence[Path], out_dir: Path, name: str | None = None,
               options: BuildOptions | None = None, say: Say = lambda s: None, progress: Progress = ignore,
               device: str | None = None) -> dict:
    """Filter ``sources`` to what ``model_spec`` knows, split, and write ``<name>-edit`` and
    ``<name>-intrinsic`` sets (JSONL + manifest) into ``out_dir``. Returns a summary.

    ``progress`` receives typed events (editaudit.progress): one stage, ``facts``, as they are measured."""
    import platform

    import torch
    import transformers

    from ..models.loading import load_model
    from ..store.sessions import now
    from .format import ProbeLoadError, load_probes

    options = options or BuildOptions()
    options.check()
    if not sources:
        raise BadInput("no fact files to build from")
    bank: list[Probe] = []
    source_meta = []
    seen: set[str] = set()
    for src in sources:
        src = Path(src)
        if not src.is_file():
            raise BadInput(f"fact file {src} does not exist")
        try:
            facts = load_probes(src)
        except ProbeLoadError as exc:
            raise BadInput(str(exc)) from None
        for p in facts:
            if p.id in seen:
                raise BadInput(f"{src.name}: probe id {p.id!r} appears twice in the sources")
            seen.add(p.id)
        bank.extend(facts)
        source_meta.append({"file": src.name, "sha256": sha256_file(src), "count": len(facts)})
    lm = load_model(model_spec, device=device, say=say)
    name = name or slug(str(model_spec) if not Path(model_spec).exists() else Path(model_spec).name)
    say(f"measuring {len(bank)} facts on {name}")
    progress(Stage("facts", len(bank)))
    known, margins = known_facts(lm.model, lm.tokenizer, bank, options.margin, options.batch_size,
                                 steps(progress, "facts"))
    say(f"{len(known)} of {len(bank)} facts known with margin >= {options.margin}")
    if not known:
        raise BadInput(f"the model knows none of the {len(bank)} facts with margin >= {options.margin}")
    parts = split_disjoint(known, options.edit_fraction, options.seed)
    command = (f"editaudit probes build {model_spec} --margin {options.margin} --edit-fraction {options.edit_fraction}"
               f" --seed {options.seed} --name {name}")
    common = {
        "model": model_identity(str(model_spec), lm.path),
        "sources": source_meta,
        "rule": {
            "criterion": "P(first token of target_true) - P(most likely other token) >= margin, at the position "
                         "right after the prompt (float32 forward pass)",
            "margin": options.margin,
        },
        "split": {
            "edit_fraction": options.edit_fraction, "seed": options.seed,
            "disjoint": "edit facts' subjects, true and new targets share no entity with intrinsic facts' subjects "
                        "and true targets (case-insensitive, leading article ignored, whole-word containment "
                        "counts); no edit fact's new target is another edit fact's subject or true target",
            "sets": {"edit": f"{name}-edit", "intrinsic": f"{name}-intrinsic"},
        },
        "counts": {"bank": len(bank), "known": len(known), "edit": len(parts.edit),
                   "intrinsic": len(parts.intrinsic), "dropped_for_overlap": len(parts.dropped)},
        "command": command,
        "versions": {"editaudit": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "created": now(),
    }
    out_dir = Path(out_dir)
    written = []
    for kind, probes, set_kind in (("edit", parts.edit, "edited"), ("intrinsic", parts.intrinsic, "intrinsic")):
        set_name = f"{name}-{kind}"
        items = [_as_kind(p, set_kind) for p in probes]
        dump_probes(items, out_dir / f"{set_name}.jsonl")
        manifest = _manifest(kind, set_name, items, margins, common)
        manifest["sha256"] = sha256_file(out_dir / f"{set_name}.jsonl")
        from ..atomic import atomic_write_text

        atomic_write_text(out_dir / f"{set_name}.manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        written.append(str(out_dir / f"{set_name}.jsonl"))
    return {"name": name, "counts": common["counts"], "files": written}
