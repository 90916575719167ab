"""Where editaudit keeps its files (XDG locations) and finds its shipped resources."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from platformdirs import user_cache_dir, user_data_dir

APP = "editaudit"


def cache_dir() -> Path:
    """Converted models, covariance statistics, corpora. Safe to delete."""
    path = Path(os.environ.get("EDITAUDIT_CACHE") or user_cache_dir(APP))
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """The session database lives here unless --db / EDITAUDIT_DB says otherwise."""
    path = Path(user_data_dir(APP))
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_db_path() -> Path:
    env = os.environ.get("EDITAUDIT_DB")
    return Path(env) if env else data_dir() / "editaudit.db"


def resource_dir(name: str) -> Path:
    """A shipped resource folder: ``probes`` or ``data``.

    In an installed wheel they live in ``editaudit/_resources``; in a source
    checkout (editable install, tests) they are the top-level folders.
    """
    packaged = resources.files("editaudit") / "_resources" / name
    if packaged.is_dir():
        return Path(str(packaged))
    source = Path(__file__).resolve().parents[2] / name
    if source.is_dir():
        return source
    raise FileNotFoundError(f"editaudit resource folder {name!r} is missing from this installation")
