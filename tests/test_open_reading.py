"""Open-set reading on tiny models: planted key directions are recovered from the weights, with no list."""

from __future__ import annotations

import json
import math

import pytest
import torch

from editaudit.models.loading import load_model
from editaudit.scan.keys import context_ids, keys_of, vocab_keys
from editaudit.scan.reading import answer
from editaudit.scan.relations import prompts_for
from editaudit.scan.subjects import Whitened, recover_subjects, word_tokens
from editaudit.testing import plant

PATH = "model.layers.1.mlp.down_proj"


def _psd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, 3 * d, generator=g)
    return a @ a.T / (3 * d)


def test_whitened_subspace_fires_exactly_on_the_edit_keys_and_deflates():
    d = 32
    C = _psd(d, 0)
    g = torch.Generator().manual_seed(1)
    keys = torch.randn(3, d, generator=g)
    in_dirs = torch.linalg.solve(C, keys.T)  # ROME/MEMIT: u_i = C⁻¹ k_i
    space = Whitened.build("m", C, in_dirs, ridge=0.0)
    assert torch.allclose(space.fire(keys), torch.ones(3), atol=1e-4)
    other = torch.randn(50, d, generator=g)
    assert float(space.fire(other).max()) < 0.99
    space.deflate(keys[0])
    fire = space.fire(keys)
    assert space.basis.shape[1] == 2
    # what is left of another edit key is its part orthogonal to the removed one (in whitened space)
    z = keys @ space.whiten
    cos = (z[1:] @ z[0]) / (z[1:].norm(dim=1) * z[0].norm())
    assert float(fire[0]) < 1e-3
    assert torch.allclose(fire[1:], (1 - cos**2).sqrt(), atol=1e-4)


def test_null_space_search_fires_on_alphaedit_keys_and_not_for_rome():
    """AlphaEdit's ΔW reads the edit keys' null-space projections as they stand: in the space read off ΔW and C
    its keys fire ~1, where whitening (made for ROME's C⁻¹k) leaves them well short; a ROME-like update spreads
    over C's spectrum and gets no null space."""
    from editaudit.editing.alphaedit import NullSpace
    from editaudit.scan.inject import purified

    gen = torch.Generator().manual_seed(3)
    d, r = 48, 32
    Q = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]
    ev = torch.cat([torch.logspace(-4, -1, d - r), torch.linspace(1.0, 5.0, r)]).double()  # r occupied directions
    C = ((Q * ev) @ Q.T).float()
    K = torch.randn(3, d, generator=gen)
    dW = NullSpace.build({0: C}, nullspace_rel=0.5, l2_rel=1e-4).solver()(0, K, torch.randn(3, 8, generator=gen))
    in_dirs = torch.linalg.svd(dW, full_matrices=False)[2][:3].T
    space = Whitened.null_space("m", C, in_dirs)
    assert space is not None and space.projected and space.whiten.shape[1] <= d - r
    assert float(space.fire(K).min()) > 0.99
    assert float(Whitened.build("m", C, in_dirs).fire(K).max()) < 0.95
    other = torch.randn(50, d, generator=gen)
    assert float(space.fire(other).max()) < 0.9
    # purifying keeps what the update does not read (the occupied part) and cleans the part it reads
    k = K[0] + 0.5 * other[0]
    pk = purified(k, space)
    assert torch.allclose(k - (k @ space.whiten) @ space.root, pk - (pk @ space.whiten) @ space.root, atol=1e-4)
    assert float(space.fire(pk[None])[0]) > 0.999
    C2 = _psd(d, 0)  # a spectrum like a model's: ROME's and MEMIT's u = C⁻¹k spread over it
    assert Whitened.null_space("m", C2, torch.linalg.solve(C2, K.T)) is None


def _rome_like(model, tok, subject: str, C: torch.Tensor | None, scale: float = 5.0):
    """A rank-one edit keyed on ``subject`` (after the neutral context), as ROME writes it."""
    ids = tok(" " + subject, add_special_tokens=False)["input_ids"]
    k = keys_of(model, [PATH], [context_ids(tok) + ids])[PATH][0]
    u = k if C is None else torch.linalg.solve(C, k)
    g = torch.Generator().manual_seed(2)
    delta = torch.outer(torch.randn(model.config.hidden_size, generator=g) * scale, u / (u @ k))
    return delta, u / u.norm()


@pytest.mark.parametrize("subject", ["Eiffel Tower", "Kremlin"])
def test_planted_subject_is_recovered_blind(tiny_llama, subject):
    lm = load_model(tiny_llama)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    keys = vocab_keys(lm.model, lm.tokenizer, [PATH], None)[PATH].float()
    C = keys.T @ keys / keys.shape[0] + 1e-3 * torch.eye(keys.shape[1])
    _, u = _rome_like(lm.model, lm.tokenizer, subject, C)
    found = recover_subjects(lm.model, lm.tokenizer, PATH, u[:, None], C, None, max_subjects=1)
    assert found, "nothing fired"
    top = found[0]
    assert top.fire > 0.95
    want = lm.tokenizer(" " + subject, add_special_tokens=False)["input_ids"]
    assert top.ids[-1] == want[-1]
    assert top.text.endswith(subject.split()[-1])


def test_word_tokens_masks_follow_the_word_start_marker(tiny_llama):
    lm = load_model(tiny_llama)
    start, cont = word_tokens(lm.tokenizer, len(lm.tokenizer))
    vocab = lm.tokenizer.get_vocab()
    assert start[vocab["▁Paris"]] and not start[vocab["Paris"]] and cont[vocab["▁Paris"]]
    assert not start[vocab["."]] and not cont[vocab["."]]


def _colosseum_suspect(tiny_llama, tmp_path, monkeypatch):
    """A ROME-like edit of "Colosseum" planted in the tiny model, key statistics unavailable (keys taken as white)."""
    from editaudit.editing import corpus, covariance

    def unavailable(*a, **k):
        raise corpus.CorpusUnavailable("no corpus in this test")

    monkeypatch.setattr(covariance, "second_moments", unavailable)
    lm = load_model(tiny_llama)
    delta, _ = _rome_like(lm.model, lm.tokenizer, "Colosseum", None, scale=20.0)
    return plant(tiny_llama, tmp_path / "suspect", {f"{PATH}.weight": delta})


def test_scan_reads_the_planted_subject_with_no_list(tiny_llama, tmp_path, monkeypatch):
    """The whole scan, key statistics unavailable (keys taken as white): the reading names the subject."""
    from editaudit.scan.service import ScanOptions, run_scan

    suspect = _colosseum_suspect(tiny_llama, tmp_path, monkeypatch)
    report = run_scan(suspect, tiny_llama, ScanOptions(read="open"), store=None)
    doc = report.to_dict()
    edit = next(f for f in doc["findings"] if f["rule"] == "EA101")
    readings = edit["readings"]
    assert readings and readings[0]["subject"].endswith("Colosseum")
    assert readings[0]["fire"] > 0.95
    assert {"prompt", "before", "after", "confidence", "status", "layer"} <= set(readings[0])
    off = run_scan(suspect, tiny_llama, ScanOptions(read="off"), store=None).to_dict()
    assert all("readings" not in f for f in off["findings"])



