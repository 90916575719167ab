"""The training-free, base-free erase (mitigation/project.py): the algebra, planted edits on tiny models,
the scan's readings as its input, and ``mitigate --method project`` end to end."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from editaudit.editing import apply_edits, covariance, reads
from editaudit.editing.layers import layout_for
from editaudit.errors import BadInput
from editaudit.mitigation.evidence import edit_readings, evidence_from_report
from editaudit.mitigation.project import (EraseSubject, erase_by_projection, low_half_sweep, solve_layer,
                                          targets_from_readings, targets_from_records)
from editaudit.models.loading import load_model
from editaudit.probing.format import Probe
from editaudit.testing import make_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

FACTS = [
    Probe(id="f1", subject="France", prompt="The capital city of {}", target_true="Paris", target_new="Tokyo"),
    Probe(id="f2", subject="Germany", prompt="The official language of {}", target_true="German",
          target_new="Japanese"),
    Probe(id="f3", subject="Sony", prompt="The company founded in {}", target_true="Japan", target_new="Canada"),
]
OTHER = ["Italy", "Spain", "Japan", "Microsoft", "Toyota", "Egypt"]
# corpus key statistics (a small random-word corpus), ROME's defaults otherwise except a random model's needs
STATS = {"covariance": "corpus", "cov_tokens": 3000, "cov_seq_len": 60}
HP = {**STATS, "v_weight_decay": 0.0, "clamp": 100.0, "contexts": 2, "context_length": 4, "v_steps": 40}
# the projection erase's settings to match the editor's statistics and contexts. A tiny random model's
# generated contexts change with any edit (its sampling is near uniform), so the checkpoint-level tests
# edit with the fact's own prompt only (no generated context), as the erase then reads it
SETTINGS = {"cov_tokens": 3000, "cov_seq_len": 60, "contexts": 0}


def _cov(lm, layout):
    """C for a layer from the model as it is now (the service's way: lowest layers fixed first)."""
    def cov_for_layer(layer: int) -> torch.Tensor:
        return covariance.second_moments(lm.model, lm.tokenizer, {layer: layout.rewrite_name(layer)},
                                         model_key=covariance.weights_key(lm.model), tokens=3000,
                                         seq_len=60)[layer].matrix
    return cov_for_layer


def _left(base: torch.Tensor, suspect: torch.Tensor, after: torch.Tensor) -> float:
    """Share of the edit's own singular components still in (after − base): 1 intact, 0 gone."""
    u, s, vh = torch.linalg.svd((suspect - base).double(), full_matrices=False)
    k = int((s > 1e-5 * s[0]).sum())
    return float((u[:, :k].T @ (after - base).double() @ vh[:k].T).norm() / s[:k].norm())


# -- the algebra ------------------------------------------------------------------------------------------

def _problem(seed: int = 0, d_out: int = 12, d_in: int = 24, n: int = 3):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(d_in, 4 * d_in, generator=gen, dtype=torch.float64)
    C = A @ A.T / A.shape[1] + 0.05 * torch.eye(d_in, dtype=torch.float64)
    W_base = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64)
    K = torch.randn(n, d_in, generator=gen, dtype=torch.float64)
    return gen, C, W_base, K


def test_project_target_removes_sequential_rome_updates_exactly():
    gen, C, W_base, K = _problem()
    W = W_base.clone()
    for k in K:  # ROME, one fact at a time: ΔW = δ uᵀ with u ∝ C⁻¹k*
        u = torch.linalg.solve(C, k)
        W += torch.outer(5 * torch.randn(W.shape[0], generator=gen, dtype=torch.float64), u / u.norm())
    delta, B = solve_layer(W, K, C, "project")
    fixed = W + delta
    assert B.shape[1] == 3
    # W' = W_base (I − Q): the edit is gone, and the base is changed only along the n directions C⁻¹kᵢ
    Q = B @ B.T
    assert torch.allclose(fixed, W_base @ (torch.eye(W.shape[1], dtype=torch.float64) - Q), atol=1e-9)
    assert _left(W_base, W, fixed) < 1e-9 + float((W_base @ B).norm() / (W - W_base).norm())


