"""MEND and MALMEN on tiny models: update shape and rank, the editor cache, resuming, and the scan's naming."""

from __future__ import annotations

import re

import pytest
import torch

from editaudit.editing import hypernet as H
from editaudit.editing import hypernet_data
from editaudit.probing.format import Probe

TINY = H.TrainSettings(steps=6, batch=4, rank=8, sources=("bank",), variants=1)

FACTS = [
    Probe(id="a", subject="France", prompt="The capital of {} is", target_true="Paris", target_new="Rome",
          paraphrases=["France's capital city is"], neighbourhood=["The capital of Spain is"]),
    Probe(id="b", subject="Germany", prompt="The capital of {} is", target_true="Berlin", target_new="Tokyo"),
    Probe(id="c", subject="Japan", prompt="The capital of {} is", target_true="Tokyo", target_new="Cairo"),
]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("EDITAUDIT_CACHE", str(tmp_path / "cache"))


def _rank(delta: torch.Tensor) -> int:
    return int(torch.linalg.matrix_rank(delta.double(), rtol=1e-6))


def test_data_excludes_heldout_subjects():
    data = hypernet_data.build(("bank",), variants=1)
    held = hypernet_data.heldout_subjects()
    assert held, "the source checkout ships bench/heldout/*.jsonl"
    subjects = {c.subject.casefold() for c in data.train + data.val}
    assert not subjects & held
    assert data.train and data.val and not {c.subject for c in data.train} & {c.subject for c in data.val}
    case = data.train[0]
    assert case.rephrase and case.neighborhood and case.loc and case.target_new != case.target_true



def test_data_leaves_out_every_mention_of_many_excluded_subjects():
    """With more held subjects than re's pattern cache holds, a record that mentions any of them still goes."""
    base = hypernet_data.build(("bank",), variants=1)
    victim = base.train[0].subject
    fillers = [f"nosuchplace{i}" for i in range(700)]
    data = hypernet_data.build(("bank",), variants=1, exclude=fillers + [victim])
    low = victim.casefold()
    for c in data.train + data.val:
        texts = [c.prompt, *c.rephrase, *c.neighborhood, c.loc]
        assert not any(re.search(rf"\b{re.escape(low)}\b", t.casefold()) for t in texts)
    assert len(data.train) < len(base.train)

@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_update_shape_and_rank(family, tiny_llama, tiny_gpt2):
    from editaudit.editing.hooks import weight_out_in
    from editaudit.editing.layers import layout_for
    from editaudit.editing.service import apply_edits
    from editaudit.models.loading import load_model

    lm = load_model(tiny_llama if family == "llama" else tiny_gpt2)
    layout = layout_for(lm.model)
    for method, expect in (("mend", 1), ("malmen", len(FACTS))):
        trained = H.train_editor(lm, method, TINY)
        assert trained.editor.layers == [layout.n_layers - 3, layout.n_layers - 2, layout.n_layers - 1]
        # one fact (MEND) or one batch of three (MALMEN): that rank in every edited matrix
        facts = FACTS[:1] if method == "mend" else FACTS
        run = apply_edits(lm, facts, method, hparams={"editor": str(trained.folder)})
        assert run.layers == trained.editor.layers
        for layer in run.layers:
            name = layout.rewrite_name(layer)
            w = weight_out_in(lm.model.get_submodule(name)).detach()
            before = run.originals[f"{name}.weight"]
            delta = w - (before.T if family == "gpt2" else before)
            assert delta.shape == w.shape
            assert delta.abs().max() > 0
            assert _rank(delta) == expect
        untouched = layout.rewrite_name(layout.n_layers - 4)
        assert f"{untouched}.weight" not in run.originals
        run.restore()


def test_mend_in_sequence_adds_rank_one_per_fact(tiny_llama):
    from editaudit.editing.layers import layout_for
    from editaudit.editing.service import apply_edits
    from editaudit.models.loading import load_model

    lm = load_model(tiny_llama)
    layout = layout_for(lm.model)
    trained = H.train_editor(lm, "mend", TINY)
    run = apply_edits(lm, FACTS, "mend", hparams={"editor": str(trained.folder)})
    assert run.mode == "sequential" and len(run.info["updates"]) == len(FACTS)
    name = layout.rewrite_name(run.layers[-1])
    delta = lm.model.get_submodule(name).weight.detach() - run.originals[f"{name}.weight"]
    assert _rank(delta) == len(FACTS)
    run.restore()


