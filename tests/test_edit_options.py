"""Two editing options of the persistence study: AlphaEdit's absolute null-space threshold (the paper's
rule) and paraphrase-augmented edits (Wen & Zhang's remedy), on toy matrices and tiny random models."""

from __future__ import annotations

import pytest
import torch

from editaudit.editing import apply_edits
from editaudit.editing import corpus as corpus_mod
from editaudit.editing import covariance
from editaudit.editing import ft as ft_mod
from editaudit.editing import values as values_mod
from editaudit.editing.alphaedit import NullSpace, null_projector
from editaudit.editing.hparams import DEFAULTS, parse_assignments, resolve
from editaudit.editing.layers import layout_for
from editaudit.editing.prompts import encode
from editaudit.editing.rome import compute_update
from editaudit.editing.values import ValueSettings, optimise_values, paraphrase_prompts, value_prompts
from editaudit.errors import BadInput
from editaudit.models.loading import load_model
from editaudit.probing.format import Probe

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"covariance": "identity", "v_weight_decay": 0.0, "clamp": 100.0, "contexts": 2, "context_length": 4,
        "v_steps": 40}

PARA = "France 's capital city"            # names the subject: usable by the value optimisation
PARA_NO_SUBJECT = "The capital city of the country"   # does not: only FT-L can train on it
FACTS = [
    Probe(id="f1", subject="France", prompt="The capital city of {}", target_true="Paris", target_new="Tokyo",
          paraphrases=[PARA, PARA_NO_SUBJECT], neighbourhood=["The capital city of Spain"]),
    Probe(id="f2", subject="Germany", prompt="The official language of {}", target_true="German", target_new="Japanese",
          paraphrases=["Germany 's official language"]),
    Probe(id="f3", subject="Sony", prompt="The company founded in {}", target_true="Japan", target_new="Canada"),
]


def _argmax(lm, text: str) -> str:
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return lm.tokenizer.decode(lm.model(input_ids=ids).logits[0, -1].argmax()).strip()


def _toy_C(evals: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """C = Q diag(evals) Qᵀ in a random basis (so that no test passes by reading the diagonal)."""
    gen = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(len(evals), len(evals), generator=gen, dtype=torch.float64))[0]
    return Q @ torch.diag(torch.tensor(evals, dtype=torch.float64)) @ Q.T, Q


# -- AlphaEdit's absolute threshold ------------------------------------------------------------------

def test_absolute_threshold_keeps_exactly_the_eigen_directions_below_it():
    evals = [1e-4, 5e-3, 1.5e-2, 3e-2, 1.0, 50.0]
    C, Q = _toy_C(evals)
    for level in (1e-2, 2e-2, 0.5, 100.0, 1e-5):
        P, rank = null_projector(C, 0.5, level)
        below = sum(e < level for e in evals)
        assert rank == below, (level, rank)
        # P is the orthogonal projector onto those eigenvectors, and nothing else
        assert torch.allclose(P @ Q[:, :below], Q[:, :below], atol=1e-9)
        assert torch.allclose(P @ Q[:, below:], torch.zeros_like(Q[:, below:]), atol=1e-9)
    # the absolute rule ignores nullspace_rel; the relative rule (median 1.5e-2 here) gives other ranks
    assert null_projector(C, 1000.0, 2e-2)[1] == 3
    assert null_projector(C, 0.5)[1] == 2 and null_projector(C, 0.5, 2e-2)[1] == 3
    # an outlier direction moves neither rule's rank for these directions
    C2, _ = _toy_C([1e-4, 5e-3, 1.5e-2, 3e-2, 1.0, 5e6])
    assert null_projector(C2, 0.5, 2e-2)[1] == 3


def test_null_space_build_uses_the_absolute_threshold_and_reports_the_spectrum():
    C, _ = _toy_C([1e-4, 5e-3, 1.5e-2, 3e-2, 1.0, 50.0], seed=3)
    ns = NullSpace.build({4: C.float()}, nullspace_rel=0.5, l2_rel=1e-3, nullspace_abs=2e-2)
    assert ns.rank == {4: 3}
    assert ns.spectrum[4]["min"] == pytest.approx(1e-4, abs=1e-5)   # float32 C
    assert ns.spectrum[4]["max"] == pytest.approx(50.0, rel=1e-5)
    assert NullSpace.build({4: C.float()}, nullspace_rel=0.5, l2_rel=1e-3).rank == {4: 2}