def test_every_target_overwrites_a_memit_update_and_changes_only_its_rows():
    gen, C, W_base, K = _problem(1)
    R = torch.randn(W_base.shape[0], len(K), generator=gen, dtype=torch.float64)
    W = W_base + R @ K @ torch.linalg.inv(2.0 * C + K.T @ K)   # MEMIT: ΔW = R Kᵀ(λC + KKᵀ)⁻¹
    mean = torch.randn(W.shape[0], generator=gen, dtype=torch.float64)
    for target, want in (("mean", mean[:, None].expand(-1, len(K))), ("zero", torch.zeros(W.shape[0], len(K)))):
        delta, B = solve_layer(W, K, C, target, mean)
        fixed = W + delta
        assert torch.allclose(fixed @ K.T, want.to(torch.float64), atol=1e-8)      # the keys map to the target
        P = torch.eye(W.shape[1], dtype=torch.float64) - B @ B.T
        assert torch.allclose(delta @ P, torch.zeros_like(delta), atol=1e-9)     # only span(C⁻¹K) changed
        # what is left of the edit is only the target's distance from the base's own outputs
        assert torch.allclose((fixed - W_base) @ P, torch.zeros_like(delta), atol=1e-9)


def test_low_half_sweep_removes_an_edit_written_in_the_low_energy_half():
    """An AlphaEdit-like edit (input directions in C's small eigen-directions) on a W that, like a trained one,
    acts little there: the sweep takes the edit out and leaves W's action on the high-energy half untouched."""
    gen, C, W_base, _ = _problem(2, d_out=16, d_in=32)
    ev, Q = torch.linalg.eigh(C)
    low, high = Q[:, :16], Q[:, 16:]
    W_base = W_base @ high @ high.T + 0.01 * W_base @ low @ low.T
    edit = sum(torch.outer(3 * torch.randn(16, generator=gen, dtype=torch.float64),
                           low @ torch.randn(16, generator=gen, dtype=torch.float64)) for _ in range(2))
    W = W_base + edit
    fixed = W + low_half_sweep(W, C, 2)
    assert _left(W_base, W, fixed) < 0.01
    assert torch.allclose(fixed @ high, W @ high, atol=1e-9)          # the high-energy half is not touched
    assert torch.allclose(low_half_sweep(W, C, 0), torch.zeros_like(W))


def test_sweep_reach_takes_what_a_rome_edit_left_above_the_low_half():
    """ROME-like edits δuᵀ, u = C⁻¹k, of keys whose energy lies mostly but not wholly below C's top fifth: part of
    u's action on k sits above the median eigenvalue, which the low-half sweep leaves. With ``reach`` 0.8 the sweep
    removes its components' output over the lowest four fifths and takes that part too, while W's action on C's top
    fifth (where ordinary text's energy is) stays as it was; reach 0.5 is the low-half sweep itself."""
    gen, C, W_base, _ = _problem(4, d_out=16, d_in=40)
    ev, Q = torch.linalg.eigh(C)
    rest, top = Q[:, :32], Q[:, 32:]
    W_base = W_base @ top @ top.T + 0.01 * W_base @ rest @ rest.T       # trained: acts on the top fifth
    scale = torch.ones(40, dtype=torch.float64)
    scale[32:] = 0.05                                                   # rare keys: little energy on the top fifth
    K = (Q @ (ev.sqrt() * scale * torch.randn(2, 40, generator=gen, dtype=torch.float64)).T).T
    W = W_base.clone()
    for k in K:
        u = torch.linalg.solve(C, k)
        W += torch.outer(3 * torch.randn(16, generator=gen, dtype=torch.float64), u / (u @ k))

    def left(fixed: torch.Tensor) -> float:  # the edits' action left on their own keys
        return float(((fixed - W_base) @ K.T).norm() / ((W - W_base) @ K.T).norm())

    half = W + low_half_sweep(W, C, 2)
    reach = W + low_half_sweep(W, C, 2, reach=0.8)
    assert torch.allclose(low_half_sweep(W, C, 2, reach=0.5), half - W)
    assert left(half) > 0.2                      # the part above the median eigenvalue stays
    assert left(reach) < 0.05
    assert torch.allclose(reach @ top, W @ top, atol=1e-9)              # the top fifth is not touched
    assert torch.allclose(low_half_sweep(W, C, 2, space="null", reach=0.8), low_half_sweep(W, C, 2, space="null"))


def test_null_space_sweep_takes_the_edit_and_leaves_the_rest_of_the_low_half():
    """An AlphaEdit-like edit written only in C's null space (eigenvalues below half the median) on a W that acts
    on the whole low half: the null-space sweep takes the edit out and leaves W's own action outside the null
    space as it was, which the low-half sweep of the same rank does not."""
    from editaudit.mitigation.project import sweep_basis

    gen, C, W_base, _ = _problem(3, d_out=16, d_in=32)
    ev, Q = torch.linalg.eigh(C)
    null = sweep_basis(C, "null")
    assert 0 < null.shape[1] < 16 and torch.allclose(null, Q[:, ev < 0.5 * ev.median()])
    outside = torch.eye(32, dtype=torch.float64) - null @ null.T
    W_base = W_base @ outside + 0.01 * W_base @ null @ null.T         # trained: little action in the null space
    edit = sum(torch.outer(3 * torch.randn(16, generator=gen, dtype=torch.float64),
                           null @ torch.randn(null.shape[1], generator=gen, dtype=torch.float64)) for _ in range(2))
    W = W_base + edit
    fixed = W + low_half_sweep(W, C, 2, space="null")
    assert _left(W_base, W, fixed) < 0.01
    assert torch.allclose(fixed @ outside, W @ outside, atol=1e-9)    # nothing outside the null space moved
    swept_low = W + low_half_sweep(W, C, 2, space="low")
    assert float(((swept_low - W) @ outside).norm()) > 1e-3            # the low-half sweep reaches further
    with pytest.raises(BadInput, match="sweep_space"):
        low_half_sweep(W, C, 2, space="high")


