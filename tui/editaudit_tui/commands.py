"""Command-palette entries (ctrl+p) for the main actions, plus whatever the current screen offers.

A screen lists its own entries in ``palette_commands()`` as (title, help, callback); the app-wide ones
are a new audit, the sessions list, and opening any stored session by id or title.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from textual.command import DiscoveryHit, Hit, Hits, Provider

Entry = tuple[str, str, Callable[[], object]]


def _open_study(app) -> Callable[[], object]:
    def open_study() -> object:
        from .screens.study import StudyScreen

        return app.push_screen(StudyScreen())
    return open_study


class EditauditCommands(Provider):
    def _entries(self) -> list[Entry]:
        app = self.app
        entries: list[Entry] = [
            ("New audit", "Scan a suspect checkpoint against its base", app.new_audit),  # type: ignore[attr-defined]
            ("Sessions", "Back to the list of stored sessions", app.show_sessions),  # type: ignore[attr-defined]
            ("Study", "Open a study store (editaudit study run): arms and curves", _open_study(app)),
            ("Database location", "Show which session database the app uses",
             lambda: app.notify(app.db_location, title="session database", markup=False)),  # type: ignore[attr-defined]
        ]
        screen_entries = getattr(self.screen, "palette_commands", None)
        if callable(screen_entries):
            entries = list(screen_entries()) + entries
        return entries

    def _session_entries(self) -> list[Entry]:
        from .store_views import list_sessions

        try:
            rows = list_sessions(self.app.store, limit=100)  # type: ignore[attr-defined]
        except Exception:
            return []
        return [(f"Open session {r.id}", f"{r.kind} · {r.title} · {r.verdict or r.status}",
                 partial(self.app.open_session, r.id)) for r in rows]  # type: ignore[attr-defined]

    async def discover(self) -> Hits:
        for title, help_text, callback in self._entries():
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, callback in self._entries() + self._session_entries():
            score = max(matcher.match(title), matcher.match(help_text) * 0.8)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)
