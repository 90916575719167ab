"""The app starts, and shows stored sessions, without importing torch or transformers (only work
that needs a model imports them, inside its worker thread)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

BROWSE = """
import asyncio, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from snapshots.fixture_store import AUDIT_ID, MITIGATE_ID, load_fixture_store
from editaudit_tui.app import EditauditApp

db = Path({tmp!r}) / "fixture.db"
load_fixture_store(db)

async def main():
    app = EditauditApp(db)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert type(app.screen).__name__ == "SessionsScreen", app.screen
        app.open_session(AUDIT_ID)
        await pilot.pause()
        assert app.screen.doc is not None
        await pilot.press("t", "p")
        await pilot.pause()
        assert type(app.screen).__name__ == "ProbesScreen" and app.screen.rows
        await pilot.press("escape", "escape")
        app.open_session(MITIGATE_ID)
        await pilot.pause()
        assert app.screen.state == "stored"
        await pilot.press("escape", "n")
        await pilot.pause()
        assert type(app.screen).__name__ == "NewAuditScreen"

asyncio.run(main())
print("MODULES " + " ".join(sys.modules))
"""


def test_browsing_sessions_never_imports_torch(tmp_path):
    proc = subprocess.run([sys.executable, "-c", BROWSE.format(tests=str(TESTS), tmp=str(tmp_path))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = set(proc.stdout.split("MODULES ", 1)[1].split())
    assert "editaudit_tui.screens.scan" in modules and "textual" in modules
    assert not {m for m in modules if m.split(".")[0] in ("torch", "transformers", "safetensors", "peft")}


def test_entry_point_is_the_app():
    from importlib import metadata

    from editaudit_tui.app import main

    [ui] = [ep for ep in metadata.entry_points(group="editaudit.ui")]
    assert ui.load() is main