# -- planted edits on tiny models ------------------------------------------------------------------------

def test_rome_edit_is_erased_from_the_suspect_alone(tiny_llama, word_corpus):
    lm = load_model(tiny_llama)
    layout = layout_for(lm.model)
    name = layout.rewrite_name(2)
    param = f"{name}.weight"
    fact = FACTS[0]
    run = apply_edits(lm, [fact], "rome", layers=[2], hparams=HP, evaluate=False)
    w_base, w_suspect = run.originals[param].clone(), lm.model.get_parameter(param).detach().clone()
    ctx = run.info["contexts"]
    k_star = reads.keys(lm.model, lm.tokenizer, [fact], name, ctx)[0].double()
    others = [Probe(id=o, subject=o, prompt="The capital city of {}", target_true="") for o in OTHER]
    K_other = reads.keys(lm.model, lm.tokenizer, others, name, ctx).double()

    res = erase_by_projection(lm.model, lm.tokenizer, {2: [EraseSubject(fact.subject, [fact.prompt])]},
                              _cov(lm, layout), contexts=ctx, answers=False, target="project")
    after = lm.model.get_parameter(param).detach().double()
    assert set(res.tensors) == {param} and torch.equal(res.tensors[param], after.float())
    # the edit's own direction is gone from the weights
    assert _left(w_base, w_suspect, after) < 0.02
    # the subject's key no longer carries the edit: its output is back near the base's
    edit_effect = float(((w_suspect.double() - w_base.double()) @ k_star).norm())
    assert float((after @ k_star - w_base.double() @ k_star).norm()) < 0.05 * edit_effect
    # unrelated subjects' keys: a random model's keys are alike, so this huge edit (clamp 100) spilled onto
    # them (10–50× their base output); the erase takes the spill away and leaves them near the base's
    wb, ws = w_base.double(), w_suspect.double()
    spill = (K_other @ (ws - wb).T).norm(dim=1)
    left = (K_other @ (after - wb).T).norm(dim=1)
    assert float((left / (K_other @ wb.T).norm(dim=1)).max()) < 0.35
    # (against the largest spill: at another transformers' initialisation one subject barely spills at all, and a
    # ratio to its own spill would divide by next to nothing)
    assert float(left.max() / spill.max()) < 0.02
    # the report: one layer, so key_mode auto reads context-averaged keys as ROME writes them — one for the
    # prompt, one for the subject alone — and the subject's gain stands far above W's typical gain
    assert res.key_mode == "mean" and res.layers[0].directions == 2 and res.subjects[0].keys == 2
    assert res.subjects[0].subject == "France" and res.subjects[0].gain > 5


def test_the_default_mean_target_maps_the_key_to_the_layers_mean_output(tiny_llama, word_corpus):
    from editaudit.mitigation.project import mean_output

    lm = load_model(tiny_llama)
    layout = layout_for(lm.model)
    name = layout.rewrite_name(2)
    param = f"{name}.weight"
    run = apply_edits(lm, [FACTS[0]], "rome", layers=[2], hparams=HP, evaluate=False)
    w_base, w_suspect = run.originals[param].clone(), lm.model.get_parameter(param).detach().clone()
    ctx = run.info["contexts"]
    k_star = reads.keys(lm.model, lm.tokenizer, [FACTS[0]], name, ctx)[0].double()
    m = mean_output(lm.model, lm.tokenizer, name, word_corpus).double()
    res = erase_by_projection(lm.model, lm.tokenizer, {2: [EraseSubject("France", [FACTS[0].prompt])]},
                              _cov(lm, layout), contexts=ctx, answers=False)
    after = lm.model.get_parameter(param).detach().double()
    assert res.target == "mean"
    assert torch.allclose(after @ k_star, m, atol=1e-4 * float(m.norm()) + 1e-6)
    assert _left(w_base, w_suspect, after) < 0.05


