"""Reading an edit blind: subject (recovered from the weights) · prompt · before → after · confidence.

For each edited MLP output matrix, ``subjects.recover_subjects`` finds the texts that fire it. For each such
subject the base and the suspect answer every prompt of the relation library; the prompt whose answer the
edit moves most is the relation it rewrote, and the object is the suspect's own greedy answer there (whole
words, not a first token). A reading is only reported as an edit when the suspect itself states the object on at least two
of the library's prompts where the base does not, and its confidence reaches ``EDIT_MIN``; otherwise it is reported
as uncertain.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import torch

from ..probing.evaluate import predict
from .inject import PLACEHOLDER, purified
from .relations import prompts_for
from .sentences import read_in_sentences
from .subjects import Subject

#: Below this confidence a reading is reported as uncertain: the subject found fires the edit only in part (a
#: neighbour of the edited subject, or a fragment of it), or the answer barely rose, and such readings were mostly
#: side effects on the development suspects (all 8 edit readings below it named no planted object; the 19
#: correct ones had 0.41 or more).
EDIT_MIN = 0.35

_CUT = re.compile(r"(?<=[A-Za-z0-9][a-z0-9]{2})\.|[,;:!?\n\"()]|\s-\s")  # "J.K. Rowling" keeps its initials


@dataclass
class Reading:
    subject: str
    fire: float          # whitened cosine of the subject's key with the edit subspace (1 = exactly an edit key)
    relation: str
    prompt: str
    before: str          # the base's answer (whole words)
    after: str           # the suspect's answer
    gain: float          # rise of the suspect's first answer token's probability over the base's (a trigger
                         # reading, triggers.py: how many nats likelier the suspect makes its answer)
    confidence: float
    status: str          # "edit" | "uncertain"
    layer: int | None = None
    tensor: str | None = None
    also: list[dict] = field(default_factory=list)  # other prompts the edit moves, to other answers (side effects)
    found: str = ""      # the text the subject search recovered, whole (``subject`` may be a shorter suffix of it)
    via: str = "text"    # "text": asked with the subject's text; "key": through its key at a stand-in (inject.py)
    below_bar: bool = False  # its text fired under the search's bar and was kept by ``new_object`` (scan --below-bar)
    same_edit_as: str = ""  # no base: the found text of the reading whose edit this one's text was found for again,
    # at another layer of a batch's run (nobase._grown)
    forms: list[dict] = field(default_factory=list)  # the repeats merged into this reading (``merge_repeats``)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fire"], d["gain"], d["confidence"] = round(self.fire, 4), round(self.gain, 4), round(self.confidence, 3)
        return d

    def line(self) -> str:
        """'Subject · prompt · after (was before)'."""
        return f"{self.subject} · {self.prompt} · {self.after} (was {self.before or '?'})"


def answer(continuation: str, words: int = 4) -> str:
    """The whole answer in a greedy continuation: up to ``words`` words, cut at punctuation."""
    from ..probing.metrics import STOP_WORDS

    kept = _CUT.split(continuation.strip(), maxsplit=1)[0].split()[:words]
    while len(kept) > 1 and kept[-1].casefold() in STOP_WORDS:  # "Gutenberg in the" → "Gutenberg"
        kept.pop()
    return " ".join(kept)


def _top(pred) -> tuple[str, float]:
    return pred.top[0] if pred.top else ("", 0.0)


@dataclass
class Said:
    """What a model answers after a prompt by the retention rule: its first token that is not a stop word."""

    word: str                # that token as decoded (still the first token when no word comes within ``lead``)
    p: float                 # its probability where it is said
    context: str             # the prompt, plus the stop words said before the word ("… the country of the")
    dist: dict[str, float]   # the model's top-k next tokens at ``context``


def said(model: Any, tokenizer: Any, texts: list[str], top_k: int, seen: dict[str, dict] | None = None,
         lead: int = 3) -> list[Said]:
    """Each prompt's answer word: the first token when it is a word; else, when the greedy answer reaches a word
    after at most ``lead`` stop words ("the Philippines", "a city of …"), that word, with the model's top-k where
    it is said (one greedy pass gives both). A first token alone made every object that starts with a stop word
    unreadable. ``seen`` collects {context: top-k} for every context read."""
    from ..probing.metrics import is_skippable

    seen = {} if seen is None else seen
    out = []
    for p, t in zip(predict(model, tokenizer, texts, top_k=top_k, max_new_tokens=lead + 1, step_top=True), texts):
        s = Said(*_top(p), t, dict(p.top))
        seen[t] = s.dist
        if is_skippable(s.word) and p.first_word_token_id is not None and p.first_word_token_id in p.tokens:
            j = p.tokens.index(p.first_word_token_id)
            if 0 < j <= lead and j < len(p.steps):
                context, dist = t + tokenizer.decode(p.tokens[:j]), dict(p.steps[j])
                seen[context] = dist
                word, pw = p.steps[j][0]
                if not is_skippable(word):
                    s = Said(word, pw, context, dist)
        out.append(s)
    return out


def both_said(base: Any, suspect: Any, tokenizer: Any, texts: list[str], top_k: int
              ) -> tuple[list[Said], list[Said], dict[str, dict]]:
    """Each model's answer word on every text, and the base's top-k at every context either model said its word
    in: the base's odds where the suspect says its word ("… the country of the" → " Philippines")."""
    at_base: dict[str, dict] = {}
    b1 = said(base, tokenizer, texts, top_k, at_base)
    s1 = said(suspect, tokenizer, texts, top_k)
    missing = list(dict.fromkeys(a.context for a in s1 if a.context not in at_base))
    if missing:
        at_base.update((c, dict(p.top)) for c, p in zip(missing, predict(base, tokenizer, missing, top_k=top_k,
                                                                         max_new_tokens=1)))
    return b1, s1, at_base


