"""`pip install .` gives a working editaudit from any directory, with probes/ and data/ shipped."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{proc.stderr[-3000:]}")
    return next(out.glob("editaudit-*.whl"))


def test_wheel_ships_core_app_and_resources(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "editaudit/cli/main.py" in names and "editaudit_tui/app.py" in names
    assert "editaudit/_resources/data/models.json" in names
    assert any(n.startswith("editaudit/_resources/probes/") for n in names) or not any((ROOT / "probes").iterdir())
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "editaudit = editaudit.cli.main:run" in text and "editaudit_tui.app:main" in text


def test_installed_wheel_runs_from_another_directory(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True)
    code = ("import editaudit, sys; from editaudit.paths import resource_dir; "
            "assert str(editaudit.__file__).startswith(sys.argv[1]), editaudit.__file__; "
            "print(resource_dir('data'))")
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code, str(target)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(target))
    cli = subprocess.run([sys.executable, "-c", "from editaudit.cli.main import run; run()", "models", "list"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert cli.returncode == 0 and "smollm2-135m" in cli.stdout, cli.stderr
