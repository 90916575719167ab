"""Surgical revert removes only the scan's low-rank edit components, keeps other changes, and verifies."""

from __future__ import annotations

import threading

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from editaudit.cli.main import app
from editaudit.errors import BadInput
from editaudit.mitigation.service import MitigationOptions, run_mitigation
from editaudit.progress import Stage
from editaudit.scan.service import ScanOptions, run_scan
from editaudit.store import Store
from editaudit.testing import finetune, make_tiny_model, plant, rank_delta

MLP = "model.layers.{}.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("rev") / "base", "llama", layers=6, intermediate=256)


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def delta(base, name, rank, rel, seed=0):
    w = weights(base)[name]
    return rank_delta(tuple(w.shape), rank, rel * float(w.norm()), seed)


def test_edit_on_top_of_a_legitimate_fine_tune_is_removed_and_the_fine_tune_kept(base, tmp_path):
    tuned = finetune(base, tmp_path / "tuned", steps=20, lr=1e-4)
    name = MLP.format(2)
    edit = delta(base, name, 1, 0.15)
    suspect = plant(tuned, tmp_path / "suspect", {name: edit})
    res = run_mitigation(suspect, "erase", MitigationOptions(base=str(base), out=tmp_path / "out", revert=True),
                         store=Store())
    arm = res.arms["revert"]
    assert res.evidence.tensors == [name] and res.evidence.components == {name: 1}
    w_base, w_tuned, w_sus, w_out = weights(base), weights(tuned), weights(suspect), weights(tmp_path / "out")
    # only the edited tensor changed; the fine-tune everywhere else is byte for byte the suspect's
    assert {n for n in w_out if not torch.equal(w_out[n], w_sus[n])} == {name}
    # the edit is gone, the fine-tune of that same matrix stays
    assert float((w_out[name] - w_tuned[name]).norm()) < 0.05 * float(edit.norm())
    ft = float((w_tuned[name] - w_base[name]).norm())
    assert abs(float((w_out[name] - w_base[name]).norm()) - ft) < 0.1 * ft
    # verification: the weight-space share left is ~0 and a re-scan finds no edit, only the fine-tune
    assert arm.residual["mean_share"] < 0.01
    assert arm.rescan["edited_tensors_left"] == [] and arm.rescan["edit_findings"] == []
    rescan = run_scan(tmp_path / "out", base, ScanOptions(read_edits=False))
    assert {f.rule for f in rescan.findings} & {"EA101", "EA102", "EA103"} == set()
    assert "EA105" in {f.rule for f in rescan.findings}
    assert [r["status"] for r in Store().rows("finetune_runs")] == ["done"]


def test_memit_like_run_of_layers_is_reverted_to_the_base(base, tmp_path):
    names = [MLP.format(i) for i in (2, 3, 4)]
    suspect = plant(base, tmp_path / "s", {n: delta(base, n, 3, 0.1, seed=i) for i, n in enumerate(names)})
    res = run_mitigation(suspect, "erase", MitigationOptions(base=str(base), out=tmp_path / "out", revert=True),
                         store=Store())
    assert sorted(res.evidence.tensors) == names and set(res.evidence.components.values()) == {3}
    w_base, w_out = weights(base), weights(tmp_path / "out")
    for n in names:
        assert float((w_out[n] - w_base[n]).norm()) < 1e-5 * float(w_base[n].norm())
    assert all(r["removed_share"] > 0.999 for r in res.arms["revert"].reverted)


def test_surgical_revert_reports_typed_events(base, tmp_path):
    """Progress comes as editaudit.progress events (a stage, then a step per tensor), never bare numbers."""
    from editaudit.checkpoint import open_checkpoint
    from editaudit.mitigation.evidence import EditEvidence
    from editaudit.mitigation.revert import surgical_revert
    from editaudit.progress import Note, Stage, Step

    names = [MLP.format(i) for i in (2, 4)]
    suspect = plant(base, tmp_path / "s", {n: delta(base, n, 1, 0.2, seed=i) for i, n in enumerate(names)})
    evidence = EditEvidence(layers=[2, 4], tensors=names, components={n: 1 for n in names})
    events: list = []
    tensors, reports = surgical_revert(open_checkpoint(suspect), open_checkpoint(base), evidence,
                                       progress=events.append)
    assert sorted(tensors) == sorted(names) and len(reports) == 2
    assert all(isinstance(e, (Stage, Step, Note)) for e in events), events
    assert events[0] == Stage("reverting tensors", 2)
    assert [(e.done, e.total) for e in events[1:]] == [(0, 2), (1, 2), (2, 2)]
    assert all(e.stage == "reverting tensors" for e in events[1:]) and events[-1].finished