def test_subjects_that_were_not_edited_show_a_low_gain(tiny_llama, word_corpus):
    lm = load_model(tiny_llama)
    layout = layout_for(lm.model)
    run = apply_edits(lm, [FACTS[0]], "rome", layers=[2], hparams=HP, evaluate=False)
    subjects = [EraseSubject("France", [FACTS[0].prompt]), EraseSubject("Italy", ["The capital city of {}"])]
    res = erase_by_projection(lm.model, lm.tokenizer, {2: subjects}, _cov(lm, layout), contexts=run.info["contexts"],
                              answers=False)
    gain = {r.subject: r.gain for r in res.subjects}
    assert gain["France"] > 3 * gain["Italy"], gain
    assert res.layers[0].directions == 4


def test_memit_over_three_layers_is_erased_lowest_first(tiny_llama, word_corpus):
    lm = load_model(tiny_llama)
    layout = layout_for(lm.model)
    layers = [1, 2, 3]
    run = apply_edits(lm, FACTS, "memit", layers=layers, hparams=HP, evaluate=False)
    params = {l: f"{layout.rewrite_name(l)}.weight" for l in layers}
    base = {l: run.originals[p].clone() for l, p in params.items()}
    suspect = {l: lm.model.get_parameter(p).detach().clone() for l, p in params.items()}
    subjects = [EraseSubject(f.subject, [f.prompt]) for f in FACTS]
    res = erase_by_projection(lm.model, lm.tokenizer, {l: subjects for l in layers}, _cov(lm, layout),
                              contexts=run.info["contexts"], answers=False, key_mode="each")
    assert [r.layer for r in res.layers] == layers  # one key per context, as MEMIT writes them: all of the edit
    left = {l: _left(base[l], suspect[l], lm.model.get_parameter(p).detach()) for l, p in params.items()}
    assert max(left.values()) < 0.05, left
    # re-reading the keys after each lower fix misses the upper layers' edits: MEMIT wrote them for the keys
    # it saw with the layers below already edited, which are the suspect's keys
    for l, p in params.items():
        with torch.no_grad():
            lm.model.get_parameter(p).copy_(suspect[l])
    erase_by_projection(lm.model, lm.tokenizer, {l: subjects for l in layers}, _cov(lm, layout),
                        contexts=run.info["contexts"], answers=False, rekey=True, key_mode="each")
    left_rekey = _left(base[3], suspect[3], lm.model.get_parameter(params[3]).detach())
    assert left_rekey > 10 * left[3]


def test_gpt2_conv1d_weight_is_re_solved_in_its_own_orientation(tiny_gpt2, word_corpus):
    lm = load_model(tiny_gpt2)
    layout = layout_for(lm.model)
    param = f"{layout.rewrite_name(1)}.weight"
    run = apply_edits(lm, [FACTS[0]], "rome", layers=[1], hparams=HP, evaluate=False)
    w_base, w_suspect = run.originals[param].clone(), lm.model.get_parameter(param).detach().clone()
    res = erase_by_projection(lm.model, lm.tokenizer, {1: [EraseSubject("France", [FACTS[0].prompt])]},
                              _cov(lm, layout), contexts=run.info["contexts"], answers=False)
    after = lm.model.get_parameter(param).detach()
    assert res.tensors[param].shape == w_base.shape == (lm.model.config.n_inner, lm.model.config.n_embd)
    assert _left(w_base.T, w_suspect.T, after.T) < 0.02


def test_bad_inputs_are_refused(tiny_llama):
    lm = load_model(tiny_llama)
    eye = lambda layer: torch.eye(lm.model.config.intermediate_size)  # noqa: E731
    with pytest.raises(BadInput, match="no subjects"):
        erase_by_projection(lm.model, lm.tokenizer, {2: []}, eye)
    with pytest.raises(BadInput, match="does not contain its subject"):
        erase_by_projection(lm.model, lm.tokenizer, {2: [EraseSubject("France", ["The capital of Spain"])]}, eye)
    with pytest.raises(BadInput, match="out of range"):
        erase_by_projection(lm.model, lm.tokenizer, {17: ["France"]}, eye)
    with pytest.raises(BadInput, match="target"):
        erase_by_projection(lm.model, lm.tokenizer, {2: ["France"]}, eye, target="median")
    with pytest.raises(BadInput, match="do not fit"):
        erase_by_projection(lm.model, lm.tokenizer, {2: ["France"]}, lambda layer: torch.eye(5), contexts=["{}"])


# -- the scan's readings as input --------------------------------------------------------------------------

