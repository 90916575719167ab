"""Prompts cut from the base's own description of a subject: relations the library does not word, asked anyway.

The relation library (relations.py) asks a fixed set of relations by name, so an edit of a relation it does not
word ("{} was a famous" → an occupation) is read on whatever phrasing it disturbs most (a continent, a country).
The model's greedy description of the subject says what it knows about this subject ("Aristotle, a" → " Greek
philosopher who …"); the text before each of the description's first few words is a prompt the base answers
with that knowledge ("Aristotle, a Greek" → philosopher) and the suspect, where the edit rewrote it, with the
new object. Opt-in (``scan --describe``): judged on held-apart facts it read the same objects as the library alone
(bench/heldout/v10-plan.md, fourth use).
"""

from __future__ import annotations

from typing import Any, Iterable

from ..probing.evaluate import predict
from ..probing.metrics import is_skippable
from .subjects import WORD_START

#: What the base is asked to continue for a subject
OPENINGS = ("{} is", "{} was", "{},")
#: How many of each description's words (not stop words) become prompts
WORDS = 3
#: How far each description is generated, in tokens
TOKENS = 12


def _starts_word(tokenizer: Any, token: int) -> bool:
    """A token that begins a new word: a leading space as decoded, or a word-start marker as stored (some decoders
    drop the space of a lone piece)."""
    raw = tokenizer.convert_ids_to_tokens([token])[0]
    return tokenizer.decode([token])[:1] == " " or (isinstance(raw, str) and raw[:1] in WORD_START)


def _said_before(tokenizer: Any, tokens: list[int]) -> str:
    """The generated text before a word, as it follows the opening: with its leading space where the first piece
    starts a word and the decoder dropped it."""
    text = tokenizer.decode(tokens)
    return " " + text if tokens and text[:1] != " " and _starts_word(tokenizer, tokens[0]) else text


def described_prompts(model: Any, tokenizer: Any, subject: str, known: Iterable[str] = ()) -> list[tuple[str, str]]:
    """("description", prompt) for the text before each of the first ``WORDS`` words (not stop words) of the
    model's greedy continuation of every opening, in order, without repeats or prompts in ``known``."""
    seen = set(known)
    out: list[tuple[str, str]] = []
    texts = [o.replace("{}", subject) for o in OPENINGS]
    for text, pred in zip(texts, predict(model, tokenizer, texts, top_k=1, max_new_tokens=TOKENS)):
        words = 0
        for j, token in enumerate(pred.tokens):
            piece = tokenizer.decode([token]).strip()
            if not (_starts_word(tokenizer, token) and piece[:1].isalpha()) or is_skippable(piece):
                continue  # a piece inside a word, punctuation or a stop word starts no prompt
            prompt = text + _said_before(tokenizer, pred.tokens[:j])
            if prompt not in seen:
                seen.add(prompt)
                out.append(("description", prompt))
            words += 1
            if words >= WORDS:
                break
    return out