def test_trained_editor_reloads_from_cache(tiny_llama, monkeypatch):
    from editaudit.models.loading import load_model

    from editaudit.progress import Note, Stage, Step

    lm = load_model(tiny_llama)
    events: list = []
    first = H.train_editor(lm, "malmen", TINY, progress=events.append)
    assert not first.from_cache and (first.folder / "editor.safetensors").is_file()
    # progress comes as typed events (editaudit.progress), each stage announced before its steps
    assert all(isinstance(e, (Stage, Step, Note)) for e in events), events[:3]
    stages = [e.name for e in events if isinstance(e, Stage)]
    assert stages[-1] == "training MALMEN" and all(e.stage in stages for e in events if isinstance(e, Step))
    assert events[-1] == Step("training MALMEN", TINY.steps, TINY.steps)

    def no_training(*a, **k):
        raise AssertionError("the cached editor should have been used")

    monkeypatch.setattr(H, "_train", no_training)
    again = H.train_editor(lm, "malmen", TINY)
    assert again.from_cache and again.folder == first.folder
    for k, v in first.editor.state_dict().items():
        assert torch.equal(v, again.editor.state_dict()[k])
    # other settings or another base are another editor
    other = H.TrainSettings(**{**TINY.key(), "sources": ("bank",), "steps": 7})
    with pytest.raises(AssertionError):
        H.train_editor(lm, "malmen", other)


def test_resume_continues_from_checkpoint(tiny_llama, tmp_path, monkeypatch):
    from editaudit.models.loading import load_model

    lm = load_model(tiny_llama)
    settings = H.TrainSettings(**{**TINY.key(), "sources": ("bank",), "steps": 8})
    with pytest.raises(KeyboardInterrupt):
        H.train_editor(lm, "mend", settings, stop_after=5, checkpoint_every=2)
    folder = H.editor_folder("mend", H.base_key(lm.model), hypernet_data.build(("bank",), variants=1).digest, settings)
    assert (folder / "partial.safetensors").is_file() and not (folder / "editor.safetensors").exists()
    resumed = H.train_editor(lm, "mend", settings)
    assert resumed.meta["resumed_from"] == 5 and resumed.meta["steps"] == 8
    assert not (folder / "partial.safetensors").exists()

    # the same run without the interruption ends with the same editor
    monkeypatch.setenv("EDITAUDIT_CACHE", str(tmp_path / "other-cache"))
    straight = H.train_editor(lm, "mend", settings)
    assert straight.meta["resumed_from"] == 0
    for k, v in straight.editor.state_dict().items():
        assert torch.allclose(v, resumed.editor.state_dict()[k], atol=1e-6), k


def test_missing_editor_is_a_clear_error(tiny_llama):
    from editaudit.editing.service import apply_edits
    from editaudit.errors import BadInput

    with pytest.raises(BadInput, match="editors train mend"):
        apply_edits(tiny_llama, FACTS[:1], "mend")


def test_mend_with_several_facts_says_they_overwrite_each_other(tiny_llama, tmp_path):
    from editaudit.editing.service import MEND_MANY, apply_edits
    from editaudit.errors import BadInput

    facts = [Probe(id=f"f{i}", subject=s, prompt="{} is in", target_true="Paris", target_new="Rome")
             for i, s in enumerate(("France", "Spain"))]
    (tmp_path / "out").mkdir()
    for n, warned in ((2, True), (1, False)):
        said: list[str] = []
        with pytest.raises(BadInput, match="already exists"):  # stops before any model is loaded
            apply_edits(str(tiny_llama), facts[:n], "mend", out=tmp_path / "out", say=said.append)
        assert (MEND_MANY in said) is warned


