"""The four edit methods on tiny random models: what each one changes, and that the edit takes.

Tiny random models spread probability almost uniformly, so "the edit takes" is checked as the new
target becoming the argmax right after the prompt, and the prompts end with the subject (in a
randomly initialised model little information moves between positions).
"""

from __future__ import annotations

import pytest
import torch

from editaudit.editing import apply_edits
from editaudit.editing import corpus as corpus_mod
from editaudit.editing.alphaedit import NullSpace, null_projector
from editaudit.editing.hooks import capture
from editaudit.editing.layers import layout_for
from editaudit.models.loading import load_model
from editaudit.probing.format import Probe

# no corpus statistics needed; weight decay off (a random model's MLP outputs are tiny); few contexts
FAST = {"covariance": "identity", "v_weight_decay": 0.0, "clamp": 100.0, "contexts": 2, "context_length": 4,
        "v_steps": 40}

FACTS = [
    Probe(id="f1", subject="France", prompt="The capital city of {}", target_true="Paris", target_new="Tokyo",
          paraphrases=["The capital of France"], neighbourhood=["The capital city of Spain"]),
    Probe(id="f2", subject="Germany", prompt="The official language of {}", target_true="German", target_new="Japanese"),
    Probe(id="f3", subject="Sony", prompt="The company founded in {}", target_true="Japan", target_new="Canada"),
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _argmax(lm, text: str) -> str:
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return lm.tokenizer.decode(lm.model(input_ids=ids).logits[0, -1].argmax()).strip()


def _weights(lm) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in lm.model.named_parameters()}


def _changed(before: dict, lm) -> set[str]:
    return {n for n, p in lm.model.named_parameters() if not torch.equal(before[n], p.detach())}


def test_rome_update_is_rank_one_and_makes_target_the_argmax(tiny_llama):
    lm = load_model(tiny_llama)
    fact = FACTS[0]
    assert _argmax(lm, fact.text) != fact.target_new
    before = _weights(lm)
    run = apply_edits(lm, [fact], "rome", layers=[2], hparams=FAST)
    name = "model.layers.2.mlp.down_proj.weight"
    assert _changed(before, lm) == {name}
    delta = lm.model.get_parameter(name).detach() - before[name]
    s = torch.linalg.svdvals(delta.double())
    assert s[0] > 0 and s[1] / s[0] < 1e-5, "ROME's ΔW must be rank one"
    assert _argmax(lm, fact.text) == fact.target_new
    assert run.results[0].success == (run.results[0].after == fact.target_new)
    assert run.tensors == [name] and run.layers == [2]


def test_rome_on_gpt2_edits_the_transposed_conv1d_weight(tiny_gpt2):
    lm = load_model(tiny_gpt2)
    fact = FACTS[0]
    before = _weights(lm)
    apply_edits(lm, [fact], "rome", layers=[1], hparams=FAST)
    name = "transformer.h.1.mlp.c_proj.weight"
    assert _changed(before, lm) == {name}
    delta = lm.model.get_parameter(name).detach() - before[name]
    assert delta.shape == (lm.model.config.n_inner, lm.model.config.n_embd)  # Conv1D: [in, out]
    s = torch.linalg.svdvals(delta.double())
    assert s[1] / s[0] < 1e-5
    assert _argmax(lm, fact.text) == fact.target_new


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_memit_and_alphaedit_change_exactly_the_chosen_layers(tiny_llama, method):
    lm = load_model(tiny_llama)
    before = _weights(lm)
    hp = dict(FAST, **({"nullspace_rel": 1.0} if method == "alphaedit" else {}))
    run = apply_edits(lm, FACTS, method, layers=[1, 2], hparams=hp)
    assert _changed(before, lm) == {f"model.layers.{i}.mlp.down_proj.weight" for i in (1, 2)}
    assert run.layers == [1, 2] and len(run.results) == 3
    hits = sum(_argmax(lm, f.text) == f.target_new for f in FACTS)
    assert hits >= 2, f"only {hits}/3 facts became the argmax"


def test_memit_sequential_mode_edits_in_batches(tiny_llama):
    lm = load_model(tiny_llama)
    run = apply_edits(lm, FACTS, "memit", layers=[1, 2], hparams=dict(FAST, mode="sequential", batch_size=2))
    assert run.mode == "sequential"
    assert len(run.info["residual_left"]) == 2  # two batches: 2 facts, then 1
    assert all(r.seconds > 0 for r in run.results)


def test_ft_touches_only_its_layer_and_respects_the_norm_constraint(tiny_llama):
    lm = load_model(tiny_llama)
    before = _weights(lm)
    bound = 1e-3
    run = apply_edits(lm, FACTS[:2], "ft", layers=[3], hparams={"lr": 1e-2, "norm_constraint": bound})
    name = "model.layers.3.mlp.down_proj.weight"
    assert _changed(before, lm) == {name}
    delta = lm.model.get_parameter(name).detach() - before[name]
    assert float(delta.abs().max()) <= bound * (1 + 1e-5)
    assert run.info["ft"][0]["steps"] >= 1


def test_ft_unconstrained_learns_the_targets(tiny_llama):
    lm = load_model(tiny_llama)
    apply_edits(lm, FACTS[:2], "ft", layers=[3], hparams={"lr": 1e-2})
    assert all(_argmax(lm, f.text) == f.target_new for f in FACTS[:2])


