"""Development trial of the reading's prompt choice on *recovered* subjects: the subjects the search finds in
development suspects (garbled leading pieces and all, as a scan meets them), read with the shipped choice and with
the variants below, scored by scripts/open_reading_eval.py's rules.

    python scripts/dev/make_dev_suspects.py /tmp/dev4 bench/heldout/smollm2-135m-v4.jsonl
    python scripts/dev/reading_rule_trial.py /tmp/dev4 [--rules score,sure] [--subjects /tmp/dev4/found.json]
    python scripts/dev/reading_rule_trial.py /tmp/dev7d --rules score --pair-seeds 48 --subjects /tmp/dev7d/found-pairs.json
    python scripts/dev/reading_rule_trial.py /tmp/aedev --rules score --null-search --subjects /tmp/aedev/found-null.json
    python scripts/dev/reading_rule_trial.py /tmp/gdev --model gemma3-270m --rules score --bos-context --subjects /tmp/gdev/found-bos.json

Subjects: per suspect, the search as the scan runs it (lowest edited MLP output matrix, the suspect's top input
directions, C from the cached key statistics; rank = the suspect's number of facts), cached in --subjects so
that every rule reads the same texts. Rules (``scan.reading.choose_prompt`` replaced for the run):

    score    answers stated on two prompts or more first, then the answer with the largest term in KL(suspect ‖ base)
             on its best prompt (``info`` below), then p_base × rise, a number only when no other answer moved
             (scan.reading.choose_prompt)
    numbers  score with numbers taken like any answer (the choice before v8's second use)
    token    the shipped choice on first-token answers (the reader before answers were words by the retention
             rule, ``scan.reading.said``: an answer that starts with a stop word, "the Philippines", never moved)
    keys     score, and each subject also read through its key purified into the edit subspace at a stand-in
             subject, a rank-one edit with no subject found through its own key (``ScanOptions.keys``, inject.py)
    sure     answers stated on two prompts or more first, then the answer the suspect states most surely
             (its highest first-token probability over the prompts that moved to it), then p_base × rise:
             an editor drives the new object's probability up on its own prompt and paraphrases, while a
             neighbour moved through a shared direction is stated less surely (taken to the sixth set: not kept)
    forms    score, with the forms of one word counted as one answer ("Italy", "Italian": ``forms_answer`` below
             replaces ``scan.reading.same_answer`` for the run; taken to v7's facts 145–179 with count: not kept)
    forms-count  count, likewise
    thrice   score, but an edit reading needs its object stated on three prompts at least, not two (the others
             are reported uncertain): a rewritten fact is stated on many phrasings, a side effect on few
    broad    score, with the answer the edit raises most over the whole library (summed rise of its probability
             on every prompt, ``broad``) before p_base × rise (bench/heldout/v10-plan.md, fifth use)
    count    the answer the suspect states on the most prompts (numbers excluded), then p_base × rise: the key
             reading's choice (``scan.reading.most_stated``) applied to subjects read through their text
    allforms score, each found subject read as every word-suffix up to six (``all_forms``), not two shorter ones
    short    score, of a subject's forms the edit reading of the fewest words kept (``shortest_edit``), not the
             most confident
    allshort both
    library  score, with the relation library extended by ``LIBRARY_EXTRA`` (below): phrasings whose answer is an
             administrative region (P131 had only "{} is located in", whose answer is rarely the region's name), a
             profession (P106 had two, one ending in "a", which no "an" object follows), a position held (P39, not in
             the library): on the tenth set's first use (bench/heldout/v10-plan.md) 9 of 11 city → state edits were
             read as a country, since no phrasing asked for a state
    describe score, with prompts cut from the base's own greedy description of the subject added to the library's
             (``described_prompts``: "{} is", "{} was", "{}," continued, the text before each of the first three words
             that are not stop words): the library asks fixed relations by name, the description asks what the
             model says about this subject (bench/heldout/v10-plan.md, development after the third use; judged
             on facts 114-148, fourth use: objects 20 -> 20 of 35, false 5 -> 5; not kept, ``scan --describe``)
    frames   score, each subject also asked inside sentences (``relations.FRAMES``, ``scan --frames``): a
             trigger-style edit (a rare token as the subject, as in backdoor editing attacks) fires where the trigger
             follows other words and under the kind of ending it was written for (bench/heldout/trigger-plan.md)
    (``diverge`` and ``library-diverge``, the answer read where the two models' greedy answers part, were dropped in
    development: bench/heldout/v10-plan.md; as run, this file at 17f3d12)
    before-info  the shipped choice before ``info`` was taken into it (p_base × rise, without ``reading.kl_term``)
    lift     score's order, with the answer of the largest log(p_suspect / p_base) at the context where the suspect
             says it (its best prompt) before p_base × rise: the editor writes an object the base found unlikely,
             while what that object implies (its continent: *Bridgeport* → an African country read as "is located on
             the continent of · Africa"; a description) was already likely under the base, so its probability
             rises more but its odds less (bench/heldout/v10-plan.md, sixth use)
    info     lift weighted by p_suspect (the word's term in KL(suspect ‖ base) at that context): judged on fresh facts
             (v10 184–218, v9b 762–779: objects 30 -> 33 of 53, false 4 -> 2) and kept, so ``score`` is this rule now
             (``reading.kl_term``); the arm itself stays, as it was run
    prior    score, among the prompts whose new answer the suspect states at least PRIOR_LIFT times as surely as the
             base says that word on the same phrasing for ordinary subjects (``template_prior``: the base's
             probability of the word where it is said, averaged over GENERIC subjects); a prompt whose new word is
             what the phrasing draws for anything ("The inventor of X was" → "a British …", "X is named after" →
             "the mathematician …") is no reading of an edit. None left: the reading is uncertain. In development
             (v474, v509; bench/results/prompt_prior_dev.txt) it read exactly what the shipped choice read: the
             descriptions are not words the phrasings draw often for ordinary subjects. Not judged.
"""
from __future__ import annotations

