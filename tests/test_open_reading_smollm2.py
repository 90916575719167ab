"""Open reading on the embedded SmolLM2-135M (integration): a real ROME edit, read with no candidate list."""

from __future__ import annotations

import pytest

from editaudit.scan.service import ScanOptions, run_scan

pytestmark = pytest.mark.integration


def test_rome_edit_is_read_blind(smollm2, tmp_path):
    """A regression check on one edit the reader reads today (Samsung → Switzerland); the reader's rates over
    many edits are measured by scripts/open_reading_eval.py, not here."""
    from editaudit.editing.service import apply_edits
    from editaudit.probing.sets import load_set

    fact = next(f for f in load_set("smollm2-135m-edit") if f.subject == "Samsung")
    run = apply_edits(smollm2, [fact], "rome", out=tmp_path / "suspect")
    assert run.results[0].success
    doc = run_scan(tmp_path / "suspect", smollm2, ScanOptions(read="open"), store=None).to_dict()
    edit = next(f for f in doc["findings"] if f["rule"] == "EA101")
    assert edit["method"]["name"] == "rome"
    read = [r for r in edit["readings"] if r["status"] == "edit"]
    assert read, edit["readings"]
    assert read[0]["subject"].endswith("Samsung")
    assert read[0]["after"].split()[0] == fact.target_new.split()[0]
    assert read[0]["before"].split()[0] == fact.target_true.split()[0]
