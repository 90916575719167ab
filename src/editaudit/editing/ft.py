"""FT-L: constrained fine-tuning of the MLP output matrix of chosen layers on the edit prompts.

The baseline of the ROME paper: minimise the new target's negative log-likelihood after each fact's
prompt with Adam, changing only the chosen layers' MLP output weights, and optionally keep every
weight within ±``norm_constraint`` of its original value (an L∞ ball, as in the paper). Stops after
``steps`` steps or when the mean loss drops below ``stop_loss``.

With ``augment_paraphrases`` each fact's paraphrase prompts are trained on too (Wen & Zhang's
paraphrase augmentation); a fact's prompts share its weight, so facts with many paraphrases do not
dominate the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import BadInput
from ..probing.evaluate import target_token_ids
from ..probing.format import Probe
from .layers import Layout
from .prompts import encode, in_context, pad_id, right_pad
from .values import _head_logits


@dataclass
class FtResult:
    steps: int
    loss: float


def training_prompts(fact: Probe, augment_paraphrases: bool = False) -> list[str]:
    """The texts after which FT-L trains the new target: the fact's prompt, then (augmenting) its
    paraphrases — all of them, since fine-tuning needs no subject position."""
    texts = [in_context("{}", fact).text.rstrip()]
    if augment_paraphrases:
        texts += [p.rstrip() for p in fact.paraphrases if p.strip()]
    return texts


def finetune(model, tokenizer, layout: Layout, facts: Sequence[Probe], layers: list[int], hp: dict,
             progress: Callable[[int, int], None] | None = None) -> FtResult:
    device = next(model.parameters()).device
    seqs, rows, cols, toks, weight = [], [], [], [], []
    for fact in facts:
        if not fact.target_new:
            raise BadInput(f"fact {fact.id!r} has no target_new to edit towards")
        prompts = training_prompts(fact, bool(hp.get("augment_paraphrases", False)))
        for text in prompts:
            _, t_ids = target_token_ids(tokenizer, [text], [fact.target_new])
            p_ids = encode(tokenizer, text)
            r = len(seqs)
            seqs.append(p_ids + t_ids[0][:-1])
            for j, tok in enumerate(t_ids[0]):
                rows.append(r)
                cols.append(len(p_ids) - 1 + j)
                toks.append(tok)
                weight.append(1.0 / (len(t_ids[0]) * len(prompts) * len(facts)))
    ids, mask = right_pad(seqs, pad_id(tokenizer), device)
    rows_t, cols_t = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
    toks_t, w_t = torch.tensor(toks, device=device), torch.tensor(weight, device=device)

    params = [model.get_submodule(layout.rewrite_name(layer)).weight for layer in layers]
    originals = [p.detach().clone() for p in params]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=hp["lr"])
    bound = hp.get("norm_constraint")
    loss_value, step = float("nan"), 0
    try:
        for step in range(1, hp["steps"] + 1):
            opt.zero_grad()
            with torch.enable_grad():
                logits = _head_logits(model, ids, mask, rows_t, cols_t)
                lp = torch.log_softmax(logits, -1).gather(-1, toks_t[:, None]).squeeze(-1)
                loss = -(lp * w_t).sum()
            loss_value = float(loss.detach())
            if progress:
                progress(step, hp["steps"])
            if loss_value < hp["stop_loss"]:
                break
            loss.backward()
            opt.step()
            if bound is not None:
                with torch.no_grad():
                    for p, p0 in zip(params, originals):
                        p.copy_(torch.max(torch.min(p, p0 + bound), p0 - bound))
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        opt.zero_grad(set_to_none=True)
    return FtResult(step, loss_value)