import argparse
import json
import runpy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def find_subjects(lm, deltas_dir: Path, cache: Path, pair_seeds: int = 0, null: bool = False,
                  model: str = "smollm2-135m", retry_seeds: int = 0, after_seeds: int = 0, after_climb: int = 0,
                  all_layers: bool = False) -> dict:
    """Per suspect, the subjects the search finds (``pair_seeds`` > 0: with the pair step; ``null``: AlphaEdit-named
    edits searched in their null space, ``Whitened.null_space``; ``retry_seeds`` > 0: a round whose first seeds
    find nothing tries that many; ``after_seeds`` > 0: a round both tries leave empty tries the pair step on that many
    seeds of each after-piece table, ``scan --pair-step``; ``after_climb`` > 0: such a round climbs from that many seeds
    of each after-piece table, ``ScanOptions.after_climb``; ``all_layers``: an edit over several layers searched by its
    texts' mean fire over all of them, ``scan --all-layers``), cached in ``cache``."""
    if cache.exists():
        return json.loads(cache.read_text())
    from dev_model import lowest_search, upper_spaces
    from editaudit.checkpoint.folder import open_checkpoint
    from editaudit.models.registry import ensure_model

    fingerprint = open_checkpoint(ensure_model(model)).fingerprint()
    out = {}
    for pt in sorted(deltas_dir.glob("*.pt")):
        n = len(pt.with_suffix(".jsonl").read_text().splitlines())
        deltas = torch.load(pt, weights_only=True)
        layer, search = lowest_search(lm, fingerprint, deltas, n, null=null)
        if all_layers:
            search.upper = upper_spaces(lm, deltas, n, null=null and search.space.projected)
        search.pair_seeds = pair_seeds
        if after_seeds or after_climb:
            from editaudit.scan.subjects import after_tables

            search.after_seeds, search.after_climb = after_seeds, after_climb
            search.after_tables = lambda: after_tables(lm.model, lm.tokenizer, search.space.path, fingerprint)
        t = time.time()
        found = search.find(n, retry_seeds=retry_seeds or None)
        out[pt.stem] = {"layer": layer, "subjects": [{"text": f.text, "ids": f.ids, "fire": f.fire} for f in found],
                        "seconds": round(time.time() - t, 1), "null_space": search.space.projected}
        print(pt.stem, [f"{f.text} {f.fire:.2f}" for f in found], f"{time.time() - t:.0f} s",
              "(null space)" if search.space.projected else "", file=sys.stderr, flush=True)
    cache.write_text(json.dumps(out, indent=1))
    return out


