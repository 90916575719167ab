"""Prompts as locate-then-edit methods see them: subject positions, context prefixes, padded batches.

A fact's prompt is a template with ``{}`` for the subject. The methods read and write the residual
stream at the subject's *last* token, so every prompt is built together with that token's index.
Context templates (``"<generated text>. {}"``) make the key and the optimised value hold in more than
the one sentence the fact was stated in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import BadInput
from ..probing.format import Probe

PREFIXES = ("The", "Therefore", "Because", "I", "You")


@dataclass
class Filled:
    """A prompt with its subject filled in, and the character where the subject ends."""

    text: str
    subject_end: int


def fill(template: str, subject: str) -> Filled:
    """Put ``subject`` in place of the first ``{}`` (no ``str.format``: prompts may contain braces)."""
    at = template.find("{}")
    if at < 0:
        raise BadInput(f"prompt {template!r} has no place for the subject")
    return Filled(template[:at] + subject + template[at + 2:], at + len(subject))


def in_context(context: str, probe: Probe) -> Filled:
    """The probe's prompt inside a context template such as ``"Because of this. {}"``."""
    template = probe.template
    if "{}" not in template:
        raise BadInput(f"fact {probe.id!r}: prompt {probe.prompt!r} does not contain its subject {probe.subject!r}")
    at = context.find("{}")
    return fill(context[:at] + template + context[at + 2:], probe.subject)


def encode(tokenizer, text: str) -> list[int]:
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if not ids:
        raise BadInput(f"prompt {text!r} encodes to no tokens")
    return ids


def subject_index(tokenizer, filled: Filled) -> int:
    """Index of the last token that overlaps the subject (offset mapping when the tokenizer has one)."""
    try:
        enc = tokenizer(filled.text, add_special_tokens=True, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        offsets = None
    if offsets:
        last = None
        for i, (start, end) in enumerate(offsets):
            if end > start and start < filled.subject_end:
                last = i
        if last is not None:
            return last
    # slow tokenizers: the subject ends where the prefix up to its end stops
    return len(encode(tokenizer, filled.text[: filled.subject_end])) - 1


def pad_id(tokenizer) -> int:
    for cand in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if cand is not None:
            return int(cand)
    return 0


def right_pad(rows: Sequence[Sequence[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right padding keeps every real token at its unpadded position (causal attention ignores the tail)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def context_templates(model, tokenizer, n: int = 5, length: int = 10, seed: int = 0) -> list[str]:
    """``["{}"]`` plus ``n`` short generated openings, each followed by ``". {}"``.

    Sampled (top-5) from the model itself so that they read like its own text; seeded, so the same
    model gives the same templates.
    """
    templates = ["{}"]
    if n <= 0:
        return templates
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for i in range(n):
            ids = encode(tokenizer, PREFIXES[i % len(PREFIXES)])
            for _ in range(length):
                row = torch.tensor([ids], device=device)
                # the mask says every token is real (a sampled token may be the pad id; unmasked, transformers warns)
                logits = model(input_ids=row, attention_mask=torch.ones_like(row)).logits[0, -1].float().cpu()
                top = logits.topk(5)
                pick = torch.multinomial(torch.softmax(top.values, -1), 1, generator=gen)
                ids.append(int(top.indices[pick]))
            text = tokenizer.decode(ids, skip_special_tokens=True)
            text = " ".join(text.replace("{", " ").replace("}", " ").split())
            templates.append(f"{text}. {{}}")
    return templates