def test_isotropic_C_is_all_null_space_under_either_rule():
    C = torch.eye(8) * 3.0
    assert null_projector(C, 0.5, 1e-2)[1] == 8
    assert null_projector(C, 0.5)[1] == 8


@pytest.mark.parametrize("overrides, match", [
    ({"nullspace_abs": 0}, "positive"),
    ({"nullspace_abs": -0.01}, "positive"),
    ({"nullspace_abs": float("nan")}, "positive"),
    ({"nullspace_abs": float("inf")}, "positive"),
    ({"nullspace_abs": "small"}, "must be float"),
    ({"nullspace_abs": True}, "must be float"),
    ({"nullspace_abs": 0.02, "nullspace_rel": 0.5}, "not both"),
])
def test_nullspace_abs_is_checked(overrides, match):
    with pytest.raises(BadInput, match=match):
        resolve("alphaedit", overrides)


def test_nullspace_abs_resolves_and_parses_like_the_other_hparams():
    assert resolve("alphaedit")["nullspace_abs"] is None
    hp = resolve("alphaedit", parse_assignments(["nullspace_abs=1e-2"]))
    assert hp["nullspace_abs"] == 0.01 and hp["nullspace_rel"] == DEFAULTS["alphaedit"]["nullspace_rel"]
    assert resolve("alphaedit", {"nullspace_abs": 1})["nullspace_abs"] == 1.0
    assert resolve("alphaedit", {"nullspace_abs": None})["nullspace_abs"] is None
    assert resolve("alphaedit", {"nullspace_rel": 0.3})["nullspace_rel"] == 0.3   # alone, still fine
    with pytest.raises(BadInput, match="no hyper-parameter 'nullspace_abs'"):
        resolve("memit", {"nullspace_abs": 0.01})


def test_study_config_accepts_and_checks_the_new_hparams():
    from editaudit.study.config import ConfigError, parse_config

    def doc(hp: dict) -> dict:
        return {"study": {"name": "opts"}, "edit": {"hparams": hp},
                "grid": [{"edit_methods": ["alphaedit"], "tasks": ["lm"], "seeds": [0]}]}

    cfg = parse_config(doc({"alphaedit": {"nullspace_abs": 0.02, "augment_paraphrases": True},
                            "rome": {"augment_paraphrases": True}}))
    assert cfg.edit.hparams["alphaedit"]["nullspace_abs"] == 0.02
    with pytest.raises(ConfigError, match="nullspace_abs must be a positive number"):
        parse_config(doc({"alphaedit": {"nullspace_abs": -1.0}}))
    with pytest.raises(ConfigError, match="augment_paraphrases' must be bool"):
        parse_config(doc({"memit": {"augment_paraphrases": "yes"}}))


def test_alphaedit_run_with_absolute_threshold_records_the_rank_it_gets(tiny_llama, monkeypatch, tmp_path):
    """End to end: the projector's rank in the report is the number of C's eigenvalues below nullspace_abs."""
    monkeypatch.setenv("EDITAUDIT_CACHE", str(tmp_path / "cache"))
    text = "The capital of France is Paris . Italy is in Rome and Spain in Madrid"
    monkeypatch.setattr(corpus_mod, "texts", lambda name=None, say=None: [text] * 4)
    lm = load_model(tiny_llama)
    name = layout_for(lm.model).rewrite_name(2)
    # C as the run will see it (the same cache entry: same weights, corpus and token budget)
    C = covariance.second_moments(lm.model, lm.tokenizer, {2: name}, model_key=covariance.weights_key(lm.model),
                                  tokens=40, seq_len=20)[2].matrix
    evals = torch.linalg.eigvalsh(C.double())
    level = float((evals[-20] + evals[-19]) / 2)       # between two of the non-zero eigenvalues
    expected = int((evals < level).sum())
    relative = null_projector(C, DEFAULTS["alphaedit"]["nullspace_rel"])[1]
    assert expected == len(evals) - 19 and expected != relative   # the test tells the two rules apart

    hp = dict(FAST, covariance="corpus", cov_tokens=40, cov_seq_len=20, nullspace_abs=level, l2_rel=1e-4)
    run = apply_edits(lm, FACTS[:1], "alphaedit", layers=[2], hparams=hp, evaluate=False)
    assert run.info["nullspace_rank"] == {2: expected}
    info = run.info["nullspace"]
    assert info["rule"] == "absolute" and info["threshold"] == level and info["dim"] == {2: len(evals)}
    assert info["spectrum"][2]["max"] == pytest.approx(float(evals[-1]), rel=1e-6)
    run.restore()
    default = apply_edits(lm, FACTS[:1], "alphaedit", layers=[2],
                          hparams=dict(hp, nullspace_abs=None, l2_rel=1e-4), evaluate=False)
    assert default.info["nullspace"]["rule"] == "relative" and default.info["nullspace_rank"] == {2: relative}