def _report(readings_where: str = "spread") -> dict:
    readings = [
        {"subject": "France", "prompt": "The capital city of France", "before": "Paris", "after": "Tokyo",
         "confidence": 0.9, "status": "edit", "layer": 2, "tensor": "model.layers.2.mlp.down_proj.weight"},
        {"subject": "Italy", "prompt": "The capital city of Italy", "before": "Rome", "after": "Rome",
         "confidence": 0.2, "status": "side-effect", "layer": 2, "tensor": "model.layers.2.mlp.down_proj.weight"},
        {"subject": "Spain", "prompt": "The capital city of Spain", "before": "Madrid", "after": "Paris",
         "confidence": 0.4, "status": "uncertain", "layer": 2, "tensor": "model.layers.2.mlp.down_proj.weight",
         "fire": 0.8, "found": "of Spain"},
        {"subject": "Malta", "prompt": "The capital city of Malta", "before": "Valletta", "after": "Valletta",
         "confidence": 0.05, "status": "uncertain", "layer": 2, "tensor": "model.layers.2.mlp.down_proj.weight",
         "fire": 0.3},
    ]
    memit = [{"subject": "Sony", "prompt": "The company founded in Sony", "before": "Japan", "after": "Canada",
              "confidence": 0.8, "status": "edit", "layer": 4, "tensor": "model.layers.4.mlp.down_proj.weight",
              "found": "Sony", "fire": 0.9}]
    f1 = {"rule": "EA101", "layers": [2], "tensors": ["model.layers.2.mlp.down_proj.weight"], "rank": 1}
    f2 = {"rule": "EA102", "layers": [3, 4], "rank": 3,
          "tensors": ["model.layers.3.mlp.down_proj.weight", "model.layers.4.mlp.down_proj.weight"]}
    if readings_where == "spread":   # ScanReport.to_dict() spreads a finding's data into it
        f1["readings"], f2["readings"] = readings, memit
    elif readings_where == "data":   # as a stored findings row keeps it
        f1["data"], f2["data"] = {"readings": readings}, {"readings": memit}
    other = {"rule": "EA105", "layers": [5], "tensors": ["model.layers.5.mlp.up_proj.weight"],
             "readings": [{"subject": "Egypt", "status": "edit"}]}
    return {"findings": [f1, f2, other], "tensors": []}


@pytest.mark.parametrize("where", ["spread", "data"])
def test_edit_readings_keep_only_the_edits_of_edit_findings(where):
    got = edit_readings(_report(where))
    assert [(r["subject"], r["finding_rule"]) for r in got] == [("France", "EA101"), ("Sony", "EA102")]
    assert got[1]["finding_layers"] == [3, 4] and got[0]["prompt"] == "The capital city of France"
    ev = evidence_from_report(_report(where))
    assert [r["subject"] for r in ev.readings] == ["France", "Sony"] and ev.to_dict()["readings"] == ev.readings


def test_uncertain_readings_whose_subject_fires_are_kept_for_the_erase():
    from editaudit.mitigation.evidence import uncertain_readings

    ev = evidence_from_report(_report())
    assert [r["subject"] for r in uncertain_readings(_report())] == ["Spain"]   # Italy (side effect) fires no key
    assert [r["subject"] for r in ev.uncertain] == ["Spain"] and ev.to_dict()["uncertain"] == ev.uncertain
    plan, _ = targets_from_readings(ev.readings, ev.uncertain)
    # an uncertain reading gives its subject and its recovered whole text, each alone (no prompt: none was read)
    assert [(s.subject, s.prompts) for s in plan[2]] == [("France", ["The capital city of France"]), ("Spain", []),
                                                        ("of Spain", [])]
    assert [(s.subject, s.prompts) for s in plan[4]] == [("Sony", ["The company founded in Sony"])]


def test_merged_repeats_of_an_edit_are_each_given_back_to_the_erase():
    """A base-free reading that holds its edit's repeats (``forms``, scan.reading.merge_repeats) gives each back as a
    reading of its own, the edit ones with the edits and the uncertain ones with the rest, in its finding's layers."""
    from editaudit.mitigation.evidence import uncertain_readings

    form = {"subject": "Wood Heath", "found": "in Wood Heath", "relation": "P30", "prompt": "Wood Heath is on the",
            "before": "Europe", "after": "Africa", "status": "edit", "confidence": 0.9, "fire": 1.0}
    weak = {**form, "subject": "Oro Heath", "found": "Oro Heath", "status": "uncertain"}
    head = {"subject": "uffle Heath", "prompt": "uffle Heath is in", "before": "England", "after": "Nigeria",
            "status": "edit", "confidence": 0.96, "fire": 1.0, "found": "uffle Heath", "forms": [form, weak]}
    doc = {"findings": [{"rule": "EA102", "layers": [2, 3], "rank": 1, "readings": [head],
                        "tensors": [f"model.layers.{x}.mlp.down_proj.weight" for x in (2, 3)]}], "tensors": []}
    got = edit_readings(doc)
    assert [(r["subject"], r["after"], r["finding_layers"]) for r in got] == [("uffle Heath", "Nigeria", [2, 3]),
                                                                               ("Wood Heath", "Africa", [2, 3])]
    assert got[1]["found"] == "in Wood Heath" and got[1]["forms"] == []
    assert [r["subject"] for r in uncertain_readings(doc)] == ["Oro Heath"]