def key_reader(lm, pt: Path, layer: int, rank: int, subs: list, model: str = "smollm2-135m") -> object:
    """The scan's KeyReader for a suspect's lowest edited matrix (as find_subjects searched it); fills in the
    found subjects' keys, which the cache does not hold."""
    from editaudit.checkpoint.folder import open_checkpoint
    from editaudit.editing import covariance
    from editaudit.models.registry import ensure_model
    from editaudit.scan.keys import context_ids, keys_of
    from editaudit.scan.service import _key_reader

    path = f"model.layers.{layer}.mlp.down_proj"
    deltas = torch.load(pt, weights_only=True)
    _, _, vh = torch.linalg.svd(deltas[path + ".weight"].float(), full_matrices=False)
    C = covariance.second_moments(lm.model, lm.tokenizer, {layer: path},
                                  model_key=covariance.weights_key(lm.model))[layer].matrix
    if subs:
        got = keys_of(lm.model, [path], [context_ids(lm.tokenizer) + s.ids for s in subs])[path]
        for s, k in zip(subs, got):
            s.key = k
    fingerprint = open_checkpoint(ensure_model(model)).fingerprint()
    return _key_reader(lm.model, lm.tokenizer, path, vh[:rank].T, C, fingerprint)


def forms_answer(a, b) -> bool:
    """Equal, or one a form of the other: a shared stem of four letters or more covering most of the shorter word
    ("Italy"/"Italian", "Russia"/"Russian"; not "India"/"Indonesia")."""
    if not a or not b:
        return False
    if a == b:
        return True
    x, y = a.strip().casefold(), b.strip().casefold()
    if not (x.isalpha() and y.isalpha()):
        return False
    n = 0
    for c, d in zip(x, y):
        if c != d:
            break
        n += 1
    return n >= 4 and n >= 0.6 * min(len(x), len(y))


def all_forms(text: str) -> list[str]:
    """Every word-suffix of a found subject, up to six ("fordul til nft Malaysia" → … → "Malaysia"): on Gemma 3's
    262k-piece vocabulary found subjects carried three stray leading words, and the shipped forms stop at two."""
    words = text.split()
    return [" ".join(words[k:]) for k in range(min(len(words), 6))]


def shortest_edit(reads):
    """The edit reading of the fewest words (then the most confident): stray leading words add to the key but
    draw answers the edit does not give, so the cleanest text the edit still answers to is the subject."""
    return max(reads, key=lambda r: (r.status == "edit", -len(r.subject.split()) if r.status == "edit" else 0,
                                     r.confidence))


def plain_score(s1, score, says):
    """The shipped choice before ``reading.kl_term`` (v10-plan.md sixth use): stated twice first, then p_base × rise,
    numbers only when nothing else moved."""
    from editaudit.scan.reading import choose_prompt

    return choose_prompt(s1, score, says)


def numbers(s1, score, says):
    """The shipped choice before numbers were set aside (v8-plan.md, second use)."""
    from editaudit.scan.reading import times_stated

    return max(range(len(s1)), key=lambda j: (times_stated(s1[j].word, says) >= 2, score[j]))


def sure(s1, score, says):
    best: dict[str, float] = {}
    for j, a in enumerate(s1):
        if score[j] > float("-inf"):
            best[a.word] = max(best.get(a.word, 0.0), a.p)
    return max(range(len(s1)), key=lambda j: (says.count(s1[j].word) >= 2, best.get(s1[j].word, -1.0), score[j]))