# -- paraphrase-augmented edits ----------------------------------------------------------------------

def test_value_prompts_add_the_paraphrases_that_name_the_subject():
    contexts = ["{}", "The country . {}"]
    plain = value_prompts(FACTS[0], contexts)
    assert [p.text for p in plain] == ["The capital city of France", "The country . The capital city of France"]
    assert value_prompts(FACTS[0], contexts, augment_paraphrases=False) == plain
    aug = value_prompts(FACTS[0], contexts, augment_paraphrases=True)
    assert aug[: len(plain)] == plain                                  # the edit prompt still comes first
    assert [p.text for p in aug[len(plain):]] == [PARA]                # the subject-less one cannot be used
    assert PARA[: aug[-1].subject_end] == "France"
    assert value_prompts(FACTS[2], contexts, augment_paraphrases=True) == value_prompts(FACTS[2], contexts)
    assert len(paraphrase_prompts(FACTS[1])) == 1


def _rows_seen(monkeypatch, module) -> list[torch.Tensor]:
    """Spy on the forward passes of the value (or FT) loss: the token rows of each call."""
    seen: list[torch.Tensor] = []
    real = module._head_logits

    def spy(model, ids, mask, rows, cols):
        seen.append(ids[mask.bool().any(-1)].clone())
        return real(model, ids, mask, rows, cols)

    monkeypatch.setattr(module, "_head_logits", spy)
    return seen


def _has_prefix(rows: torch.Tensor, prefix: list[int]) -> bool:
    p = torch.tensor(prefix)
    return any(len(r) >= len(p) and torch.equal(r[: len(p)], p) for r in rows)


def test_value_optimisation_averages_over_the_paraphrases_when_asked(tiny_llama, monkeypatch):
    lm = load_model(tiny_llama)
    module = layout_for(lm.model).mlp_name(2)
    contexts = ["{}", "The country . {}"]
    para_ids = encode(lm.tokenizer, PARA)
    settings = dict(steps=3, weight_decay=0.0, clamp=100.0, stop_loss=0.0)

    seen = _rows_seen(monkeypatch, values_mod)
    off = optimise_values(lm.model, lm.tokenizer, FACTS[:1], module, contexts, ValueSettings(**settings))
    first_off = seen[1]          # seen[0] is the unpatched KL reference pass; seen[1] the first step
    seen.clear()
    on = optimise_values(lm.model, lm.tokenizer, FACTS[:1], module, contexts,
                         ValueSettings(augment_paraphrases=True, **settings))
    first_on = seen[1]
    # rows: the prompt in each context + the KL prompt, and with augmentation one more, the paraphrase
    assert len(first_off) == len(contexts) + 1 and len(first_on) == len(contexts) + 2
    assert not _has_prefix(first_off, para_ids) and _has_prefix(first_on, para_ids)
    # the initial value is still read at the fact's own prompt; the optimised value differs
    assert torch.allclose(off.init, on.init)
    assert not torch.allclose(off.target, on.target)


def test_value_loss_weights_average_over_all_prompts(tiny_llama, monkeypatch):
    """With δ = 0 the first step's NLL is the plain mean of the per-prompt NLLs, paraphrase included."""
    lm = load_model(tiny_llama)
    module = layout_for(lm.model).mlp_name(2)
    contexts = ["{}"]
    nll: dict[str, float] = {}

    def record(step, d):
        if step == 0:
            nll["first"] = d["nll"][0]

    s = ValueSettings(steps=1, weight_decay=0.0, clamp=100.0, augment_paraphrases=True, on_step=record)
    optimise_values(lm.model, lm.tokenizer, FACTS[:1], module, contexts, s)

    def prompt_nll(text: str) -> float:
        from editaudit.probing.evaluate import target_token_ids

        _, t = target_token_ids(lm.tokenizer, [FACTS[0].text], [FACTS[0].target_new])
        p = encode(lm.tokenizer, text)
        ids = torch.tensor([p + t[0]])
        with torch.no_grad():
            lp = torch.log_softmax(lm.model(input_ids=ids).logits[0].float(), -1)
        return float(-sum(lp[len(p) - 1 + j, tok] for j, tok in enumerate(t[0])) / len(t[0]))

    expected = (prompt_nll(FACTS[0].text) + prompt_nll(PARA)) / 2
    assert nll["first"] == pytest.approx(expected, rel=1e-4)