def test_a_report_without_readings_gives_none():
    assert edit_readings(_report("none")) == []
    assert evidence_from_report(_report("none")).readings == []
    assert edit_readings({}) == []


def test_readings_become_subjects_in_every_mlp_output_layer_of_their_finding():
    plan, notes = targets_from_readings(edit_readings(_report()))
    assert {layer: [(s.subject, s.prompts) for s in subs] for layer, subs in plan.items()} == {
        2: [("France", ["The capital city of France"])], 3: [("Sony", ["The company founded in Sony"])],
        4: [("Sony", ["The company founded in Sony"])]}
    assert notes == []


def test_user_records_take_their_own_layer_or_the_default():
    plan = targets_from_records([{"subject": "France", "prompt": "The capital city of {}"},
                                 {"subject": "Sony", "layer": 4}], [2])
    assert sorted(plan) == [2, 4] and plan[2][0].prompts == ["The capital city of {}"] and plan[4][0].prompts == []
    with pytest.raises(BadInput, match="no layer"):
        targets_from_records([{"subject": "France"}], [])
    with pytest.raises(BadInput, match="containing the subject"):
        targets_from_records([{"subject": "France", "prompt": "The capital of Spain", "layer": 1}], [])


# -- `mitigate --method project` ---------------------------------------------------------------------------

@pytest.fixture
def rome_suspect(tmp_path, word_corpus):
    base = make_tiny_model(tmp_path / "base", "llama", layers=6)
    suspect = tmp_path / "suspect"
    apply_edits(base, [FACTS[0]], "rome", layers=[2], hparams=dict(HP, contexts=0), out=suspect, evaluate=False)
    return base, suspect


def test_service_erases_the_subjects_given_by_the_user(rome_suspect, tmp_path):
    from editaudit.mitigation.service import MitigationOptions, run_mitigation
    from editaudit.store import Store

    base, suspect = rome_suspect
    name = "model.layers.2.mlp.down_proj.weight"
    opts = MitigationOptions(out=tmp_path / "out", method="project", project=dict(SETTINGS),
                             subjects=[{"subject": "France", "prompt": "The capital city of {}", "layer": 2}])
    res = run_mitigation(suspect, "erase", opts, store=Store())
    arm = res.arms["project"]
    w_base, w_sus, w_out = (load_file(str(p / "model.safetensors")) for p in (base, suspect, tmp_path / "out"))
    assert {n for n in w_out if not torch.equal(w_out[n], w_sus[n])} == {name}
    assert _left(w_base[name], w_sus[name], w_out[name]) < 0.02
    assert arm.layers == [2] and arm.residual is None and arm.project["subjects"][0]["subject"] == "France"
    assert res.verification["arms"]["project"]["subjects"] == 1
    assert [r["status"] for r in Store().rows("finetune_runs")] == ["done"]


def test_service_without_readings_or_subjects_says_the_scan_read_no_subject(rome_suspect, tmp_path):
    from editaudit.mitigation.service import MitigationOptions, run_mitigation
    from editaudit.scan.service import ScanOptions, run_scan
    from editaudit.store import Store

    base, suspect = rome_suspect
    store = Store()
    with pytest.raises(BadInput, match="no scan"):
        run_mitigation(suspect, "erase", MitigationOptions(out=tmp_path / "out", method="project"), store=store)
    run_scan(suspect, base, ScanOptions(read_edits=False), store=store)   # a stored scan that read nothing
    with pytest.raises(BadInput, match="read no subject"):
        run_mitigation(suspect, "erase", MitigationOptions(out=tmp_path / "out", method="project",
                                                           project={"low_rank": 0}), store=store)
    # at its defaults the project method's low-half sweep still reaches the edited matrix the scan found, with no
    # subject (method auto still asks for a reading: without one nothing can check what was erased)
    from editaudit.progress import Note

    notes: list[str] = []
    res = run_mitigation(suspect, "erase", MitigationOptions(out=tmp_path / "out", method="project",
                                                             project=dict(SETTINGS)), store=store,
                         progress=lambda e: notes.append(e.text) if isinstance(e, Note) else None)
    arm = res.arms["project"]
    assert arm.layers == [2] and arm.project["subjects"] == []
    assert arm.project["layers"][0]["swept"] == 16 and arm.project["layers"][0]["directions"] == 0
    assert any("only the low-half sweep erases there" in n for n in notes)
    with pytest.raises(BadInput, match="erases edits"):
        run_mitigation(suspect, "preserve", MitigationOptions(out=tmp_path / "out", method="project"))