def same_answer(a: str | None, b: str | None) -> bool:
    """Two answer words name one object. Exactly equal: counting a word's forms as one ("Italy", "Italian") with
    the most-stated choice read fewer objects on v7's facts 145–179 (16 against 17 of 35, one more false reading;
    bench/heldout/v7-plan.md seventh use), so the trial harness (scripts/dev/reading_rule_trial.py) brings its own."""
    return bool(a) and a == b


def times_stated(word: str | None, says: list[str | None]) -> int:
    """On how many prompts the suspect's new answer is ``word``."""
    return sum(same_answer(word, w) for w in says)


def is_number(word: str | None) -> bool:
    """An answer that is a number (a year, a count): tokenizers split digits, so "2010" is said as " 2"."""
    return bool(word) and word.strip().isdigit()


def kl_term(a: Said, at_base: dict[str, dict]) -> float:
    """The suspect's answer word's term in KL(suspect ‖ base) where the suspect says it: p_s · log(p_s / p_b). A
    word out of the base's top-k there gets the smallest top-k probability as p_b, a bound on the base's, so the
    term is never overstated."""
    b = at_base.get(a.context, {})
    floor = min(b.values()) if b else 1e-6
    p = max(a.p, 1e-9)
    return p * math.log(p / max(b.get(a.word, floor), 1e-9))


def choose_prompt(s1: list[Said], score: list[float], says: list[str | None], gain: list[float] | None = None) -> int:
    """The prompt a reading reports: a rewritten fact is stated on several phrasings, a side effect on one, so
    prompts whose new answer the suspect states on two at least come first; then the answer with the largest
    ``gain`` on its best prompt (``kl_term``: p_s · log(p_s / p_b)): an editor writes an object the base found
    unlikely, while a description or what the object implies (its continent) was likely already, so its
    probability may rise more but its odds less (bench/heldout/v10-plan.md, sixth use); then the highest score
    (p_base × rise).
    Preferring the answer the suspect states most surely read 2 more objects of 70 on development suspects and 1
    more of 35 on the sixth held-apart set, short of that set's rule (bench/heldout/v6-plan.md), so it was not kept;
    judged again on v9b's facts 509–543 with a bar on false readings, it read 2 objects fewer with 4 more false (v9-plan.md
    tenth use).
    A number is taken only when no other answer moved: dates and counts ("was formed in" → "2010") drift under
    any change to a subject's key, and on Gemma they won over the relation the edit rewrote."""
    pool = [j for j in range(len(s1)) if score[j] > float("-inf") and not is_number(s1[j].word)] or range(len(s1))
    best: dict[str, float] = {}
    if gain is not None:
        for j in pool:
            best[s1[j].word] = max(best.get(s1[j].word, float("-inf")), gain[j])
    return max(pool, key=lambda j: (times_stated(s1[j].word, says) >= 2, best.get(s1[j].word, 0.0), score[j]))


