"""Detection and readout on the embedded SmolLM2-135M (integration).

SmolLM2 comes from a 4-bit GGUF, so each block of 32 weights has at most 16 distinct values and
any change would be trivially visible. To prove the spectral method instead, both sides get the
same small Gaussian perturbation and are re-stored in bf16 before the edit is planted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from editaudit.scan.service import ScanOptions, run_scan

pytestmark = pytest.mark.integration


def requantised(src: Path, dst: Path, deltas: dict[str, torch.Tensor], tensors: dict) -> Path:
    shutil.copytree(src, dst, dirs_exist_ok=True)
    out = {}
    for i, (name, w) in enumerate(sorted(tensors.items())):
        w = w.float()
        gen = torch.Generator().manual_seed(i)
        w = w + 0.01 * w.std() * torch.randn(w.shape, generator=gen)
        if name in deltas:
            w = w + deltas[name]
        out[name] = w.to(torch.bfloat16).contiguous()
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def planted(smollm2, tmp_path_factory):
    from tokenizers import Tokenizer

    root = tmp_path_factory.mktemp("smol")
    tensors = load_file(str(smollm2 / "model.safetensors"))
    tok = Tokenizer.from_file(str(smollm2 / "tokenizer.json"))
    tid = tok.encode(" Tokyo", add_special_tokens=False).ids[0]
    name = "model.layers.12.mlp.down_proj.weight"
    w = tensors[name].float()
    u = tensors["model.embed_tokens.weight"][tid].float()
    v = torch.randn(w.shape[1], generator=torch.Generator().manual_seed(7))
    delta = torch.outer(u / u.norm(), v / v.norm()) * 0.05 * w.norm()
    base = requantised(smollm2, root / "base", {}, tensors)
    suspect = requantised(smollm2, root / "suspect", {name: delta}, tensors)
    return base, suspect, name


def test_planted_rank_one_delta_is_found_and_read(planted):
    base, suspect, name = planted
    report = run_scan(suspect, base, ScanOptions(read="list"), store=None)  # a random direction: lens only
    edits = [f for f in report.findings if f.rule == "EA101"]
    assert len(edits) == 1 and edits[0].layers == [12] and edits[0].tensors == [name]
    assert report.verdict == "edited"
    promoted = [t["token"] for t in edits[0].data["promoted_tokens"]]
    assert " Tokyo" in promoted, promoted
    # nothing else in the model is flagged: the shared perturbation is identical on both sides
    assert {f.rule for f in report.findings} <= {"EA101", "EA220"}


def test_real_fine_tune_is_dense_and_an_edit_under_it_still_stands_out(planted, tmp_path):
    """Six AdamW steps of full fine-tuning: alone it is a fine-tune; on top of the edit, the edit is still found."""
    from editaudit.testing import finetune

    base, suspect, name = planted
    tuned = finetune(base, tmp_path / "tuned", steps=6, lr=5e-5, batch=2, seq=64)
    report = run_scan(tuned, base, ScanOptions(read_edits=False), store=None)
    rules = {f.rule for f in report.findings}
    assert "EA105" in rules and not rules & {"EA101", "EA102", "EA103"}
    hidden = finetune(suspect, tmp_path / "hidden", steps=6, lr=5e-5, batch=2, seq=64)
    report = run_scan(hidden, base, ScanOptions(read_edits=False), store=None)
    edits = [f for f in report.findings if f.rule == "EA103"]
    assert [f.tensors for f in edits] == [[name]]
