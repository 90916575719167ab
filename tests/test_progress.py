"""Typed progress events: the scan, probe and edit services report Stage then Steps through one callback type."""

from __future__ import annotations

import pytest

from editaudit.probing.format import Probe
from editaudit.progress import Note, Stage, Step, stage_steps

FACT = Probe(id="f1", subject="France", prompt="The capital city of {}", target_true="Paris", target_new="Tokyo")
FAST = {"covariance": "identity", "v_weight_decay": 0.0, "clamp": 100.0, "contexts": 1, "context_length": 3,
        "v_steps": 5}


def well_formed(events: list) -> set[str]:
    """Every Step belongs to a stage announced before it; returns the stages seen."""
    announced: set[str] = set()
    for e in events:
        assert isinstance(e, (Stage, Step, Note)), e
        if isinstance(e, Stage):
            announced.add(e.name)
        elif isinstance(e, Step):
            assert e.stage in announced, f"step of {e.stage!r} before its Stage"
    return announced


def test_stage_steps_announce_each_stage_once():
    events: list = []
    emit = stage_steps(events.append)
    emit("compare", 0, 4)
    emit("compare", 4, 4)
    emit("analyse", 1, 2)
    assert events == [Stage("compare", 4), Step("compare", 0, 4), Step("compare", 4, 4), Stage("analyse", 2),
                      Step("analyse", 1, 2)]
    assert events[2].finished and not events[1].finished


@pytest.mark.usefixtures("one_thread")
def test_edit_probe_and_scan_services_report_typed_events(tiny_llama, tmp_path):
    from editaudit.editing import apply_edits
    from editaudit.probing.service import run_probes
    from editaudit.scan.service import ScanOptions, run_scan

    edit_events: list = []
    run = apply_edits(str(tiny_llama), [FACT], "rome", layers=[2], hparams=FAST, out=tmp_path / "s",
                      progress=edit_events.append)
    assert {"editing", "writing checkpoint"} <= well_formed(edit_events)

    probe_events: list = []
    run_probes(run.model.model, run.model.tokenizer, [FACT], progress=probe_events.append)
    assert "probes" in well_formed(probe_events)

    scan_events: list = []
    run_scan(tmp_path / "s", tiny_llama, ScanOptions(read="off"), store=None, progress=scan_events.append)
    stages = well_formed(scan_events)
    assert "compare" in stages and any(isinstance(e, Step) and e.finished for e in scan_events)
