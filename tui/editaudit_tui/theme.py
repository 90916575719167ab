"""The app's colour theme: calm dark surfaces, with red kept for what a reviewer must look at (edits)."""

from __future__ import annotations

from textual.theme import Theme

EDITAUDIT_THEME = Theme(
    name="editaudit",
    primary="#5B9BD5",
    secondary="#7FB3A6",
    accent="#E0A458",
    warning="#E9C46A",
    error="#E5534B",
    success="#57AB5A",
    foreground="#D8DEE9",
    background="#15191F",
    surface="#1C2129",
    panel="#252B35",
    dark=True,
)

# Fixed colours for verdicts and levels, used in rich Text (independent of the active theme).
VERDICT_STYLE = {
    "edited": "bold #FFFFFF on #B3362F",
    "modified": "bold #15191F on #E9C46A",
    "clean": "bold #15191F on #57AB5A",
}
LEVEL_STYLE = {"error": "#E5534B", "warning": "#E9C46A", "note": "#8B949E"}
STATUS_STYLE = {"done": "#57AB5A", "running": "#5B9BD5", "interrupted": "#E9C46A", "failed": "#E5534B"}
