"""``mitigate`` with peft LoRA adapters: an adapter folder as the suspect (its base plus ΔW, never merged on disk by
the user) for revert, the base-free erase and LoRA fine-tuning; ``--out-format adapter`` written as a peft adapter
whose ΔW reproduces the mitigated weights (Llama and GPT-2's Conv1D), refused where an adapter cannot hold the
result; and ``--resume`` refusing a state saved under another ``--dtype`` or ``--out-format``.

Tolerances: weights compared across two runs on bitwise-equal suspects, or through peft's float32 merge of a
written adapter, must agree to 1e-6 absolute (the tiny models' weights are ~0.02–1; a wrong factor, scaling or
orientation is off by orders of magnitude more)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import editaudit.models.loading as loading
from editaudit.cli.main import app
from editaudit.errors import BadInput
from editaudit.mitigation.service import MitigationEvent, MitigationOptions, run_mitigation
from editaudit.mitigation.train import Interrupted, TrainConfig
from editaudit.progress import Step
from editaudit.store import Store
from editaudit.testing import SENTENCES, edited_pair, make_tiny_model, plant, rank_delta

pytestmark = pytest.mark.usefixtures("one_thread")

LAYER = 2
DOWN = f"model.layers.{LAYER}.mlp.down_proj.weight"
Q = f"model.layers.{LAYER}.self_attn.q_proj.weight"
ATOL = 1e-6


def weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def peft_merged(base: Path, adapter: Path) -> dict:
    """The base with ``adapter`` merged by peft itself (the reference for "base + ΔW")."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload()
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


def assert_weights_close(got: dict, want: dict, names) -> None:
    for name in names:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=ATOL, msg=name)


@pytest.fixture(scope="module")
def llama_base(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("mitad") / "base", "llama", layers=6)


