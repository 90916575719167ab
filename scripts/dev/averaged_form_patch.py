"""The averaged-form trial of bench/results/reading_rule_dev.txt, kept as the change it made (dropped from the scan):
run in a scratch worktree, then scripts/dev/reading_rule_trial.py DIR --subjects DIR/found_ctx.json there.

    git worktree add /tmp/avg HEAD && python scripts/dev/averaged_form_patch.py /tmp/avg
"""
import sys
if len(sys.argv) != 2:
    raise SystemExit("usage: python scripts/dev/averaged_form_patch.py WORKTREE")
ROOT = sys.argv[1].rstrip("/")
p = ROOT + "/src/editaudit/scan/keys.py"
s=open(p).read()
old='''#: The neutral context every candidate subject is read after ("The" + subject tokens).
CONTEXT = "The"
'''
new='''#: The neutral context every candidate subject is read after ("The" + subject tokens).
CONTEXT = "The"
#: Openings a found text's key is averaged over when its forms are compared (``SubjectSearch.averaged_fire``).
#: Locate-then-edit editors write a key averaged over several openings (ROME's k*: the subject alone and after a
#: few generated sentences), so the true subject's averaged key lies nearer the edit than its key after any one
#: opening, while a leading word that only suits "The" ("a Lutheranism", "is Dallas") loses its edge.
CONTEXTS = ("", "The", "I think that", "Yesterday we talked about it.", "Here is one more fact:", "Therefore,")
'''
assert old in s
s=s.replace(old,new)
open(p,'w').write(s)

p = ROOT + "/src/editaudit/scan/subjects.py"
s=open(p).read()
s=s.replace("from .keys import PrefixKeys, context_ids, keys_of, last_keys, vocab_keys",
            "from .keys import CONTEXTS, PrefixKeys, context_ids, keys_of, last_keys, vocab_keys")
old='''    def _half(self) -> Any:'''
new='''    def averaged_fire(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """Fire of each sequence's key averaged over the ``CONTEXTS`` openings: closer to how editors write it."""
        if self._openings is None:
            self._openings = [self.tok(c, add_special_tokens=False)["input_ids"] if c else [] for c in CONTEXTS]
        rows = [o + list(x) for x in seqs for o in self._openings]
        keys = keys_of(self.model, [self.space.path], rows)[self.space.path]
        return self.space.fire(keys.reshape(len(seqs), len(self._openings), -1).mean(dim=1))

    def _half(self) -> Any:'''
assert old in s
s=s.replace(old,new,1)
old='''        self._prefix_keys: PrefixKeys | bool | None = None  # False: the model's cache is not usable here'''
new='''        self._prefix_keys: PrefixKeys | bool | None = None  # False: the model's cache is not usable here
        self._openings: list[list[int]] | None = None'''
assert old in s
s=s.replace(old,new,1)
old=s[s.index("def _trim(search: SubjectSearch"):s.index("def recover_subjects(")]
new='''#: A longer form of a found text is kept over a shorter one only when it adds this much averaged fire.
SETTLE_MARGIN = 0.02


def _trim(search: SubjectSearch, seq: list[int], score: float) -> list[int]:
    """The form of a found text to report: the text itself or one of its tails from a word start, whichever fires
    most with its key averaged over several openings (``averaged_fire``); a longer form must add ``SETTLE_MARGIN``.
    Under the search's one opening, leading words that only suit it raise the fire ("pkl that cadmium" 0.89 against
    "cadmium" 0.70 on a development MEMIT edit); averaged, the true subject is level or ahead (0.91 against 0.90).
    A tail that starts inside a word ("toKarachi" → "Karachi") is tried as that word re-tokenized on its own."""
    forms = [seq]
    for start in range(1, len(seq)):
        tail = seq[start:]
        if not search.start_ok[tail[0]]:
            text = search.tok.decode(tail).strip()
            if not text[:1].isalnum():
                continue
            tail = search.tok(" " + text, add_special_tokens=False)["input_ids"]
            if not tail or not search.start_ok[tail[0]]:
                continue
        if tail not in forms:
            forms.append(tail)
    fire = search.averaged_fire(forms).tolist()
    best = len(forms) - 1  # the shortest; a longer form must beat it by the margin
    for i in range(len(forms) - 2, -1, -1):
        if len(forms[i]) > len(forms[best]) and fire[i] >= fire[best] + SETTLE_MARGIN:
            best = i
    return forms[best]


'''
s=s.replace(old,new)
open(p,'w').write(s)
