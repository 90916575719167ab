"""The app's pure helpers: path completion and validation, the scan's arrangement for the screen, the
wizard's proposals, colour scales, and escaping of untrusted text."""

from __future__ import annotations

import asyncio
import math

import pytest
from editaudit_tui.fmt import plain, scale_colour, scale_position
from editaudit_tui.jobs import Job
from editaudit_tui.paths import CheckpointSuggester, check_checkpoint, check_output_folder, complete_path
from editaudit_tui.screens.mitigate import MitigationRequest, default_out, propose
from editaudit_tui.store_views import answer_probability, finding_rows, layer_ranges, likely_editor, map_roles


def test_path_completion(tmp_path):
    (tmp_path / "models" / "suspect-a").mkdir(parents=True)
    (tmp_path / "models" / "weights.safetensors").write_bytes(b"")
    (tmp_path / "models" / "notes.txt").write_text("")
    (tmp_path / "models" / ".hidden").mkdir()
    root = str(tmp_path / "models")
    assert complete_path(root) == root + "/"
    assert complete_path(root + "/sus") == root + "/suspect-a/"
    assert complete_path(root + "/w", (".safetensors",)) == root + "/weights.safetensors"
    assert complete_path(root + "/n", (".safetensors",)) is None  # not a checkpoint file
    assert complete_path(root + "/") == root + "/suspect-a/"  # folders first, hidden ones skipped
    assert complete_path(str(tmp_path / "nowhere" / "x")) is None
    assert asyncio.run(CheckpointSuggester().get_suggestion("smol")) == "smollm2-135m"


def test_checkpoint_checks(tmp_path):
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "model.safetensors").write_bytes(b"")
    (tmp_path / "pickles").mkdir()
    (tmp_path / "pickles" / "pytorch_model.bin").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    (tmp_path / "m.gguf").write_bytes(b"")
    assert check_checkpoint(str(tmp_path / "ok")) is None
    assert check_checkpoint(str(tmp_path / "ok" / "model.safetensors")) is None
    assert check_checkpoint("smollm2-135m") is None
    assert "required" in check_checkpoint("  ")
    assert "does not exist" in check_checkpoint(str(tmp_path / "missing"))
    assert "pickle" in check_checkpoint(str(tmp_path / "pickles"))
    assert "pickle" in check_checkpoint(str(tmp_path / "pickles" / "pytorch_model.bin"))
    assert "no .safetensors" in check_checkpoint(str(tmp_path / "empty"))
    assert "convert" in check_checkpoint(str(tmp_path / "m.gguf"))
    assert "already exists" in check_output_folder(str(tmp_path / "ok"))
    assert check_output_folder(str(tmp_path / "ok"), overwrite=True) is None
    assert check_output_folder(str(tmp_path / "new" / "out")) is None


def test_untrusted_text_is_shown_literally():
    t = plain("[bold red]x[/]\x1b[31m\x07name")
    assert t.plain == "[bold red]x[/]�[31m�name" and not t.spans
    styled = plain("a", "bold")
    styled.append("b")
    assert [(s.start, s.end) for s in styled.spans] == [(0, 1)]  # the style does not leak into appended text


def test_colour_scale():
    assert scale_position(None, "rel_change") is None and scale_position(math.nan, "rel_change") is None
    assert scale_position(0.0, "rel_change") == 0.0 and scale_position(2.0, "rel_change") == 1.0
    assert scale_position(1e-3, "rel_change") == pytest.approx(0.4)  # log scale from 1e-5 to 1
    assert scale_position(0.25, "lowrank_energy") == 0.25
    assert scale_colour(0.0) == "#1f3b73" and scale_colour(1.0) == "#e63946"
    assert scale_colour(-1) == scale_colour(0.0) and scale_colour(2) == scale_colour(1.0)


def test_layer_ranges():
    assert layer_ranges([]) == "-"
    assert layer_ranges([3]) == "3"
    assert layer_ranges([5, 3, 4, 9]) == "3-5,9"
    assert layer_ranges([1, 3, 4]) == "1,3-4"


