"""Pure scoring rules over model outputs: the stop-word rule, CounterFact-style scores, token categories.

Nothing here runs a model; ``evaluate.py`` produces the numbers and these functions turn them into
metrics. Keeping the rules apart makes them easy to test and to document (docs/probes.md).
"""

from __future__ import annotations

import math
import string
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

#: Words skipped when looking for a model's answer in its greedy continuation ("The capital of France is
#: *the* Paris …" still answers "Paris"). English function words only: articles, prepositions,
#: conjunctions, pronouns, auxiliaries and copulas. Content words that can start an answer
#: ("new", "one", "city", "called") are deliberately absent. Compared case-insensitively, after
#: stripping whitespace.
STOP_WORDS: frozenset[str] = frozenset(
    """
    a an the
    of in on at to for from by with as into onto about over under after before between through during
    and or but nor so yet than then
    is are was were be been being am
    has have had having do does did done
    will would shall should can could may might must
    it its it's this that these those there here
    he she they we you i me him her them us his hers their theirs our ours your yours my mine
    who whom whose which what where when why how
    also not just only very too still even
    s 's
    """.split()
)

CATEGORIES = ("edited target", "true target", "related term", "other")


def _is_punct(text: str) -> bool:
    return all(unicodedata.category(ch).startswith("P") or ch in string.punctuation for ch in text)


def is_skippable(token_text: str) -> bool:
    """True for tokens the retention rule skips: whitespace, punctuation only, or a stop word."""
    t = token_text.strip()
    if not t:
        return True
    if _is_punct(t):
        return True
    return t.casefold() in STOP_WORDS


def first_content_index(token_texts: Sequence[str]) -> int | None:
    """Index of the first token that is not skippable, or None when every token is."""
    for i, t in enumerate(token_texts):
        if not is_skippable(t):
            return i
    return None


def same_token(a: str, b: str) -> bool:
    """Two decoded tokens name the same answer: equal after stripping whitespace, ignoring case."""
    a, b = a.strip().casefold(), b.strip().casefold()
    return bool(a) and a == b


# -- CounterFact-style scores -----------------------------------------------------------------------

@dataclass(frozen=True)
class TargetScore:
    """Teacher-forced score of one target after one prompt."""

    prob: float           # product of the target's token probabilities
    logprob: float        # sum of token log-probabilities
    n_tokens: int
    token_correct: int    # target tokens that were the argmax at their position (zsRE token accuracy)

    @property
    def mean_logprob(self) -> float:
        return self.logprob / max(self.n_tokens, 1)

    @property
    def token_accuracy(self) -> float:
        return self.token_correct / max(self.n_tokens, 1)


def efficacy(new: Sequence[TargetScore], true: Sequence[TargetScore]) -> float:
    """Share of prompts where the new target is more likely than the true one (P(new) > P(true)).

    Compared by mean log-probability per token so that long and short targets compete fairly.
    """
    pairs = list(zip(new, true))
    if not pairs:
        return math.nan
    return sum(n.mean_logprob > t.mean_logprob for n, t in pairs) / len(pairs)


def neighbourhood_score(new: Sequence[TargetScore], true: Sequence[TargetScore]) -> float:
    """Share of neighbourhood prompts where the true target still beats the new one (higher is better)."""
    pairs = list(zip(new, true))
    if not pairs:
        return math.nan
    return sum(t.mean_logprob > n.mean_logprob for n, t in pairs) / len(pairs)


def magnitude(new: Sequence[TargetScore], true: Sequence[TargetScore]) -> float:
    """Mean of P(new) - P(true) (per-token geometric mean probabilities): how far the edit pushed."""
    pairs = list(zip(new, true))
    if not pairs:
        return math.nan
    return sum(math.exp(n.mean_logprob) - math.exp(t.mean_logprob) for n, t in pairs) / len(pairs)


def token_accuracy(scores: Iterable[TargetScore]) -> float:
    """zsRE token accuracy: share of target tokens predicted exactly under teacher forcing."""
    scores = list(scores)
    total = sum(s.n_tokens for s in scores)
    return sum(s.token_correct for s in scores) / total if total else math.nan


def rate(flags: Iterable[bool]) -> float:
    flags = list(flags)
    return sum(bool(f) for f in flags) / len(flags) if flags else math.nan


# -- token categories ---------------------------------------------------------------------------------

def categorize(answer: str, target_true: str, target_new: str | None = None,
               related: Iterable[str] = ()) -> str:
    """Which of the probe's categories a predicted answer falls in.

    ``answer`` is a decoded token or word; it matches a target when it equals that target's first
    content word, or is a leading piece (≥ 2 characters) of it, case-insensitively.
    """
    a = answer.strip().casefold()
    if not a:
        return "other"

    def hits(target: str | None) -> bool:
        if not target:
            return False
        words = [w for w in target.split() if not is_skippable(w)] or target.split()
        head = words[0].casefold() if words else ""
        return a == head or (len(a) >= 2 and head.startswith(a)) or a == target.strip().casefold()

    if hits(target_new):
        return "edited target"
    if hits(target_true):
        return "true target"
    if any(hits(r) for r in related):
        return "related term"
    return "other"
