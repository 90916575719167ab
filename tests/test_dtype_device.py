"""``--dtype`` and ``--device``: resolution, clear errors, and the plumbing into probe, edit and key statistics (CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from editaudit.cli.main import app
from editaudit.errors import BadInput
from editaudit.models.loading import load_model, pick_device, resolve_dtype
from editaudit.probing.format import Probe, dump_probes

PROBES = [
    Probe(id="a", subject="France", prompt="The capital of {} is", target_true="Paris"),
    Probe(id="b", subject="Japan", prompt="The official language of {} is", target_true="Japanese"),
    Probe(id="c", subject="Windows", prompt="{} was developed by", target_true="Microsoft"),
]
FAST = {"covariance": "identity", "v_weight_decay": 0.0, "clamp": 100.0, "contexts": 1, "context_length": 3,
        "v_steps": 5}

pytestmark = pytest.mark.usefixtures("one_thread")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error path")


def test_resolve_dtype_names_and_auto_on_cpu():
    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    assert resolve_dtype("float16") is torch.float16
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("FP32") is torch.float32
    assert resolve_dtype("auto", "cpu") is torch.float32  # never 16-bit on a CPU unless asked
    assert resolve_dtype(None, "cpu") is torch.float32
    with pytest.raises(BadInput, match="--dtype 'int8' is not one of auto, float32, bfloat16, float16"):
        resolve_dtype("int8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_is_bf16_on_a_capable_gpu():
    want = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    assert resolve_dtype("auto", "cuda") is want


def test_pick_device_checks_what_it_is_given():
    assert pick_device("cpu") == "cpu"
    assert pick_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(BadInput, match="is not a device"):
        pick_device("toaster")


@no_cuda
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(BadInput, match="no CUDA device is available here"):
        pick_device("cuda:1")
    with pytest.raises(BadInput, match="no CUDA device"):
        resolve_dtype("auto", "cuda")


def test_bf16_on_cpu_loads_and_runs_probes(tiny_llama):
    from editaudit.probing.service import run_probes

    lm16 = load_model(tiny_llama, dtype="bfloat16", device="cpu")
    assert lm16.dtype is torch.bfloat16 and lm16.device.type == "cpu"
    assert all(p.dtype is torch.bfloat16 for p in lm16.model.parameters())
    lm32 = load_model(tiny_llama, dtype="auto", device="cpu")
    assert lm32.dtype is torch.float32
    r16 = run_probes(lm16.model, lm16.tokenizer, PROBES, batch_size=2, top_k=3)
    r32 = run_probes(lm32.model, lm32.tokenizer, PROBES, batch_size=2, top_k=3)
    assert [r.probe.id for r in r16] == ["a", "b", "c"]
    for a, b in zip(r16, r32):
        a, b = a.to_dict()["p_true"], b.to_dict()["p_true"]
        assert 0 < a < 1
        assert a == pytest.approx(b, rel=0.2)  # same model, bf16 rounding only


def test_probe_cli_honours_dtype_and_device(tiny_llama, tmp_path):
    probes = tmp_path / "p.jsonl"
    dump_probes(PROBES, probes)
    docs = {}
    for dtype in ("float32", "bfloat16"):
        res = CliRunner().invoke(app, ["probe", str(tiny_llama), "--probes", str(probes), "--dtype", dtype,
                                       "--device", "cpu", "--format", "json", "--no-store"])
        assert res.exit_code == 0, res.output
        docs[dtype] = json.loads(res.stdout)["models"][0]["results"]
    p32 = [r["p_true"] for r in docs["float32"]]
    p16 = [r["p_true"] for r in docs["bfloat16"]]
    assert p32 != p16, "--dtype bfloat16 must actually run the model in bfloat16"
    assert p16 == pytest.approx(p32, rel=0.2)
    res = CliRunner().invoke(app, ["probe", str(tiny_llama), "--probes", str(probes), "--dtype", "int4", "--no-store"])
    assert res.exit_code == 2


@no_cuda
def test_cli_device_cuda_without_cuda_exits_2_with_a_message(tiny_llama, tmp_path):
    probes = tmp_path / "p.jsonl"
    dump_probes(PROBES, probes)
    res = CliRunner().invoke(app, ["probe", str(tiny_llama), "--probes", str(probes), "--device", "cuda",
                                   "--no-store", "--format", "json"])
    assert res.exit_code == 2
    assert "no CUDA device is available here" in res.output


def test_edit_in_bf16_on_cpu(tiny_llama, tmp_path):
    from editaudit.editing import apply_edits

    fact = Probe(id="f1", subject="France", prompt="The capital city of {}", target_true="Paris", target_new="Tokyo")
    run = apply_edits(str(tiny_llama), [fact], "rome", layers=[2], hparams=FAST, out=tmp_path / "e",
                      evaluate=False, dtype="bfloat16", device="cpu")
    assert next(run.model.model.parameters()).dtype is torch.bfloat16
    assert (tmp_path / "e" / "model.safetensors").is_file()


def test_edit_cli_passes_dtype_and_device(tiny_llama, tmp_path, monkeypatch):
    import editaudit.editing.service as service

    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise BadInput("stop here")

    monkeypatch.setattr(service, "apply_edits", fake)
    facts = tmp_path / "f.jsonl"
    dump_probes([Probe(id="f1", subject="France", prompt="The capital city of {}", target_true="Paris",
                       target_new="Tokyo")], facts)
    res = CliRunner().invoke(app, ["edit", str(tiny_llama), "--facts", str(facts), "--method", "rome", "--dtype", "bfloat16",
                                   "--device", "cpu"])
    assert res.exit_code == 2 and "stop here" in res.output
    assert seen["dtype"] == "bfloat16" and seen["device"] == "cpu"


def test_key_statistics_run_on_a_bf16_model(tiny_llama, tmp_path, monkeypatch):
    """Key statistics are accumulated on the model's device in float64 whatever the model's dtype."""
    from editaudit.editing import corpus as corpus_mod
    from editaudit.editing import covariance
    from editaudit.editing.layers import layout_for

    monkeypatch.setenv("EDITAUDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(corpus_mod, "texts", lambda name=None, say=None: ["France is in Paris and Rome is in Italy ."] * 20)
    got = {}
    for dtype in ("float32", "bfloat16"):
        lm = load_model(tiny_llama, dtype=dtype, device="cpu")
        name = layout_for(lm.model).rewrite_name(2)
        got[dtype] = covariance.second_moments(lm.model, lm.tokenizer, {2: name}, model_key=f"k-{dtype}",
                                               tokens=100, seq_len=25)[2].matrix
    assert got["bfloat16"].dtype is torch.float32
    rel = float((got["bfloat16"] - got["float32"]).norm() / got["float32"].norm())
    assert 0 < rel < 0.05


@no_cuda
def test_gpu_check_script_stops_clearly_without_cuda(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    res = subprocess.run(["bash", str(root / "bench" / "gpu_check.sh")], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "OUT": str(tmp_path)}, timeout=120)
    assert res.returncode == 2
    assert "no CUDA device here" in res.stderr and "nothing was run" in res.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


@no_cuda
def test_scan_cli_checks_device_before_scanning(tiny_llama):
    res = CliRunner().invoke(app, ["scan", str(tiny_llama), "--base", str(tiny_llama), "--device", "cuda:0",
                                   "--no-store", "--format", "json"])
    assert res.exit_code == 2 and "no CUDA device is available here" in res.output
    res = CliRunner().invoke(app, ["scan", str(tiny_llama), "--base", str(tiny_llama), "--device", "cpu",
                                   "--no-store", "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["verdict"] == "clean"


def test_edit_warns_when_16_bits_would_round_a_float32_checkpoint(tiny_llama, tmp_path):
    from editaudit.models.loading import precision_note
    from editaudit.testing import make_tiny_model

    note = precision_note(tiny_llama, "bfloat16", "cpu")
    assert note and "--dtype float32" in note
    assert precision_note(tiny_llama, "float32", "cpu") is None
    assert precision_note(tiny_llama, "auto", "cpu") is None  # float32 on a CPU
    stored16 = make_tiny_model(tmp_path / "bf16", "llama", layers=2, dtype="bfloat16")
    assert precision_note(stored16, "bfloat16", "cpu") is None  # nothing to lose