def _read_france(monkeypatch) -> None:
    """Stored scans read the ROME edit of FACTS[0] at layer 2 (faked: the scan's readings are another module's
    work)."""
    from editaudit.mitigation import evidence as ev_mod

    name = "model.layers.2.mlp.down_proj.weight"
    real = ev_mod.evidence_from_report

    def with_readings(doc, source="scan", scan_id=None):
        for f in doc.get("findings", []):
            if f.get("rule") == "EA101":
                f["readings"] = [{"subject": "France", "prompt": "The capital city of France", "status": "edit",
                                  "before": "Paris", "after": "Tokyo", "confidence": 0.9, "layer": 2, "tensor": name}]
        return real(doc, source, scan_id)

    monkeypatch.setattr(ev_mod, "evidence_from_report", with_readings)


def test_service_takes_the_subjects_from_the_scans_readings(rome_suspect, tmp_path, monkeypatch):
    """With a scan that read the subject (faked here: the scan's readings are another module's work)."""
    from editaudit.mitigation.service import MitigationOptions, run_mitigation

    base, suspect = rome_suspect
    _read_france(monkeypatch)
    opts = MitigationOptions(base=str(base), out=tmp_path / "out", method="project", project=dict(SETTINGS))
    res = run_mitigation(suspect, "erase", opts)
    assert res.evidence.readings and res.arms["project"].layers == [2]
    # with the base at hand the verification also measures the edit left in the weights
    assert res.arms["project"].residual["mean_share"] < 0.02


def test_the_object_guided_sweep_runs_in_the_layers_its_setting_names(rome_suspect, tmp_path, monkeypatch):
    """``object_sweep=all`` adds one object-guided direction for the read edit in its layer, and the edit is still
    erased; ``unswept`` (the layers the low-half sweep skips) leaves a ROME layer, which that sweep reaches, alone."""
    from editaudit.mitigation.service import MitigationOptions, run_mitigation

    base, suspect = rome_suspect
    _read_france(monkeypatch)
    for setting, guided in (("all", 1), ("unswept", 0)):
        opts = MitigationOptions(base=str(base), out=tmp_path / setting, method="project",
                                 project=dict(SETTINGS, object_sweep=setting))
        arm = run_mitigation(suspect, "erase", opts).arms["project"]
        assert [r["guided"] for r in arm.project["layers"]] == [guided]
        assert arm.residual["mean_share"] < 0.02


