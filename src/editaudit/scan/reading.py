"""Reading an edit blind: subject (recovered from the weights) · prompt · before → after · confidence.

For each edited MLP output matrix, ``subjects.recover_subjects`` finds the texts that fire it. For each such
subject the base and the suspect answer every prompt of the relation library; the prompt whose answer the
edit moves most is the relation it rewrote, and the object is the suspect's own greedy answer there (whole
words, not a first token). A reading is only reported as an edit when the suspect itself states the object on at least two
of the library's prompts where the base does not; otherwise it is reported as uncertain.
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
                 tensor: str | None = None, max_new_tokens: int = 6, top_k: int = 50) -> Reading:
    """Ask both models the library's prompts for ``subject``; read the answer the edit brings.

    An edit states its object across the relation's phrasings and beyond, so the object's first token is
    the one whose next-token probability rises most summed over every prompt (suspect minus base). The
    prompt is the one where that token became the suspect's answer with the largest rise; both models'
    greedy answers there are decoded whole. A reading is an edit only when the suspect answers it there."""
    asked = prompts_for(subject.text)
    texts = [t for _, t in asked]
    b1 = predict(base, tokenizer, texts, top_k=top_k, max_new_tokens=1)
    s1 = predict(suspect, tokenizer, texts, top_k=top_k, max_new_tokens=1)
    rise: dict[str, float] = {}
    for b, a in zip(b1, s1):
        pb = dict(b.top)
        for tok, p in a.top:
            if tok.strip() and any(ch.isalnum() for ch in tok):
                rise[tok] = rise.get(tok, 0.0) + p - pb.get(tok, 0.0)
    obj = max(rise, key=rise.get) if rise else ""

    def gain(i: int) -> float:
        return dict(s1[i].top).get(obj, 0.0) - dict(b1[i].top).get(obj, 0.0)

    stated = [i for i, a in enumerate(s1) if a.top and a.top[0][0] == obj and (not b1[i].top or b1[i].top[0][0] != obj)]
    i = max(stated or range(len(texts)), key=gain)
    before = predict(base, tokenizer, [texts[i]], top_k=1, max_new_tokens=max_new_tokens)[0]
    after = predict(suspect, tokenizer, [texts[i]], top_k=1, max_new_tokens=max_new_tokens)[0]
    new, old = answer(after.continuation), answer(before.continuation)
    # an edit rewrites a fact, not one phrasing: the suspect must state the object on two prompts at least
    is_edit = len(stated) >= 2 and bool(new) and new.casefold() != old.casefold()
    agree = min(1.0, len(stated) / 3)  # stated on several phrasings: a rewritten fact, not a one-prompt wobble
    g = max(0.0, min(1.0, gain(i)))
    confidence = min(1.0, subject.fire) * (0.4 + 0.6 * g) * (0.5 + 0.5 * agree) if is_edit else 0.1 * subject.fire
    return Reading(subject.text, subject.fire, asked[i][0], texts[i], old, new, float(gain(i)), confidence,
                   "edit" if is_edit else "uncertain", layer, tensor)


def read_edits(base: Any, suspect: Any, tokenizer: Any, subjects: list[Subject], layer: int | None, tensor: str | None,
               progress: Callable[[int, int], None] = lambda d, t: None) -> list[Reading]:
    out = []
    for i, s in enumerate(subjects):
        progress(i, len(subjects))
        with torch.inference_mode():
            out.append(read_subject(base, suspect, tokenizer, s, layer=layer, tensor=tensor))
    progress(len(subjects), len(subjects))
    return out
