"""SVG snapshots of the app's main screens, rendered from a fixture store with fixed ids, paths and times.

Update after an intended change with ``pytest tests/test_tui_snapshots.py --snapshot-update`` and look at
the SVGs under tests/snapshots/test_tui_snapshots/ before committing them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import pytest_textual_snapshot as textual_snapshot

from snapshots.fixture_store import AUDIT_ID, MITIGATE_ID, load_fixture_store

SIZE = (120, 40)


class _SnapshotsInTestsFolder(textual_snapshot.SVGImageExtension):
    """Keep the SVGs under tests/snapshots/<test module>/ rather than syrupy's __snapshots__."""

    @classmethod
    def dirname(cls, *, test_location) -> str:
        return str(Path(test_location.filepath).parent / "snapshots" / test_location.basename)


@pytest.fixture(autouse=True)
def _fixed_world(monkeypatch, tmp_path):
    monkeypatch.setattr(textual_snapshot, "SVGImageExtension", _SnapshotsInTestsFolder)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    # the built-in probe sets change as the project grows; the form is shown without them
    monkeypatch.setattr("editaudit_tui.screens.new_audit.probe_sets", lambda: [])
    monkeypatch.setattr("editaudit_tui.screens.probes.probe_sets", lambda: [])
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def app(tmp_path):
    from editaudit_tui.app import EditauditApp

    load_fixture_store(tmp_path / "fixture.db")
    return EditauditApp(tmp_path / "fixture.db")


def opened(sid: str, *keys: str):
    async def run_before(pilot) -> None:
        await pilot.pause()
        pilot.app.open_session(sid)
        await pilot.pause()
        for key in keys:
            await pilot.press(key)
        await pilot.pause()

    return run_before


def test_sessions_screen(snap_compare, app):
    assert snap_compare(app, terminal_size=SIZE)


def test_delete_asks_first(snap_compare, app):
    assert snap_compare(app, press=["d"], terminal_size=SIZE)


def test_new_audit_screen(snap_compare, app):
    async def run_before(pilot) -> None:
        await pilot.press("n")
        await pilot.pause()
        for field in pilot.app.screen.query("Input"):
            field.cursor_blink = False  # a blinking cursor would make the picture depend on timing

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_scan_screen(snap_compare, app):
    """A MEMIT-like edit over layers 3–5 and a merged-LoRA-like change on attention q/v."""
    assert snap_compare(app, terminal_size=SIZE, run_before=opened(AUDIT_ID))


def test_scan_screen_low_rank_energy_and_second_finding(snap_compare, app):
    assert snap_compare(app, terminal_size=SIZE, run_before=opened(AUDIT_ID, "t", "down"))


def test_mitigation_screen(snap_compare, app):
    assert snap_compare(app, terminal_size=SIZE, run_before=opened(MITIGATE_ID))


def test_probes_screen(snap_compare, app):
    """Base, suspect and mitigated answers to the audit's facts, coloured by agreement."""
    assert snap_compare(app, terminal_size=SIZE, run_before=opened(AUDIT_ID, "p"))
