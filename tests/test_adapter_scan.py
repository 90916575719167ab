"""A peft LoRA adapter folder scanned against its base: the A/B pairs are the change, nothing merged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from editaudit.checkpoint import open_checkpoint
from editaudit.checkpoint.adapter import open_adapter
from editaudit.errors import BadInput, IncompatibleCheckpoints
from editaudit.scan.service import ScanOptions, run_scan

EDIT_LAYER = 2
DOWN = f"model.layers.{EDIT_LAYER}.mlp.down_proj.weight"


def _peft_model(base: Path, **lora):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    return get_peft_model(model, LoraConfig(**lora))


@pytest.fixture(scope="module")
def edit_adapter(tiny_llama, tmp_path_factory) -> Path:
    """A LoRA (r=4) on one down_proj whose B·A is a planted rank-one edit, saved by peft itself."""
    pm = _peft_model(tiny_llama, r=4, lora_alpha=8, target_modules=["down_proj"], layers_to_transform=[EDIT_LAYER])
    gen = torch.Generator().manual_seed(1)
    layer = pm.base_model.model.model.layers[EDIT_LAYER].mlp.down_proj
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight  # [4, 128], [64, 4]
    with torch.no_grad():
        a.zero_()
        b.zero_()
        a[0] = torch.randn(a.shape[1], generator=gen)
        b[:, 0] = torch.randn(b.shape[0], generator=gen) * 0.05
    out = tmp_path_factory.mktemp("adapters") / "edit"
    pm.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def task_adapter(tiny_llama, tmp_path_factory) -> Path:
    """A LoRA on attention q/v in every layer with spread spectra: what a task fine-tune leaves."""
    pm = _peft_model(tiny_llama, r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    out = tmp_path_factory.mktemp("adapters") / "task"
    pm.save_pretrained(out)
    return out


def test_delta_is_what_peft_merges(edit_adapter, tiny_llama):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ck = open_adapter(edit_adapter, open_checkpoint(tiny_llama))
    assert set(ck.adapter.modules) == {DOWN}
    mine = ck.adapter.delta(DOWN)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), edit_adapter)
    theirs = model.base_model.model.model.layers[EDIT_LAYER].mlp.down_proj.get_delta_weight("default")
    assert torch.allclose(mine, theirs, atol=1e-7)
    assert mine.abs().max() > 0


def test_scan_finds_the_edited_matrix_from_the_adapter_alone(edit_adapter, tiny_llama):
    report = run_scan(edit_adapter, tiny_llama, ScanOptions(read="off"))
    doc = report.to_dict()
    assert doc["verdict"] == "edited" and doc["suspect"]["layout"] == "adapter"
    assert [t["name"] for t in doc["tensors"]] == [DOWN]
    edit = next(f for f in doc["findings"] if f["rule"] == "EA101")
    assert edit["layers"] == [EDIT_LAYER] and edit["tensors"] == [DOWN]
    assert doc["tensors"][0]["kind"] == "rank-one"
    kind = next(f for f in doc["findings"] if f["rule"] in ("EA230", "EA231"))
    assert kind["rule"] == "EA230" and "knowledge edit" in kind["message"]
    assert kind["details"]["adapter"]["checks"] == {"few_modules": True, "rank_one_ish": True,
                                                    "mlp_out_only": True, "narrow_layers": True}
    assert report.exit_code() == 1


def test_task_adapter_is_called_one(task_adapter, tiny_llama):
    doc = run_scan(task_adapter, tiny_llama, ScanOptions(read="off")).to_dict()
    rules = {f["rule"] for f in doc["findings"]}
    assert "EA231" in rules and "EA230" not in rules and "EA101" not in rules
    assert "EA104" in rules  # low-rank attention changes: the merged-LoRA signature
    assert len(doc["tensors"]) == 2 * 6
    summary = next(f for f in doc["findings"] if f["rule"] == "EA231")["details"]["adapter"]
    assert summary["checks"]["few_modules"] is False and summary["checks"]["mlp_out_only"] is False


def test_cli_scans_an_adapter_dir(edit_adapter, tiny_llama):
    from typer.testing import CliRunner

    from editaudit.cli.main import app

    res = CliRunner().invoke(app, ["scan", str(edit_adapter), "--base", str(tiny_llama), "--format", "json",
                                   "--read", "off", "--no-store"])
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)
    assert any(f["rule"] == "EA101" and f["tensors"] == [DOWN] for f in doc["findings"])


def test_wrong_base_and_bad_adapters_are_refused(edit_adapter, tiny_gpt2, tmp_path):
    with pytest.raises(IncompatibleCheckpoints):
        run_scan(edit_adapter, tiny_gpt2, ScanOptions(read="off"))
    bad = tmp_path / "dora"
    bad.mkdir()
    cfg = json.loads((edit_adapter / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(BadInput, match="DoRA"):
        run_scan(bad, tiny_gpt2, ScanOptions(read="off"))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text(json.dumps(cfg))
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04.")
    with pytest.raises(BadInput, match="pickle"):
        run_scan(pickled, tiny_gpt2, ScanOptions(read="off"))