def test_rome_augmented_keeps_the_key_and_changes_the_value(tiny_llama):
    lm = load_model(tiny_llama)
    layout = layout_for(lm.model)
    contexts = ["{}", "The country . {}"]
    plain = compute_update(lm.model, lm.tokenizer, layout, FACTS[0], 2, None, contexts, resolve("rome", FAST))
    aug = compute_update(lm.model, lm.tokenizer, layout, FACTS[0], 2, None, contexts,
                         resolve("rome", dict(FAST, augment_paraphrases=True)))
    assert torch.equal(plain.left, aug.left)             # u = C⁻¹k*: the key is the edit prompt's, unchanged
    assert not torch.allclose(plain.right, aug.right)


def test_rome_augmented_edit_succeeds_and_says_paraphrases_are_not_held_out(tiny_llama, monkeypatch):
    lm = load_model(tiny_llama)
    calls: list[bool] = []
    real = values_mod.value_prompts

    def spy(fact, contexts, augment_paraphrases=False):
        calls.append(augment_paraphrases)
        return real(fact, contexts, augment_paraphrases)

    monkeypatch.setattr(values_mod, "value_prompts", spy)
    notes: list[str] = []
    run = apply_edits(lm, FACTS[:1], "rome", layers=[2], hparams=dict(FAST, augment_paraphrases=True), say=notes.append)
    assert calls and all(calls)
    assert _argmax(lm, FACTS[0].text) == FACTS[0].target_new and run.results[0].success
    doc = run.to_dict()
    assert doc["augmented"] is True and doc["hparams"]["augment_paraphrases"] is True
    assert doc["info"]["augmented"] == {"paraphrases_used": {"f1": 1}, "paraphrases_held_out": False}
    assert "updates" in doc["info"]                      # ROME's own report is still there
    assert any("not held out" in n for n in notes)


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_memit_and_alphaedit_augmented_edits_take(tiny_llama, monkeypatch, method):
    lm = load_model(tiny_llama)
    para_ids = encode(lm.tokenizer, PARA)
    seen = _rows_seen(monkeypatch, values_mod)
    hp = dict(FAST, augment_paraphrases=True, **({"nullspace_rel": 1.0} if method == "alphaedit" else {}))
    run = apply_edits(lm, FACTS, method, layers=[1, 2], hparams=hp)
    assert _has_prefix(seen[1], para_ids)
    assert run.to_dict()["augmented"] is True
    assert run.info["augmented"]["paraphrases_used"] == {"f1": 1, "f2": 1, "f3": 0}
    hits = sum(_argmax(lm, f.text) == f.target_new for f in FACTS)
    assert hits >= 2, f"only {hits}/3 facts became the argmax"


def test_ft_augmented_trains_on_every_paraphrase(tiny_llama, monkeypatch):
    assert ft_mod.training_prompts(FACTS[0]) == ["The capital city of France"]
    assert ft_mod.training_prompts(FACTS[0], True) == ["The capital city of France", PARA, PARA_NO_SUBJECT]
    lm = load_model(tiny_llama)
    seen = _rows_seen(monkeypatch, ft_mod)
    run = apply_edits(lm, FACTS[:2], "ft", layers=[3], hparams={"lr": 1e-2, "steps": 2, "augment_paraphrases": True},
                      evaluate=False)
    assert len(seen[0]) == 2 + 3                          # two prompts + three paraphrases
    assert _has_prefix(seen[0], encode(lm.tokenizer, PARA_NO_SUBJECT))
    assert run.info["augmented"]["paraphrases_used"] == {"f1": 2, "f2": 1}
    seen.clear()
    run.restore()
    apply_edits(lm, FACTS[:2], "ft", layers=[3], hparams={"lr": 1e-2, "steps": 2}, evaluate=False)
    assert len(seen[0]) == 2


def test_options_are_off_by_default(tiny_llama, monkeypatch):
    for method in ("ft", "rome", "memit", "alphaedit"):
        assert resolve(method)["augment_paraphrases"] is False
    for method in ("mend", "malmen"):
        with pytest.raises(BadInput, match="no hyper-parameter 'augment_paraphrases'"):
            resolve(method, {"augment_paraphrases": True})
    assert ValueSettings().augment_paraphrases is False
    lm = load_model(tiny_llama)
    para_ids = encode(lm.tokenizer, PARA)
    seen = _rows_seen(monkeypatch, values_mod)
    run = apply_edits(lm, FACTS[:1], "memit", layers=[1, 2], hparams=FAST, evaluate=False)
    assert not any(_has_prefix(rows, para_ids) for rows in seen)
    assert run.to_dict()["augmented"] is False and "augmented" not in run.info


