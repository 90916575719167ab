"""The CUDA path, held against the same work on the CPU: edits, key statistics, probes, the scan and a short
mitigation on ``cuda:0``. Skipped where no GPU is at hand (CI); ``bench/gpu_check.sh`` runs it on one."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from editaudit.cli.main import app
from editaudit.editing import apply_edits
from editaudit.models.loading import load_model, resolve_dtype
from editaudit.probing.format import Probe

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
              pytest.mark.usefixtures("one_thread")]

FAST = {"covariance": "identity", "v_weight_decay": 0.0, "clamp": 100.0, "contexts": 2, "context_length": 4,
        "v_steps": 40}
FACTS = [
    Probe(id="f1", subject="France", prompt="The capital city of {}", target_true="Paris", target_new="Tokyo"),
    Probe(id="f2", subject="Germany", prompt="The official language of {}", target_true="German", target_new="Japanese"),
]
EDITED = "model.layers.2.mlp.down_proj.weight"
GPU = "cuda:0"


def _deltas(base, folder) -> dict[str, torch.Tensor]:
    b, s = load_file(str(base / "model.safetensors")), load_file(str(folder / "model.safetensors"))
    return {n: s[n].double() - b[n].double() for n in s if not torch.equal(s[n], b[n])}


@pytest.mark.parametrize("method", ["rome", "memit", "alphaedit", "ft"])
def test_an_edit_made_on_cuda_matches_the_cpu_edit(tiny_llama, tmp_path, method):
    hp = {"lr": 1e-2} if method == "ft" else dict(FAST, **({"nullspace_rel": 1.0} if method == "alphaedit" else {}))
    layers = [1, 2] if method in ("memit", "alphaedit") else [2]
    deltas = []
    for i, device in enumerate(("cpu", GPU)):
        apply_edits(str(tiny_llama), FACTS, method, layers=layers, hparams=hp, out=tmp_path / f"run{i}",
                    evaluate=False, dtype="float32", device=device)
        deltas.append(_deltas(tiny_llama, tmp_path / f"run{i}"))
    assert deltas[1].keys() == deltas[0].keys() and deltas[0]
    for name, cpu in deltas[0].items():
        gpu = deltas[1][name]
        cos = float((gpu * cpu).sum() / (gpu.norm() * cpu.norm()))
        assert cos > 0.98, (name, cos)
        assert float(gpu.norm() / cpu.norm()) == pytest.approx(1.0, abs=0.05), name


def test_auto_dtype_runs_probes_in_bf16_on_cuda_close_to_float32_on_cpu(tiny_llama):
    from editaudit.probing.service import run_probes

    assert resolve_dtype("auto", GPU) is (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
    gpu = load_model(tiny_llama, dtype="auto", device=GPU)
    cpu = load_model(tiny_llama, dtype="float32", device="cpu")
    assert gpu.device.type == "cuda" and next(gpu.model.parameters()).is_cuda
    rg = run_probes(gpu.model, gpu.tokenizer, FACTS, batch_size=2, top_k=3)
    rc = run_probes(cpu.model, cpu.tokenizer, FACTS, batch_size=2, top_k=3)
    for a, b in zip(rg, rc):
        assert a.to_dict()["p_true"] == pytest.approx(b.to_dict()["p_true"], rel=0.2)


def test_key_statistics_on_cuda_equal_the_cpu_ones(tiny_llama, tmp_path, monkeypatch):
    from editaudit.editing import corpus as corpus_mod
    from editaudit.editing import covariance
    from editaudit.editing.layers import layout_for

    monkeypatch.setenv("EDITAUDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(corpus_mod, "texts", lambda name=None, say=None: ["France is in Paris and Rome is in Italy ."] * 20)
    got = []
    for i, device in enumerate(("cpu", GPU)):
        lm = load_model(tiny_llama, dtype="float32", device=device)
        name = layout_for(lm.model).rewrite_name(2)
        got.append(covariance.second_moments(lm.model, lm.tokenizer, {2: name}, model_key=f"k-{i}",
                                             tokens=100, seq_len=25)[2].matrix.cpu())
    rel = float((got[1] - got[0]).norm() / got[0].norm())
    assert rel < 1e-3


def test_scan_and_a_short_mitigation_on_cuda(tiny_llama, tmp_path, monkeypatch):
    from editaudit.testing import SENTENCES

    monkeypatch.setenv("EDITAUDIT_DB", str(tmp_path / "s.db"))
    apply_edits(str(tiny_llama), FACTS[:1], "rome", layers=[2], hparams=FAST, out=tmp_path / "edited",
                evaluate=False, dtype="float32", device="cpu")
    runs = []
    for device in ("cpu", GPU):
        res = CliRunner().invoke(app, ["scan", str(tmp_path / "edited"), "--base", str(tiny_llama), "--device", device,
                                       "--no-store", "--format", "json"])
        assert res.exit_code == 1, res.output  # edits found
        runs.append(json.loads(res.stdout))
    assert runs[1]["verdict"] == runs[0]["verdict"]
    assert EDITED in res.stdout
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(" ".join(SENTENCES[i:] + SENTENCES[:i]) for i in range(len(SENTENCES))))
    res = CliRunner().invoke(app, ["mitigate", str(tmp_path / "edited"), "--goal", "erase", "--method", "full",
                                   "--layers", "2", "--data", str(text), "--steps", "2", "--eval-every", "2",
                                   "--out", str(tmp_path / "mitigated"), "--device", GPU, "--format", "json"])
    assert res.exit_code in (0, 1), res.output
    out = load_file(str(tmp_path / "mitigated" / "model.safetensors"))
    before = load_file(str(tmp_path / "edited" / "model.safetensors"))
    assert not torch.equal(out[EDITED], before[EDITED])  # trained on the GPU, written back


def test_base_free_project_erase_on_cuda_matches_the_cpu_one(tiny_llama, tmp_path, monkeypatch):
    """The training-free erase reads keys on the model's device and solves on the CPU: the same change either way."""
    from editaudit.testing import word_corpus

    word_corpus(monkeypatch, tmp_path / "cache")
    apply_edits(str(tiny_llama), FACTS[:1], "rome", layers=[2], hparams=FAST, out=tmp_path / "edited",
                evaluate=False, dtype="float32", device="cpu")
    subjects = tmp_path / "subjects.jsonl"
    subjects.write_text(json.dumps({"subject": "France", "prompt": "The capital city of {}", "layer": 2}) + "\n")
    outs = []
    for i, device in enumerate(("cpu", GPU)):
        res = CliRunner().invoke(app, ["mitigate", str(tmp_path / "edited"), "--goal", "erase", "--method", "project",
                                       "--subjects", str(subjects), "--hparam", "cov_tokens=3000", "--hparam",
                                       "cov_seq_len=60", "--device", device, "--out", str(tmp_path / f"p{i}"),
                                       "-f", "json"])
        assert res.exit_code == 0, res.output
        outs.append(load_file(str(tmp_path / f"p{i}" / "model.safetensors"))[EDITED].double())
    edited = load_file(str(tmp_path / "edited" / "model.safetensors"))[EDITED].double()
    cpu, gpu = outs[0] - edited, outs[1] - edited
    assert float(cpu.norm()) > 0
    assert float((gpu - cpu).norm() / cpu.norm()) < 0.05


def test_a_study_runs_on_cuda(tiny_llama, tmp_path):
    """``study.device`` moves the whole grid — edits, fine-tuning, metrics — onto the GPU."""
    from test_study import _doc, _files

    from editaudit.store.studies import StudyStore
    from editaudit.study.config import parse_config
    from editaudit.study.runner import run_study

    doc = _doc(tiny_llama, _files(tmp_path))
    doc["study"]["device"] = GPU
    outcome = run_study(parse_config(doc), StudyStore(tmp_path / "study.db"), tmp_path / "out")
    assert outcome.ran == 2 and not outcome.failed