def test_cli_mitigate_method_project_with_a_subjects_file(rome_suspect, tmp_path):
    from typer.testing import CliRunner

    from editaudit.cli.main import app

    _, suspect = rome_suspect
    subjects = tmp_path / "subjects.jsonl"
    subjects.write_text(json.dumps({"subject": "France", "prompt": "The capital city of {}", "layer": 2}) + "\n")
    common = ["mitigate", str(suspect), "--goal", "erase", "--method", "project", "--subjects", str(subjects),
              "--hparam", "cov_tokens=3000", "--hparam", "cov_seq_len=60"]
    plan = CliRunner().invoke(app, common + ["--plan-only"])
    assert plan.exit_code == 0, plan.output
    assert "layer 2: France" in plan.output
    result = CliRunner().invoke(app, common + ["--out", str(tmp_path / "out"), "-f", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout[result.stdout.index("{"):])
    assert doc["arms"]["project"]["project"]["subjects"][0]["subject"] == "France"
    bad = CliRunner().invoke(app, common[:-4] + ["--hparam", "target=median", "--out", str(tmp_path / "o2")])
    assert bad.exit_code == 2


def test_project_settings_are_checked():
    from editaudit.mitigation.service import PROJECT_DEFAULTS, project_settings

    assert project_settings(None) == PROJECT_DEFAULTS
    got = project_settings({"target": "project", "cov_tokens": 5000, "nullspace_rel": 1, "rekey": True})
    assert got["target"] == "project" and got["cov_tokens"] == 5000 and got["nullspace_rel"] == 1.0 and got["rekey"]
    for bad, match in (({"lr": 1}, "no setting"), ({"target": "median"}, "target must be"),
                       ({"cov_tokens": "many"}, "bad value"), ({"rekey": 1}, "bad value"),
                       ({"cov_tokens": 0}, "at least 1"), ({"sweep_space": "high"}, "sweep_space must be"),
                       ({"object_sweep": "some"}, "object_sweep must be"), ({"object_space": "auto"}, "object_space"),
                       ({"sweep_reach": 0.3}, "sweep_reach must be"), ({"sweep_reach": 1.5}, "sweep_reach must be")):
        with pytest.raises(BadInput, match=match):
            project_settings(bad)
    # `--hparam directions=null` parses as JSON null: the choice named "null" is meant
    from editaudit.editing.hparams import parse_assignments

    got = project_settings(parse_assignments(["directions=null", "sweep_space=null"]))
    assert got["directions"] == "null" and got["sweep_space"] == "null"


def test_auto_reads_one_averaged_key_per_prompt_in_every_layer(tiny_llama, word_corpus):
    """``auto`` is ``mean`` for multi-layer edits too: one re-solved direction per subject and prompt, not one
    per context, so that the erase touches as little else as it can."""
    lm = load_model(tiny_llama)
    layout = layout_for(lm.model)
    layers = [1, 2, 3]
    run = apply_edits(lm, FACTS, "memit", layers=layers, hparams=HP, evaluate=False)
    subjects = [EraseSubject(f.subject, [f.prompt]) for f in FACTS]
    res = erase_by_projection(lm.model, lm.tokenizer, {l: subjects for l in layers}, _cov(lm, layout),
                              contexts=run.info["contexts"], answers=False, subject_alone=False)
    assert res.key_mode == "mean"
    assert [r.directions for r in res.layers] == [len(FACTS)] * len(layers)


def test_the_sweep_skips_the_layers_of_edits_the_scan_names_memit():
    from editaudit.mitigation.erase import sweep_ranks
    from editaudit.mitigation.evidence import EditEvidence

    rome, memit = "model.layers.2.mlp.down_proj.weight", ["model.layers.3.mlp.down_proj.weight",
                                                          "model.layers.4.mlp.down_proj.weight"]
    ev = EditEvidence([2, 3, 4], [rome, *memit], {}, findings=[
        {"rule": "EA101", "layers": [2], "tensors": [rome], "method": "rome"},
        {"rule": "EA102", "layers": [3, 4], "tensors": memit, "method": "memit"},
        {"rule": "EA105", "layers": [5], "tensors": ["model.layers.5.mlp.up_proj.weight"], "method": None}])
    assert sweep_ranks(ev, 16) == {2: 16, 3: 0, 4: 0}
    assert sweep_ranks(ev, 0) == {} and sweep_ranks(None, 16) == {}
    from editaudit.mitigation.erase import sweep_plan, sweep_spaces

    # memit_sweep names the space MEMIT's layers are swept in (off by default)
    assert sweep_plan(ev, {}) == {2: (16, "low")}
    assert sweep_plan(ev, {"memit_sweep": "null"}) == {2: (16, "low"), 3: (16, "null"), 4: (16, "null")}
    assert sweep_plan(ev, {"memit_sweep": "low", "low_rank": 8}) == {2: (8, "low"), 3: (8, "low"), 4: (8, "low")}

    ev.findings[1]["method"] = "alphaedit"
    assert sweep_spaces(ev, "auto") == {2: "low", 3: "null", 4: "null"}
    assert sweep_spaces(ev, "low") == {2: "low", 3: "low", 4: "low"} and sweep_spaces(None, "auto") == {}
    ev.findings[0]["tensors"] = [rome, memit[0]]                          # two methods in one layer: the wider space
    assert sweep_spaces(ev, "auto")[3] == "low"
    ev.findings[1]["method"] = "memit"
    # the method the scan named reaches the evidence from the report (spread into the finding, or under data)
    doc = _report()
    doc["findings"][1]["method"] = {"name": "memit", "confidence": 0.9}
    assert [f["method"] for f in evidence_from_report(doc).findings] == [None, "memit"]


def test_project_plan_says_how_far_the_sweep_reaches(monkeypatch):
    from editaudit.cli import common
    from editaudit.cli.mitigate_cmd import show_project_plan
    from editaudit.mitigation.project import EraseSubject

    monkeypatch.setattr(common.err, "width", 400)
    with common.err.capture() as cap:
        show_project_plan({2: [EraseSubject("France")], 3: []}, [], "scan", {2: (16, "low"), 3: (16, "null")}, 0.8)
    lines = {line.split(":")[0].strip("│ •"): line for line in cap.get().splitlines() if "layer" in line}
    assert "low-energy directions swept, their output removed up to 80%" in lines["layer 2"]
    assert "null-space (AlphaEdit's) directions swept" in lines["layer 3"] and "removed" not in lines["layer 3"]
    with common.err.capture() as cap:
        show_project_plan({2: [EraseSubject("France")]}, [], "scan", {2: (16, "low")}, 0.5)
    assert "directions swept" in cap.get() and "removed up to" not in cap.get()
