"""The study screen: a store's arms in a table, the chosen arm's curves as sparklines."""

from __future__ import annotations

import asyncio

from textual.app import App
from textual.widgets import DataTable, Sparkline, Static


def _store(path):
    from editaudit.store.studies import StudyStore

    st = StudyStore(path)
    st.save_study("demo", {}, None)
    for seed, new in ((0, [True, False]), (1, [False, False])):
        settings = {"edit": "rome", "n_edits": 2, "ft": "full", "layers": "all", "task": "lm", "seed": seed}
        st.start_cell(f"c{seed}", "demo", "main", "cell", settings)
        metrics = {"edited": {"new": [True, True]}, "after": {"new": new, "intrinsic": [True, True, False]},
                   "residual": {"edit_left": 0.5 + seed * 0.25}}
        history = [{"unit": 0, "stage": "base", "step": -1, "mass_edited": _mass(0.0)},
                   {"unit": 0, "stage": "ft", "step": 0, "val_loss": 3.0, "mass_edited": _mass(0.9)},
                   {"unit": 0, "stage": "ft", "step": 4, "val_loss": 2.5, "mass_edited": _mass(0.3)}]
        st.finish_cell(f"c{seed}", metrics, history, 1.0)
    st.start_cell("ref", "demo", "reference", "reference", {"task": "lm"})
    return path


def _mass(edited: float) -> dict:
    return {"edited": edited, "true": (1 - edited) / 2, "related": 0.0, "other": (1 - edited) / 2}


def test_study_screen_shows_arms_and_curves(tmp_path):
    from editaudit_tui.screens.study import StudyScreen

    db = _store(tmp_path / "study.db")

    class Host(App):
        def on_mount(self) -> None:
            self.push_screen(StudyScreen(db))

    async def go():
        app = Host()
        async with app.run_test(size=(140, 40)) as pilot:
            await pilot.pause()
            screen = app.screen
            table = screen.query_one("#study-arms", DataTable)
            assert table.row_count == 1
            row = table.get_row_at(0)
            assert row[0] == "rome·full·all·lm·n2" and row[1] == "2"
            assert row[2].startswith("100%") and row[3].startswith("25%") and row[5] == "0.62"
            assert list(screen.query_one("#study-loss", Sparkline).data) == [3.0, 2.5]
            assert list(screen.query_one("#study-mass", Sparkline).data) == [0.0, 0.9, 0.3]
            hint = str(screen.query_one("#study-hint", Static).render())
            assert "2 finished cells in 1 arms" in hint

    asyncio.run(go())


def test_study_screen_says_when_there_is_no_store(tmp_path):
    from editaudit_tui.screens.study import StudyScreen

    class Host(App):
        def on_mount(self) -> None:
            self.push_screen(StudyScreen(tmp_path / "missing.db"))

    async def go():
        app = Host()
        async with app.run_test() as pilot:
            await pilot.pause()
            assert "no study store" in str(app.screen.query_one("#study-hint", Static).render())

    asyncio.run(go())