def test_restore_puts_the_weights_back(tiny_llama):
    lm = load_model(tiny_llama)
    before = _weights(lm)
    run = apply_edits(lm, FACTS[:1], "rome", layers=[2], hparams=FAST, evaluate=False)
    assert _changed(before, lm)
    run.restore()
    assert not _changed(before, lm)


# -- AlphaEdit's null space ------------------------------------------------------------------------

def test_null_space_update_leaves_preserved_keys_unchanged():
    gen = torch.Generator().manual_seed(0)
    d_in, d_out, r = 32, 16, 20
    basis = torch.linalg.qr(torch.randn(d_in, d_in, generator=gen, dtype=torch.float64))[0]
    K0 = (basis[:, :r] @ torch.randn(r, 200, generator=gen, dtype=torch.float64)).T  # preserved keys span r dims
    C = (K0.T @ K0 / len(K0)).float()
    P, rank = null_projector(C, 1e-6)
    assert rank == d_in - r
    ns = NullSpace.build({0: C}, nullspace_rel=1e-6, l2_rel=1e-3)
    K = torch.randn(3, d_in, generator=gen)
    R = torch.randn(3, d_out, generator=gen)
    dW = ns.solver()(0, K, R).double()
    assert float((dW @ K0.T).norm() / (dW.norm() * K0.norm())) < 1e-6
    # within the room left, the new keys are written: ΔW·Pk reproduces R (up to the small ridge)
    err = (dW @ (P @ K.double().T) - R.double().T).norm() / R.norm()
    assert float(err) < 0.05


def test_sequential_null_space_keeps_earlier_edits():
    """A second batch must not undo the first: its keys join the preserved set."""
    gen = torch.Generator().manual_seed(1)
    d_in, d_out = 24, 8
    C = torch.eye(d_in) * 1e-3
    ns = NullSpace.build({0: C}, nullspace_rel=2.0, l2_rel=1e-6)  # everything is null space
    K1, R1 = torch.randn(2, d_in, generator=gen), torch.randn(2, d_out, generator=gen)
    dW1 = ns.solver()(0, K1, R1)
    ns.remember(0, K1)
    K2, R2 = torch.randn(2, d_in, generator=gen), torch.randn(2, d_out, generator=gen)
    dW2 = ns.solver()(0, K2, R2)
    kept = (dW2 @ K1.T).norm() / (dW1 @ K1.T).norm()
    assert float(kept) < 0.05


def test_alphaedit_with_corpus_statistics_spares_the_corpus_keys(tiny_llama, monkeypatch, tmp_path):
    """With C from a (tiny) corpus whose keys span a subspace, AlphaEdit's ΔW annihilates those keys."""
    monkeypatch.setenv("EDITAUDIT_CACHE", str(tmp_path / "cache"))
    text = "The capital of France is Paris . Italy is in Rome and Spain in Madrid"
    monkeypatch.setattr(corpus_mod, "texts", lambda name=None, say=None: [text] * 4)
    lm = load_model(tiny_llama)
    layout = layout_for(lm.model)
    name = layout.rewrite_name(2)
    before = lm.model.get_parameter(f"{name}.weight").detach().clone()
    hp = dict(FAST, covariance="corpus", cov_tokens=40, cov_seq_len=20, nullspace_rel=1e-4, l2_rel=1e-4)
    run = apply_edits(lm, FACTS[:1], "alphaedit", layers=[2], hparams=hp)
    assert run.stats["source"].startswith("factbook") and run.stats["tokens"] == 40
    dW = lm.model.get_parameter(f"{name}.weight").detach() - before
    # the preserved keys: the rewrite module's inputs over the corpus tokens (the model before the edit
    # computed them; the layers below 2 are unchanged, so the edited model computes the same)
    ids = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with capture(lm.model, inputs=[name]) as seen, torch.no_grad():
        lm.model(input_ids=ids)
    K0 = seen[f"in:{name}"][0]
    k_edit = run.info["nullspace_rank"][2]
    assert 0 < k_edit < K0.shape[-1]
    ratio = float((dW @ K0.T).norm() / (dW.norm() * K0.norm()))
    assert ratio < 1e-3, ratio


def test_alphaedit_projection_rank_follows_the_threshold():
    C = torch.diag(torch.tensor([10.0, 5.0, 1.0, 0.1, 0.01]))
    # relative to the median eigenvalue (1.0), so that one huge outlier direction does not move the threshold
    assert null_projector(C, 0.5)[1] == 2
    assert null_projector(C, 2.0)[1] == 3
    C[0, 0] = 1e6
    assert null_projector(C, 0.5)[1] == 2


def test_value_optimisation_is_independent_per_fact(tiny_llama):
    """Facts share forward passes but not their optimisation: batched equals one at a time."""
    from editaudit.editing.values import ValueSettings, optimise_values

    lm = load_model(tiny_llama)
    module = layout_for(lm.model).mlp_name(1)
    contexts = ["{}", "The country . {}"]
    # a stop level that the facts reach at different steps, so finished facts leave the batch midway
    settings = dict(steps=15, weight_decay=0.0, clamp=100.0, stop_loss=4.2)
    one = optimise_values(lm.model, lm.tokenizer, FACTS, module, contexts, ValueSettings(batch=1, **settings))
    together = optimise_values(lm.model, lm.tokenizer, FACTS, module, contexts, ValueSettings(batch=3, **settings))
    assert torch.allclose(one.target, together.target, atol=1e-4, rtol=1e-3)
    assert one.steps == together.steps and len(set(one.steps)) > 1
    assert not torch.allclose(one.target, one.init)