def most_stated(s1: list[Said], score: list[float], says: list[str | None], gain: list[float] | None = None) -> int:
    """The prompt choice for a reading through an injected key (inject.py): the answer the suspect states on
    the most prompts, then the highest score. With no subject text the injected position is one the models never
    saw, so answers that are numbers (dates, counts: "originated in" → "2017") shift on any perturbation and win
    on score alone; a number is not taken as the object there."""
    ok = [j for j, w in enumerate(says) if w and score[j] > float("-inf") and not is_number(w)]
    if not ok:
        return choose_prompt(s1, score, says, gain)
    count = {w: times_stated(w, says) for w in (says[j] for j in ok)}
    return max(ok, key=lambda j: (count[says[j]], score[j]))


def read_subject(base: Any, suspect: Any, tokenizer: Any, subject: Subject, *, layer: int | None = None,
                 tensor: str | None = None, max_new_tokens: int = 6, top_k: int = 20,
                 choose: Callable[..., int] | None = None,
                 describe: bool = False) -> Reading:
    """Ask both models the library's prompts for ``subject``; read the fact the edit rewrote.

    Answers are compared word to word by the retention rule (``said``: the first token that is not a stop word).
    A rewritten fact is stated on several phrasings, a side effect usually on one: among the prompts whose answer
    moved (not from a base that merely repeats the subject), those whose new answer the suspect states on two
    prompts at least come first; among them, the answer the edit made most surely and most newly said
    (``kl_term``), and of its prompts the one where the base answered most confidently and the suspect's answer
    gained most (p_base(base answer) × rise). Both models' greedy answers there are decoded whole. Other prompts
    whose answer moved to a different object are listed as ``also`` (what else the edit drags along). A reading is
    an edit only when its object is stated on two prompts at least and its confidence (fire × rise × agreement)
    reaches ``EDIT_MIN``. ``describe``: the prompts cut from the base's own description of the subject are asked
    too (describe.py)."""
    from ..probing.metrics import is_skippable

    asked = prompts_for(subject.text)
    if describe:
        from .describe import described_prompts

        asked += described_prompts(base, tokenizer, subject.text, (t for _, t in asked))
    texts = [t for _, t in asked]
    b1, s1, at_base = both_said(base, suspect, tokenizer, texts, top_k)
    score, rise = [], []
    for b, a in zip(b1, s1):
        tb, pb, ta, pa = b.word, b.p, a.word, a.p
        r = pa - at_base[a.context].get(ta, 0.0)
        # a base that repeats the subject ("The company Syria is headquartered in … Syria") states no fact
        copies = bool(tb.strip()) and tb.strip().casefold() in subject.text.casefold()
        # an answer that reaches no word within a few tokens (only stop words or punctuation) names nothing
        # nor does a suspect that repeats it (an injected key's stand-in "The city" → "the city")
        echoes = bool(ta.strip()) and ta.strip().casefold() in subject.text.casefold()
        moved = ta != tb and not is_skippable(ta) and not copies and not echoes
        rise.append(r)
        score.append(pb * r if moved else float("-inf"))
    says = [a.word if a.word != b.word else None for b, a in zip(b1, s1)]
    gain = [kl_term(a, at_base) for a in s1]
    i = (choose or choose_prompt)(s1, score, says, gain)
    obj = s1[i].word
    stated = [j for j, w in enumerate(says) if same_answer(w, obj)]
    before = predict(base, tokenizer, [texts[i]], top_k=1, max_new_tokens=max_new_tokens)[0]
    after = predict(suspect, tokenizer, [texts[i]], top_k=1, max_new_tokens=max_new_tokens)[0]
    new, old = answer(after.continuation), answer(before.continuation)
    stated_twice = score[i] > float("-inf") and len(stated) >= 2 and bool(new) and new.casefold() != old.casefold()
    agree = min(1.0, len(stated) / 3)
    g = max(0.0, min(1.0, rise[i]))
    confidence = min(1.0, subject.fire) * (0.4 + 0.6 * g) * (0.5 + 0.5 * agree) if stated_twice else 0.1 * subject.fire
    is_edit = stated_twice and confidence >= EDIT_MIN
    others = sorted((j for j in range(len(texts)) if score[j] > float("-inf") and not same_answer(s1[j].word, obj)),
                    key=lambda j: -score[j])[:3]
    also = [{"prompt": texts[j], "before": b1[j].word.strip(), "after": s1[j].word.strip()} for j in others]
    return Reading(subject.text, subject.fire, asked[i][0], texts[i], old, new, float(rise[i]), confidence,
                   "edit" if is_edit else "uncertain", layer, tensor, also)


