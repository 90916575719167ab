"""Reading a hypernetwork edit (MEND, MALMEN): search whole prompts, since its key is the prompt's end.

MEND and MALMEN write ΔW_ℓ = L Rᵀ into the top layers from the key u at the *last* position of the edit's
prompt (where the new object's first token is predicted), not at a subject's last token, so no subject text on
its own fires the edit. What fires it is a whole prompt. The search:

1. fill every template of the relation library with a neutral word ("it") and score each by how much of its
   end-key lies in the edit's input directions R (raw cosine: the editor took the key as it is);
2. climb the best few by coordinate ascent over every position (gradient proposals, a quick bf16 score of
   all of them, the exact score of the best), as the subject search climbs a subject;
3. ask both models the prompt found: what the suspect now says there, that the base does not and that the
   suspect makes far likelier than the base does, is the object the edit writes.

The prompt found is text that drives the edit fully; it often carries the subject's own words ("… orchestra
NSW located in the city of" for the Sydney Opera House) but is reported as a trigger, not as a subject.
Several edits of one batch are read one after another, the subspace deflated by each prompt's key.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .reading import Reading, answer
from .relations import RELATIONS

#: A prompt is only read when its end-key fires the edit at least this much. MALMEN takes the key as it is (the
#: edit prompt fires 1.0, climbed prompts 0.6–0.94 on development edits); MEND passes it through its learned
#: network first, so even the edit's own prompt fires only 0.25–0.56 in raw key space: the bar is low and the
#: behaviour check below does the judging.
TRIGGER_MIN = 0.2
#: A reading is an edit only when the suspect makes its answer at least this many nats likelier than the base does.
GAIN_MIN = 2.0
STARTS = 2          # templates climbed per edit component (4 read fewer objects on development edits, at 2x the time)
PROPOSALS = 16      # gradient proposals per position and step
CHECK = 24          # candidates scored exactly per step, of those the bf16 copy ranks best
STEPS = 10
GOOD = 0.9          # a climbed prompt at least this good ends the edit component's search


def _ids(tok: Any, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def templates() -> list[str]:
    return list(dict.fromkeys(t for ts in RELATIONS.values() for t in ts))


class TriggerSearch:
    """Prompts whose last-position key at one matrix lies in its edit's input directions."""

    def __init__(self, model: Any, tokenizer: Any, path: str, in_dirs: torch.Tensor):
        from .subjects import SubjectSearch, Whitened

        self.tok = tokenizer
        self.space = Whitened.build(path, None, in_dirs.float())
        # the subject search's machinery (exact and bf16 fire, gradients); no vocabulary keys are needed here
        self.search = SubjectSearch(model, tokenizer, self.space, torch.empty(0, 1), steps=STEPS)
        self.search.prefix = _ids(tokenizer, "\n")  # a prompt starts a line; nothing else comes before it

    def climb(self, seq: list[int]) -> tuple[list[int], float]:
        """Coordinate ascent over every position of ``seq`` (no growth: a template's length is about right)."""
        return self.search.climb(seq, max_len=len(seq), drop_first=False, proposals=PROPOSALS, check=CHECK, good=GOOD)

    def find(self, n: int, progress: Callable[[int, int], None] = lambda d, t: None) -> list[tuple[list[int], float, torch.Tensor]]:
        """Up to ``n`` prompts (tokens, fire, key), one per edit component, deflating after each."""
        starts = [_ids(self.tok, t.replace("{}", "it")) for t in templates()]
        out = []
        for k in range(n):
            progress(k, n)
            if self.space.basis.shape[1] == 0:
                break
            fires, _ = self.search.exact(starts)
            best: tuple[list[int], float] | None = None
            for i in fires.argsort(descending=True)[:STARTS].tolist():
                seq, score = self.climb(starts[i])
                if best is None or score > best[1]:
                    best = (seq, score)
                if best[1] >= GOOD:
                    break
            if best is None or best[1] < TRIGGER_MIN:
                break
            fire, keys = self.search.exact([best[0]])
            out.append((best[0], float(fire[0]), keys[0]))
            self.space.deflate(keys[0])
        progress(len(out), n)
        return out


def _content(text: str) -> str:
    """The answer from its first word that is not a stop word ("of Mexico" → "Mexico"), a word the garbled prompt
    makes the suspect repeat said once ("chef chef chef chef" → "chef")."""
    from ..probing.metrics import STOP_WORDS

    words = text.split()
    while len(words) > 1 and words[0].casefold().strip(".,") in STOP_WORDS:
        words = words[1:]
    kept = [w for i, w in enumerate(words) if i == 0 or w.casefold() != words[i - 1].casefold()]
    return " ".join(kept)


def read_triggers(base: Any, suspect: Any, tokenizer: Any, path: str, in_dirs: torch.Tensor, n: int,
                  layer: int | None, tensor: str | None,
                  progress: Callable[[int, int], None] = lambda d, t: None) -> list[Reading]:
    """One reading per prompt found: trigger · what the suspect now says there (was: the base's answer).

    An edit reading needs the suspect's whole answer to differ from the base's (stop words before it skipped)
    and to be ``GAIN_MIN`` nats likelier under the suspect than under the base; an answer already read from an
    earlier prompt of the same matrix is not read twice."""
    from ..probing.evaluate import evaluate_prompts, predict
    from ..probing.metrics import STOP_WORDS

    found = TriggerSearch(base, tokenizer, path, in_dirs).find(n, progress)
    out: list[Reading] = []
    seen: set[str] = set()
    for seq, fire, _key in found:
        text = tokenizer.decode(seq).strip()
        with torch.inference_mode():
            said = answer(predict(suspect, tokenizer, [text], top_k=1, max_new_tokens=6)[0].continuation)
            target = [[said]] if said else [[]]
            (b, b_score), = evaluate_prompts(base, tokenizer, [text], target, top_k=1, max_new_tokens=6)
            (_, s_score), = evaluate_prompts(suspect, tokenizer, [text], target, top_k=1, max_new_tokens=6)
        old, new = _content(answer(b.continuation)), _content(said)
        gain = s_score[0].logprob - b_score[0].logprob if said and s_score and b_score else 0.0
        moved = bool(new) and new.casefold() != old.casefold() and new.casefold() not in STOP_WORDS
        fresh = new.casefold() not in seen
        is_edit = moved and fresh and gain >= GAIN_MIN and fire >= TRIGGER_MIN
        confidence = (0.4 + 0.6 * min(1.0, fire)) * min(1.0, max(0.0, gain) / (2 * GAIN_MIN)) if moved else 0.0
        if is_edit:
            seen.add(new.casefold())
        out.append(Reading(text, fire, "trigger", text, old, new, float(gain), confidence,
                           "edit" if is_edit else "uncertain", layer, tensor, found=text))
    return out
