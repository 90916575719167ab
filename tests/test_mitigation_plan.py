"""Mitigation plans: each layer strategy and module choice picks exactly the tensors it says, with reasons."""

from __future__ import annotations

import pytest

from editaudit.checkpoint import open_checkpoint
from editaudit.errors import BadInput
from editaudit.mitigation.evidence import EditEvidence, evidence_from_report
from editaudit.mitigation.plan import make_plan, parse_layer_list, plan_for_checkpoint
from editaudit.scan.names import parse_name

EDIT = EditEvidence(layers=[2], tensors=["model.layers.2.mlp.down_proj.weight"],
                    components={"model.layers.2.mlp.down_proj.weight": 1},
                    findings=[{"rule": "EA101", "layers": [2], "tensors": [], "message": "", "rank": 1}],
                    source="test scan")


@pytest.fixture(scope="module")
def ckpt(tiny_llama):
    return open_checkpoint(tiny_llama)


def layers_of(plan) -> set[int]:
    return {parse_name(n).layer for n in plan.params}


@pytest.mark.parametrize("strategy,goal,expected", [
    ("auto", "erase", {0, 1, 2, 3, 4}),  # a 5-layer window centred on the single edited layer
    ("auto", "preserve", {5}),  # from max(⌈5/6 · 6⌉, 2 + 2) = 5
    ("edited", "erase", {2}),
    ("edited", "preserve", {2}),
    ("non-edited", "erase", {0, 1, 3, 4, 5}),
    ("threshold:4", "erase", {4, 5}),
    ("window:2:3", "erase", {1, 2, 3}),
    ("window:0:3", "erase", {0, 1, 2}),  # clipped at the bottom, still 3 layers
    ("window:5:2", "erase", {4, 5}),
    ("1,3-4", "erase", {1, 3, 4}),
])
def test_layer_strategies_pick_their_layers(ckpt, strategy, goal, expected):
    plan = plan_for_checkpoint(ckpt, strategy, goal, "all", "full", EDIT)
    assert plan.layers == sorted(expected)
    assert layers_of(plan) == expected
    # every matrix and norm of those layers, nothing else
    want = {n for n in ckpt.tensors if parse_name(n).layer in expected}
    assert set(plan.params) == want
    assert plan.explanation and plan.n_trainable < plan.n_total


@pytest.mark.parametrize("modules,roles", [
    ("mlp", {"mlp_in", "mlp_out"}),
    ("mlp_out", {"mlp_out"}),
    ("attn", {"attn_q", "attn_k", "attn_v", "attn_o"}),
    ("all", {"mlp_in", "mlp_out", "attn_q", "attn_k", "attn_v", "attn_o", "norm"}),
])
def test_module_choice(ckpt, modules, roles):
    plan = plan_for_checkpoint(ckpt, "2,3", "erase", modules, "full", EDIT)
    assert {parse_name(n).role for n in plan.params} == roles
    assert layers_of(plan) == {2, 3}


def test_lora_plans_only_linear_weights_and_says_so(ckpt):
    plan = plan_for_checkpoint(ckpt, "edited", "erase", "all", "lora", EDIT)
    assert all(parse_name(n).role != "norm" for n in plan.params)
    assert sorted(n.rsplit(".", 1)[0] for n in plan.params) == sorted(plan.lora_targets)
    assert len(plan.lora_targets) == 7  # q k v o gate up down
    assert any("norm/bias vectors" in line for line in plan.explanation)


def test_gpt2_names(tiny_gpt2):
    ev = EditEvidence([1], ["transformer.h.1.mlp.c_proj.weight"], {"transformer.h.1.mlp.c_proj.weight": 1})
    plan = plan_for_checkpoint(open_checkpoint(tiny_gpt2), "edited", "erase", "mlp", "full", ev)
    assert set(plan.params) == {"transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_fc.bias",
                                "transformer.h.1.mlp.c_proj.weight", "transformer.h.1.mlp.c_proj.bias"}


@pytest.mark.parametrize("edited,n,erase,preserve", [
    ([4], 30, [2, 3, 4, 5, 6], list(range(25, 30))),   # SmolLM2's ROME layer: window 2–6, threshold 25
    ([0], 30, [0, 1, 2, 3, 4], list(range(25, 30))),   # the window shifts at the bottom, still 5 layers
    ([29], 30, [25, 26, 27, 28, 29], [29]),            # an edit in the last layer: nothing downstream is left
    ([3, 4, 5, 6, 7], 30, [3, 4, 5, 6, 7], list(range(25, 30))),  # MEMIT's range
    ([2, 5], 30, [2, 3, 4, 5], list(range(25, 30))),  # the whole edited range, gaps filled
    ([20, 21, 22, 23, 24], 30, [20, 21, 22, 23, 24], list(range(26, 30))),  # last edited + 2 wins
    ([1], 48, [0, 1, 2, 3, 4], list(range(40, 48))),  # Wen & Zhang's GPT-2 XL setting: threshold 40
])
def test_auto_layers_follow_the_papers(edited, n, erase, preserve):
    from editaudit.mitigation.plan import erase_layers, preserve_layers, preserve_threshold

    assert erase_layers(edited, n)[0] == erase
    assert preserve_layers(edited, n)[0] == preserve
    assert preserve_threshold(edited, n) == preserve[0]