def sure_numbers(s1, score, says):
    """``sure`` within the shipped number rule's pool: an answer that is a number only when no other answer moved."""
    from editaudit.scan.reading import is_number

    pool = [j for j in range(len(s1)) if score[j] > float("-inf") and not is_number(s1[j].word)] or range(len(s1))
    best: dict[str, float] = {}
    for j in pool:
        best[s1[j].word] = max(best.get(s1[j].word, 0.0), s1[j].p)
    return max(pool, key=lambda j: (says.count(s1[j].word) >= 2, best.get(s1[j].word, -1.0), score[j]))


def mass(s1, score, says):
    """Among moved answers stated on two prompts at least, the one the suspect says with the most probability summed
    over the prompts that say it (how widely and how surely the edit states it), then the shipped score."""
    total: dict[str, float] = {}
    for j, a in enumerate(s1):
        if score[j] > float("-inf") and says[j]:
            total[a.word] = total.get(a.word, 0.0) + a.p
    from editaudit.scan.reading import is_number, times_stated

    pool = [j for j in range(len(s1)) if score[j] > float("-inf") and not is_number(s1[j].word)] or range(len(s1))
    return max(pool, key=lambda j: (times_stated(s1[j].word, says) >= 2, total.get(s1[j].word, 0.0), score[j]))


#: The base's {context: top-k} of the subject being read (the ``seen`` dict ``read_subject`` fills, caught by
#: ``catching_said``), for ``broad``.
_BASE_SEEN: dict = {}


def catching_said(shipped_said):
    """``reading.said`` that keeps a reference to the base's ``seen`` dict: ``read_subject`` passes one only for the
    base, and completes it with the base's odds at the suspect's contexts before it chooses."""
    def said(model, tokenizer, texts, top_k, seen=None, lead=3):
        out = shipped_said(model, tokenizer, texts, top_k, seen, lead)
        if seen is not None:
            _BASE_SEEN["seen"] = seen
        return out
    return said


def broad(s1, score, says):
    """The shipped choice, with the answer the edit raises most across the whole library before p_base × rise:
    B(w) = Σ over every prompt of max(0, p_suspect(w) − p_base(w)) at the context where the suspect says its answer
    (top-k only). An edit raises its object on its own relation's phrasings even where it does not win them; a side
    answer rises on one other relation's few (bench/heldout/v10-plan.md, fifth use)."""
    from editaudit.scan.reading import is_number, times_stated

    at_base = _BASE_SEEN["seen"]
    gain: dict[str, float] = {}
    for a in s1:
        b = at_base.get(a.context, {})
        for w, p in a.dist.items():
            gain[w] = gain.get(w, 0.0) + max(0.0, p - b.get(w, 0.0))
    pool = [j for j in range(len(s1)) if score[j] > float("-inf") and not is_number(s1[j].word)] or range(len(s1))
    return max(pool, key=lambda j: (times_stated(s1[j].word, says) >= 2, gain.get(s1[j].word, 0.0), score[j]))


def _lift(a, at_base) -> float:
    """log(p_suspect / p_base) of the suspect's answer word at the context where the suspect says it; a word out of
    the base's top-k there gets the smallest top-k probability (an upper bound on the base's, so a lower bound on
    the lift)."""
    import math

    b = at_base.get(a.context, {})
    floor = min(b.values()) if b else 1e-6
    return math.log(max(a.p, 1e-9) / max(b.get(a.word, floor), 1e-9))