def test_revert_uses_the_stored_scan_and_its_base(base, tmp_path):
    suspect = plant(base, tmp_path / "s", {MLP.format(1): delta(base, MLP.format(1), 1, 0.2)})
    run_scan(suspect, base, ScanOptions(read_edits=False), store=Store())
    runner = CliRunner()
    res = runner.invoke(app, ["mitigate", str(suspect), "--goal", "erase", "--revert", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "remove the top 1 component" in " ".join(res.stderr.split())
    assert "re-scan: edited tensors left" in res.stdout
    assert torch.allclose(weights(tmp_path / "o")[MLP.format(1)], weights(base)[MLP.format(1)], atol=1e-6)


def test_revert_bad_input(base, tmp_path):
    suspect = plant(base, tmp_path / "s", {MLP.format(1): delta(base, MLP.format(1), 1, 0.2)})
    res = CliRunner().invoke(app, ["mitigate", str(suspect), "--goal", "erase", "--revert", "--out",
                                   str(tmp_path / "o3")])
    assert res.exit_code == 2 and "needs the base" in " ".join(res.stderr.split())
    with pytest.raises(BadInput, match="needs the base"):
        run_mitigation(suspect, "erase", MitigationOptions(out=tmp_path / "o", revert=True), store=Store())
    with pytest.raises(BadInput, match="--goal erase"):
        run_mitigation(suspect, "preserve", MitigationOptions(base=str(base), out=tmp_path / "o", revert=True),
                       store=Store())
    clean = plant(base, tmp_path / "clean", {})
    with pytest.raises(BadInput, match="found none"):
        run_mitigation(clean, "erase", MitigationOptions(base=str(base), out=tmp_path / "o2", revert=True),
                       store=Store())
    assert not any((tmp_path / o).exists() for o in ("o", "o2", "o3"))


def test_cancelled_revert_writes_nothing(base, tmp_path):
    suspect = plant(base, tmp_path / "s", {MLP.format(1): delta(base, MLP.format(1), 1, 0.2)})
    cancel = threading.Event()

    def on(ev):
        if isinstance(ev, Stage) and "removing edit components" in ev.name:
            cancel.set()

    with pytest.raises(KeyboardInterrupt):
        run_mitigation(suspect, "erase", MitigationOptions(base=str(base), out=tmp_path / "o", revert=True),
                       store=Store(), cancel=cancel, progress=on)
    assert not (tmp_path / "o").exists()
    assert [r["status"] for r in Store().rows("finetune_runs")] == ["interrupted"]
    assert Store().sessions()[0]["status"] == "interrupted"


def test_a_suspect_without_tokenizer_is_reverted_and_measured_through_the_base(base, tmp_path):
    """A suspect shipped as weights and config.json only: with the base given, revert runs and measures it through
    the base's tokenizer; the output is the suspect as shipped (no tokenizer added), with the edit taken out."""
    suspect = plant(base, tmp_path / "s", {MLP.format(2): delta(base, MLP.format(2), 1, 0.2)})
    for f in suspect.glob("tokenizer*"):
        f.unlink()
    res = CliRunner().invoke(app, ["--db", str(tmp_path / "m.db"), "mitigate", str(suspect), "--base", str(base),
                                   "--goal", "erase", "--revert", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "reading it through" in " ".join(res.stderr.split())
    assert torch.allclose(weights(tmp_path / "o")[MLP.format(2)], weights(base)[MLP.format(2)], atol=1e-6)
    assert not list((tmp_path / "o").glob("tokenizer*"))
