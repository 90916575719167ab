"""What a study measures in a model: retention, edit scores, token-category mass, drift, weight residuals.

- Retention follows the project's rule (``probing.evaluate``): the first greedy token that is not a stop
  word must be the target's first such token; the number of greedy tokens read is a setting.
- Efficacy: P(new target's first token) > P(true target's first token) after the prompt; paraphrase:
  share of paraphrase prompts stating the new target; neighbourhood: share of the model's known facts of
  the edited relations whose answer did not move from the base's.
- Token-category mass (Wen & Zhang, Fig. 4): the next-token distribution after the prompt split into
  the edited target's token, the true target's token, related terms (first tokens of the other objects
  of the same relation) and everything else; the four add up to 1 by construction.
- Activation drift (Cheng et al., Fig. 3): per layer, ‖h_X − h_base‖ of the block output at the
  subject's last token and at the prompt's last token, and the cosine between two models' drifts.
- Weight residual: how much of the edit's ΔW is still in W_after − W_base (its projection on ΔW).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..editing.prompts import encode, fill, subject_index
from ..probing.evaluate import predict, retained, target_first_tokens, target_token_ids
from ..probing.format import Probe
from ..probing.metrics import first_content_index

CATEGORIES = ("edited", "true", "related", "other")


# -- intervals ---------------------------------------------------------------------------------------

def wilson(k: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95% by default); (nan, nan) when n is 0."""
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_mean(values: Sequence[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval (95%) of the mean of ``values``."""
    import random

    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return (math.nan, math.nan)
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(vals) for _ in vals) / len(vals) for _ in range(n_boot))
    return (means[int(0.025 * n_boot)], means[int(0.975 * n_boot) - 1])


# -- first-token ids ---------------------------------------------------------------------------------

def first_token_id(tokenizer, prompt: str, target: str) -> int:
    """The id of the target's first non-stop-word token as it follows ``prompt`` (the retention rule's token)."""
    _, ids = target_token_ids(tokenizer, [prompt], [target])
    pieces = [tokenizer.decode([i]) for i in ids[0]]
    j = first_content_index(pieces)
    return int(ids[0][j if j is not None else 0])


def related_objects(probes: Sequence[Probe]) -> dict[str, set[str]]:
    """Objects (true and new targets) seen per relation: the related terms of Wen & Zhang's categories."""
    out: dict[str, set[str]] = {}
    for p in probes:
        if p.relation:
            objs = out.setdefault(p.relation, set())
            objs.add(p.target_true)
            if p.target_new:
                objs.add(p.target_new)
    return out


@dataclass
class CategoryTokens:
    """The token ids of each category for one prompt (disjoint; 'other' is the rest)."""

    edited: set[int]
    true: set[int]
    related: set[int]


def category_tokens(tokenizer, probe: Probe, related: dict[str, set[str]]) -> CategoryTokens:
    prompt = probe.text
    true = {first_token_id(tokenizer, prompt, probe.target_true)}
    edited = {first_token_id(tokenizer, prompt, probe.target_new)} if probe.target_new else set()
    true -= edited  # one token for both targets counts as the edited target's
    rel = {first_token_id(tokenizer, prompt, o) for o in related.get(probe.relation, set())
           if o not in (probe.target_true, probe.target_new)}
    return CategoryTokens(edited, true, rel - edited - true)


def last_token_probs(model, tokenizer, prompts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """Next-token probabilities after each prompt ([n, vocab]); left padding with explicit positions."""
    device = next(model.parameters()).device
    rows = [encode(tokenizer, p) for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    out = []
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            width = max(len(r) for r in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, r in enumerate(chunk):
                ids[j, width - len(r):] = torch.tensor(r)
                mask[j, width - len(r):] = 1
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=pos.to(device)).logits[:, -1, :].float()
            out.append(torch.softmax(logits, dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def category_mass(probs: torch.Tensor, cats: Sequence[CategoryTokens]) -> list[dict[str, float]]:
    """Per prompt: the probability of each category; 'other' = 1 − the rest, so each row sums to 1."""
    rows = []
    for p, c in zip(probs, cats):
        m = {k: float(p[sorted(getattr(c, k))].sum()) if getattr(c, k) else 0.0 for k in CATEGORIES[:3]}
        m["other"] = max(0.0, 1.0 - sum(m.values()))
        total = sum(m.values())
        rows.append({k: v / total for k, v in m.items()})
    return rows


def top_tokens(tokenizer, probs: torch.Tensor, k: int = 3) -> list[list[tuple[str, float]]]:
    out = []
    for p in probs:
        vals, idx = p.topk(k)
        out.append([(tokenizer.decode([int(i)]), round(float(v), 4)) for v, i in zip(vals, idx)])
    return out


def token_snapshot(model, tokenizer, probes: Sequence[Probe], cats: Sequence[CategoryTokens]) -> dict:
    """Mean category mass over ``probes`` and each probe's top-3 tokens."""
    if not probes:
        return {"mass": {k: math.nan for k in CATEGORIES}, "top3": []}
    probs = last_token_probs(model, tokenizer, [p.text for p in probes])
    rows = category_mass(probs, cats)
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in CATEGORIES}
    return {"mass": mean, "top3": top_tokens(tokenizer, probs)}


# -- retention and edit scores ----------------------------------------------------------------------

def answers(model, tokenizer, probes: Sequence[Probe], max_new_tokens: int) -> list:
    return predict(model, tokenizer, list(probes), top_k=1, max_new_tokens=max_new_tokens) if probes else []


def stated(tokenizer, probes: Sequence[Probe], preds, which: str) -> list[bool]:
    """Per probe: does its answer state the true (``which='true'``) or new target?"""
    if not probes:
        return []
    targets = [p.target_true if which == "true" else (p.target_new or "") for p in probes]
    return list(retained(preds, target_first_tokens(tokenizer, [p.text for p in probes], targets)))


def efficacy_flags(model, tokenizer, facts: Sequence[Probe]) -> list[bool]:
    """Per fact: P(new target's first token) > P(true target's first token) after the prompt."""
    probs = last_token_probs(model, tokenizer, [f.text for f in facts])
    flags = []
    for p, f in zip(probs, facts):
        new = first_token_id(tokenizer, f.text, f.target_new or "")
        true = first_token_id(tokenizer, f.text, f.target_true)
        flags.append(bool(p[new] > p[true]))
    return flags


def paraphrase_flags(model, tokenizer, facts: Sequence[Probe], max_new_tokens: int) -> list[bool]:
    prompts = [Probe(id=f"{f.id}/p{i}", subject=f.subject, prompt=para, target_true=f.target_true,
                     target_new=f.target_new) for f in facts for i, para in enumerate(f.paraphrases)]
    preds = answers(model, tokenizer, prompts, max_new_tokens)
    return stated(tokenizer, prompts, preds, "new")


# -- activations ---------------------------------------------------------------------------------------

def positions(tokenizer, probes: Sequence[Probe]) -> list[tuple[int, int]]:
    """(subject's last token, prompt's last token) of each probe's filled prompt."""
    out = []
    for p in probes:
        filled = fill(p.template, p.subject) if "{}" in p.template else None
        last = len(encode(tokenizer, p.text)) - 1
        subj = subject_index(tokenizer, filled) if filled is not None else last
        out.append((subj, last))
    return out


def activations(model, tokenizer, probes: Sequence[Probe], block: str, n_layers: int) -> torch.Tensor:
    """Block outputs at the subject's and the prompt's last token: [n_probes, n_layers, 2, hidden]."""
    device = next(model.parameters()).device
    pos = positions(tokenizer, probes)
    rows: list[torch.Tensor] = []
    grabbed: dict[int, torch.Tensor] = {}

    def hook(i):
        def keep(_module, _args, out):
            grabbed[i] = (out[0] if isinstance(out, tuple) else out).detach()
        return keep

    handles = [model.get_submodule(block.format(i)).register_forward_hook(hook(i)) for i in range(n_layers)]
    try:
        with torch.inference_mode():
            for p, (s, last) in zip(probes, pos):
                ids = torch.tensor([encode(tokenizer, p.text)], device=device)
                grabbed.clear()
                model(input_ids=ids)
                rows.append(torch.stack([torch.stack([grabbed[i][0, s], grabbed[i][0, last]])
                                         for i in range(n_layers)]).float().cpu())
    finally:
        for h in handles:
            h.remove()
    return torch.stack(rows) if rows else torch.zeros(0)


def drift(base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Mean over probes of ‖h_other − h_base‖ per layer and position: [n_layers, 2]."""
    return (other - base).norm(dim=-1).mean(0)


def direction_similarity(base: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over probes of cos(h_a − h_base, h_b − h_base) per layer and position: [n_layers, 2].

    A probe where either model did not move at all (zero drift) contributes 0: no direction to compare.
    """
    da, db = a - base, b - base
    na, nb = da.norm(dim=-1), db.norm(dim=-1)
    dot = (da * db).sum(-1)
    cos = torch.where((na > 0) & (nb > 0), dot / (na * nb).clamp(min=1e-30), torch.zeros_like(dot))
    return cos.mean(0)


# -- weights ---------------------------------------------------------------------------------------------

def weight_residual(base: dict[str, torch.Tensor], edited: dict[str, torch.Tensor],
                    after: dict[str, torch.Tensor]) -> dict:
    """The edit's ΔW = edited − base and what remains of it in after − base, summed over the edited tensors.

    ``edit_left`` = ⟨after − base, ΔW⟩ / ‖ΔW‖² (1: the edit intact, 0: gone or orthogonal);
    ``ft_norm_rel`` = ‖after − edited‖ / ‖ΔW‖, the fine-tuning's own change on those tensors.
    """
    dot = sq = ft = 0.0
    for name, w0 in base.items():
        d_edit = (edited[name] - w0).double()
        dot += float(((after[name] - w0).double() * d_edit).sum())
        sq += float((d_edit * d_edit).sum())
        ft += float(((after[name] - edited[name]).double() ** 2).sum())
    if sq == 0:
        return {"edit_left": math.nan, "ft_norm_rel": math.nan, "edit_norm": 0.0}
    return {"edit_left": dot / sq, "ft_norm_rel": math.sqrt(ft / sq), "edit_norm": math.sqrt(sq)}
