"""Probe metrics on tiny models: batching is exact, the stop-word rule, multi-token targets, CounterFact scores."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from editaudit.errors import BadInput
from editaudit.probing.evaluate import Prediction, predict, retained, retention, target_first_tokens, target_probs, target_scores
from editaudit.probing.format import Probe
from editaudit.probing.metrics import (STOP_WORDS, TargetScore, categorize, efficacy, first_content_index, is_skippable,
                                       magnitude, neighbourhood_score, token_accuracy)
from editaudit.testing import tiny_tokenizer


class BigramLM(torch.nn.Module):
    """A scripted causal LM: the next token depends only on the current one, through a lookup table.

    Its outputs can be computed by hand, so the metrics can be checked exactly.
    """

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(vocab, vocab))

    def set_next(self, tok, a: str, b: str, logit: float = 10.0) -> None:
        with torch.no_grad():
            self.table[tok.convert_tokens_to_ids(a), tok.convert_tokens_to_ids(b)] = logit

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False,
                logits_to_keep=0):
        logits = self.table[input_ids]
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits, past_key_values=None)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture()
def bigram(tok):
    model = BigramLM(len(tok))
    # "... is" -> "the" -> "city" ... ; "... in" -> "the" ; "of" -> "Paris"
    model.set_next(tok, "▁is", "▁the")
    model.set_next(tok, "▁the", "▁of")
    model.set_next(tok, "▁of", "▁Paris")
    model.set_next(tok, "▁Paris", ".")
    model.set_next(tok, "▁made", "▁by")
    model.set_next(tok, "▁by", "▁Apple")
    model.set_next(tok, "▁spoken", "▁city")
    return model


def _load(path):
    from editaudit.models.loading import load_model

    return load_model(path)


# -- the stop-word rule --------------------------------------------------------------------------------

def test_stop_word_list_is_explicit_and_spares_content_words():
    assert {"the", "a", "an", "of", "is", "was", "in", "and"} <= STOP_WORDS
    for word in ("Paris", "new", "one", "city", "called", "English"):
        assert word.casefold() not in STOP_WORDS
    assert is_skippable(" the") and is_skippable("The") and is_skippable("  ") and is_skippable(" ,") and is_skippable('"')
    assert not is_skippable(" Paris") and not is_skippable("New")
    assert first_content_index([" the", " ", ",", " of", " Paris", " France"]) == 4
    assert first_content_index([" the", " of"]) is None


def test_retention_skips_leading_stop_words_in_the_continuation(bigram, tok):
    # "is" -> "the" -> "of" -> "Paris": two stop words are skipped, the answer is Paris.
    preds = predict(bigram, tok, ["The capital of France is"], max_new_tokens=4)
    assert preds[0].tokens[:3] == tok.convert_tokens_to_ids(["▁the", "▁of", "▁Paris"])
    assert preds[0].first_word == "Paris"
    assert preds[0].first_word_token_id == tok.convert_tokens_to_ids("▁Paris")
    probe = Probe(id="p", subject="France", prompt="The capital of {} is", target_true="Paris", target_new="Rome")
    assert retention(bigram, tok, [probe], target="true") == [True]
    assert retention(bigram, tok, [probe], target="new") == [False]


def test_step_top_gives_what_a_fresh_pass_gives_where_each_word_is_said(bigram, tok):
    """``step_top``: the top-k before each generated token, from the greedy decode itself: the model's own
    distribution after the tokens said so far (for the bigram, the table's row of the previous token)."""
    pred = predict(bigram, tok, ["The capital of France is"], max_new_tokens=4, top_k=3, step_top=True)[0]
    assert len(pred.steps) == len(pred.tokens) == 4 and pred.steps[0] == pred.top
    for j in range(1, 4):
        p, i = torch.softmax(bigram.table[pred.tokens[j - 1]].detach(), -1).topk(3)
        assert [t for t, _ in pred.steps[j]] == [tok.decode([x]) for x in i.tolist()]
        assert [q for _, q in pred.steps[j]] == pytest.approx(p.tolist())
        assert pred.steps[j][0][0].strip() == tok.decode([pred.tokens[j]]).strip()
    assert predict(bigram, tok, ["The capital of France is"], max_new_tokens=4)[0].steps == []


def test_a_content_word_before_the_target_fails_retention(bigram, tok):
    # "spoken" -> "city": a content word comes first, so "Paris" later does not count.
    probe = Probe(id="p", subject="France", prompt="The language spoken", target_true="Paris")
    assert predict(bigram, tok, [probe.text])[0].first_word == "city"
    assert retention(bigram, tok, [probe]) == [False]


def test_only_stop_words_means_no_answer(bigram, tok):
    bigram.set_next(tok, "▁of", "▁the")  # is -> the -> of -> the -> of ... never a content word
    pred = predict(bigram, tok, ["The capital of France is"], max_new_tokens=4)[0]
    assert pred.first_word == "" and pred.first_word_token_id is None
    probe = Probe(id="p", subject="France", prompt="The capital of {} is", target_true="Paris")
    assert retention(bigram, tok, [probe]) == [False]


def test_target_starting_with_a_stop_word_compares_its_first_content_token(tok):
    assert target_first_tokens(tok, ["It was made by"], ["the Apple"]) == ["Apple"]
    pred = Prediction(prompt="x", top=[], continuation="Apple", first_word="apple", first_word_token_id=1)
    assert retained([pred], ["Apple"]) == [True]  # case-insensitive
    assert retained([pred], ["Intel"]) == [False]


def test_retention_rate_and_bad_targets(bigram, tok):
    probes = [Probe(id="a", subject="France", prompt="The capital of {} is", target_true="Paris"),
              Probe(id="b", subject="Apple", prompt="{} was made", target_true="Intel")]
    r = retention(bigram, tok, probes)
    assert list(r) == [True, False] and float(r) == pytest.approx(0.5)
    with pytest.raises(BadInput):
        retention(bigram, tok, probes, target="new")  # no target_new
    with pytest.raises(BadInput):
        retention(bigram, tok, probes, target="old")


def test_top_k_has_probabilities_in_order(bigram, tok):
    pred = predict(bigram, tok, ["The capital of France is"], top_k=3)[0]
    assert pred.top[0][0].strip() == "the"
    probs = [p for _, p in pred.top]
    assert probs == sorted(probs, reverse=True) and 0.9 < probs[0] <= 1.0
    assert len(pred.top) == len(pred.top_ids) == 3


# -- teacher forcing ---------------------------------------------------------------------------------

def test_multi_token_target_probability_is_the_product_over_tokens(bigram, tok):
    # P("Paris ." | "... of") under the bigram table, by hand.
    table = bigram.table.detach()
    ids = tok.convert_tokens_to_ids
    p1 = torch.softmax(table[ids("▁of")], -1)[ids("▁Paris")]
    p2 = torch.softmax(table[ids("▁Paris")], -1)[ids(".")]
    score = target_scores(bigram, tok, ["The capital of"], ["Paris."])[0]
    assert score.n_tokens == 2 and score.token_correct == 2
    assert score.prob == pytest.approx(float(p1 * p2), rel=1e-5)
    assert score.mean_logprob == pytest.approx(score.logprob / 2)
    assert target_probs(bigram, tok, ["The capital of"], ["Paris."]) == [pytest.approx(score.prob)]


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_gpt2"])
def test_batched_scores_equal_unpadded_single_runs(family, request):
    lm = _load(request.getfixturevalue(family))
    prompts = ["The capital of France is", "Tokyo is the capital city of", "The official language spoken in Brazil is",
               "Sony"]
    targets = ["Paris city", "Japan", "Spanish", "Japanese company Tokyo"]
    batched = target_scores(lm.model, lm.tokenizer, prompts, targets, batch_size=3)
    for prompt, target, got in zip(prompts, targets, batched):
        p_ids = lm.tokenizer(prompt)["input_ids"]
        t_ids = lm.tokenizer(prompt + " " + target)["input_ids"][len(p_ids):]
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([p_ids + t_ids])).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        want = sum(float(logp[len(p_ids) - 1 + j, t]) for j, t in enumerate(t_ids))
        assert got.n_tokens == len(t_ids) and got.logprob == pytest.approx(want, abs=1e-4)
    preds = predict(lm.model, lm.tokenizer, prompts, batch_size=3, max_new_tokens=5)
    for prompt, pred in zip(prompts, preds):
        alone = predict(lm.model, lm.tokenizer, [prompt], batch_size=1, max_new_tokens=5)[0]
        assert pred.tokens == alone.tokens and pred.top_ids == alone.top_ids
        assert [p for _, p in pred.top] == pytest.approx([p for _, p in alone.top], abs=1e-5)
        assert pred.prompt == prompt


