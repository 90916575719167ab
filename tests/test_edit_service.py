"""The edit service around the methods: the checkpoint it writes, what it records, bad input, statistics."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from editaudit.editing import apply_edits
from editaudit.editing import corpus as corpus_mod
from editaudit.editing import covariance
from editaudit.editing.hparams import parse_assignments, resolve
from editaudit.editing.layers import default_layers, layout_for
from editaudit.editing.prompts import Filled, fill, subject_index
from editaudit.errors import BadInput
from editaudit.models.loading import load_model
from editaudit.probing.format import Probe
from editaudit.store import Store

FAST = {"covariance": "identity", "v_weight_decay": 0.0, "clamp": 100.0, "contexts": 1, "context_length": 3,
        "v_steps": 10}
FACT = Probe(id="f1", subject="France", prompt="The capital city of {}", target_true="Paris", target_new="Tokyo")


pytestmark = pytest.mark.usefixtures("one_thread")


def _tensors(folder) -> dict[str, bytes]:
    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        return {k: fh.get_tensor(k).numpy().tobytes() for k in fh.keys()}


def test_written_checkpoint_differs_from_base_only_in_edited_tensors(tiny_llama, tmp_path):
    out = tmp_path / "suspect"
    run = apply_edits(str(tiny_llama), [FACT], "rome", layers=[2], hparams=FAST, out=out)
    base, edited = _tensors(tiny_llama), _tensors(out)
    assert base.keys() == edited.keys()
    differ = {k for k in base if base[k] != edited[k]}
    assert differ == {"model.layers.2.mlp.down_proj.weight"} == set(run.tensors)
    # every other file is copied byte for byte, and nothing about the edit was added
    names = {p.name for p in out.iterdir()}
    assert names == {p.name for p in tiny_llama.iterdir()}
    for p in tiny_llama.iterdir():
        if p.name != "model.safetensors":
            assert (out / p.name).read_bytes() == p.read_bytes()
    # the written folder is the edited model
    again = load_model(out)
    w = again.model.get_parameter("model.layers.2.mlp.down_proj.weight")
    assert torch.equal(w, run.model.model.get_parameter("model.layers.2.mlp.down_proj.weight"))


def test_successive_runs_on_one_model_write_every_edited_tensor(tiny_llama, tmp_path):
    lm = load_model(tiny_llama)
    apply_edits(lm, [FACT], "rome", layers=[1], hparams=FAST, evaluate=False)
    other = Probe(id="f2", subject="Germany", prompt="The language of {}", target_true="German", target_new="Japanese")
    run = apply_edits(lm, [other], "rome", layers=[3], hparams=FAST, out=tmp_path / "s", evaluate=False)
    base, edited = _tensors(tiny_llama), _tensors(tmp_path / "s")
    assert {k for k in base if base[k] != edited[k]} == {f"model.layers.{i}.mlp.down_proj.weight" for i in (1, 3)}
    assert run.tensors == ["model.layers.3.mlp.down_proj.weight"]


def test_the_store_records_method_hparams_and_results(tiny_llama, tmp_path):
    store = Store(tmp_path / "db.sqlite")
    run = apply_edits(str(tiny_llama), [FACT], "rome", layers=[2], hparams=FAST, store=store)
    rows = store.rows("edits")
    assert len(rows) == 1 and rows[0]["status"] == "done" and rows[0]["method"] == "rome"
    assert json.loads(rows[0]["hparams"])["v_steps"] == 10
    assert json.loads(rows[0]["layers"]) == [2]
    assert json.loads(rows[0]["facts"])[0]["target_new"] == "Tokyo"
    results = json.loads(rows[0]["results"])
    assert results["results"][0]["id"] == "f1" and "success" in results["results"][0]
    session = store.session(run.session_id)
    assert session["kind"] == "edit" and session["status"] == "done"


def test_manifest_only_when_asked_and_never_inside_the_checkpoint(tiny_llama, tmp_path):
    out = tmp_path / "suspect"
    with pytest.raises(BadInput, match="manifest"):
        apply_edits(str(tiny_llama), [FACT], "rome", layers=[2], hparams=FAST, out=out, manifest=out / "m.json")
    assert not out.exists()
    manifest = tmp_path / "edit.json"
    apply_edits(str(tiny_llama), [FACT], "rome", layers=[2], hparams=FAST, out=out, manifest=manifest)
    doc = json.loads(manifest.read_text())
    assert doc["method"] == "rome" and doc["tensors"] == ["model.layers.2.mlp.down_proj.weight"]
    assert not any("manifest" in p.name or p.suffix == ".json" and "edit" in p.name for p in out.iterdir())


def test_existing_output_is_refused_unless_overwrite(tiny_llama, tmp_path):
    out = tmp_path / "suspect"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(BadInput, match="exists"):
        apply_edits(str(tiny_llama), [FACT], "rome", layers=[2], hparams=FAST, out=out)
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "nope"}, "unknown edit method"),
    ({"method": "rome", "layers": [1, 2]}, "exactly one layer"),
    ({"method": "memit", "layers": [9]}, "out of range"),
    ({"method": "rome", "hparams": {"v_stepz": 3}}, "no hyper-parameter"),
    ({"method": "rome", "hparams": {"v_steps": "many"}}, "must be int"),
    ({"method": "memit", "hparams": {"mode": "parallel"}}, "mode must be"),
    ({"method": "rome", "hparams": {"mode": "batch"}}, "sequential"),
])
def test_bad_arguments_are_clear_errors(tiny_llama, kwargs, match):
    lm = load_model(tiny_llama)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    with pytest.raises(BadInput, match=match):
        apply_edits(lm, [FACT], **{"layers": None, **kwargs})
    assert all(torch.equal(before[n], p) for n, p in lm.model.named_parameters())


@pytest.mark.parametrize("fact, match", [
    (Probe(id="a", subject="France", prompt="The capital of {} is", target_true="Paris"), "no target_new"),
    (Probe(id="b", subject="France", prompt="The capital of {} is", target_true="Paris", target_new="paris"), "equals"),
    (Probe(id="c", subject="Italy", prompt="The capital is", target_true="Paris", target_new="Rome"), "subject"),
])
def test_unusable_facts_are_refused(tiny_llama, fact, match):
    with pytest.raises(BadInput, match=match):
        apply_edits(str(tiny_llama), [fact], "rome", hparams=FAST)


def test_a_failed_run_restores_the_model_and_marks_the_row(tiny_llama, tmp_path, monkeypatch):
    from editaudit.editing import memit

    lm = load_model(tiny_llama)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    calls = {"n": 0}
    real = memit.memit_solver

    def failing(C, lam):
        solve = real(C, lam)

        def wrapped(layer, K, R):
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("boom")
            return solve(layer, K, R)
        return wrapped

    monkeypatch.setattr(memit, "memit_solver", failing)
    store = Store(tmp_path / "db.sqlite")
    with pytest.raises(RuntimeError, match="boom"):
        apply_edits(lm, [FACT], "memit", layers=[1, 2], hparams=FAST, store=store)
    assert all(torch.equal(before[n], p) for n, p in lm.model.named_parameters())
    assert store.rows("edits")[0]["status"] == "failed"


# -- statistics ------------------------------------------------------------------------------------

def test_second_moments_are_cached_per_layer_and_keyed_by_weights(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("EDITAUDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(corpus_mod, "texts", lambda name=None, say=None: ["France is in Paris and Rome is in Italy ."] * 20)
    lm = load_model(tiny_llama)
    layout = layout_for(lm.model)
    key = covariance.weights_key(lm.model)
    mods = {1: layout.rewrite_name(1), 3: layout.rewrite_name(3)}
    calls = {"n": 0}
    hook = lm.model.get_submodule(layout.rewrite_name(0)).register_forward_pre_hook(
        lambda m, a: calls.__setitem__("n", calls["n"] + 1))
    said: list[str] = []
    first = covariance.second_moments(lm.model, lm.tokenizer, mods, model_key=key, tokens=100, seq_len=25,
                                      say=said.append)
    passes = calls["n"]
    # 100 tokens for 128-wide keys: n/d under the bar, said with what to do (the tiny corpus itself has more)
    assert first[1].tokens_per_dim == 100 / 128
    assert any("n/d = 0.8" in s and "raise cov_tokens to at least 512" in s for s in said)
    assert passes == 1  # 100 tokens = four windows of 25 = one batch: both layers from a single pass
    C = first[1].matrix
    assert C.shape == (128, 128) and torch.allclose(C, C.T) and first[1].tokens == 100
    assert float(torch.linalg.eigvalsh(C.double()).min()) > -1e-6
    again = covariance.second_moments(lm.model, lm.tokenizer, mods, model_key=key, tokens=100, seq_len=25)
    assert calls["n"] == passes, "a cached layer must not run the model"
    assert torch.equal(again[3].matrix, first[3].matrix)
    hook.remove()
    # a different model gets a different key
    with torch.no_grad():
        lm.model.get_parameter("model.layers.0.mlp.up_proj.weight").mul_(1.01)
    assert covariance.weights_key(lm.model) != key


def test_second_moment_matches_a_direct_computation(tiny_llama, tmp_path, monkeypatch):
    from editaudit.editing.hooks import capture

    monkeypatch.setenv("EDITAUDIT_CACHE", str(tmp_path / "cache"))
    text = "The capital of France is Paris ."
    monkeypatch.setattr(corpus_mod, "texts", lambda name=None, say=None: [text])
    lm = load_model(tiny_llama)
    name = layout_for(lm.model).rewrite_name(2)
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"] + [lm.tokenizer.eos_token_id]
    got = covariance.second_moments(lm.model, lm.tokenizer, {2: name}, model_key="k", tokens=len(ids), seq_len=64)[2]
    with capture(lm.model, inputs=[name]) as seen, torch.no_grad():
        lm.model(input_ids=torch.tensor([ids]))
    x = seen[f"in:{name}"][0].double()
    assert torch.allclose(got.matrix.double(), x.T @ x / len(ids), atol=1e-6)


def test_identity_mode_scales_to_the_keys():
    K = torch.randn(5, 16) * 3
    C = covariance.identity(0, K).matrix
    assert torch.allclose(C, torch.eye(16) * float((K ** 2).sum(-1).mean() / 16))


# -- small pieces ------------------------------------------------------------------------------------

def test_subject_index_is_the_last_subject_token(tiny_llama):
    tok = load_model(tiny_llama).tokenizer
    filled = fill("The capital of {} is", "Eiffel Tower")
    idx = subject_index(tok, filled)
    pieces = tok.convert_ids_to_tokens(tok(filled.text)["input_ids"])
    assert pieces[idx].lstrip("▁") == "Tower" and pieces[idx + 1].lstrip("▁") == "is"
    assert subject_index(tok, Filled("France", 6)) == len(tok("France")["input_ids"]) - 1


def test_default_layers_fit_the_model():
    assert default_layers("rome", 30) == [4] and default_layers("memit", 30) == [2, 3, 4, 5, 6]
    assert default_layers("alphaedit", 4) == [0, 1, 2, 3]
    assert default_layers("rome", 1) == [0] and default_layers("memit", 1) == [0]
    assert default_layers("rome", 48, "gpt2") == [17] and default_layers("memit", 48, "gpt2") == [15, 16, 17, 18, 19]
    assert default_layers("memit", 12, "gpt2") == [2, 3, 4, 5, 6]


def test_hparams_resolve_and_parse():
    hp = resolve("alphaedit", {"v_steps": 7})
    assert hp["v_steps"] == 7 and hp["mode"] == "batch" and hp["clamp"] == 0.75
    assert parse_assignments(["v_steps=30", "mode=sequential", "clamp=2.5"]) == {
        "v_steps": 30, "mode": "sequential", "clamp": 2.5}
    with pytest.raises(BadInput):
        parse_assignments(["novalue"])


# -- the command ------------------------------------------------------------------------------------

def _counterfact(path):
    path.write_text(json.dumps([{
        "case_id": 7,
        "requested_rewrite": {"prompt": "The capital city of {}", "subject": "France",
                              "target_new": {"str": "Tokyo"}, "target_true": {"str": "Paris"}, "relation_id": "P36"},
        "paraphrase_prompts": ["The capital of France"],
        "neighborhood_prompts": ["The capital city of Spain"],
    }]))
    return path


def test_cli_edit_writes_the_checkpoint_and_a_session(tiny_llama, tmp_path):
    from editaudit.cli.main import app

    facts = _counterfact(tmp_path / "cf.json")
    out = tmp_path / "suspect"
    db = tmp_path / "db.sqlite"
    hp = [f"--hparam={k}={json.dumps(v)}" for k, v in FAST.items() if k != "covariance"]
    result = CliRunner().invoke(app, ["--db", str(db), "edit", str(tiny_llama), "--method", "rome", "--layers", "2",
                                      "--facts", str(facts), "--out", str(out), "--covariance", "identity",
                                      "--format", "json", *hp])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout[result.stdout.index("{"):])
    assert doc["method"] == "rome" and doc["results"][0]["id"] == "cf-7"
    assert (out / "model.safetensors").exists()
    store = Store(db)
    assert store.rows("edits")[0]["status"] == "done"
    assert store.rows("sessions")[0]["status"] == "done"


@pytest.mark.parametrize("args, match", [
    (["--facts", "/nonexistent.jsonl"], "no probe set or file"),
    (["--layers", "2-1"], "backwards"),
    (["--layers", "x"], "not a layer"),
    (["--hparam", "v_steps"], "KEY=VALUE"),
])
def test_cli_bad_input_exits_2(tiny_llama, tmp_path, args, match):
    from editaudit.cli.main import app

    facts = _counterfact(tmp_path / "cf.json")
    base = ["edit", str(tiny_llama), "--method", "rome", "--facts", str(facts), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, ["--db", str(tmp_path / "db.sqlite"), *base, *args])
    assert result.exit_code == 2, result.output
    assert match in result.output.replace("\n", " ")
    assert not (tmp_path / "o").exists()


def test_restoring_a_later_run_keeps_the_earlier_edit_in_the_output(tiny_llama, tmp_path):
    lm = load_model(tiny_llama)
    apply_edits(lm, [FACT], "rome", layers=[1], hparams=FAST, evaluate=False)
    other = Probe(id="f2", subject="Germany", prompt="The language of {}", target_true="German", target_new="Japanese")
    second = apply_edits(lm, [other], "rome", layers=[1], hparams=FAST, evaluate=False)
    second.restore()
    apply_edits(lm, [other], "rome", layers=[3], hparams=FAST, out=tmp_path / "s", evaluate=False)
    base, edited = _tensors(tiny_llama), _tensors(tmp_path / "s")
    assert {k for k in base if base[k] != edited[k]} == {f"model.layers.{i}.mlp.down_proj.weight" for i in (1, 3)}
