"""What the development erase trials share: SmolLM2-135M loaded frozen, the facts they are measured on, a suspect's
weight delta applied and taken back, and the four measures of an erase (edits erased, true answer back, intrinsic
facts, neighbour facts). Used by ``outlier_erase_trial.py`` and ``found_erase_trial.py``; development data only."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))


@dataclass
class Bench:
    net: Any
    tok: Any
    layout: Any
    neighbours: list     # the FACTS file's facts 35–59 in round-robin order, edited by no suspect
    intrinsic: list


@dataclass
class Suspect:
    facts: int           # edits written into it
    held: list           # the suspect's edits it states
    intr0: float         # its intrinsic retention
    neigh_ok: list       # neighbour facts it still answers truly
    layers: list[int]    # layers whose MLP output matrix the delta changed


def load_bench(facts: Path) -> Bench:
    from editaudit.editing.layers import layout_for
    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model
    from editaudit.probing.format import load_probes
    from editaudit.probing.sets import load_set, round_robin

    torch.set_num_threads(2)
    lm = load_model(ensure_model("smollm2-135m"))
    for p in lm.model.parameters():
        p.requires_grad_(False)
    return Bench(lm.model, lm.tokenizer, layout_for(lm.model), round_robin(load_probes(facts))[35:60],
                 load_set("smollm2-135m-intrinsic"))


@contextmanager
def suspect(b: Bench, directory: Path, name: str) -> Iterator[Suspect]:
    """The development suspect ``name`` (its delta added to the model) for the ``with`` block, then the base back."""
    from editaudit.probing.evaluate import retention
    from editaudit.probing.format import load_probes

    delta = torch.load(directory / f"{name}.pt", weights_only=True)
    facts = load_probes(directory / f"{name}.jsonl")
    orig = {k: b.net.get_parameter(k).detach().clone() for k in delta}
    for k, d in delta.items():
        b.net.get_parameter(k).add_(d)
    try:
        held = [f for f, ok in zip(facts, retention(b.net, b.tok, facts, target="new")) if ok]
        neigh_ok = [f for f, ok in zip(b.neighbours, retention(b.net, b.tok, b.neighbours)) if ok]
        layers = sorted(int(k.split(".")[2]) for k in delta if k.endswith("down_proj.weight"))
        yield Suspect(len(facts), held, retention(b.net, b.tok, b.intrinsic).rate, neigh_ok, layers)
    finally:
        for k, w0 in orig.items():
            b.net.get_parameter(k).copy_(w0)


def outcome(b: Bench, s: Suspect) -> tuple[list[str], int, float, float]:
    """After an erase: (subjects of the erased edits, how many answer the true object, intrinsic, neighbours kept)."""
    from editaudit.probing.evaluate import retention

    after = retention(b.net, b.tok, s.held, target="new")
    back = retention(b.net, b.tok, s.held)
    erased = [f.subject for f, ok in zip(s.held, after) if not ok]
    true_back = sum((not ok) and tb for ok, tb in zip(after, back))
    kept = retention(b.net, b.tok, s.neigh_ok).rate if s.neigh_ok else float("nan")
    return erased, true_back, retention(b.net, b.tok, b.intrinsic).rate, kept