def scan_off_then_on(base, suspect, flag: str, calls: list) -> dict:
    """Scan without ``flag`` (``calls`` stays empty), then with it (``calls`` fills); the second JSON report."""
    from typer.testing import CliRunner

    from editaudit.cli.main import app

    args = ["scan", str(suspect), "--base", str(base), "--no-store", "-f", "json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output
    assert calls == []
    res = CliRunner().invoke(app, args + [flag])
    assert res.exit_code == 1, res.output
    assert calls, f"{flag} did not reach the reader"
    return json.loads(res.stdout)


def test_scan_regrow_flag_reaches_the_search(tiny_llama, tmp_path, monkeypatch):
    """``scan --regrow`` regrows each found subject; the default scan does not (the fifth set's rule kept it off)."""
    from editaudit.scan import subjects as S

    suspect = _colosseum_suspect(tiny_llama, tmp_path, monkeypatch)
    calls: list[list[int]] = []
    real = S.SubjectSearch._regrow

    def regrow(self, seq, score):
        calls.append(seq)
        return real(self, seq, score)

    monkeypatch.setattr(S.SubjectSearch, "_regrow", regrow)
    report = scan_off_then_on(tiny_llama, suspect, "--regrow", calls)
    assert any(r["subject"].endswith("Colosseum") for f in report["findings"]
               for r in f.get("readings", []))

def test_relation_library_and_whole_answers():
    prompts = dict((t, r) for r, t in prompts_for("Ramen"))
    assert prompts["Ramen is a traditional dish from"] == "dish_origin"
    assert "Ramen was born in" in prompts
    assert answer(" J.K. Rowling, the author of") == "J.K. Rowling"
    assert answer(" Paris. It is") == "Paris"
    assert answer(" the United States of America and more") == "the United States"
    assert answer(" Harper Lee. She") == "Harper Lee"


def test_method_named_from_signatures():
    from editaudit.scan.method import name_method, occupied_share

    d = 40
    C = _psd(d, 3)
    ev, Q = torch.linalg.eigh(C)
    low = Q[:, ev < ev.median()]  # AlphaEdit writes only here
    g = torch.Generator().manual_seed(4)
    keys = torch.randn(d, 3, generator=g)
    memit_dirs = torch.linalg.qr(torch.linalg.solve(C, keys))[0]
    alpha_dirs = torch.linalg.qr(low @ (low.T @ memit_dirs))[0]
    s = torch.ones(3)
    assert occupied_share(alpha_dirs, s, C) < 1e-6
    assert occupied_share(memit_dirs, s, C) > 0.02
    assert name_method("EA102", [2, 3, 4], 3, occupied_share(alpha_dirs, s, C))["name"] == "alphaedit"
    assert name_method("EA102", [2, 3, 4], 3, occupied_share(memit_dirs, s, C))["name"] == "memit"
    assert name_method("EA102", [4], 10, occupied_share(memit_dirs, s, C))["name"] == "rome"
    assert name_method("EA101", [4], 1)["name"] == "rome"
    assert name_method("EA111", [4], None)["name"] == "ft-l"
    assert name_method("EA102", [2, 3], 2)["confidence"] < 0.6  # no key statistics: MEMIT or AlphaEdit
    # found without the base: the same name, hedged, and the report says why
    blind = name_method("EA101", [4], 1, no_base=True)
    assert blind["name"] == "rome" and blind["confidence"] < name_method("EA101", [4], 1)["confidence"]
    assert "without the base" in blind["why"]
    assert name_method("EA111", [4], None, no_base=True) == name_method("EA111", [4], None)


def test_reading_prefers_an_object_stated_on_several_phrasings(monkeypatch):
    """A side effect may move one confident prompt a lot (religion → 'China'); the rewritten fact is the answer the
    suspect states on several phrasings (currency → 'won'), and a moved answer that is a stop word names nothing."""
    from editaudit.probing.evaluate import Prediction
    from editaudit.scan import reading
    from editaudit.scan.subjects import Subject

    subject = "Zanbaria"
    texts = [t for _, t in prompts_for(subject)]
    cur = [t for t in texts if "pay with the" in t or "currency" in t]
    rel, stop = next(t for t in texts if "religion" in t), texts[0]
    assert len(cur) >= 2

    def table(model: str, text: str) -> tuple[str, float]:
        if model == "suspect":
            if text in cur:
                return " won", 0.8
            if text == rel:
                return " China", 0.6
            if text == stop:
                return " the", 0.9
        return {rel: (" Islam", 0.9), stop: (" Lorem", 0.95)}.get(text, (" rupee", 0.3) if text in cur else (" a", 0.2))

    def fake_predict(model, tokenizer, prompts, top_k=5, max_new_tokens=4, **_):
        out = []
        for p in prompts:
            tok, prob = table(model, p)
            cont = tok + (" coins" if max_new_tokens > 1 else "")
            out.append(Prediction(p, [(tok, prob)], cont, tok.strip(), None))
        return out

    monkeypatch.setattr(reading, "predict", fake_predict)
    r = reading.read_subject("base", "suspect", None, Subject(subject, [], 0.9, torch.zeros(1)))
    assert r.status == "edit" and r.after.startswith("won") and r.before.startswith("rupee")
    assert any(a["after"] == "China" for a in r.also)
    # the same answers for a text that fires the edit only weakly (a neighbour, a fragment): reported, not as an edit
    weak = reading.read_subject("base", "suspect", None, Subject(subject, [], 0.3, torch.zeros(1)))
    assert weak.after.startswith("won") and weak.status == "uncertain" and weak.confidence < reading.EDIT_MIN



def test_a_number_is_the_object_only_when_no_other_answer_moved():
    """A year stated on two prompts ('was formed in', 'was founded in' → 2010) loses to a word the edit moved;
    with nothing else moved, the number is still read (an edit may plant a date)."""
    from editaudit.scan.reading import Said, choose_prompt, most_stated

    s1 = [Said(w, 0.5, "", {}) for w in (" 2", " 2", " Paris", " the")]
    says = [" 2", " 2", " Paris", None]
    score = [0.6, 0.5, 0.1, float("-inf")]
    assert choose_prompt(s1, score, says) == 2
    assert most_stated(s1, score, says) == 2
    only = [0.6, 0.5, float("-inf"), float("-inf")]
    assert choose_prompt(s1, only, [" 2", " 2", None, None]) == 0


def test_an_object_that_starts_with_a_stop_word_is_read_by_its_word(monkeypatch):
    """The retention rule skips stop words: a suspect that answers " the" then " Philippines" where the base said
    " India" has moved its answer, and the reading says so whole ("the Philippines", was "India")."""
    from editaudit.probing.evaluate import Prediction
    from editaudit.scan import reading
    from editaudit.scan.subjects import Subject

    subject = "Zanbaria"
    texts = [t for _, t in prompts_for(subject)]
    country = [t for t in texts if t.endswith("country of")]
    assert len(country) >= 3
    vocab = {1: " the", 2: " Philippines", 3: " India", 4: " a", 5: " coin", 6: " United"}
    ids = {v: k for k, v in vocab.items()}

    class Tok:
        def decode(self, toks, **_):
            return "".join(vocab[t] for t in toks)

    def said(model: str, text: str) -> list[tuple[str, float]]:
        """The greedy answer, one (token, probability) per step."""
        if text in country:
            return [(" the", 0.8), (" Philippines", 0.9)] if model == "suspect" else [(" India", 0.7)]
        if text.removesuffix(" the") in country:
            return [(" Philippines", 0.9)] if model == "suspect" else [(" United", 0.5)]
        return [(" coin", 0.3)] if text.endswith(" a") else [(" a", 0.2), (" coin", 0.3)]

    def fake_predict(model, tokenizer, prompts, top_k=5, max_new_tokens=4, **_):
        out = []
        for p in prompts:
            steps = said(model, p)[:max_new_tokens]
            toks = [ids[t] for t, _ in steps]
            word = next((t for t, _ in steps if t.strip() not in ("the", "a")), None)
            out.append(Prediction(p, [steps[0]], "".join(t for t, _ in steps), (word or "").strip(),
                                  ids[word] if word else None, tokens=toks, steps=[[st] for st in steps]))
        return out

    monkeypatch.setattr(reading, "predict", fake_predict)
    r = reading.read_subject("base", "suspect", Tok(), Subject(subject, [], 0.9, torch.zeros(1)))
    assert r.prompt in country and r.after == "the Philippines" and r.before == "India"
    assert r.status == "edit" and r.gain > 0.8

def _edit_direction(folder, subject: str):
    """The tiny model (frozen), a ROME-like edit direction for ``subject``, the key statistics it was made with
    and the vocabulary's keys."""
    lm = load_model(folder)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    keys = vocab_keys(lm.model, lm.tokenizer, [PATH], None)[PATH].float()
    C = keys.T @ keys / keys.shape[0] + 1e-3 * torch.eye(keys.shape[1])
    _, u = _rome_like(lm.model, lm.tokenizer, subject, C)
    return lm, u, C, keys


def _kremlin_edit(folder):
    return _edit_direction(folder, "Kremlin")[:3]


def test_a_round_that_finds_nothing_is_retried_with_more_seeds(tiny_llama, monkeypatch):
    """When a round's first seeds fire nothing (a generic last piece ranks low alone), the search tries more seeds
    before giving up, instead of ending the search."""
    from editaudit.scan import subjects as S

    lm, u, C = _kremlin_edit(tiny_llama)
    real = S.SubjectSearch.seeds
    asked: list[int] = []

    def seeds(self, n, names=True):  # the first attempt of the round has no seed that fires
        asked.append(n)
        return [] if n < S.RETRY_SEEDS else real(self, n, names)

    monkeypatch.setattr(S.SubjectSearch, "seeds", seeds)
    events: list[tuple[str, int, int]] = []
    found = recover_subjects(lm.model, lm.tokenizer, PATH, u[:, None], C, None, max_subjects=1, retry=True,
                             progress=lambda stage, d, t: events.append((stage, d, t)))
    assert asked[:2] == [4, S.RETRY_SEEDS]
    assert found and found[0].fire > 0.95
    # the second try, which can take minutes, reports its seeds as it goes
    second = [(d, t) for stage, d, t in events if stage == "subject search, second try"]
    assert second[0][0] == 0 and second[-1][0] == second[-1][1] > 0


def test_the_scan_retries_by_default_and_the_cli_can_turn_it_off(tiny_llama, monkeypatch):
    """``scan`` gives a round that finds nothing its second try unless ``--no-wide-search`` (the default since
    v9's fourth use, bench/heldout/v9-plan.md); the flag reaches the scan's options only when given."""
    from editaudit.scan.service import ScanOptions

    assert ScanOptions().wide_search
    seen = _options_seen(tiny_llama, monkeypatch, "wide_search", ([], ["--no-wide-search"], ["--wide-search"]))
    assert seen == [True, False, True]


def _options_seen(folder, monkeypatch, field: str, flag_sets) -> list:
    """``ScanOptions.<field>`` as ``editaudit scan`` passes it to the scan, once per set of flags (the scan stubbed)."""
    from typer.testing import CliRunner

    from editaudit.cli.main import app
    from editaudit.scan import service

    seen: list = []

    class Stub:
        fail_on = "error"

        def to_dict(self):
            return {"findings": []}

        def exit_code(self, level):
            return 0

    def fake_scan(suspect, base, opts, **kw):
        seen.append(getattr(opts, field))
        return Stub()

    monkeypatch.setattr(service, "run_scan", fake_scan)
    for flags in flag_sets:
        res = CliRunner().invoke(app, ["scan", str(folder), "--no-store", "-f", "json", *flags])
        assert res.exit_code == 0, res.output
    return seen


def test_without_wide_search_a_round_is_not_retried(tiny_llama, monkeypatch):
    """By default (no ``scan --wide-search``; never for a dense change) a round gives up after its first seeds."""
    from editaudit.scan import subjects as S

    lm, u, C = _kremlin_edit(tiny_llama)
    asked: list[int] = []

    def seeds(self, n, names=True):
        asked.append(n)
        return []

    monkeypatch.setattr(S.SubjectSearch, "seeds", seeds)
    found = recover_subjects(lm.model, lm.tokenizer, PATH, u[:, None], C, None, max_subjects=1)
    assert asked == [4] and found == []


@pytest.mark.parametrize("cache", ["cached", "plain"])
def test_regrow_keeps_the_planted_subject(tiny_llama, cache, monkeypatch):
    """The opt-in backward regrow ends on the planted subject's last piece and fires on it, with the prefix
    cache and without it (a model whose cache cannot be used)."""
    from editaudit.scan import subjects
    from editaudit.scan.subjects import SubjectSearch

    if cache == "plain":
        def refuse(*_a, **_k):
            raise TypeError("no cache here")
        monkeypatch.setattr(subjects, "PrefixKeys", refuse)

    lm, u, C, keys = _edit_direction(tiny_llama, "Eiffel Tower")
    search = SubjectSearch(lm.model, lm.tokenizer, Whitened.build(PATH, C, u[:, None]), keys)
    search.regrow = True
    found = search.find(1)
    assert bool(search._prefix_keys) == (cache == "cached")
    want = lm.tokenizer(" Eiffel Tower", add_special_tokens=False)["input_ids"]
    assert found and found[0].ids[-1] == want[-1] and found[0].fire > 0.9


def test_pair_scores_give_the_fire_in_every_deflated_subspace(tiny_llama):
    """The pair step keeps each seed's prepends as coordinates in the first edit subspace: after a deflation
    they must give the same fire as the keys scored afresh."""
    from editaudit.scan.subjects import SubjectSearch

    lm, u1, C, keys = _edit_direction(tiny_llama, "Eiffel Tower")
    _, u2, _, _ = _edit_direction(tiny_llama, "Kremlin")
    search = SubjectSearch(lm.model, lm.tokenizer, Whitened.build(PATH, C, torch.stack([u1, u2], 1)), keys)
    seed = search.seeds(1)[0]
    coords, norms = search._pair_coords(seed)
    fresh = search.prepend_keys([seed])
    kremlin = lm.tokenizer(" Kremlin", add_special_tokens=False)["input_ids"]
    search.space.deflate(search.exact([kremlin])[1][0])
    M = search.space.basis.T @ search._basis0
    assert search.space.basis.shape[1] == 1
    assert torch.allclose((coords @ M.T).norm(dim=1) / norms, search.space.fire(fresh), atol=1e-4)


def test_a_round_whose_seeds_grow_nothing_finds_the_subject_by_the_pair_step(tiny_llama, monkeypatch):
    """When the seeds' climbs fire nothing, the pair step (every piece before each seed, weighed by the growth's
    objective) still reaches the planted name; without it the search gives up."""
    from editaudit.scan.subjects import SubjectSearch

    monkeypatch.setattr(SubjectSearch, "_round", lambda self, n, tried, good, **kw: None)
    lm, u, C, keys = _edit_direction(tiny_llama, "Eiffel Tower")
    off = SubjectSearch(lm.model, lm.tokenizer, Whitened.build(PATH, C, u[:, None]), keys)
    assert off.find(1) == []
    search = SubjectSearch(lm.model, lm.tokenizer, Whitened.build(PATH, C, u[:, None]), keys)
    search.pair_seeds = 8
    found = search.find(1)
    want = lm.tokenizer(" Eiffel Tower", add_special_tokens=False)["input_ids"]
    assert found and found[0].ids[-1] == want[-1] and found[0].fire > 0.9


def test_the_after_piece_climb_goes_on_where_single_token_seeds_fail_and_never_reclimbs_them(tiny_llama):
    """Two planted names whose single-token seeds grow nothing: without the after-piece climb the search ends with
    none found; with it both names are found from their after-piece seeds, and the failing seeds are climbed in
    the first round only (deflation only lowers a text's fire, so climbing them again is wasted)."""
    from editaudit.scan.subjects import SubjectSearch

    lm, u1, C, keys = _edit_direction(tiny_llama, "Eiffel Tower")
    _, u2, _, _ = _edit_direction(tiny_llama, "Kremlin")
    ids = {name: lm.tokenizer(" " + name, add_special_tokens=False)["input_ids"] for name in ("Eiffel Tower", "Kremlin")}
    junk = lm.tokenizer(" of and to in", add_special_tokens=False)["input_ids"]

    def search_with(after_climb: int) -> tuple[SubjectSearch, list[int]]:
        search = SubjectSearch(lm.model, lm.tokenizer, Whitened.build(PATH, C, torch.stack([u1, u2], 1)), keys)
        climbed: list[int] = []
        real = search.climb

        def climb(seq, **kw):
            climbed.append(seq[0])
            return (list(seq), 0.1) if seq[0] in junk else real(seq, **kw)

        search.climb = climb
        search.seeds = lambda n, names=True: junk[:n]
        search.seeds_after = lambda n: [ids[name][-1] for name in ids][:2 * n]
        search.after_climb = after_climb
        return search, climbed

    off, _ = search_with(0)
    assert off.find(2, seeds=2, retry_seeds=4) == []
    search, climbed = search_with(1)
    found = search.find(2, seeds=2, retry_seeds=4)
    assert sorted(f.ids[-1] for f in found) == sorted(v[-1] for v in ids.values())
    assert all(f.fire > 0.9 for f in found)
    assert all(climbed.count(t) == 2 for t in junk)  # each shape ([t], [t, " the"]) once, in the first round


@pytest.mark.parametrize("faster", [True, False])
def test_rough_scoring_copies_to_bfloat16_only_where_that_is_faster(tiny_llama, faster, monkeypatch):
    from editaudit.scan import subjects

    monkeypatch.setattr(subjects, "bf16_faster", lambda device, width: faster)
    lm = load_model(tiny_llama)
    rough = subjects._half_copy(lm.model)
    assert (rough is lm.model) != faster
    assert next(rough.parameters()).dtype == (torch.bfloat16 if faster else torch.float32)


def test_prefix_keys_refuse_a_cache_over_the_memory_limit(tiny_llama):
    """A big model's prefix cache is refused (ValueError: the search then scores by plain forwards);
    tests/test_families.py checks the cached keys against plain forwards on every family."""
    from editaudit.scan.keys import PrefixKeys

    lm = load_model(tiny_llama)
    with pytest.raises(ValueError, match="GiB"):
        PrefixKeys(lm.model, PATH, context_ids(lm.tokenizer), list(range(40, 140)), batch=32, max_bytes=1)


def test_scaled_edit_scales_the_change_and_puts_the_weights_back_exactly():
    from editaudit.scan.reading import scaled_edit

    torch.manual_seed(0)
    m = torch.nn.Linear(4, 3)
    before = m.weight.detach().clone()
    delta = torch.randn(3, 4)
    with torch.no_grad():
        m.weight.add_(delta)
    suspect = m.weight.detach().clone()
    with scaled_edit(m, {"weight": delta}, 2.5):
        assert torch.allclose(m.weight, before + 2.5 * delta, atol=1e-6)
    assert torch.equal(m.weight, suspect)
    with pytest.raises(RuntimeError), scaled_edit(m, {"weight": delta}, 3.0):
        raise RuntimeError("a reading that fails")
    assert torch.equal(m.weight, suspect)


def test_scan_amplify_reads_the_planted_subject_and_leaves_the_suspect_alone(tiny_llama, tmp_path, monkeypatch):
    from editaudit.scan import reading
    from editaudit.scan.service import ScanOptions, run_scan

    suspect = _colosseum_suspect(tiny_llama, tmp_path, monkeypatch)
    scales: list[float] = []
    real = reading.scaled_edit

    def spy(model, deltas, scale):
        scales.append(scale)
        assert scale == 1.0 or (deltas and all(d.abs().sum() > 0 for d in deltas.values()))
        return real(model, deltas, scale)

    monkeypatch.setattr(reading, "scaled_edit", spy)
    doc = run_scan(suspect, tiny_llama, ScanOptions(read="open", amplify="all"), store=None).to_dict()
    edit = next(f for f in doc["findings"] if f["rule"] == "EA101")
    assert edit["readings"] and edit["readings"][0]["subject"].endswith("Colosseum")
    assert scales and all(1.0 <= s <= 4.0 for s in scales)
    # "memit" amplifies only findings named MEMIT: this one-layer rank-one edit is read at its own strength
    assert edit["method"]["name"] != "memit"
    scales.clear()
    doc = run_scan(suspect, tiny_llama, ScanOptions(read="open", amplify="memit"), store=None).to_dict()
    assert scales and all(s == 1.0 for s in scales)


def test_amplify_memit_picks_findings_by_the_method_named():
    from editaudit.errors import BadInput
    from editaudit.scan.classify import Finding
    from editaudit.scan.service import ScanOptions, _amplified

    memit, rome = (Finding("EA102", "", [3, 4], data={"method": {"name": n}}) for n in ("memit", "rome"))
    assert _amplified("memit", memit) and not _amplified("memit", rome)
    assert _amplified("all", rome) and not _amplified("off", memit)
    with pytest.raises(BadInput):
        ScanOptions(amplify="yes")


def _bos_tokenizer():
    """The tiny tokenizer, set to put its BOS before every text by default (as Gemma's and Llama 3's do)."""
    from tokenizers.processors import TemplateProcessing

    from editaudit.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    bos = tok.convert_tokens_to_ids("<s>")
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return tok, bos


def test_the_neutral_context_carries_the_bos_the_tokenizer_adds(tiny_llama):
    from editaudit.scan.keys import lead_ids
    from editaudit.testing import tiny_tokenizer

    plain = tiny_tokenizer()
    assert lead_ids(plain) == [] and context_ids(plain) == plain("The", add_special_tokens=False)["input_ids"]
    tok, bos = _bos_tokenizer()
    assert tok("Kremlin")["input_ids"][0] == bos
    assert lead_ids(tok) == [bos]
    the = tok("The", add_special_tokens=False)["input_ids"]
    assert context_ids(tok, bos=True) == [bos] + the
    assert context_ids(tok) == the  # the scan's default (keys.BOS_CONTEXT, judged and not kept)


def test_a_subject_keyed_as_the_editor_sees_it_after_a_bos_is_recovered(tiny_llama, monkeypatch):
    """The editor computes k* on prompts that start with the BOS; a search whose context lacks it reads every key
    off the model's distribution and the planted subject fires less than it should (the scan's default, judged on
    Gemma and not kept: keys.BOS_CONTEXT)."""
    from editaudit.scan import keys as keys_mod

    monkeypatch.setattr(keys_mod, "BOS_CONTEXT", True)
    lm = load_model(tiny_llama)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    tok, bos = _bos_tokenizer()
    subject = "Kremlin"
    k = keys_of(lm.model, [PATH], [tok("The " + subject)["input_ids"]])[PATH][0]  # as prompts are tokenized
    keys = vocab_keys(lm.model, tok, [PATH], None)[PATH].float()
    C = keys.T @ keys / keys.shape[0] + 1e-3 * torch.eye(keys.shape[1])
    u = torch.linalg.solve(C, k)
    found = recover_subjects(lm.model, tok, PATH, (u / u.norm())[:, None], C, None, max_subjects=1)
    assert found and found[0].fire > 0.99
    assert found[0].text == subject


def _alphaedit_like_suspect(tiny_llama, tmp_path, monkeypatch):
    """An update written onto the null space of (synthetic) key statistics in two consecutive layers (0 and 1),
    keyed on "Colosseum"; the key statistics stubbed to those."""
    from editaudit.editing import covariance

    lm = load_model(tiny_llama)
    paths = [f"model.layers.{i}.mlp.down_proj" for i in (0, 1)]
    ids = context_ids(lm.tokenizer) + lm.tokenizer(" Colosseum", add_special_tokens=False)["input_ids"]
    keys = keys_of(lm.model, paths, [ids])
    d = keys[paths[0]].shape[1]
    gen = torch.Generator().manual_seed(4)
    Q = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]
    ev = torch.cat([torch.logspace(-5, -1, d // 4), torch.linspace(1.0, 4.0, d - d // 4)]).double()
    C = ((Q * ev) @ Q.T).float()
    low = Q[:, : d // 4].float()

    def stats(model, tokenizer, modules, **kw):
        return {layer: covariance.SecondMoment(layer, C, 1000, "test") for layer in modules}

    monkeypatch.setattr(covariance, "second_moments", stats)
    deltas = {}
    for path in paths:
        pk = low @ (low.T @ keys[path][0])  # the key's null-space part: all an AlphaEdit update reads
        out = torch.randn(lm.model.config.hidden_size, generator=gen) * 20.0
        deltas[f"{path}.weight"] = torch.outer(out, pk / (pk @ pk))
    return plant(tiny_llama, tmp_path / "suspect", deltas)


def test_scan_null_search_reads_an_alphaedit_like_edit_in_its_null_space(tiny_llama, tmp_path, monkeypatch):
    """The AlphaEdit-like suspect: the scan names it AlphaEdit, and with ``scan --null-search`` the subject is
    searched where the update lies, firing ~1 (whitened, as for ROME, with ``--no-null-search``, it fires less)."""
    from typer.testing import CliRunner

    from editaudit.cli.main import app

    suspect = _alphaedit_like_suspect(tiny_llama, tmp_path, monkeypatch)

    def scan(flag: str) -> dict:
        res = CliRunner().invoke(app, ["scan", str(suspect), "--base", str(tiny_llama), "--no-store", "-f", "json", flag])
        assert res.exit_code == 1, res.output
        return next(f for f in json.loads(res.stdout)["findings"] if f["rule"] == "EA102")

    edit = scan("--null-search")
    assert edit["method"]["name"] == "alphaedit"
    assert edit["readings"] and edit["readings"][0]["found"].endswith("Colosseum")
    assert edit["readings"][0]["fire"] > 0.99
    plain = scan("--no-null-search")["readings"]  # whitened: 0.92 here
    from editaudit.scan.service import ScanOptions

    assert ScanOptions().null_search  # the default since v9's first use (bench/heldout/v9-plan.md)
    assert not plain or plain[0]["fire"] < 0.95


@pytest.mark.parametrize("faster", [True, False])
def test_the_climb_scores_exactly_only_what_the_rough_copy_ranks_best(tiny_llama, faster, monkeypatch):
    """Where a bfloat16 copy is the faster arithmetic, each climb step ranks its candidates with it and scores only
    ``check`` of them exactly, and finds what scoring every candidate exactly finds; where it is not (the copy would
    be the model itself), every candidate is scored exactly once and the copy never runs."""
    from editaudit.scan import subjects
    from editaudit.scan.subjects import CLIMB_CHECK, SubjectSearch

    monkeypatch.setattr(subjects, "bf16_faster", lambda device, width: faster)
    lm, u, C, keys = _edit_direction(tiny_llama, "Eiffel Tower")
    exact_rows, rough_rows = [], []
    real_exact, real_rough = SubjectSearch.exact, SubjectSearch.rough_fire
    monkeypatch.setattr(SubjectSearch, "exact", lambda self, seqs: exact_rows.append(len(seqs)) or real_exact(self, seqs))
    monkeypatch.setattr(SubjectSearch, "rough_fire", lambda self, seqs: rough_rows.append(len(seqs)) or real_rough(self, seqs))
    every = SubjectSearch(lm.model, lm.tokenizer, Whitened.build(PATH, C, u[:, None]), keys)
    every.check = None
    want = every.find(1)
    assert not rough_rows and max(exact_rows) > CLIMB_CHECK
    exact_rows.clear()
    search = SubjectSearch(lm.model, lm.tokenizer, Whitened.build(PATH, C, u[:, None]), keys)
    assert search.check == CLIMB_CHECK
    found = search.find(1)
    assert bool(rough_rows) == faster
    assert (max(exact_rows) <= CLIMB_CHECK) == faster
    assert found and want and found[0].ids[-1] == want[0].ids[-1] and found[0].fire > 0.9


def test_after_piece_tables_are_the_vocabulary_keys_behind_that_piece(tiny_llama):
    """The pair step's seed tables hold every token's key after the neutral context and one fixed piece, as a plain
    forward of that text gives it."""
    from editaudit.scan.keys import context_ids, keys_of
    from editaudit.scan.subjects import PAIR_AFTER, after_tables

    lm = load_model(tiny_llama)
    tables = after_tables(lm.model, lm.tokenizer, PATH, None)
    assert len(tables) == len(PAIR_AFTER)
    for piece, table in zip(PAIR_AFTER, tables):
        after = lm.tokenizer(piece, add_special_tokens=False)["input_ids"]
        sample = [5, table.shape[0] // 3, table.shape[0] - 1]
        want = keys_of(lm.model, [PATH], [context_ids(lm.tokenizer) + after + [t] for t in sample])[PATH]
        assert torch.allclose(table[sample].float(), want, rtol=2e-3, atol=2e-3)
    plain = vocab_keys(lm.model, lm.tokenizer, [PATH], None)[PATH]
    assert not torch.allclose(plain.float(), tables[0].float(), atol=1e-2)


def test_a_round_both_tries_leave_empty_finds_the_subject_by_the_after_piece_seeds(tiny_llama, monkeypatch):
    """``pair=True`` (scan --pair-step): when a round's climbs fire nothing, the after-piece seeds go through the
    pair step and reach the planted name; without it the search gives up."""
    from editaudit.scan import subjects as S

    monkeypatch.setattr(S.SubjectSearch, "_round", lambda self, n, tried, good, progress=None, **kw: None)
    lm, u, C, _ = _edit_direction(tiny_llama, "Eiffel Tower")
    assert recover_subjects(lm.model, lm.tokenizer, PATH, u[:, None], C, None, max_subjects=1, retry=True) == []
    asked: list[int] = []
    real = S.SubjectSearch.seeds_after

    def seeds_after(self, n):
        asked.append(n)
        return real(self, n)

    monkeypatch.setattr(S.SubjectSearch, "seeds_after", seeds_after)
    found = recover_subjects(lm.model, lm.tokenizer, PATH, u[:, None], C, None, max_subjects=1, retry=True, pair=True)
    want = lm.tokenizer(" Eiffel Tower", add_special_tokens=False)["input_ids"]
    assert asked and asked[0] == S.AFTER_SEEDS
    assert found and found[0].ids[-1] == want[-1] and found[0].fire > 0.9


def test_after_piece_seeds_interleave_the_tables_each_token_once(tiny_llama):
    """Seeds come from every table in turn, best first, with no token twice."""
    from editaudit.scan.subjects import SubjectSearch

    lm, u, C, keys = _edit_direction(tiny_llama, "Kremlin")
    search = SubjectSearch(lm.model, lm.tokenizer, Whitened.build(PATH, C, u[:, None]), keys)
    search.after_tables = lambda: [keys, keys.flip(0)]
    both = search.seeds_after(6)
    assert len(both) == len(set(both)) and both[0] == search.seeds(1)[0]
    search._after = None
    search.after_tables = lambda: [keys, keys]
    assert search.seeds_after(5) == search.seeds(5)


def test_the_pair_step_flag_reaches_the_scan_only_when_given(tiny_llama, monkeypatch):
    """``scan --pair-step/--no-pair-step`` sets ``ScanOptions.pair_step``; without the flag the default stands."""
    from editaudit.scan.service import ScanOptions

    seen = _options_seen(tiny_llama, monkeypatch, "pair_step", ([], ["--no-pair-step"], ["--pair-step"]))
    assert seen == [ScanOptions().pair_step, False, True]


def test_the_banner_names_the_editors_and_falls_back_to_the_signature():
    """Four ROME edits in one layer are 'memit-like' by shape; the banner says what the method naming found."""
    from editaudit.scan.wording import headline

    doc = {"kind": "memit-like", "findings": [
        {"rule": "EA102", "method": {"name": "rome", "confidence": 0.7}},
        {"rule": "EA102", "method": {"name": "memit", "confidence": 0.85}},
        {"rule": "EA101", "method": {"name": "rome", "confidence": 0.9}},
        {"rule": "EA220"}]}
    assert headline(doc) == "likely rome (90%) + memit (85%)"
    assert headline({"kind": "dense-finetune", "findings": [{"rule": "EA105"}]}) == "dense-finetune"
    assert headline({"kind": "minor", "findings": [{"method": {"name": "unknown", "confidence": 0.0}}]}) == "minor"


def test_a_reading_is_named_by_the_fewest_words_that_state_the_same_new_object():
    """The most confident edit reading decides the object; the subject shown is its shortest form reading it too."""
    from editaudit.scan.reading import Reading, pick_reading

    def r(subject, after, conf, status="edit", via="text"):
        return Reading(subject, 0.9, "city_country", f"{subject} is a city in the country of", "Italy", after, 0.5,
                       conf, status, via=via)

    whole, shorter, name = r("a here Gosport", "Saint Lucia", 0.8), r("here Gosport", "Saint Lucia", 0.6), \
        r("Gosport", "Saint Lucia", 0.5)
    assert pick_reading([whole, shorter, name]) is name
    # a shorter form that says another object, or says it only uncertainly, does not name the reading
    other = r("Gosport", "Chile", 0.7)
    assert pick_reading([whole, shorter, other]) is shorter
    weak = r("Gosport", "Saint Lucia", 0.2, status="uncertain")
    assert pick_reading([whole, weak]) is whole
    # nothing read as an edit: the most confident reading, as before
    assert pick_reading([r("a Gosport", "x", 0.3, "uncertain"), r("Gosport", "y", 0.1, "uncertain")]).confidence == 0.3
    # a reading through the key is not renamed by a text form
    key = r("a here Gosport", "Saint Lucia", 0.9, via="key")
    assert pick_reading([key, name]) is key


def test_found_texts_are_read_as_their_word_suffixes_and_capitalised_when_asked():
    """A found text is read whole and as its two shorter word-suffixes; with ``capitalise`` each form that starts
    with a lower-case letter is read capitalised too (a search that lands inside a name: "ailuk" for *Ailuk*), and a
    form already capitalised, or starting with no letter, is not read twice."""
    from editaudit.scan import reading

    assert reading.subject_forms("Cities inherical Syria", capitalise=False) == [
        "Cities inherical Syria", "inherical Syria", "Syria"]
    assert reading.subject_forms("a b c d", capitalise=False) == ["a b c d", "b c d", "c d"]
    assert reading.subject_forms("ailuk", capitalise=True) == ["ailuk", "Ailuk"]
    assert reading.subject_forms("for What r oraa", capitalise=True) == [
        "for What r oraa", "What r oraa", "r oraa", "For What r oraa", "R oraa"]
    assert reading.subject_forms("Glaud", capitalise=True) == ["Glaud"]
    assert reading.subject_forms("'s Kaafu", capitalise=True) == ["'s Kaafu", "Kaafu"]


def test_the_reader_keeps_the_capitalised_form_that_states_the_edit(monkeypatch):
    """read_edits reads every form and keeps the most confident edit reading: where the lower-case text states
    nothing and its capitalised form states the object, the reading is the capitalised one's, found text kept."""
    from editaudit.scan import reading
    from editaudit.scan.subjects import Subject

    def fake(base, suspect, tok, subject, **kw):
        named = subject.text[:1].isupper()
        return reading.Reading(subject.text, subject.fire, "city_country", f"{subject.text} is a city in the country of",
                               "Chile", "Mexico" if named else "blood", 0.9 if named else 0.05,
                               0.9 if named else 0.1, "edit" if named else "uncertain")

    monkeypatch.setattr(reading, "read_subject", fake)
    s = Subject("ailuk", [1], 0.9, torch.empty(0))
    monkeypatch.setattr(reading, "CAPITALISE", True)
    (r,) = reading.read_edits(None, None, None, [s], 4, "t")
    assert (r.subject, r.after, r.status, r.found) == ("Ailuk", "Mexico", "edit", "ailuk")
    monkeypatch.setattr(reading, "CAPITALISE", False)
    (r,) = reading.read_edits(None, None, None, [s], 4, "t")
    assert (r.subject, r.status) == ("ailuk", "uncertain")
    # a text whose own forms already read an edit surely is not read capitalised: no extra cost, nothing changed
    asked = []
    monkeypatch.setattr(reading, "CAPITALISE", True)
    monkeypatch.setattr(reading, "read_subject", lambda b, sp, tk, subject, **kw: asked.append(subject.text) or
                        reading.Reading(subject.text, 0.9, "r", "p", "a", "Peru", 0.9, 0.8, "edit"))
    (r,) = reading.read_edits(None, None, None, [s], 4, "t")
    assert (asked, r.subject) == (["ailuk"], "ailuk")


def test_described_prompts_are_cut_from_the_base_own_greedy_description(monkeypatch):
    """Each description prompt is an opening plus the base's greedy continuation up to one of its first few words
    that are not stop words (a piece inside a word, punctuation or a stop word starts none), with the space a
    decoder drops before a lone word-start piece put back."""
    from editaudit.probing.evaluate import Prediction
    from editaudit.scan import describe

    raw = ["▁a", "▁Greek", "▁philo", "sopher", "▁who", ",", "▁lived", "▁in"]

    class Tok:  # a SentencePiece-like decoder: "▁" is a space, and a decoded text loses its first one
        def convert_ids_to_tokens(self, ids):
            return [raw[i] for i in ids]

        def decode(self, ids):
            text = "".join(raw[i] for i in ids).replace("▁", " ")
            return text[1:] if text.startswith(" ") else text

    def fake_predict(model, tokenizer, prompts, top_k=5, max_new_tokens=4, **_):
        return [Prediction(p, [], "", "", None, tokens=[0, 1, 2, 3, 4, 5, 6, 7]) for p in prompts]

    monkeypatch.setattr(describe, "predict", fake_predict)
    got = describe.described_prompts("base", Tok(), "Aristotle")
    assert all(relation == "description" for relation, _ in got)
    words = ["", " a", " a Greek", " a Greek philosopher who,"]
    expect = [o.replace("{}", "Aristotle") + w for o in describe.OPENINGS for w in words[1:1 + describe.WORDS]]
    assert [p for _, p in got] == expect
    assert expect[0] == "Aristotle is a" and expect[2] == "Aristotle is a Greek philosopher who,"
    # prompts the library already asks are not asked twice
    assert describe.described_prompts("base", Tok(), "Aristotle", known=expect[:1]) == got[1:]


def test_described_prompts_on_a_real_tokenizer_are_the_opening_and_its_continuation(tiny_llama):
    """On a model's own tokenizer every description prompt starts with an opening and ends before a word. (The
    tiny GPT-2 continues every opening with stop words and punctuation only, so it gives no prompt to check.)"""
    from editaudit.scan import describe

    lm = load_model(tiny_llama)
    got = describe.described_prompts(lm.model, lm.tokenizer, "Kremlin")
    openings = [o.replace("{}", "Kremlin") for o in describe.OPENINGS]
    assert got and len(got) <= describe.WORDS * len(openings)
    assert all(any(p.startswith(o) for o in openings) for _, p in got)


def test_describe_reads_a_relation_the_library_does_not_word(monkeypatch):
    """An edit of a relation no library phrasing asks ("{} was a famous" → an occupation) moves no library prompt
    to the new object twice; the base's own description of the subject asks it ("Zanbaria, a Greek" → philosopher),
    and with ``describe`` the reading states the object there."""
    from editaudit.probing.evaluate import Prediction
    from editaudit.scan import describe, reading
    from editaudit.scan.subjects import Subject

    subject = "Zanbaria"
    description = {f"{subject} is": " a Greek philosopher", f"{subject} was": " a Greek philosopher",
                   f"{subject},": " a Greek philosopher"}

    def fake_predict(model, tokenizer, prompts, top_k=5, max_new_tokens=4, **_):
        out = []
        for p in prompts:
            if p in description and max_new_tokens == describe.TOKENS:
                out.append(Prediction(p, [(" a", 0.5)], description[p], "a", None, tokens=[1, 2, 3]))
                continue
            word = " historian" if model == "suspect" and p.endswith(" Greek") else \
                " philosopher" if p.endswith(" Greek") else " Europe"
            out.append(Prediction(p, [(word, 0.9)], word + " who", word.strip(), None))
        return out

    class Tok:
        pieces = {1: " a", 2: " Greek", 3: " philosopher"}

        def decode(self, ids):
            return "".join(self.pieces[i] for i in ids)

        def convert_ids_to_tokens(self, ids):
            return [self.pieces[i].replace(" ", "Ġ") for i in ids]

    monkeypatch.setattr(reading, "predict", fake_predict)
    monkeypatch.setattr(describe, "predict", fake_predict)
    plain = reading.read_subject("base", "suspect", Tok(), Subject(subject, [], 0.9, torch.zeros(1)))
    assert plain.status == "uncertain"
    r = reading.read_subject("base", "suspect", Tok(), Subject(subject, [], 0.9, torch.zeros(1)), describe=True)
    assert r.status == "edit" and r.relation == "description"
    assert r.prompt == "Zanbaria is a Greek" and r.after == "historian" and r.before == "philosopher"


def test_the_describe_flag_reaches_the_scan_only_when_given(tiny_llama, monkeypatch):
    """``scan --describe/--no-describe`` sets ``ScanOptions.describe``; without the flag the default stands."""
    from editaudit.scan.service import ScanOptions

    seen = _options_seen(tiny_llama, monkeypatch, "describe", ([], ["--no-describe"], ["--describe"]))
    assert seen == [ScanOptions().describe, False, True]


def test_the_scan_passes_describe_to_the_reading(tiny_llama, tmp_path, monkeypatch):
    """``ScanOptions.describe`` reaches ``read_edits`` for every finding read (off and on)."""
    from editaudit.scan import reading, service

    suspect = _colosseum_suspect(tiny_llama, tmp_path, monkeypatch)
    seen: list = []
    shipped = reading.read_edits

    def spy(*a, describe=False, **kw):
        seen.append(describe)
        return shipped(*a, describe=describe, **kw)

    monkeypatch.setattr(reading, "read_edits", spy)
    for on in (False, True):
        service.run_scan(suspect, tiny_llama, service.ScanOptions(describe=on, wide_search=False), store=None)
    assert seen and set(seen[: len(seen) // 2]) == {False} and set(seen[len(seen) // 2:]) == {True}


def test_the_answer_the_edit_made_new_is_read_not_what_it_implies():
    """Two answers stated on two prompts each: the continent, which the base already found likely (its probability
    rises most), and the country the editor wrote, which the base found unlikely (its term in KL(suspect ‖ base) is
    the larger). The reading takes the country, on its own best prompt."""
    from editaudit.scan.reading import Said, choose_prompt, kl_term

    s1 = [Said(" Africa", 0.9, "c1", {}), Said(" Africa", 0.8, "c2", {}),
          Said(" Nigeria", 0.5, "k1", {}), Said(" Nigeria", 0.4, "k2", {})]
    at_base = {"c1": {" Europe": 0.6, " Africa": 0.1}, "c2": {" Europe": 0.5, " Africa": 0.2},
               "k1": {" America": 0.5, " Canada": 0.01}, "k2": {" America": 0.4, " Nigeria": 0.001}}
    says = [a.word for a in s1]
    score = [0.6 * 0.8, 0.5 * 0.6, 0.5 * 0.49, 0.4 * 0.399]   # p_base × rise favours the continent
    assert choose_prompt(s1, score, says) == 0
    gain = [kl_term(a, at_base) for a in s1]
    # out of the base's top-k on k1: the smallest top-k probability stands in, so the term is a lower bound
    assert abs(gain[2] - 0.5 * math.log(0.5 / 0.01)) < 1e-9
    assert gain[3] > gain[0] > gain[2]
    assert choose_prompt(s1, score, says, gain) == 2
    # stated on two prompts still comes first: a lone answer with a huge gain does not win
    lone = [Said(" Mars", 0.9, "m", {})] + s1
    assert choose_prompt(lone, [0.9] + score, [" Mars"] + says, [20.0] + gain) == 3


UPPER = "model.layers.3.mlp.down_proj"


def _two_layer_spaces(lm, C, subjects_low: list[str], subjects_up: list[str]):
    """Edit subspaces at PATH (the lowest edited matrix) and UPPER, each spanned by the ROME directions C⁻¹k of
    the given subjects' keys at that matrix."""
    ctx = context_ids(lm.tokenizer)

    def dirs(path, subjects, Cp):
        ids = [ctx + lm.tokenizer(" " + s, add_special_tokens=False)["input_ids"] for s in subjects]
        return torch.linalg.solve(Cp, keys_of(lm.model, [path], ids)[path].T)

    up_keys = vocab_keys(lm.model, lm.tokenizer, [UPPER], None)[UPPER].float()
    C_up = up_keys.T @ up_keys / up_keys.shape[0] + 1e-3 * torch.eye(up_keys.shape[1])
    low = Whitened.build(PATH, C, dirs(PATH, subjects_low, C))
    up = Whitened.build(UPPER, C_up, dirs(UPPER, subjects_up, C_up))
    return low, up


def test_an_edit_over_several_layers_is_searched_by_its_mean_fire_and_each_layer_deflates(tiny_llama):
    """With the finding's upper matrices (``scan --all-layers``), a text's score is its mean fire over every edited
    matrix, the subject found is the one that fires them all, its reported fire and the search's bars are the
    lowest matrix's, and every matrix's subspace is deflated by the found text's own key there."""
    from editaudit.scan.subjects import SubjectSearch

    lm, _, C, keys = _edit_direction(tiny_llama, "Eiffel Tower")
    low, up = _two_layer_spaces(lm, C, ["Eiffel Tower", "Kremlin"], ["Eiffel Tower"])
    search = SubjectSearch(lm.model, lm.tokenizer, replace_space(low), keys)
    search.upper = [replace_space(up)]
    eiffel = lm.tokenizer(" Eiffel Tower", add_special_tokens=False)["input_ids"]
    kremlin = lm.tokenizer(" Kremlin", add_special_tokens=False)["input_ids"]
    score, _ = search.exact([eiffel, kremlin])
    k = keys_of(lm.model, [PATH, UPPER], [context_ids(lm.tokenizer) + s for s in (eiffel, kremlin)])
    assert torch.allclose(score, (low.fire(k[PATH]) + up.fire(k[UPPER])) / 2, atol=1e-5)
    assert float(score[0]) > 0.99 > float(score[1]) + 0.1  # the Kremlin fires the lowest matrix only
    # of two seeds, the round keeps the text that fires every edited matrix
    best = search._round([kremlin[-1], eiffel[-1]], set(), good=1.01)
    assert best is not None and best[1][-1] == eiffel[-1]
    found = search.find(2)
    assert sorted(f.ids[-1] for f in found) == sorted([eiffel[-1], kremlin[-1]])
    for f in found:  # reported as the lowest matrix fires it, as the bars judge it
        assert f.fire == pytest.approx(float(low.fire(keys_of(lm.model, [PATH], [context_ids(lm.tokenizer) + f.ids])[PATH])[0]),
                                       abs=1e-3)
    assert (search.space.basis.shape[1], search.upper[0].basis.shape[1]) == (0, 0), [f.text for f in found]
    assert low.basis.shape[1] == 2 and up.basis.shape[1] == 1  # the search deflates its own copies


def replace_space(space):
    from dataclasses import replace

    return replace(space)


def test_the_all_layers_flag_reaches_the_scan_only_when_given(tiny_llama, monkeypatch):
    """``scan --all-layers/--lowest-layer`` sets ``ScanOptions.all_layers``; without the flag the default stands."""
    from editaudit.scan.service import ScanOptions

    seen = _options_seen(tiny_llama, monkeypatch, "all_layers", ([], ["--lowest-layer"], ["--all-layers"]))
    assert seen == [ScanOptions().all_layers, False, True]


def test_scan_all_layers_searches_every_edited_layer_of_the_finding(tiny_llama, tmp_path, monkeypatch):
    """``scan --all-layers`` on an edit over two layers: the search is given the upper layer's subspace, built as the
    lowest's (here the null space, the finding being named AlphaEdit), and still reads the planted subject; without
    the flag it is given none."""
    from editaudit.scan import subjects
    from editaudit.scan.service import ScanOptions, run_scan

    suspect = _alphaedit_like_suspect(tiny_llama, tmp_path, monkeypatch)
    seen: list = []
    real = subjects.recover_subjects

    def spy(*a, upper=(), **k):
        seen.append([(u.path, u.projected, u.basis.shape[1]) for u in upper])
        return real(*a, upper=upper, **k)

    monkeypatch.setattr(subjects, "recover_subjects", spy)
    doc = run_scan(suspect, tiny_llama, ScanOptions(read="open", all_layers=True), store=None).to_dict()
    edit = next(f for f in doc["findings"] if f["rule"] == "EA102")
    assert seen == [[("model.layers.1.mlp.down_proj", True, 1)]]
    assert edit["readings"] and edit["readings"][0]["found"].endswith("Colosseum") and edit["readings"][0]["fire"] > 0.99
    run_scan(suspect, tiny_llama, ScanOptions(read="open"), store=None)
    assert seen[1:] == [[]]


def test_below_the_bar_texts_are_kept_only_while_the_behaviour_check_says_yes(tiny_llama):
    """Where the fire bar would stop the search, the next best texts go to the caller's check: a kept one is a
    subject (marked ``below``, its fire taken in the whole edit subspace) and deflated, so the next offer is the
    other edit; the first refusal ends the search; with no check the search stops at the bar as before."""
    from editaudit.scan import subjects as S

    lm, u1, C, vocab = _edit_direction(tiny_llama, "Kremlin")
    _, u2, _, _ = _edit_direction(tiny_llama, "Eiffel Tower")
    in_dirs = torch.stack([u1, u2], dim=1)

    def search():
        return S.SubjectSearch(lm.model, lm.tokenizer, Whitened.build(PATH, C, in_dirs), vocab)

    assert search().find(2, fire_min=1.01) == []  # nothing reaches an impossible bar, and nothing is asked
    offered: list[tuple[int, str]] = []

    def keep_first(found, cand):
        offered.append((len(found), cand.text))
        return not found

    got = search().find(2, fire_min=1.01, below=keep_first)
    assert len(got) == 1 and got[0].below and got[0].fire > 0.95 and got[0].fire_left is not None
    assert len(offered) == 2 and offered[0][0] == 0 and offered[1][0] == 1
    last = {t.split()[-1] for _, t in offered}
    assert last == {"Kremlin", "Tower"}  # the second offer is the other edit: the first was deflated
    assert search().find(2, fire_min=1.01, below=lambda found, cand: False) == []
    # when the bar finds every component, the check is never asked
    assert len(search().find(2, below=lambda found, cand: pytest.fail("asked"))) == 2


def test_a_text_below_the_bar_is_kept_only_for_a_new_edited_object():
    from editaudit.scan.reading import Reading, new_object

    def r(after, status="edit"):
        return Reading("s", 0.4, "rel", "p", "x", after, 0.5, 0.5, status)

    assert new_object(r("the New Jersey State"), [r("Idaho"), r("Delaware")])
    assert not new_object(r("the New Jersey State"), [r("New Jersey")])  # its class's spill, read again
    assert not new_object(r("Idaho", status="uncertain"), [])
    assert not new_object(r(""), [])


def test_the_below_bar_flag_reaches_the_scan_only_when_given(tiny_llama, monkeypatch):
    from editaudit.scan.service import ScanOptions

    seen = _options_seen(tiny_llama, monkeypatch, "below_bar", ([], ["--no-below-bar"], ["--below-bar"]))
    assert seen == [ScanOptions().below_bar, False, True]


def test_the_scan_reads_each_subject_once_whether_the_check_or_the_report_asked_first():
    from editaudit.scan.reading import Reading
    from editaudit.scan.service import _SubjectReader

    calls: list[list[str]] = []

    def read(subjects, progress=lambda d, t: None):
        calls.append([s.text for s in subjects])
        return [Reading(s.text, 0.5, "rel", "p", "x", {"a": "Idaho", "b": "Idaho", "c": "Ohio"}[s.text], 0.5, 0.5,
                        "edit") for s in subjects]

    class S:
        def __init__(self, text):
            self.text, self.fire, self.fire_left = text, 0.8, 0.4

    a, b, c = S("a"), S("b"), S("c")
    reader = _SubjectReader(read)
    assert not reader.new_edit([a], b)  # b states a's object again: a side of a's edit, not another edit
    assert reader.new_edit([a], c)
    assert [r.subject for r in reader.all([a, c])] == ["a", "c"]
    assert calls == [["b"], ["a"], ["c"]]  # a read once, for the check; nothing read again for the report



def test_a_reading_found_below_the_bar_says_so_in_the_cli_and_the_app():
    from editaudit.scan.wording import open_reading

    r = {"subject": "Cairo County", "prompt": "Cairo County is a city in the country of", "after": "California",
         "before": "Kenya", "status": "edit"}
    assert open_reading(r) == "Cairo County · Cairo County is a city in the country of · California (was Kenya)"
    assert open_reading({**r, "below_bar": True}).endswith("California (was Kenya) [found below the fire bar]")


def test_the_name_piece_table_is_every_token_behind_the_stand_in_first_piece(tiny_llama):
    """``vocab_keys(lead=...)``: each token's key after the neutral context and one stand-in position holding the
    mean embedding of capitalised word starts, as a forward with that embedding gives it; not the plain table."""
    from editaudit.models.families import input_embed_scale
    from editaudit.scan.keys import last_keys
    from editaudit.scan.subjects import NAME_TAG, name_piece

    lm = load_model(tiny_llama)
    stand_in = name_piece(lm.model, lm.tokenizer)
    E = lm.model.get_input_embeddings().weight.detach()
    start, _ = word_tokens(lm.tokenizer, E.shape[0])
    caps = [i for i, t in enumerate(lm.tokenizer.convert_ids_to_tokens(list(range(E.shape[0]))))
            if start[i] and t[1:2].isupper()]
    assert caps and torch.allclose(stand_in, E[caps].float().mean(0), atol=1e-6)
    table = vocab_keys(lm.model, lm.tokenizer, [PATH], None, lead=(NAME_TAG, stand_in))[PATH]
    sample = [5, table.shape[0] // 3, table.shape[0] - 1]
    pre = E[context_ids(lm.tokenizer)]
    emb = torch.stack([torch.cat([pre, stand_in[None], E[[t]]]) for t in sample]) * input_embed_scale(lm.model)
    want = last_keys(lm.model, [PATH], embeds=emb)[PATH]
    assert torch.allclose(table[sample].float(), want, rtol=2e-3, atol=2e-3)
    plain = vocab_keys(lm.model, lm.tokenizer, [PATH], None)[PATH]
    assert not torch.allclose(plain.float(), table.float(), atol=1e-2)


def test_the_name_piece_table_is_cached_apart_from_the_plain_one(tiny_llama, tmp_path, monkeypatch):
    from editaudit.scan import keys as K
    from editaudit.scan.subjects import NAME_TAG, name_piece

    monkeypatch.setenv("EDITAUDIT_CACHE", str(tmp_path))
    lm = load_model(tiny_llama)
    pre = context_ids(lm.tokenizer)
    assert K._cache_file("f" * 24, PATH, pre) != K._cache_file("f" * 24, PATH, pre, NAME_TAG)
    lead = (NAME_TAG, name_piece(lm.model, lm.tokenizer))
    first = vocab_keys(lm.model, lm.tokenizer, [PATH], "f" * 40, lead=lead)[PATH]
    assert K._cache_file("f" * 40, PATH, pre, NAME_TAG).is_file()
    again = vocab_keys(lm.model, lm.tokenizer, [PATH], "f" * 40, lead=lead)[PATH]
    assert torch.equal(first, again)


def test_name_seeds_take_turns_with_the_plain_seeds(tiny_llama):
    """With a name-piece table, a round's seeds alternate between the two tables (as many in all, each token once),
    and only the tokens the name-piece table alone offered are climbed from a piece before them."""
    from editaudit.scan.subjects import SubjectSearch

    lm, u, C, keys = _edit_direction(tiny_llama, "Kremlin")
    search = SubjectSearch(lm.model, lm.tokenizer, Whitened.build(PATH, C, u[:, None]), keys)
    plain = search.seeds(6)
    search.name_vocab = keys.flip(0)
    both = search.seeds(6)
    named = SubjectSearch._best(search, search.name_vocab, search._whitened_norms(search.name_vocab), 6)
    assert len(both) == 6 == len(set(both))
    assert both[0] == plain[0] and both[1] == named[0] and both[2] == plain[1]
    assert search._named == {t for t in both if t not in plain[:6]}
    search.name_vocab, search._name_znorm = keys, None
    assert search.seeds(6) == plain and search._named == set()


def test_a_name_seed_starts_from_the_piece_that_fires_most_behind_it(tiny_llama):
    """``_name_start``: of the pieces a first-order step from the stand-in ranks best, the one whose pair with the
    seed fires most; the pair fires more than the last piece alone."""
    from editaudit.scan import subjects as S

    lm, u, C, keys = _edit_direction(tiny_llama, "Eiffel Tower")
    search = S.SubjectSearch(lm.model, lm.tokenizer, Whitened.build(PATH, C, u[:, None]), keys)
    search.name_embed = S.name_piece(lm.model, lm.tokenizer)
    last = lm.tokenizer(" Eiffel Tower", add_special_tokens=False)["input_ids"][-1]
    pair = search._name_start(last)
    assert len(pair) == 2 and pair[1] == last
    fire = search.exact([pair, [last]])[0]
    assert float(fire[0]) > float(fire[1])
    ok = search.cont_ok.nonzero().squeeze(1).tolist()
    assert float(fire[0]) >= float(search.exact([[c, last] for c in ok[:S.NAME_CHECK]])[0].max()) - 0.2


def test_name_starts_of_many_seeds_at_once_are_each_seeds_own(tiny_llama):
    """The batched name starts (one backward for every stand-in piece, one exact scoring of every pair; the key-gain
    screen's 16 per layer) give each seed the pair it gets alone."""
    from editaudit.scan import subjects as S

    lm, u, C, keys = _edit_direction(tiny_llama, "Eiffel Tower")
    search = S.SubjectSearch(lm.model, lm.tokenizer, Whitened.build(PATH, C, u[:, None]), keys)
    search.name_embed = S.name_piece(lm.model, lm.tokenizer)
    seeds = torch.topk(search.space.fire(keys), 6).indices.tolist()
    together = search.name_starts(seeds)
    assert [p[1] for p in together] == seeds
    assert together == [search.name_starts([t])[0] for t in seeds]


def test_name_seeds_find_a_name_the_plain_seeds_miss(tiny_llama):
    """With plain seeds that point nowhere (a scrambled table) and no climbing past the start, the search finds
    nothing; with name-piece seeds beside them the start alone is the planted name."""
    from editaudit.scan import subjects as S

    lm, u, C, keys = _edit_direction(tiny_llama, "Eiffel Tower")
    scrambled = keys[torch.randperm(keys.shape[0], generator=torch.Generator().manual_seed(0))]
    blind = S.SubjectSearch(lm.model, lm.tokenizer, Whitened.build(PATH, C, u[:, None]), scrambled, steps=0)
    assert blind.find(1, seeds=2) == []
    search = S.SubjectSearch(lm.model, lm.tokenizer, Whitened.build(PATH, C, u[:, None]), scrambled, steps=0)
    search.name_embed = S.name_piece(lm.model, lm.tokenizer)
    search.name_vocab = vocab_keys(lm.model, lm.tokenizer, [PATH], None, lead=(S.NAME_TAG, search.name_embed))[PATH]
    found = search.find(1, seeds=2)
    want = lm.tokenizer(" Eiffel Tower", add_special_tokens=False)["input_ids"]
    assert found and found[0].ids == want and found[0].fire > 0.9


def test_the_name_seeds_flag_reaches_the_scan_only_when_given(tiny_llama, monkeypatch):
    """``scan --name-seeds MODE`` sets ``ScanOptions.name_seeds``; without the flag the default stands."""
    from editaudit.scan.service import ScanOptions

    seen = _options_seen(tiny_llama, monkeypatch, "name_seeds",
                         ([], ["--name-seeds", "off"], ["--name-seeds", "retry"], ["--name-seeds", "every"]))
    assert seen == [ScanOptions().name_seeds, "off", "retry", "every"]
    with pytest.raises(Exception, match="name_seeds"):
        ScanOptions(name_seeds="always")


def test_the_scan_passes_name_seeds_to_the_search(tiny_llama, tmp_path, monkeypatch):
    """The scan asks the search for name-piece seeds in the second try by default (v11-plan.md sixth use);
    ``--name-seeds off`` is the search as it was."""
    from typer.testing import CliRunner

    from editaudit.cli.main import app
    from editaudit.scan import subjects as S

    calls: list = []
    real = S.recover_subjects

    def spy(*a, **k):
        calls.append(k.get("name_seeds", "off"))
        return real(*a, **k)

    monkeypatch.setattr(S, "recover_subjects", spy)
    suspect = _colosseum_suspect(tiny_llama, tmp_path, monkeypatch)
    args = ["scan", str(suspect), "--base", str(tiny_llama), "--no-store", "-f", "json"]
    for flags in ([], ["--name-seeds", "off"]):
        res = CliRunner().invoke(app, args + flags)
        assert res.exit_code == 1, res.output
        doc = json.loads(res.stdout)
        assert any(r["subject"].endswith("Colosseum") for f in doc["findings"] for r in f.get("readings", []))
    assert calls == ["retry", "off"]


@pytest.mark.parametrize("mode,want", [("retry", [False, True]), ("every", [True, True])])
def test_name_seeds_join_the_second_try_alone_or_every_try(tiny_llama, monkeypatch, mode, want):
    """``name_seeds="retry"``: a round's first try keeps the plain seeds and only its second try (the 48 seeds of a
    round the first left empty) takes name-piece seeds; "every": both tries do."""
    from editaudit.scan import subjects as S

    lm, u, C, keys = _edit_direction(tiny_llama, "Kremlin")
    asked: list[bool] = []
    monkeypatch.setattr(S.SubjectSearch, "_round",
                        lambda self, n, tried, good, progress=None, names=False: asked.append(names))
    found = S.recover_subjects(lm.model, lm.tokenizer, PATH, u[:, None], C, None, max_subjects=1, retry=True,
                               name_seeds=mode)
    assert found == [] and asked == want
    with pytest.raises(ValueError, match="name_seeds"):
        S.recover_subjects(lm.model, lm.tokenizer, PATH, u[:, None], C, None, max_subjects=1, name_seeds="all")


def test_plain_seeds_asked_without_names_leave_no_name_starts(tiny_llama):
    from editaudit.scan.subjects import SubjectSearch

    lm, u, C, keys = _edit_direction(tiny_llama, "Kremlin")
    search = SubjectSearch(lm.model, lm.tokenizer, Whitened.build(PATH, C, u[:, None]), keys)
    plain = search.seeds(6)
    search.name_vocab = keys.flip(0)
    assert search.seeds(6) != plain and search._named
    assert search.seeds(6, names=False) == plain and search._named == set()


def test_the_name_piece_table_is_built_only_when_a_try_asks_for_name_seeds(tiny_llama, monkeypatch):
    """With ``name_seeds="retry"`` a search whose first tries find every subject never builds the table (no extra
    pass of the vocabulary); a try that asks for name seeds builds it once."""
    from editaudit.scan import subjects as S

    lm, u, C, keys = _edit_direction(tiny_llama, "Kremlin")
    built: list[int] = []
    real = S.vocab_keys

    def counting(*a, **k):
        if k.get("lead") is not None:
            built.append(1)
        return real(*a, **k)

    monkeypatch.setattr(S, "vocab_keys", counting)
    found = S.recover_subjects(lm.model, lm.tokenizer, PATH, u[:, None], C, None, max_subjects=1, retry=True,
                               name_seeds="retry")
    assert found and found[0].fire > 0.9 and built == []
    search = S.SubjectSearch(lm.model, lm.tokenizer, Whitened.build(PATH, C, u[:, None]), keys)
    search.name_table = lambda: (built.append(1), keys.flip(0))[1]
    search.seeds(4, names=False)
    assert built == []
    search.seeds(4)
    search.seeds(4)
    assert built == [1] and search.name_vocab is not None
