"""The headless path never imports Textual, and the CLI starts without importing torch."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import editaudit


def headless_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(editaudit.__path__, "editaudit."))


def imported_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_no_headless_module_imports_textual():
    modules = headless_modules()
    assert "editaudit.scan.service" in modules and "editaudit.cli.main" in modules
    code = "\n".join(f"import {m}" for m in modules)
    loaded = imported_after(code)
    assert not {m for m in loaded if m == "textual" or m.startswith("textual.") or m.startswith("editaudit_tui")}


def test_cli_help_does_not_import_torch():
    loaded = imported_after("from editaudit.cli.main import app")
    assert "torch" not in loaded and "transformers" not in loaded