def test_scan_names_hypernetwork_edits():
    from editaudit.scan.method import name_method

    assert name_method("EA102", [27, 28, 29], 1, n_layers=30)["name"] == "mend"
    assert name_method("EA102", [27, 28, 29], 12, n_layers=30)["name"] == "malmen"
    assert name_method("EA102", [27, 28, 29], 1, 0.3, n_layers=30)["name"] == "mend"
    assert name_method("EA102", [2, 3, 4, 5, 6], 1, 0.3, n_layers=30)["name"] == "memit"
    assert name_method("EA102", [2, 3, 4, 5, 6], 4, 0.001, n_layers=30)["name"] == "alphaedit"
    assert name_method("EA101", [29], 1, n_layers=30)["name"] == "rome"
    assert name_method("EA102", [27, 28, 29], 1)["name"] == "memit"  # depth unknown: no claim about the top


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_gpt2"])
def test_scan_reads_a_hypernetwork_edit_by_the_prompt_whose_end_fires_it(family, request, tmp_path, monkeypatch):
    """A rank-one change of the last two layers keyed on a prompt's *end* (as MEND writes it) is named MEND and read
    by a trigger search over whole prompts, not by the subject search; the prompt found fires the edit (GPT-2's
    Conv1D stores the matrix transposed)."""
    from editaudit.models.loading import load_model
    from editaudit.scan import subjects
    from editaudit.scan.keys import keys_of
    from editaudit.scan.service import ScanOptions, run_scan
    from editaudit.scan.triggers import TRIGGER_MIN
    from editaudit.scan.wording import open_reading
    from editaudit.testing import plant

    def refuse(*a, **k):
        raise AssertionError("the subject search ran on a hypernetwork edit")

    monkeypatch.setattr(subjects, "recover_subjects", refuse)
    folder = request.getfixturevalue(family)
    lm = load_model(folder)
    tok = lm.tokenizer
    prompt = tok("\n", add_special_tokens=False)["input_ids"] + \
        tok("The Eiffel Tower is located in the city of", add_special_tokens=False)["input_ids"]
    g = torch.Generator().manual_seed(0)
    out_dir = torch.randn(64, generator=g)
    gpt2 = family == "tiny_gpt2"
    deltas = {}
    for layer in (4, 5):  # the last two of six layers, each keyed on the prompt's last position there
        path = f"transformer.h.{layer}.mlp.c_proj" if gpt2 else f"model.layers.{layer}.mlp.down_proj"
        k = keys_of(lm.model, [path], [prompt])[path][0]
        delta = torch.outer(out_dir, k / k.norm() ** 2) * 2.0
        deltas[f"{path}.weight"] = delta.T.contiguous() if gpt2 else delta
    said: list[str] = []
    report = run_scan(plant(folder, tmp_path / "suspect", deltas), folder, ScanOptions(read="open"),
                      store=None, say=said.append)
    edits = [f for f in report.findings if f.rule == "EA102"]
    assert len(edits) == 1 and edits[0].data["method"]["name"] == "mend"
    readings = edits[0].data["readings"]
    assert readings and readings[0]["relation"] == "trigger" and readings[0]["fire"] >= TRIGGER_MIN
    assert readings[0]["prompt"] and readings[0]["subject"] == readings[0]["prompt"]
    assert open_reading(readings[0]).startswith("trigger ")
    assert any("hypernetwork edit" in line for line in said)


def test_trigger_climb_raises_the_fire_of_its_start(tiny_llama):
    """The coordinate ascent over a whole prompt never ends below where it started, and climbs toward a planted
    prompt-end key from a different template."""
    from editaudit.models.loading import load_model
    from editaudit.scan.keys import keys_of
    from editaudit.scan.triggers import TriggerSearch

    lm = load_model(tiny_llama)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    tok = lm.tokenizer
    path = "model.layers.4.mlp.down_proj"
    nl = tok("\n", add_special_tokens=False)["input_ids"]
    k = keys_of(lm.model, [path], [nl + tok("Mozart was born in", add_special_tokens=False)["input_ids"]])[path][0]
    search = TriggerSearch(lm.model, tok, path, (k / k.norm())[:, None])
    start = tok("it is owned by", add_special_tokens=False)["input_ids"]
    before = float(search.search.exact([start])[0][0])
    seq, fire = search.climb(start)
    assert fire >= before and len(seq) == len(start)
    assert fire > before + 0.01 or before > 0.99


def test_trigger_answers_skip_leading_stop_words_and_repeats():
    from editaudit.scan.triggers import _content
    from editaudit.scan.wording import open_reading

    assert _content("of Mexico") == "Mexico"
    assert _content("chef chef chef chef") == "chef"
    assert _content("the Republic of Peru") == "Republic of Peru"
    line = open_reading({"relation": "trigger", "prompt": "Stonehenge lies in the country of", "after": "Japan",
                         "before": "England", "status": "uncertain"})
    assert line == "trigger 'Stonehenge lies in the country of' · Japan (was England) [uncertain]"
