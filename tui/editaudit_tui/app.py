"""Placeholder until the interactive app lands: says so, and points at the headless commands."""

from __future__ import annotations

from pathlib import Path


def main(db: Path | None = None) -> int:
    print("The interactive editaudit app is not built yet; use the headless commands (editaudit --help).")
    return 0