def test_empty_inputs_and_mismatched_lengths(bigram, tok):
    assert predict(bigram, tok, []) == [] and target_scores(bigram, tok, [], []) == [] and retention(bigram, tok, []) == []
    with pytest.raises(BadInput):
        target_scores(bigram, tok, ["a"], ["b", "c"])
    with pytest.raises(BadInput):
        target_scores(bigram, tok, ["The capital of"], ["  "])
    with pytest.raises(BadInput):
        predict(bigram, tok, ["Paris"], batch_size=0)


# -- CounterFact-style scores and categories ----------------------------------------------------------

def _s(lp: float, n: int = 1, correct: int = 0) -> TargetScore:
    return TargetScore(prob=math.exp(lp), logprob=lp, n_tokens=n, token_correct=correct)


def test_counterfact_scores():
    new = [_s(-1.0), _s(-4.0, 2), _s(-0.5)]
    true = [_s(-2.0), _s(-1.0), _s(-3.0, 3)]
    # mean log-probs: new -1, -2, -0.5 ; true -2, -1, -1
    assert efficacy(new, true) == pytest.approx(2 / 3)
    assert neighbourhood_score(new, true) == pytest.approx(1 / 3)
    want = ((math.exp(-1) - math.exp(-2)) + (math.exp(-2) - math.exp(-1)) + (math.exp(-0.5) - math.exp(-1))) / 3
    assert magnitude(new, true) == pytest.approx(want)
    assert token_accuracy([_s(-1, 2, 1), _s(-1, 3, 3)]) == pytest.approx(4 / 5)
    assert math.isnan(efficacy([], []))