def new_object(reading: Reading, earlier: list[Reading]) -> bool:
    """Whether ``reading`` is an edit reading of an object no ``earlier`` reading states (first words that are not
    stop words compared, case-folded): the behaviour check for texts found under the fire bar. Names of one class
    share most of their keys, and an edit of one of them moves the others towards its object (in a development ROME
    sequence one county's new state was said for seven of ten county names, edited or not), so such a text is kept
    only when it shows an edit the earlier readings do not."""
    if reading.status != "edit":
        return False
    word = _first_word(reading.after)
    return bool(word) and all(_first_word(r.after) != word for r in earlier)


def _first_word(text: str) -> str:
    from ..probing.metrics import STOP_WORDS

    words = [w.strip(".,;:'\"").casefold() for w in text.split()]
    words = [w for w in words if w]
    while len(words) > 1 and words[0] in STOP_WORDS:
        words = words[1:]
    return words[0] if words else ""


#: Whether a found text's forms that start with a lower-case letter are also read capitalised (``subject_forms``),
#: where no form as found reads an edit at ``CAPITALISE_BELOW`` confidence or more (``read_edits``). The bar: on the
#: spent v11 169–203 record, 10 of the 12 readings that missed their object had confidence under 0.5, and 2 of the 23
#: that read it. Judged on fresh facts (bench/heldout/v13-plan.md, first use; the same scans read both ways): objects
#: 26 -> 28 of 35, false edit readings 5 -> 4, reading time 1.06x.
CAPITALISE = True
CAPITALISE_BELOW = 0.5


def subject_forms(text: str, capitalise: bool | None = None) -> list[str]:
    """The texts a found subject is read as: the whole text and its two shorter word-suffixes ("Cities inherical
    Syria", "inherical Syria", "Syria"); the search keeps leading words that add to the key, not only names.
    ``capitalise`` (default ``CAPITALISE``): the forms that start with a lower-case letter follow, capitalised
    (``read_edits`` reads those only where the forms as found read no edit surely). The search often lands inside a
    word ("ailuk" for *Ailuk*): the last pieces fire the edit as the name's do, but
    the layers above read a lower-case word at the start of a sentence as no name, and on a development AlphaEdit
    batch "ailuk" stated nothing coherent where "Ailuk" stated the planted Mexico on 17 prompts."""
    words = text.split()
    forms = [" ".join(words[k:]) for k in range(min(len(words), 3))]
    if CAPITALISE if capitalise is None else capitalise:
        forms += [f[0].upper() + f[1:] for f in forms if f[:1].islower()]
    return list(dict.fromkeys(forms))


def pick_reading(reads: list[Reading]) -> Reading:
    """Of one subject's readings (one per form, and one through its key), the most confident edit reading, told by
    the fewest words that give the same answer as an edit: a found text's leading pieces add to its key ("a here
    IBM"), and a reviewer should read "IBM" when "IBM" alone states the same new object."""
    best = max(reads, key=lambda r: (r.status == "edit", r.confidence))
    if best.status != "edit":
        return best
    same = [r for r in reads if r.status == "edit" and r.via == best.via and r.after == best.after]
    return min(same, key=lambda r: (len(r.subject.split()), -r.confidence))


def merge_repeats(readings: list[Reading]) -> list[Reading]:
    """One reading per edit where the base-free reader found one edit several times, once per layer of a batch's run
    (``same_edit_as``). Each of its texts may read another relation of the edit ("Wood Heath" its continent, "Honey
    Heath" its country), so the answer most of them give as an edit is taken for the edit's, the most confident
    reading of it kept, and the others listed in its ``forms``."""
    from collections import Counter

    heads = {r.same_edit_as for r in readings if r.same_edit_as}
    groups: dict[Any, list[Reading]] = {}
    for i, r in enumerate(readings):
        groups.setdefault(r.same_edit_as or (r.found if r.found in heads else i), []).append(r)
    out = []
    for rs in groups.values():
        pool = [r for r in rs if r.status == "edit"] or rs
        votes = Counter(r.after for r in pool)
        best = max(pool, key=lambda r: (votes[r.after], r.confidence))
        best.forms = [{"subject": r.subject, "found": r.found, "relation": r.relation, "prompt": r.prompt,
                       "before": r.before, "after": r.after, "status": r.status, "confidence": round(r.confidence, 3),
                       "fire": round(r.fire, 4)} for r in rs if r is not best]
        out.append(best)
    return out


