"""The app's colour theme: calm dark surfaces, with red kept for what a reviewer must look at (edits).

Every colour the app uses is named once here. Widgets styled by CSS use the theme's variables in
``app.tcss`` (``$error``, ``$success``, ``$warning``, ``$accent`` …); Rich renderables built in Python
(``Text`` styles, table cells) take the same colours from :data:`PALETTE` through the names below, so no
screen carries a colour literal of its own.
"""

from __future__ import annotations

from textual.theme import Theme

#: The palette: the theme's own colours, plus two for Rich renderables (muted text and an empty cell).
PALETTE = {
    "primary": "#5B9BD5",
    "secondary": "#7FB3A6",
    "accent": "#E0A458",
    "warning": "#E9C46A",
    "error": "#E5534B",
    "success": "#57AB5A",
    "foreground": "#D8DEE9",
    "background": "#15191F",
    "surface": "#1C2129",
    "panel": "#252B35",
    "muted": "#8B949E",
    "alarm": "#B3362F",
    "banner": "#3B6EA8",  # a neutral verdict's background (a mitigation run): deeper than primary, for white text  # the "edited" verdict's background: deeper than error, so white text reads on it
    "empty": "#555555",  # a heat-map cell with no value
    "ink_dark": "#000000",  # text on a light cell
    "ink_light": "#FFFFFF",  # text on a dark cell
}

EDITAUDIT_THEME = Theme(
    name="editaudit",
    **{k: PALETTE[k] for k in ("primary", "secondary", "accent", "warning", "error", "success", "foreground",
                               "background", "surface", "panel")},
    dark=True,
)

# Names for Rich styles (the same colours as the theme variables of the same name).
PRIMARY, ACCENT, WARNING, ERROR, SUCCESS, MUTED, EMPTY, INK_DARK, INK_LIGHT = (
    PALETTE[k] for k in ("primary", "accent", "warning", "error", "success", "muted", "empty", "ink_dark", "ink_light"))

# Verdicts and levels, used in rich Text.
VERDICT_STYLE = {
    "edited": f"bold {INK_LIGHT} on {PALETTE['alarm']}",
    "modified": f"bold {PALETTE['background']} on {WARNING}",
    "clean": f"bold {PALETTE['background']} on {SUCCESS}",
}
LEVEL_STYLE = {"error": ERROR, "warning": WARNING, "note": MUTED}
STATUS_STYLE = {"done": SUCCESS, "running": PRIMARY, "interrupted": WARNING, "failed": ERROR}