def test_token_categories():
    assert categorize(" Intel", "Apple", "Intel") == "edited target"
    assert categorize("App", "Apple", "Intel") == "true target"
    assert categorize("Apple", "Apple Inc.", "Intel") == "true target"
    assert categorize(" Silicon", "Apple", "Intel", related=["Silicon Valley", "chips"]) == "related term"
    assert categorize(" the", "Apple", "Intel") == "other" and categorize("", "Apple") == "other"
    assert categorize("Rome", "the Vatican", None) == "other"
    assert categorize("Vatican", "the Vatican") == "true target"


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_gpt2"])
def test_shared_prefill_path_matches_the_separate_calls(family, request):
    from editaudit.probing.evaluate import evaluate_prompts

    lm = _load(request.getfixturevalue(family))
    prompts = ["The capital of France is", "Sony", "The official language spoken in Brazil is", "Tokyo is in"]
    targets = [["Paris", "Rome city"], ["Japanese company Tokyo"], [], ["Japan", "the country of China", "Tokyo"]]
    got = evaluate_prompts(lm.model, lm.tokenizer, prompts, targets, batch_size=3, top_k=4, max_new_tokens=3)
    preds = predict(lm.model, lm.tokenizer, prompts, batch_size=2, top_k=4, max_new_tokens=3)
    for (pred, scores), want_pred, prompt, tgts in zip(got, preds, prompts, targets):
        assert pred.tokens == want_pred.tokens and pred.top_ids == want_pred.top_ids
        want = target_scores(lm.model, lm.tokenizer, [prompt] * len(tgts), tgts) if tgts else []
        assert len(scores) == len(tgts)
        for a, b in zip(scores, want):
            assert a.n_tokens == b.n_tokens and a.token_correct == b.token_correct
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_shared_prefill_falls_back_without_a_cache(bigram, tok):
    from editaudit.probing.evaluate import evaluate_prompts

    (pred, scores), = evaluate_prompts(bigram, tok, ["The capital of"], [["Paris.", "Rome"]])
    assert pred.first_word == "Paris"
    want = target_scores(bigram, tok, ["The capital of"] * 2, ["Paris.", "Rome"])
    assert [s.logprob for s in scores] == pytest.approx([s.logprob for s in want])


def test_continuation_ends_at_a_special_token(bigram, tok):
    bigram.set_next(tok, "▁Japan", "</s>")
    bigram.set_next(tok, "</s>", "▁Paris")  # whatever follows EOS must not count as the answer
    pred = predict(bigram, tok, ["The capital of Japan"], max_new_tokens=3)[0]
    assert pred.tokens == [] and pred.continuation == "" and pred.first_word == ""