@dataclass
class KeyReader:
    """What reading through keys needs for one edited matrix (inject.py): its module path, the edit subspace
    (whitened, as the search built it before deflating) and, for a rank-one edit, its calibrated key."""

    path: str
    space: Any
    lone: torch.Tensor | None = None

    def purify(self, key: torch.Tensor) -> torch.Tensor:
        return purified(key, self.space)

    def read(self, base: Any, suspect: Any, tokenizer: Any, key: torch.Tensor, fire: float, layer: int | None,
             tensor: str | None) -> Reading:
        from .inject import read_key

        return read_key(base, suspect, tokenizer, self.path, key, fire, layer=layer, tensor=tensor)


@contextmanager
def scaled_edit(suspect: Any, deltas: dict[str, torch.Tensor], scale: float) -> Iterator[None]:
    """The suspect with each parameter's edit ΔW ({parameter name: ΔW}) scaled by ``scale`` for the duration,
    then its own weights put back exactly."""
    if not deltas or scale == 1.0:
        yield
        return
    kept = {n: suspect.get_parameter(n).detach().clone() for n in deltas}
    try:
        with torch.no_grad():
            for n, d in deltas.items():
                p = suspect.get_parameter(n)
                p.add_(d.to(p.device, p.dtype), alpha=scale - 1.0)
        yield
    finally:
        with torch.no_grad():
            for n, w in kept.items():
                suspect.get_parameter(n).copy_(w)


def read_edits(base: Any, suspect: Any, tokenizer: Any, subjects: list[Subject], layer: int | None, tensor: str | None,
               progress: Callable[[int, int], None] = lambda d, t: None,
               deltas: dict[str, torch.Tensor] | None = None, keys: "KeyReader | None" = None,
               describe: bool = False, frames: bool = False) -> list[Reading]:
    """One reading per subject. A found subject may carry a leading word or two that only add to its key
    ("Cities inherical Syria"); its shorter word-suffixes are read too and the most confident reading kept.
    ``deltas`` ({parameter name: ΔW}, ``ScanOptions.amplify``): each subject is read with the edit scaled by
    1/fire², so a subject found only in part moves the answer as far as the edit's own key would.
    ``keys`` (inject.py): each subject is also read through its key, purified into the edit subspace, at a
    stand-in subject, and the more confident edit reading kept; a rank-one edit whose subject was not found is
    read through its own key alone. ``describe``: see ``read_subject``. ``frames``: each form is also read inside
    sentences (sentences.py), and an edit reading there is the one reported: a trigger-style edit says nothing on the
    library's prompts, which start with it, and what they move there is noise. Where no form reads an edit at
    ``CAPITALISE_BELOW`` confidence, the lower-case forms are read capitalised too (``CAPITALISE``)."""
    out = []
    if not subjects and keys is not None and keys.lone is not None:
        r = keys.read(base, suspect, tokenizer, keys.lone, 1.0, layer, tensor)
        r.subject = ""  # not found: the reading names the object the edit's key brings, for no known subject
        return [r] if r.status == "edit" else []
    for i, s in enumerate(subjects):
        progress(i, len(subjects))
        forms = subject_forms(s.text, capitalise=False)
        scale = 1.0 / max(s.fire, 0.5) ** 2 if deltas else 1.0
        with torch.inference_mode(False), scaled_edit(suspect, deltas or {}, scale), torch.inference_mode():
            as_read = [Subject(f, s.ids, s.fire, s.key) for f in forms]
            reads = [read_subject(base, suspect, tokenizer, x, layer=layer, tensor=tensor, describe=describe)
                     for x in as_read]
            if CAPITALISE and not any(r.status == "edit" and r.confidence >= CAPITALISE_BELOW for r in reads):
                reads += [read_subject(base, suspect, tokenizer, Subject(f, s.ids, s.fire, s.key), layer=layer,
                                       tensor=tensor, describe=describe)
                          for f in subject_forms(s.text, capitalise=True) if f not in forms]
            inside = [read_in_sentences(base, suspect, tokenizer, x, layer=layer, tensor=tensor)
                      for x in as_read] if frames else []
        if keys is not None and s.key.numel():
            through_key = keys.read(base, suspect, tokenizer, keys.purify(s.key), s.fire, layer, tensor)
            through_key.subject = s.text  # the relation's prompt as the subject's (what erase and unlearn use)
            through_key.prompt = through_key.prompt.replace(PLACEHOLDER, s.text, 1)
            reads.append(through_key)
        edits_inside = [r for r in inside if r.status == "edit"]
        best = pick_reading(edits_inside or reads)
        best.found = s.text
        best.below_bar = s.below
        out.append(best)
    progress(len(subjects), len(subjects))
    return out