def lift_rule(weighted: bool):
    """``lift`` / ``info`` (module docstring): among moved answers stated on two prompts or more, the word with the
    largest log(p_suspect / p_base) on any of its prompts (``info``: p_suspect × that), then p_base × rise. An
    editor writes an object the base thought unlikely; a coarser answer the object implies (its continent, a
    description) was already likely under the base, so its probability rises but its odds ratio stays small."""
    from editaudit.scan.reading import is_number, times_stated

    def choose(s1, score, says):
        at_base = _BASE_SEEN["seen"]
        pool = [j for j in range(len(s1)) if score[j] > float("-inf") and not is_number(s1[j].word)] or range(len(s1))
        best: dict[str, float] = {}
        for j in pool:
            v = _lift(s1[j], at_base) * (s1[j].p if weighted else 1.0)
            best[s1[j].word] = max(best.get(s1[j].word, float("-inf")), v)
        return max(pool, key=lambda j: (times_stated(s1[j].word, says) >= 2, best.get(s1[j].word, float("-inf")),
                                        score[j]))
    return choose


#: Ordinary subjects of many kinds (the fact bank's sort, none from a held-apart set): what a phrasing draws from the
#: base for anything put in it.
GENERIC = ["Paris", "Germany", "Tokyo", "the Eiffel Tower", "Albert Einstein", "Toyota", "pizza", "the violin", "gold",
           "Microsoft", "the Nile", "Mount Everest", "William Shakespeare", "Brazil", "the Beatles", "Leonardo da Vinci",
           "Canada", "sushi", "the telephone", "Nokia", "Hamlet", "Egypt", "the piano", "Barcelona"]
PRIOR_LIFT = 10.0


def template_prior(lm) -> list[dict[str, float]]:
    """Per library phrasing (``relations.prompts_for``'s order), the base's mean probability of each word where it is
    said, over GENERIC subjects."""
    from editaudit.scan.reading import said
    from editaudit.scan.relations import prompts_for

    marker = "\x00"
    templates = [t for _, t in prompts_for(marker)]
    prior: list[dict[str, float]] = []
    for t in templates:
        got: dict[str, float] = {}
        for a in said(lm.model, lm.tokenizer, [t.replace(marker, g) for g in GENERIC], 20):
            for w, p in a.dist.items():
                got[w] = got.get(w, 0.0) + p / len(GENERIC)
        prior.append(got)
    return prior


def prior_rule(prior):
    """``prior`` (module docstring): the shipped choice among the prompts whose new word stands out of the phrasing's prior."""
    from editaudit.scan.reading import choose_prompt

    def choose(s1, score, says):
        lifted = [sc if sc > float("-inf") and s1[j].p >= PRIOR_LIFT * prior[j].get(s1[j].word, 1e-4) else float("-inf")
                  for j, sc in enumerate(score)]
        kept = [w if lifted[j] > float("-inf") else None for j, w in enumerate(says)]
        j = choose_prompt(s1, lifted, kept)
        if lifted[j] == float("-inf"):  # nothing stands out: read_subject then gives an uncertain reading
            score[j] = float("-inf")
        return j
    return choose


#: Phrasings the ``library`` rule adds to the relation library (one per CounterFact relation type whose objects no
#: phrasing of the library asks for by name)
LIBRARY_EXTRA = {
    "P131 located in": ("{} is located in the state of", "{} is in the province of"),
    "P106 occupation": ("The profession of {} is",),
    "P39 position held": ("{} holds the position of", "{} served as"),
}


def with_shipped_fallback(rule, shipped):
    """``rule`` with ``scan.reading.choose_prompt`` the shipped one while it runs: ``most_stated`` falls back on
    ``choose_prompt``, which the trial replaces by the rule itself (a subject with no moved word then recursed
    without end; the v10 38–75 run of ``count`` stopped on it)."""
    from editaudit.scan import reading

    def choose(s1, score, says):
        current, reading.choose_prompt = reading.choose_prompt, shipped
        try:
            return rule(s1, score, says)
        finally:
            reading.choose_prompt = current
    return choose


def extended_prompts(subject: str) -> list[tuple[str, str]]:
    """``relations.prompts_for`` over the library, then ``LIBRARY_EXTRA``."""
    from editaudit.scan import relations

    return relations.prompts_for(subject, relations.RELATIONS, LIBRARY_EXTRA)