def test_consistent_keys_write_v_star_at_the_averaged_key(tiny_llama):
    """r-ROME: with k* in the denominator and v₀ = W k*, the edited matrix maps k* to v*; the original form maps the
    own-prompt key there instead (and its size depends on uᵀk, which is what makes disabling edits)."""
    from editaudit.editing import reads
    from editaudit.editing.hooks import weight_out_in

    lm = load_model(tiny_llama)
    layout = layout_for(lm.model)
    contexts = ["{}", "The country . {}"]
    name = layout.rewrite_name(2)
    W = weight_out_in(lm.model.get_submodule(name)).detach().float().clone()
    k_star = reads.keys(lm.model, lm.tokenizer, [FACTS[0]], name, contexts)[0]
    k_own = reads.plain(lm.model, lm.tokenizer, [FACTS[0]], name, "in")[0]
    assert not torch.allclose(k_star, k_own)  # the two forms differ only where the keys do
    r = compute_update(lm.model, lm.tokenizer, layout, FACTS[0], 2, None, contexts,
                       resolve("rome", dict(FAST, consistent_keys=True)))
    o = compute_update(lm.model, lm.tokenizer, layout, FACTS[0], 2, None, contexts, resolve("rome", FAST))
    v_star = o.right * torch.dot(o.left, k_own) + reads.plain(lm.model, lm.tokenizer, [FACTS[0]], name, "out")[0]
    torch.testing.assert_close((W + r.delta) @ k_star, v_star, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close((W + o.delta) @ k_own, v_star, rtol=1e-4, atol=1e-4)


def test_a_disabling_rome_edit_is_named(tiny_llama, monkeypatch):
    """An update far larger than ordinary ones, relative to its matrix, is reported (the model usually collapses)."""
    from editaudit.editing import rome as rome_mod
    from editaudit.editing import service

    lm = load_model(tiny_llama)
    run = apply_edits(lm, [FACTS[0]], "rome", layers=[2], hparams=FAST, evaluate=False)
    share = run.info["updates"][0]["relative_norm"]
    run.restore()
    monkeypatch.setattr(service, "DISABLING_SHARE", 2 * share)  # a tiny random model's ordinary scale
    run = apply_edits(lm, [FACTS[0]], "rome", layers=[2], hparams=FAST, evaluate=False)
    assert run.info["disabling"] == []
    run.restore()
    real = rome_mod.compute_update

    def huge(*a, **k):
        upd = real(*a, **k)
        return rome_mod.RomeUpdate(upd.delta * 10, upd.left, upd.right * 10, upd.target_prob, upd.steps)

    monkeypatch.setattr(rome_mod, "compute_update", huge)
    said: list[str] = []
    run = apply_edits(lm, [FACTS[0]], "rome", layers=[2], hparams=FAST, evaluate=False, say=said.append)
    assert run.info["disabling"] == ["f1"] and any("disabling edit" in s for s in said)
    run.restore()


def test_edit_table_fits_an_80_column_terminal(monkeypatch):
    """The result table in an 80-column terminal: every column whole (the right border drawn), subjects unbroken."""
    from rich.console import Console

    from editaudit.cli import common, edit_cmd

    console = Console(width=80, record=True, highlight=False)
    monkeypatch.setattr(common, "out", console)
    rows = [dict(prompt=f"{s} is located in the country of", subject=s, target_true=t, target_new=n, before=t, after=n,
                 success=True, paraphrase_success=0.5, neighbourhood_unchanged=1.0, seconds=44.5)
            for s, t, n in [("Stonehenge", "England", "Peru"), ("Angkor Wat", "Cambodia", "Mexico")]]
    doc = dict(method="rome", mode="sequential", layers=[4], results=rows, stats={}, out=None, tensors=[],
               summary=dict(facts=2, success=1.0, paraphrase=0.5, neighbourhood=1.0, seconds_per_fact=44.5))
    edit_cmd.render(doc)
    lines = console.export_text().splitlines()
    table = [line for line in lines if line[:1] in "┏┃┡│└"]
    assert table and all(len(line) <= 80 and line.rstrip()[-1] in "┓┃┩│┘" for line in table)
    assert any("Stonehenge" in line for line in table) and any("Angkor Wat" in line for line in table)
    assert any("44.5" in line for line in table)