def lora_adapter(base: Path, out: Path, task_module: bool = True) -> Path:
    """A peft LoRA on layer 2 saved by peft itself: down_proj carries a planted rank-one edit; with ``task_module``
    q_proj carries a rank-4 task-like change that is no edit."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    targets = ["down_proj", "q_proj"] if task_module else ["down_proj"]
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                        LoraConfig(r=4, lora_alpha=8, target_modules=targets, layers_to_transform=[LAYER]))
    layer = pm.base_model.model.model.layers[LAYER]
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        a, b = layer.mlp.down_proj.lora_A["default"].weight, layer.mlp.down_proj.lora_B["default"].weight
        a.zero_()
        b.zero_()
        a[0] = torch.randn(a.shape[1], generator=gen)
        b[:, 0] = torch.randn(b.shape[0], generator=gen) * 0.05
        if task_module:
            qb = layer.self_attn.q_proj.lora_B["default"].weight
            qb.copy_(torch.randn(qb.shape, generator=gen) * 0.02)
    pm.save_pretrained(out)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    return out


@pytest.fixture(scope="module")
def edit_adapter(llama_base, tmp_path_factory) -> tuple[Path, Path]:
    """The edit-plus-task adapter, and its twin: the same adapter merged by peft into a checkpoint on disk (what a
    run on the adapter must never need, and the reference for what it must give)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("mitad")
    adapter = lora_adapter(llama_base, root / "adapter")
    twin = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_base), adapter).merge_and_unload()
    twin.save_pretrained(root / "twin", safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (llama_base / f).exists():
            (root / "twin" / f).write_bytes((llama_base / f).read_bytes())
    return adapter, root / "twin"


# -- adapter in ------------------------------------------------------------------------------------------------

def test_revert_of_an_adapter_suspect_is_the_arm_on_base_plus_delta(llama_base, edit_adapter, tmp_path):
    """The adapter alone, its base taken from adapter_config.json: the edit module goes back to the base exactly,
    the task module keeps its ΔW, everything else is the base's; the same as reverting the merged twin."""
    adapter, twin = edit_adapter
    res = CliRunner().invoke(app, ["mitigate", str(adapter), "--goal", "erase", "--revert", "--out",
                                   str(tmp_path / "out"), "-f", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout[res.stdout.index("{"):])
    assert doc["suspect"] == str(adapter) and doc["base"] == str(llama_base)
    assert doc["input"]["format"] == "adapter" and set(doc["input"]["modules"]) == {DOWN, Q}
    assert doc["output"] == {"format": "merged", "path": str(tmp_path / "out"), "adapter_merged_into": str(llama_base)}
    assert doc["evidence"]["tensors"] == [DOWN] and doc["evidence"]["components"] == {DOWN: 1}
    [reverted] = doc["arms"]["revert"]["reverted"]
    assert reverted["name"] == DOWN and reverted["whole"] is True and reverted["residual_norm"] == 0.0
    assert doc["arms"]["revert"]["rescan"]["edited_tensors_left"] == []
    assert doc["verification"]["out_format"] == "merged" and doc["verification"]["suspect_format"] == "adapter"

    got, base = weights(tmp_path / "out"), weights(llama_base)
    assert got.keys() == base.keys()
    assert {n for n in got if not torch.equal(got[n], base[n])} == {Q}
    assert torch.equal(got[DOWN], base[DOWN])  # the whole ΔW was the edit: the base, bit for bit
    merged = peft_merged(llama_base, adapter)
    assert_weights_close(got, merged, [Q])
    assert not torch.allclose(got[Q], base[Q], atol=1e-4)

    ref = run_mitigation(twin, "erase", MitigationOptions(base=str(llama_base), out=tmp_path / "ref", revert=True),
                         store=Store())
    assert ref.evidence.tensors == [DOWN]
    assert_weights_close(got, weights(tmp_path / "ref"), base)

    # adapter in, adapter out: what is left of the adapter is its task module, at its rank
    res = run_mitigation(adapter, "erase", MitigationOptions(out=tmp_path / "lora", revert=True, out_format="adapter"),
                         store=Store())
    assert res.output["modules"] == {Q.removesuffix(".weight"): 4}
    assert_weights_close(peft_merged(llama_base, tmp_path / "lora"), got, base)


def test_reverting_an_edit_only_adapter_gives_the_base_and_an_empty_adapter(llama_base, tmp_path):
    adapter = lora_adapter(llama_base, tmp_path / "adapter", task_module=False)
    res = run_mitigation(adapter, "erase", MitigationOptions(out=tmp_path / "lora", revert=True, out_format="adapter"),
                         store=Store())
    assert res.arms["revert"].reverted[0]["whole"] and res.arms["revert"].rescan["verdict"] == "clean"
    assert res.output["zero_change"] is True and res.output["modules"] == {DOWN.removesuffix(".weight"): 1}
    assert not any(t.any() for t in load_file(str(tmp_path / "lora" / "adapter_model.safetensors")).values())
    base = weights(llama_base)
    merged = peft_merged(llama_base, tmp_path / "lora")
    assert all(torch.equal(merged[n], base[n]) for n in base)


def test_lora_arm_on_an_adapter_suspect_matches_the_merged_twin(llama_base, edit_adapter, tmp_path):
    adapter, twin = edit_adapter
    prose = tmp_path / "prose.txt"
    prose.write_text("\n\n".join(" ".join(SENTENCES[i:] + SENTENCES[:i]) for i in range(len(SENTENCES))))
    cfg = TrainConfig(method="lora", steps=2, eval_every=2, batch_size=4, seq_len=24, lr=1e-3, rank=2, alpha=4)
    for name, suspect in (("adapter", adapter), ("twin", twin)):
        opts = MitigationOptions(base=str(llama_base), out=tmp_path / name, method="lora", layers=str(LAYER),
                                 modules="mlp", task="lm", data=prose, train=cfg, val_size=2, device="cpu")
        res = run_mitigation(suspect, "erase", opts, store=Store())
        assert set(res.plan.params) == {f"model.layers.{LAYER}.mlp.{m}_proj.weight" for m in ("gate", "up", "down")}
    got, ref, base = weights(tmp_path / "adapter"), weights(tmp_path / "twin"), weights(llama_base)
    assert {n for n in got if not torch.equal(got[n], base[n])} == {Q, *res.plan.params}
    assert_weights_close(got, ref, base)


def test_projection_erase_of_an_adapter_suspect_matches_the_merged_twin(llama_base, edit_adapter, tmp_path,
                                                                        word_corpus):
    adapter, twin = edit_adapter
    subjects = [{"subject": "France", "prompt": "The capital city of {}", "layer": LAYER}]
    settings = {"cov_tokens": 3000, "cov_seq_len": 60, "contexts": 0}
    runs = {}
    for name, suspect in (("adapter", adapter), ("twin", twin)):
        opts = MitigationOptions(base=str(llama_base), out=tmp_path / name, method="project", project=dict(settings),
                                 subjects=subjects)
        runs[name] = run_mitigation(suspect, "erase", opts, store=Store())
    got, ref, base = weights(tmp_path / "adapter"), weights(tmp_path / "twin"), weights(llama_base)
    assert runs["adapter"].arms["project"].layers == [LAYER]
    assert got.keys() == base.keys()
    assert {n for n in got if not torch.equal(got[n], base[n])} == {DOWN, Q}  # a checkpoint of its own
    assert not torch.allclose(got[DOWN], peft_merged(llama_base, adapter)[DOWN], atol=1e-4)  # re-solved
    assert_weights_close(got, ref, base)

    opts = MitigationOptions(out=tmp_path / "lora", method="project", project=dict(settings), subjects=subjects,
                             out_format="adapter")  # the base: the adapter's own
    res = run_mitigation(adapter, "erase", opts, store=Store())
    assert set(res.output["modules"]) == {DOWN.removesuffix(".weight"), Q.removesuffix(".weight")}
    assert_weights_close(peft_merged(llama_base, tmp_path / "lora"), got, base)


# -- adapter out -----------------------------------------------------------------------------------------------

def test_adapter_output_loads_with_peft_and_reproduces_the_merged_result(llama_base, tmp_path):
    """A merged suspect: a rank-one edit in down_proj and a rank-3 change in q_proj. Reverting keeps q_proj's change,
    so the adapter holds q_proj at rank 3, scaling 1, and nothing for down_proj (back at the base within rounding)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    w = weights(llama_base)
    suspect = plant(llama_base, tmp_path / "suspect", {
        DOWN: rank_delta(tuple(w[DOWN].shape), 1, 0.3 * float(w[DOWN].norm()), seed=1),
        Q: rank_delta(tuple(w[Q].shape), 3, 0.1 * float(w[Q].norm()), seed=2)})
    merged = run_mitigation(suspect, "erase", MitigationOptions(base=str(llama_base), out=tmp_path / "merged",
                                                                revert=True), store=Store())
    res = run_mitigation(suspect, "erase", MitigationOptions(base=str(llama_base), out=tmp_path / "lora", revert=True,
                                                             out_format="adapter"), store=Store())
    out = tmp_path / "lora"
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    q_module = Q.removesuffix(".weight")
    assert res.output["modules"] == {q_module: 3} and res.output["zero_change"] is False
    assert res.verification["out_format"] == "adapter" and merged.verification["out_format"] == "merged"
    assert res.to_dict()["output"]["format"] == "adapter"
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["rank_pattern"] == {q_module: 3} and cfg["alpha_pattern"] == {q_module: 3}
    assert cfg["base_model_name_or_path"] == str(llama_base.resolve()) and cfg["fan_in_fan_out"] is False
    stored = load_file(str(out / "adapter_model.safetensors"))
    assert {k: tuple(v.shape) for k, v in stored.items()} == {
        f"base_model.model.{q_module}.lora_A.weight": (3, 64), f"base_model.model.{q_module}.lora_B.weight": (64, 3)}

    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_base), out)
    assert peft_model.base_model.model.model.layers[LAYER].self_attn.q_proj.scaling["default"] == 1.0
    theirs = {n: t.detach() for n, t in peft_model.merge_and_unload().state_dict().items()}
    mine = weights(tmp_path / "merged")
    assert_weights_close(theirs, mine, mine)
    assert res.output["max_abs_error"] <= ATOL
    # the run measured and re-scanned the adapter as written (base + ΔW in memory)
    assert res.arms["revert"].rescan["edited_tensors_left"] == []


@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("mitad_gpt2")
    base = make_tiny_model(root / "base", "gpt2", layers=4)
    name = "transformer.h.3.mlp.c_proj.weight"  # Conv1D: stored [in, out]
    w = weights(base)[name]
    suspect = plant(base, root / "suspect", {name: rank_delta(tuple(w.shape), 1, 0.3 * float(w.norm()))})
    text = root / "prose.txt"
    text.write_text("\n\n".join(" ".join(SENTENCES[i:] + SENTENCES[:i]) for i in range(len(SENTENCES))))
    return base, suspect, text


def test_gpt2_conv1d_lora_run_written_as_an_adapter(gpt2_pair, tmp_path):
    """LoRA fine-tuning of GPT-2's layer 3 (Conv1D, fan_in_fan_out), written both ways: peft's merge of the adapter
    is the merged checkpoint; the planted edit in mlp.c_proj is part of the change relative to the base (rank 1 + 2)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, suspect, text = gpt2_pair
    cfg = TrainConfig(method="lora", steps=2, eval_every=2, batch_size=4, seq_len=24, lr=1e-3, rank=2, alpha=4)
    common = dict(base=str(base), method="lora", layers="3", task="lm", data=text, train=cfg, val_size=2,
                  device="cpu")
    run_mitigation(suspect, "erase", MitigationOptions(out=tmp_path / "merged", **common), store=Store())
    res = run_mitigation(suspect, "erase", MitigationOptions(out=tmp_path / "lora", out_format="adapter", **common),
                         store=Store())
    cfg_doc = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg_doc["fan_in_fan_out"] is True
    ranks = res.output["modules"]
    assert set(ranks) == {f"transformer.h.3.{m}" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert ranks["transformer.h.3.mlp.c_proj"] == 3 and set(ranks.values()) <= {2, 3}
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "lora")
    theirs = {n: t.detach() for n, t in peft_model.merge_and_unload().state_dict().items()}
    mine = weights(tmp_path / "merged")
    assert {n for n in mine if not torch.equal(mine[n], weights(base)[n])} == {f"{m}.weight" for m in ranks}
    assert_weights_close(theirs, mine, mine)


@pytest.mark.parametrize("extra,message", [
    ("model.layers.1.input_layernorm.weight", "not 2-D linear weights"),
    ("model.layers.4.mlp.up_proj.weight", "not low-rank"),
])
def test_adapter_output_refused_where_an_adapter_cannot_hold_the_result(llama_base, tmp_path, extra, message):
    w = weights(llama_base)
    change = torch.full_like(w[extra], 0.1) if w[extra].ndim == 1 else \
        0.1 * torch.randn(w[extra].shape, generator=torch.Generator().manual_seed(3))  # a dense, full-rank change
    suspect = plant(llama_base, tmp_path / "suspect", {
        DOWN: rank_delta(tuple(w[DOWN].shape), 1, 0.3 * float(w[DOWN].norm()), seed=1), extra: change})
    opts = MitigationOptions(base=str(llama_base), out=tmp_path / "out", revert=True, out_format="adapter")
    with pytest.raises(BadInput, match=rf"{message}.*{extra}.*--out-format merged"):
        run_mitigation(suspect, "erase", opts, store=Store())
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_adapter_output_needs_a_base_before_any_model_loads(llama_base, tmp_path, monkeypatch):
    loads: list = []
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: loads.append(a) or pytest.fail("a model loaded"))
    suspect = plant(llama_base, tmp_path / "suspect", {})
    opts = MitigationOptions(out=tmp_path / "out", method="project", out_format="adapter",
                             subjects=[{"subject": "France", "prompt": "The capital city of {}", "layer": LAYER}])
    with pytest.raises(BadInput, match="relative to the base: pass --base"):
        run_mitigation(suspect, "erase", opts, store=Store())
    with pytest.raises(BadInput, match="--out-format must be one of merged, adapter"):
        run_mitigation(suspect, "erase", MitigationOptions(out=tmp_path / "out", out_format="lora"), store=Store())
    assert loads == [] and not (tmp_path / "out").exists()


def test_cli_takes_out_format(llama_base, tmp_path, monkeypatch):
    import editaudit.mitigation.service as service

    seen: dict = {}

    def fake(suspect, goal, options, **kwargs):
        seen["options"] = options
        raise BadInput("stop here")

    monkeypatch.setattr(service, "run_mitigation", fake)
    args = ["mitigate", str(llama_base), "--goal", "erase", "--revert", "--base", str(llama_base), "--out",
            str(tmp_path / "out")]
    res = CliRunner().invoke(app, args + ["--out-format", "adapter"])
    assert res.exit_code == 2 and "stop here" in res.output
    assert seen["options"].out_format == "adapter"
    CliRunner().invoke(app, args)
    assert seen["options"].out_format == "merged"
    bad = CliRunner().invoke(app, args + ["--out-format", "lora"])
    assert bad.exit_code == 2 and "Invalid value" in bad.output


# -- resume ----------------------------------------------------------------------------------------------------

def test_resume_refuses_another_dtype_or_out_format_before_any_work(tmp_path, monkeypatch):
    base, suspect, text = edited_pair(tmp_path / "pair", DOWN, SENTENCES)
    cfg = TrainConfig(steps=4, eval_every=2, batch_size=4, seq_len=24, lr=1e-3)
    opts = dict(base=str(base), out=tmp_path / "out", method="full", layers=str(LAYER), task="lm", data=text,
                train=cfg, val_size=2, device="cpu")
    cancel = threading.Event()
    with pytest.raises(Interrupted):
        run_mitigation(suspect, "erase", MitigationOptions(**opts), store=Store(), cancel=cancel,
                       progress=lambda ev: isinstance(ev, Step) and ev.done >= 1 and cancel.set())
    saved = json.loads((tmp_path / ".out.resume" / "run.json").read_text())
    assert saved["dtype"] == "float32" and saved["out_format"] == "merged"

    loads: list = []
    real = loading.load_model
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    sessions = len(Store().sessions())
    with pytest.raises(BadInput, match="made with --dtype float32, not bfloat16.*without --resume"):
        run_mitigation(suspect, "erase", MitigationOptions(**opts, dtype="bfloat16"), store=Store(), resume=True)
    with pytest.raises(BadInput, match="made with --out-format merged, not adapter"):
        run_mitigation(suspect, "erase", MitigationOptions(**opts, out_format="adapter"), store=Store(), resume=True)
    assert loads == [] and len(Store().sessions()) == sessions  # refused before any model, scan or session
    assert (tmp_path / ".out.resume" / "run.json").exists()  # the saved state is kept for the right resume

    events: list = []
    run_mitigation(suspect, "erase", MitigationOptions(**opts), store=Store(), resume=True, progress=events.append)
    assert [e.data["step"] for e in events if isinstance(e, MitigationEvent) and e.kind == "resume"] == [0]
    assert (tmp_path / "out" / "model.safetensors").exists()