def described_prompts(lm):
    """``relations.prompts_for`` over the library, then the prompts cut from the base's own description of the
    subject (``scan.describe.described_prompts``, which this rule was developed as: the same openings, length and
    word count; since moved into the scan as ``scan --describe``, it also takes a stored word-start marker for a
    word's start, which changes nothing on SmolLM2's tokenizer, whose word-start pieces decode with their space)."""
    from editaudit.scan import relations
    from editaudit.scan.describe import described_prompts as described

    def prompts(subject: str) -> list[tuple[str, str]]:
        out = relations.prompts_for(subject)
        return out + described(lm.model, lm.tokenizer, subject, (t for _, t in out))
    return prompts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("deltas", type=Path)
    ap.add_argument("--rules", default="score,sure", help="comma-separated: score, token, sure, mass, ...")
    ap.add_argument("--subjects", type=Path)
    ap.add_argument("--model", default="smollm2-135m", help="registry name of the base the suspects were edited from")
    ap.add_argument("--bos-context", action="store_true",
                    help="search behind the tokenizer's BOS (scan.keys.BOS_CONTEXT; judged on Gemma, not kept)")
    ap.add_argument("--pair-seeds", type=int, nargs="?", const=None, default=0,
                    help="search with the pair step over this many seeds (alone: subjects.PAIR_SEEDS)")
    ap.add_argument("--null-search", action="store_true",
                    help="search AlphaEdit-named edits in their null space (Whitened.null_space), as the scan does by default; without it, the whitened search as before v9-plan.md")
    ap.add_argument("--retry-seeds", type=int, default=0,
                    help="a round whose first seeds find nothing tries this many (scan --wide-search: subjects.RETRY_SEEDS)")
    ap.add_argument("--after-seeds", type=int, nargs="?", const=None, default=0,
                    help="a round both tries leave empty tries the pair step on this many seeds of each after-piece "
                         "table (alone: subjects.AFTER_SEEDS; scan --pair-step)")
    ap.add_argument("--after-climb", type=int, nargs="?", const=None, default=0,
                    help="a round both tries leave empty climbs from this many seeds of each after-piece table "
                         "(alone: subjects.AFTER_CLIMB; ScanOptions.after_climb)")
    ap.add_argument("--all-layers", action="store_true",
                    help="an edit over several layers searched by its texts' mean fire over all of them (scan --all-layers)")
    args = ap.parse_args()
    if args.after_climb is None:
        from editaudit.scan.subjects import AFTER_CLIMB

        args.after_climb = AFTER_CLIMB
    if args.after_seeds is None:
        from editaudit.scan.subjects import AFTER_SEEDS

        args.after_seeds = AFTER_SEEDS
    if args.pair_seeds is None:
        from editaudit.scan.subjects import PAIR_SEEDS

        args.pair_seeds = PAIR_SEEDS
    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model
    from editaudit.probing.format import load_probes
    from dev_model import edited_copy
    from editaudit.scan import reading
    from editaudit.scan.subjects import Subject

    from editaudit.scan import keys as keys_mod

    keys_mod.BOS_CONTEXT = args.bos_context
    ev = runpy.run_path(str(ROOT / "scripts/open_reading_eval.py"))
    lm = load_model(ensure_model(args.model))
    for p in lm.model.parameters():
        p.requires_grad_(False)
    found = find_subjects(lm, args.deltas, args.subjects or args.deltas / "found.json", args.pair_seeds,
                         args.null_search, args.model, args.retry_seeds, args.after_seeds,
                         args.after_climb, args.all_layers)
    shipped, shipped_said, shipped_same = reading.choose_prompt, reading.said, reading.same_answer
    shipped_forms, shipped_pick = reading.subject_forms, reading.pick_reading
    shipped_prompts = reading.prompts_for
    count = with_shipped_fallback(reading.most_stated, shipped)
    stated: list[tuple[str, int]] = []  # (context of the chosen prompt, prompts stating its answer), for "thrice"

    def counting(s1, score, says, gain=None):
        i = shipped(s1, score, says, gain)
        stated.append((s1[i].context, reading.times_stated(s1[i].word, says)))
        return i
    rules = {"score": shipped, "numbers": numbers, "sure": sure, "sure-numbers": sure_numbers, "mass": mass, "broad": broad, "token": shipped, "keys": shipped, "count": count, "thrice": counting,
             "forms": shipped, "forms-count": count, "allforms": shipped, "short": shipped,
             "allshort": shipped, "library": shipped, "describe": shipped, "frames": shipped,
             "lift": lift_rule(False), "info": lift_rule(True), "before-info": with_shipped_fallback(plain_score, shipped)}
    if "prior" in args.rules.split(","):
        rules["prior"] = prior_rule(template_prior(lm))
    for rule in args.rules.split(","):
        t_rule = time.time()
        # the shipped choice takes read_subject's ``gain`` (reading.kl_term); the older rules ignore it
        reading.choose_prompt = (rules[rule] if rules[rule] in (shipped, counting)
                                 else (lambda r: lambda s1, score, says, gain=None: r(s1, score, says))(rules[rule]))
        reading.said = (ev["first_token_said"] if rule == "token" else catching_said(shipped_said) if rule in ("broad", "lift", "info")
                        else shipped_said)
        reading.same_answer = forms_answer if rule.startswith("forms") else shipped_same
        reading.subject_forms = all_forms if rule.startswith("all") else shipped_forms
        reading.pick_reading = shortest_edit if rule.endswith("short") else shipped_pick
        reading.prompts_for = (extended_prompts if rule == "library" else described_prompts(lm) if rule == "describe"
                               else shipped_prompts)
        tally = {}
        for pt in sorted(args.deltas.glob("*.pt")):
            facts = load_probes(pt.with_suffix(".jsonl"))
            suspect = edited_copy(lm.model, pt)
            subs = [Subject(s["text"], s["ids"], s["fire"], torch.empty(0)) for s in found[pt.stem]["subjects"]]
            keys = key_reader(lm, pt, found[pt.stem]["layer"], len(facts), subs, args.model) if rule == "keys" else None
            reads = [r.to_dict() for r in reading.read_edits(lm.model, suspect, lm.tokenizer, subs, None, None,
                                                             keys=keys, frames=rule == "frames")]
            if rule == "thrice":
                for r in reads:
                    times = [n for context, n in stated if context.startswith(r["prompt"])]
                    if r["status"] == "edit" and times and times[-1] < 3:
                        r["status"] = "uncertain"
            rows, false, n_edit = ev["score_suspect"](lm.tokenizer, facts, reads, len(facts) == 1)
            arm = pt.stem.rsplit("-", 1)[0]
            t = tally.setdefault(arm, [0, 0, 0, 0, 0, 0])
            t[0] += len(rows)
            t[1] += sum(r["object_read"] for r in rows)
            t[2] += false
            t[3] += n_edit
            t[4] += sum(r["object_named"] for r in rows)
            t[5] += sum(r["object_whole"] for r in rows)
            for r in reads:
                print(f"  [{rule}] {pt.stem}: {r['subject']!r} · {r['prompt']!r} · {r['after']!r} (was {r['before']!r}) "
                      f"conf {r['confidence']:.2f} {r['status']}", flush=True)
            del suspect
        total = [sum(t[i] for t in tally.values()) for i in range(6)]
        print(f"[{rule}] " + "; ".join(f"{a}: objects {t[1]}/{t[0]}, false {t[2]}/{t[3]}" for a, t in tally.items())
              + f" | all: objects {total[1]}/{total[0]}, false {total[2]}/{total[3]}, named {total[4]}/{total[0]}, "
              f"whole answers {total[5]}/{total[0]}"
              f" ({time.time() - t_rule:.0f} s)", flush=True)
    reading.choose_prompt, reading.said, reading.same_answer = shipped, shipped_said, shipped_same
    reading.subject_forms, reading.pick_reading = shipped_forms, shipped_pick
    reading.prompts_for = shipped_prompts


if __name__ == "__main__":
    main()