def test_preserve_warns_when_training_upstream_of_an_edit(ckpt):
    ev = EditEvidence([3], ["model.layers.3.mlp.down_proj.weight"], {"model.layers.3.mlp.down_proj.weight": 1},
                      source="test scan")
    up = plan_for_checkpoint(ckpt, "0,1", "preserve", "all", "full", ev)
    assert any("upstream of the edit" in w for w in up.warnings)
    auto = plan_for_checkpoint(ckpt, "auto", "preserve", "all", "full", ev)
    assert auto.layers == [5] and auto.warnings == []
    assert any("threshold:5" in line for line in auto.explanation)


def test_warnings_when_the_plan_works_against_the_goal(ckpt):
    erase = plan_for_checkpoint(ckpt, "threshold:4", "erase", "all", "full", EDIT)
    assert any("stay frozen" in w for w in erase.warnings)
    keep = plan_for_checkpoint(ckpt, "window:2:3", "preserve", "all", "full", EDIT)
    assert any("likely to fade" in w for w in keep.warnings)


@pytest.mark.parametrize("strategy", ["auto", "edited", "non-edited"])
def test_scan_based_strategies_need_evidence(ckpt, strategy):
    with pytest.raises(BadInput, match="needs the scan"):
        plan_for_checkpoint(ckpt, strategy, "erase", "all", "full", None)
    with pytest.raises(BadInput, match="found no edit"):
        plan_for_checkpoint(ckpt, strategy, "erase", "all", "full", EditEvidence([], [], {}))


@pytest.mark.parametrize("strategy", ["threshold:9", "window:9:2", "window:2", "window:2:0", "7", "3-1", "x,y",
                                      "threshold:a", "everything"])
def test_bad_strategies_are_bad_input(ckpt, strategy):
    with pytest.raises(BadInput):
        plan_for_checkpoint(ckpt, strategy, "erase", "all", "full", EDIT)


def test_bad_goal_method_modules(ckpt):
    for kw in ({"goal": "forget"}, {"method": "qlora"}, {"modules": "ffn"}):
        args = {"strategy": "1", "goal": "erase", "modules": "all", "method": "full", **kw}
        with pytest.raises(BadInput):
            make_plan({n: tuple(i.shape) for n, (_, i) in ckpt.tensors.items()}, ckpt.config, **args)


def test_parse_layer_list():
    assert parse_layer_list("0, 2-4,4", 6) == [0, 2, 3, 4]
    with pytest.raises(BadInput, match="do not exist"):
        parse_layer_list("5-7", 6)


def test_evidence_from_report_counts_components_and_batches():
    doc = {
        "base": {"path": "/b"},
        "tensors": [
            {"name": "a.layers.1.mlp.down_proj.weight", "role": "mlp_out", "kind": "rank-one"},
            {"name": "a.layers.2.mlp.down_proj.weight", "role": "mlp_out", "kind": "low-rank", "rank_above_noise": 3},
            {"name": "a.layers.4.mlp.down_proj.weight", "role": "mlp_out", "kind": "low-rank", "rank_above_noise": 10},
            {"name": "a.layers.5.mlp.down_proj.weight", "role": "mlp_out", "kind": "dense+spike", "spikes": 2},
            {"name": "a.layers.0.self_attn.q_proj.weight", "role": "attn_q", "kind": "low-rank", "rank_above_noise": 4},
        ],
        "findings": [
            {"rule": "EA101", "layers": [1], "tensors": ["a.layers.1.mlp.down_proj.weight"], "rank": 1},
            {"rule": "EA102", "layers": [2], "tensors": ["a.layers.2.mlp.down_proj.weight"], "rank": 3},
            {"rule": "EA106", "layers": [4], "tensors": ["a.layers.4.mlp.down_proj.weight"], "rank": 10},
            {"rule": "EA103", "layers": [5], "tensors": ["a.layers.5.mlp.down_proj.weight"], "rank": 2},
            {"rule": "EA104", "layers": [0], "tensors": ["a.layers.0.self_attn.q_proj.weight"], "rank": 4},
            {"rule": "EA106", "layers": [0], "tensors": ["a.layers.0.self_attn.q_proj.weight"], "rank": 4},
        ],
    }
    ev = evidence_from_report(doc, "doc")
    assert ev.layers == [1, 2, 4, 5]
    assert ev.components == {"a.layers.1.mlp.down_proj.weight": 1, "a.layers.2.mlp.down_proj.weight": 3,
                             "a.layers.4.mlp.down_proj.weight": 10, "a.layers.5.mlp.down_proj.weight": 2}
    assert ev.base == "/b"


def test_planning_and_the_service_module_import_without_torch():
    """The app imports the service to show plans; torch loads only when a run starts."""
    import subprocess
    import sys

    code = ("import sys, editaudit.mitigation.service, editaudit.mitigation.plan, editaudit.cli.mitigate_cmd\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'accelerate', 'textual') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_erase_after_a_blind_scan_that_found_nothing_points_to_the_base():
    from editaudit.mitigation.plan import require_edits

    blind = EditEvidence([], [], {}, source="stored scan #2")
    with pytest.raises(BadInput, match="found no edit to erase; it ran without a base.*--base BASE"):
        require_edits(blind, "erase", "or use --revert")
    with pytest.raises(BadInput, match="found no edit to erase$"):  # a scan with a base: nothing more to say
        require_edits(EditEvidence([], [], {}, source="stored scan #3", base="/models/base"), "erase", "or use --revert")
