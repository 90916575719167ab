"""``mitigate --dtype``: the models of a mitigation run load in the asked dtype, the written checkpoint keeps the
suspect's stored dtypes, the run's stored settings say which dtype ran, and the CLI takes and checks the option."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import editaudit.models.loading as loading
from editaudit.cli.main import app
from editaudit.errors import BadInput
from editaudit.mitigation.service import MitigationOptions, run_mitigation
from editaudit.mitigation.train import TrainConfig
from editaudit.store import Store
from editaudit.testing import SENTENCES, edited_pair

EDITED = "model.layers.2.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return edited_pair(tmp_path_factory.mktemp("mitdtype"), EDITED, SENTENCES)


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """The dtype of every model load (the mitigation modules import ``load_model`` when they run)."""
    seen: list[str] = []
    real = loading.load_model

    def recording(spec, dtype="float32", device=None, say=lambda s: None, **kw):
        seen.append(dtype)
        return real(spec, dtype=dtype, device=device, say=say, **kw)

    monkeypatch.setattr(loading, "load_model", recording)
    return seen


def test_bf16_run_on_cpu_loads_in_bf16_and_writes_the_stored_dtype(models, tmp_path, loads):
    _, suspect, text = models
    stored = load_file(str(suspect / "model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.float32}  # a float32 checkpoint run in 16 bits
    cfg = TrainConfig(steps=2, eval_every=2, batch_size=4, seq_len=24, lr=1e-3)
    opts = MitigationOptions(out=tmp_path / "out", method="full", layers="2", task="lm", data=text, train=cfg,
                             val_size=2, device="cpu", dtype="bfloat16")
    store = Store()
    res = run_mitigation(suspect, "erase", opts, store=store)

    assert loads and set(loads) == {"bfloat16"}
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert out.keys() == stored.keys()
    assert {n: t.dtype for n, t in out.items()} == {n: t.dtype for n, t in stored.items()}
    changed = {n for n in out if not torch.equal(out[n], stored[n])}
    assert changed and changed <= set(res.plan.params)
    for name in changed:  # trained in bfloat16, stored exactly in float32
        assert torch.equal(out[name].to(torch.bfloat16).float(), out[name]), name
    config = json.loads(store.rows("finetune_runs")[0]["config"])
    assert config["dtype"] == "bfloat16"


def test_default_dtype_is_float32_and_is_recorded(models, tmp_path, loads):
    """Mitigation trains in float32 unless asked: 16-bit weights would drop fine-tuning's small steps."""
    _, suspect, text = models
    cfg = TrainConfig(steps=1, eval_every=1, batch_size=4, seq_len=24, lr=1e-3)
    opts = MitigationOptions(out=tmp_path / "out", method="full", layers="2", task="lm", data=text, train=cfg,
                             val_size=2, device="cpu")
    store = Store()
    run_mitigation(suspect, "erase", opts, store=store)
    assert set(loads) == {"float32"}
    assert json.loads(store.rows("finetune_runs")[0]["config"])["dtype"] == "float32"


def test_bad_dtype_fails_before_anything_runs(models, tmp_path, loads):
    _, suspect, text = models
    opts = MitigationOptions(out=tmp_path / "out", method="full", layers="2", data=text, device="cpu", dtype="int8")
    with pytest.raises(BadInput, match="--dtype 'int8'"):
        run_mitigation(suspect, "erase", opts, store=Store())
    assert loads == [] and not (tmp_path / "out").exists()


def test_cli_lists_dtype_and_refuses_a_bad_value():
    res = CliRunner().invoke(app, ["mitigate", "--help"])
    assert res.exit_code == 0
    assert "--dtype" in res.output and "bfloat16" in res.output
    bad = CliRunner().invoke(app, ["mitigate", "some-suspect", "--goal", "erase", "--dtype", "int8"])
    assert bad.exit_code == 2
    assert "Invalid value" in bad.output and "--dtype" in bad.output


@pytest.mark.parametrize("dtype,noted", [("bfloat16", True), ("float32", False)])
def test_cli_passes_dtype_and_shows_the_precision_note(models, tmp_path, monkeypatch, dtype, noted):
    import editaudit.mitigation.service as service

    seen: dict = {}

    def fake(suspect, goal, options, **kwargs):
        seen["options"] = options
        raise BadInput("stop here")

    monkeypatch.setattr(service, "run_mitigation", fake)
    _, suspect, text = models
    res = CliRunner().invoke(app, ["mitigate", str(suspect), "--goal", "erase", "--method", "full", "--layers", "2",
                                   "--data", str(text), "--out", str(tmp_path / "out"), "--device", "cpu",
                                   "--dtype", dtype])
    assert res.exit_code == 2 and "stop here" in res.output
    assert seen["options"].dtype == dtype and seen["options"].device == "cpu"
    assert ("16-bit rounding" in " ".join(res.stderr.split())) is noted
