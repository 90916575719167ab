"""The editaudit app: where a reviewer opens sessions, audits checkpoints, probes and mitigates.

It is a client of the headless core: every action calls the same services as the CLI and writes
the same SQLite sessions. Heavy libraries (torch, transformers) are imported only inside the
worker threads that need them, so the app starts at once.
"""

from __future__ import annotations

import weakref
from pathlib import Path

from textual.app import App
from textual.binding import Binding

from .commands import EditauditCommands
from .theme import EDITAUDIT_THEME


class EditauditApp(App[None]):
    """Sessions → audit (scan) → probes → mitigation → report."""

    TITLE = "editaudit"
    CSS_PATH = "app.tcss"
    COMMANDS = App.COMMANDS | {EditauditCommands}
    BINDINGS = [
        Binding("ctrl+q", "quit", "quit", show=False, priority=True),
        Binding("f1", "help_panel", "keys", show=False),
    ]

    def __init__(self, db: Path | None = None) -> None:
        super().__init__()
        self.db_path = Path(db) if db else None
        self._store = None
        self.jobs: weakref.WeakSet = weakref.WeakSet()  # running work, told to stop when the app quits

    # -- the store -------------------------------------------------------------------------------
    @property
    def store(self):
        """The UI thread's connection to the session database (opened on first use)."""
        if self._store is None:
            self._store = self.new_store()
        return self._store

    def new_store(self):
        """A fresh connection, for a worker thread (SQLite transactions must not interleave)."""
        from editaudit.store import Store

        return Store(self.db_path)

    @property
    def db_location(self) -> str:
        from editaudit.paths import default_db_path

        return str(self.db_path or default_db_path())

    # -- lifecycle ---------------------------------------------------------------------------------
    def on_mount(self) -> None:
        from .screens.sessions import SessionsScreen

        self.register_theme(EDITAUDIT_THEME)
        self.theme = "editaudit"
        self.push_screen(SessionsScreen())

    def stop_jobs(self) -> None:
        """Ask every running job to stop (a service stops at its next check: tensor, step or batch)."""
        for job in list(self.jobs):
            job.cancel.set()

    async def action_quit(self) -> None:
        self.stop_jobs()
        self.exit()

    def on_unmount(self) -> None:
        self.stop_jobs()

    # -- navigation used by screens and the command palette ----------------------------------------
    def action_help_panel(self) -> None:
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def new_audit(self) -> None:
        from .screens.new_audit import NewAuditScreen

        def start(request) -> None:
            if request is not None:
                from .screens.scan import ScanScreen

                self.push_screen(ScanScreen(request=request))

        self.push_screen(NewAuditScreen(), start)

    def open_session(self, sid: str) -> None:
        """Show a stored session in the screen that fits its kind."""
        from editaudit.errors import EditauditError

        from .store_views import session_row

        try:
            row = session_row(self.store, sid)
        except EditauditError as exc:
            self.notify(str(exc), severity="error", markup=False)
            return
        if row.kind == "mitigate":
            from .screens.mitigate_run import MitigationScreen

            self.push_screen(MitigationScreen(sid=row.id))
        elif row.kind == "probe":
            from .screens.probes import ProbesScreen

            self.push_screen(ProbesScreen(sid=row.id))
        else:
            from .screens.scan import ScanScreen

            self.push_screen(ScanScreen(sid=row.id))

    def export_report(self, sid: str) -> None:
        from .screens.export import ExportScreen

        self.push_screen(ExportScreen(sid))

    def show_sessions(self) -> None:
        from .screens.sessions import SessionsScreen

        while len(self.screen_stack) > 2 and not isinstance(self.screen, SessionsScreen):
            self.pop_screen()
        if isinstance(self.screen, SessionsScreen):
            self.screen.refresh_sessions()


def main(db: Path | None = None) -> int:
    """Entry point of ``editaudit`` with no command (the ``editaudit.ui`` entry point)."""
    import os

    # Library progress bars would write over the screen; the app shows its own progress.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    EditauditApp(db).run()
    return 0
