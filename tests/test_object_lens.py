"""A hypernetwork edit's object read from its output side (scan/object_lens.py), on planted top-layer edits."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from editaudit.scan.object_lens import agreed_objects, continues_word, starts_word
from editaudit.scan.service import ScanOptions, run_scan
from editaudit.scan.wording import finding_readings
from editaudit.testing import plant

pytestmark = pytest.mark.usefixtures("one_thread")


def test_word_pieces_are_told_by_the_tokenizers_marker():
    assert starts_word("ĠKolk") and starts_word("▁Tokyo") and starts_word("Ġ1990")
    assert not starts_word("Kolk") and not starts_word("iry") and not starts_word("Ġ,") and not starts_word(None)
    assert continues_word("ata") and not continues_word("▁is") and not continues_word("Ġis")
    assert not continues_word("Ata") and not continues_word("'s")


def test_an_object_needs_two_layers_and_a_clear_z():
    per_layer = {27: [("Kolk", 1, 11.6), ("Denmark", 2, 9.9), ("ATM", 3, 4.2)],
                 28: [("Denmark", 2, 13.4), ("Kolk", 1, 9.8), ("Richard", 4, 6.7)],
                 29: [("Kolk", 1, 11.9), ("ATM", 3, 5.0), ("denmark", 5, 7.0)]}
    objects = agreed_objects(per_layer, limit=10)
    # most layers first, then the higher z; the casefolded duplicate counts as the same word; one layer alone is
    # not enough ('Richard'), nor two layers at a z that stays below Z_MIN ('ATM')
    assert [(o["word"], o["layers"]) for o in objects] == [("Denmark", [27, 28, 29]), ("Kolk", [27, 28, 29])]
    assert [o["word"] for o in agreed_objects(per_layer, limit=1)] == ["Denmark"]
    # an edit of one layer needs that layer only
    assert [o["word"] for o in agreed_objects({29: [("Kolk", 1, 8.0)]}, limit=3)] == ["Kolk"]


def _toward(model_dir, token: str) -> torch.Tensor:
    """A residual-stream direction the logit lens reads as ``token`` (through the final norm's scale)."""
    w = load_file(str(model_dir / "model.safetensors"))
    unembed = w.get("lm_head.weight", w["model.embed_tokens.weight"]).double()
    from tokenizers import Tokenizer

    tid = Tokenizer.from_file(str(model_dir / "tokenizer.json")).token_to_id(token)
    row = unembed[tid] - unembed.mean(dim=0)
    return (row / w["model.norm.weight"].double()).float()


def test_scan_reads_a_top_layer_rank_one_edit_as_its_object(tiny_llama, tmp_path):
    layers = [4, 5]  # the last two of six: where MEND writes
    g = torch.Generator().manual_seed(0)
    out_dir = _toward(tiny_llama, "▁Tokyo")
    deltas = {}
    for layer in layers:
        u = torch.randn(128, generator=g)
        deltas[f"model.layers.{layer}.mlp.down_proj.weight"] = torch.outer(out_dir, u / u.norm()) * 3.0
    suspect = plant(tiny_llama, tmp_path / "suspect", deltas)
    doc = run_scan(suspect, tiny_llama, ScanOptions(read="open"), store=None).to_dict()
    edits = [f for f in doc["findings"] if f["rule"] == "EA102"]
    assert len(edits) == 1 and edits[0]["layers"] == layers and edits[0]["method"]["name"] == "mend"
    readings = edits[0]["readings"]
    assert [(r["after"], r["status"], r["source"], r["layers"]) for r in readings] == \
        [("Tokyo", "edit", "output lens", layers)]
    assert readings[0]["subject"] == ""  # nothing to search for: mitigation's targets skip it
    assert finding_readings(edits[0]) == ["? · ? · Tokyo (promoted in layers 4, 5; subject not read)"]
