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


def test_adapter_runs_as_base_plus_delta(edit_adapter, tiny_llama):
    """load_model on an adapter folder: the base with ΔW added, as peft computes it (no peft at load)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from editaudit.models.loading import load_model

    open_adapter(edit_adapter, open_checkpoint(tiny_llama))
    mine = load_model(edit_adapter, device="cpu")
    assert mine.path == edit_adapter
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), edit_adapter).eval()
    ids = torch.tensor([[5, 17, 42, 9, 77, 3]])
    with torch.no_grad():
        a, b = mine.model(input_ids=ids).logits, theirs(input_ids=ids).logits
        base = load_model(tiny_llama, device="cpu").model(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, base, atol=1e-4)  # the adapter does change the outputs


def test_scan_probe_stage_runs_the_adapted_model(edit_adapter, tiny_llama):
    from editaudit.probing.format import Probe

    facts = [Probe(id="a", subject="France", prompt="The capital of {} is", target_true="Paris"),
             Probe(id="b", subject="Japan", prompt="The language of {} is", target_true="Japanese")]
    doc = run_scan(edit_adapter, tiny_llama, ScanOptions(read="off", facts=facts, run_probes=True)).to_dict()
    assert doc["probes"]["n"] == 2  # both models ran: the base, and the base with the adapter's ΔW


def test_adapter_without_a_findable_base_is_a_clear_error(edit_adapter, tmp_path):
    import shutil

    from editaudit.models.loading import load_model

    moved = tmp_path / "moved"
    shutil.copytree(edit_adapter, moved)
    cfg = json.loads((moved / "adapter_config.json").read_text())
    (moved / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(BadInput, match="cannot be found here.*--base"):
        load_model(moved, device="cpu")


def test_open_reading_names_the_subject_of_an_adapter_edit(tiny_llama, tmp_path, monkeypatch):
    """A ROME-like rank-one edit keyed on one subject, delivered as a LoRA: the blind reading names it."""
    from editaudit.editing import corpus, covariance
    from editaudit.models.loading import load_model
    from editaudit.scan.keys import context_ids, keys_of

    def unavailable(*a, **k):
        raise corpus.CorpusUnavailable("no corpus in this test")

    monkeypatch.setattr(covariance, "second_moments", unavailable)
    path, layer = "model.layers.1.mlp.down_proj", 1
    lm = load_model(tiny_llama, device="cpu")
    ids = lm.tokenizer(" Colosseum", add_special_tokens=False)["input_ids"]
    k = keys_of(lm.model, [path], [context_ids(lm.tokenizer) + ids])[path][0]
    out_dir = torch.randn(lm.model.config.hidden_size, generator=torch.Generator().manual_seed(2)) * 20.0
    pm = _peft_model(tiny_llama, r=2, lora_alpha=4, target_modules=["down_proj"], layers_to_transform=[layer])
    lora = pm.base_model.model.model.layers[layer].mlp.down_proj
    with torch.no_grad():  # ΔW = (alpha/r)·B·A = outer(out_dir, k / (k·k))
        lora.lora_A["default"].weight.zero_()
        lora.lora_B["default"].weight.zero_()
        lora.lora_A["default"].weight[0] = k / (k @ k)
        lora.lora_B["default"].weight[:, 0] = out_dir / 2.0
    adapter = tmp_path / "colosseum"
    pm.save_pretrained(adapter)
    doc = run_scan(adapter, tiny_llama, ScanOptions(read="open")).to_dict()
    edit = next(f for f in doc["findings"] if f["rule"] == "EA101")
    assert edit["layers"] == [layer]
    readings = edit["readings"]
    assert readings and readings[0]["subject"].endswith("Colosseum") and readings[0]["fire"] > 0.95


def test_embedding_lora_and_its_saved_base_layer(tiny_llama, tmp_path):
    """LoRA on the token embedding: ΔE = s·(B·A)ᵀ, added to the embedding layer peft saves alongside."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from editaudit.models.loading import load_model

    pm = _peft_model(tiny_llama, r=2, lora_alpha=4, target_modules=["embed_tokens"])
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_embedding" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    out = tmp_path / "emb"
    pm.save_pretrained(out)
    ck = open_adapter(out, open_checkpoint(tiny_llama))
    assert set(ck.adapter.modules) == {"model.embed_tokens.weight"}
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), out).eval()
    want = theirs.base_model.model.model.embed_tokens.get_delta_weight("default")
    assert torch.allclose(ck.adapter.delta("model.embed_tokens.weight"), want, atol=1e-6)
    ids = torch.tensor([[5, 17, 42, 9]])
    with torch.no_grad():
        assert torch.allclose(load_model(out, device="cpu").model(input_ids=ids).logits,
                              theirs(input_ids=ids).logits, atol=1e-5)
    doc = run_scan(out, tiny_llama, ScanOptions(read="off")).to_dict()
    assert {f["rule"] for f in doc["findings"]} >= {"EA108", "EA231"}  # embedding rows changed; a task adapter


def test_gpt2_conv1d_adapter_maps_and_transposes(tiny_gpt2, tmp_path):
    """GPT-2 stores its MLP weights [in, out] (Conv1D): peft's fan_in_fan_out ΔW comes out transposed."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    pm = _peft_model(tiny_gpt2, r=2, lora_alpha=2, target_modules=["c_proj"], layers_to_transform=[3],
                     fan_in_fan_out=True)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    out = tmp_path / "gpt2"
    pm.save_pretrained(out)
    base = open_checkpoint(tiny_gpt2)
    ck = open_adapter(out, base)
    mlp = next(n for n in ck.adapter.modules if "mlp.c_proj" in n)
    assert mlp in base.tensors and len(ck.adapter.modules) == 2  # attn.c_proj and mlp.c_proj of layer 3
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_gpt2), out)
    block = theirs.base_model.model.transformer.h[3]
    assert torch.allclose(ck.adapter.delta(mlp), block.mlp.c_proj.get_delta_weight("default"), atol=1e-6)
    attn = next(n for n in ck.adapter.modules if "attn.c_proj" in n)  # square: only fan_in_fan_out tells
    want = block.attn.c_proj.get_delta_weight("default")
    assert want.shape[0] == want.shape[1] and not torch.allclose(want, want.T)
    assert torch.allclose(ck.adapter.delta(attn), want, atol=1e-6)


def test_adapter_where_a_model_checkpoint_is_needed_says_so(edit_adapter):
    with pytest.raises(BadInput, match="is a peft adapter.*editaudit scan"):
        open_checkpoint(edit_adapter)