DOC = {
    "family": "llama", "layers": 8, "verdict": "edited",
    "base": {"path": "/m/base"}, "suspect": {"path": "/m/suspect"},
    "findings": [
        {"rule": "EA102", "level": "error", "kind": "memit-like-edit", "message": "m", "layers": [3, 4, 5], "rank": 2,
         "tensors": [f"model.layers.{i}.mlp.down_proj.weight" for i in (3, 4, 5)],
         "promoted_tokens": [{"token": " Rome", "z": 3.0}], "candidate_subjects": [{"subject": "Japan", "score": 0.4}]},
        {"rule": "EA104", "level": "warning", "kind": "merged-lora", "message": "l", "layers": [0, 1], "rank": 4,
         "tensors": ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"]},
        {"rule": "EA201", "level": "warning", "kind": "remote-code", "message": "r", "layers": [], "tensors": []},
    ],
    "tensors": [{"name": f"model.layers.{i}.mlp.down_proj.weight", "role": "mlp_out"} for i in (3, 4, 5)]
    + [{"name": f"model.layers.{i}.self_attn.q_proj.weight", "role": "attn_q"} for i in (0, 1)],
    "map": {"layers": 8, "roles": ["attn_q", "mlp_out", "norm"], "cells": []},
}


def test_findings_arranged_for_the_table():
    rows = finding_rows(DOC)
    assert [(r.rule, r.layers, r.matrix, r.rank) for r in rows] == [
        ("EA102", "3-5", "mlp.out", "2"), ("EA104", "0-1", "attn.q", "4"), ("EA201", "-", "", "-")]
    assert rows[0].promotes == [" Rome"] and rows[0].subjects == ["Japan"]
    assert map_roles(DOC) == ["attn_q", "attn_k", "attn_v", "attn_o", "mlp_in", "mlp_out", "norm"]
    gpt2 = {**DOC, "family": "gpt2", "map": {"layers": 6, "roles": ["mlp_out"], "cells": []}}
    assert map_roles(gpt2) == ["attn_qkv", "attn_o", "mlp_in", "mlp_out"]


def test_the_named_editor_is_shown_with_its_reason():
    f = {"method": {"name": "alphaedit", "confidence": 0.51, "why": "null-space projected; found without the base"}}
    assert likely_editor(f) == ("alphaedit", "51%", "null-space projected; found without the base")
    assert likely_editor({"method": {"name": "rome", "confidence": "x"}}) == ("rome", "?", "")
    assert likely_editor({}) is None and likely_editor({"method": "rome"}) is None


def test_wizard_proposals_follow_the_scan():
    p = propose(DOC)
    assert (p.goal, p.layers, p.method, p.modules, p.task) == ("erase", "auto", "full", "all", "lm")
    assert "3-5" in p.why["layers"] and "EA102" in p.why["goal"] and "surgical revert" in p.why["method"]
    clean = propose({**DOC, "verdict": "clean", "findings": []})
    assert clean.goal == "preserve" and clean.layers == "0-7" and "no knowledge edit" in clean.why["goal"]


def test_default_output_folder_is_numbered(tmp_path):
    (tmp_path / "suspect").mkdir()
    assert default_out(str(tmp_path / "suspect")) == tmp_path / "suspect-mitigated"
    (tmp_path / "suspect-mitigated").mkdir()
    assert default_out(str(tmp_path / "suspect")) == tmp_path / "suspect-mitigated-2"


def test_request_becomes_the_services_options(tmp_path):
    probes = tmp_path / "p.jsonl"
    probes.write_text('{"id": "a", "subject": "Japan", "prompt": "The capital of {} is", "target_true": "Tokyo",'
                      ' "target_new": "Rome", "kind": "edited"}\n')
    req = MitigationRequest("s", "b", tmp_path / "out", goal="preserve", method="lora", layers="threshold:3",
                            modules="mlp", steps=7, eval_every=2, stop_acc=0.9, batch_size=2, seq_len=16,
                            val_size=3, probe_files=[probes], compare_full=True)
    o = req.options()
    assert (o.base, o.out, o.method, o.layers, o.modules, o.val_size, o.compare_full) == (
        "b", tmp_path / "out", "lora", "threshold:3", "mlp", 3, True)
    assert (o.train.method, o.train.steps, o.train.eval_every, o.train.stop_acc, o.train.batch_size) == (
        "lora", 7, 2, 0.9, 2)
    assert [p.id for p in o.probes] == ["a"]
    revert = MitigationRequest("s", "b", tmp_path / "out", revert=True, compare_full=True).options()
    assert revert.revert and revert.method == "full" and not revert.compare_full


def test_answer_probability_reads_the_top_tokens():
    assert answer_probability({"answer": "Paris", "top": [[" Paris", 0.8], [" Rome", 0.1]]}) == 0.8
    assert answer_probability({"answer": "Lyon", "top": [[" Paris", 0.8]]}) is None


def test_job_reports_how_work_ended():
    job = Job(app=None)  # type: ignore[arg-type]
    assert job.run(lambda: 3).result == 3
    assert job.run(lambda: (_ for _ in ()).throw(KeyboardInterrupt())).cancelled
    failed = job.run(lambda: 1 / 0)
    assert isinstance(failed.error, ZeroDivisionError) and not failed.ok


def test_colours_are_named_once_in_the_theme():
    """No screen or widget carries a colour literal: CSS uses the theme's variables, Rich styles theme.PALETTE."""
    import re
    from pathlib import Path

    import editaudit_tui

    root = Path(editaudit_tui.__file__).parent
    hexes = re.compile(r"#[0-9A-Fa-f]{6}\b")
    found = {str(p.relative_to(root)): hexes.findall(p.read_text(encoding="utf-8"))
             for p in [*root.rglob("*.py"), *root.rglob("*.tcss")]
             if p.name != "theme.py"}
    assert not {k: v for k, v in found.items() if v}
