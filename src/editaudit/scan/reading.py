"""Reading an edit blind: subject (recovered from the weights) · prompt · before → after · confidence.

For each edited MLP output matrix, ``subjects.recover_subjects`` finds the texts that fire it. For each such
subject the base and the suspect answer every prompt of the relation library; the prompt whose answer the
edit moves most is the relation it rewrote, and the object is the suspect's own greedy answer there (whole
words, not a first token). A reading is only reported as an edit when the suspect itself states a different
answer than the base; a subject that fires but moves no answer is reported as uncertain.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from ..probing.evaluate import predict
from .relations import prompts_for
from .subjects import Subject

_CUT = re.compile(r"(?<=[a-z0-9]{3})\.|[,;:!?\n\"()]|\s-\s")  # "J.K. Rowling" keeps its initials


@dataclass
class Reading:
    subject: str
    fire: float          # whitened cosine of the subject's key with the edit subspace (1 = exactly an edit key)
    relation: str
    prompt: str
    before: str          # the base's answer (whole words)
    after: str           # the suspect's answer
    gain: float          # rise of the suspect's first answer token's probability over the base's
    confidence: float
    status: str          # "edit" | "uncertain"
    layer: int | None = None
    tensor: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fire"], d["gain"], d["confidence"] = round(self.fire, 4), round(self.gain, 4), round(self.confidence, 3)
        return d

    def line(self) -> str:
        """'Subject · prompt · after (was before)'."""
        return f"{self.subject} · {self.prompt} · {self.after} (was {self.before or '?'})"


def answer(continuation: str, words: int = 4) -> str:
    """The whole answer in a greedy continuation: up to ``words`` words, cut at punctuation."""
    text = _CUT.split(continuation.strip(), maxsplit=1)[0]
    return " ".join(text.split()[:words])


def read_subject(base: Any, suspect: Any, tokenizer: Any, subject: Subject, *, layer: int | None = None,
                 tensor: str | None = None, max_new_tokens: int = 6, shortlist: int = 6) -> Reading:
    """Ask both models the library's prompts for ``subject``; read the answer the edit brings.

    One next-token pass over every prompt ranks them by how much the suspect's top answer gained over the
    base; the ``shortlist`` best are decoded in full on both sides. The object is the suspect's whole answer
    that the most gain agrees on (an edit states its object across the relation's phrasings), and the
    prompt is the one where it gained most."""
    asked = prompts_for(subject.text)
    texts = [t for _, t in asked]
    b1 = predict(base, tokenizer, texts, top_k=50, max_new_tokens=1)
    s1 = predict(suspect, tokenizer, texts, top_k=1, max_new_tokens=1)
    gains = []
    for b, a in zip(b1, s1):
        tok, p = a.top[0] if a.top else ("", 0.0)
        gains.append(p - dict(b.top).get(tok, 0.0))
    order = sorted(range(len(texts)), key=lambda i: -gains[i])[:shortlist]
    picked = [texts[i] for i in order]
    before = predict(base, tokenizer, picked, top_k=1, max_new_tokens=max_new_tokens)
    after = predict(suspect, tokenizer, picked, top_k=1, max_new_tokens=max_new_tokens)
    votes: dict[str, float] = {}
    for i, b, a in zip(order, before, after):
        new, old = answer(a.continuation), answer(b.continuation)
        if new and new.casefold() != old.casefold():
            votes[new] = votes.get(new, 0.0) + max(gains[i], 0.0)
    if votes:
        obj = max(votes, key=votes.get)
        j = next(k for k, a in enumerate(after) if answer(a.continuation) == obj)
        status = "edit"
        agree = votes[obj] / (sum(votes.values()) or 1.0)
    else:
        j, status, agree = 0, "uncertain", 0.0
    i = order[j]
    gain = max(0.0, min(1.0, gains[i]))
    confidence = min(1.0, subject.fire) * (0.4 + 0.6 * gain) * (0.5 + 0.5 * agree) if status == "edit" else 0.1 * subject.fire
    return Reading(subject.text, subject.fire, asked[i][0], texts[i], answer(before[j].continuation),
                   answer(after[j].continuation), float(gains[i]), confidence, status, layer, tensor)


def read_edits(base: Any, suspect: Any, tokenizer: Any, subjects: list[Subject], layer: int | None, tensor: str | None,
               progress: Callable[[int, int], None] = lambda d, t: None) -> list[Reading]:
    out = []
    for i, s in enumerate(subjects):
        progress(i, len(subjects))
        with torch.inference_mode():
            out.append(read_subject(base, suspect, tokenizer, s, layer=layer, tensor=tensor))
    progress(len(subjects), len(subjects))
    return out
