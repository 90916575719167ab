"""Hub repository ids resolved against a local cache laid out as huggingface_hub lays it out (no network)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from editaudit.checkpoint import open_checkpoint
from editaudit.checkpoint.hub import checkpoint_label, hub_origin, parse_hub_id, resolve_hub
from editaudit.errors import BadInput, UnsafeInput
from editaudit.models.registry import resolve_model

OLD = "1" * 40
NEW = "2" * 40


def _add_snapshot(cache: Path, repo: str, commit: str, files: dict[str, Path | bytes], refs: dict[str, str]) -> Path:
    """One snapshot of ``repo``: files stored once under blobs/ (named by content hash), linked from snapshots/."""
    storage = cache / ("models--" + repo.replace("/", "--"))
    snap = storage / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    (storage / "blobs").mkdir(exist_ok=True)
    for name, src in files.items():
        data = src.read_bytes() if isinstance(src, Path) else src
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    (storage / "refs").mkdir(exist_ok=True)
    for ref, c in refs.items():
        (storage / "refs" / ref).write_text(c)
    return snap


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_llama):
    """A cache holding org/tiny at two commits (main → NEW, tag v1 → OLD) and org/pickled with .bin only."""
    cache = tmp_path / "hub"
    files = {p.name: p for p in tiny_llama.iterdir() if p.is_file()}
    _add_snapshot(cache, "org/tiny", OLD, files, {"v1": OLD})
    changed = dict(files, **{"config.json": json.dumps({**json.loads((tiny_llama / "config.json").read_text()),
                                                           "note": "new"}).encode()})
    _add_snapshot(cache, "org/tiny", NEW, changed, {"main": NEW})
    _add_snapshot(cache, "org/pickled", OLD, {"config.json": files["config.json"], "pytorch_model.bin": b"\x80\x04."},
                  {"main": OLD})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_parse_hub_id():
    assert parse_hub_id("org/name") == ("org/name", None)
    assert parse_hub_id("HuggingFaceTB/SmolLM2-135M@v1.0") == ("HuggingFaceTB/SmolLM2-135M", "v1.0")
    assert parse_hub_id("org/name@refs/pr/3") == ("org/name", "refs/pr/3")
    for not_an_id in ("smollm2-135m", "/abs/path", "./rel/x", "../x/y", "a/b/c", "org/na me", "org/name@"):
        assert parse_hub_id(not_an_id) is None, not_an_id


def test_branch_tag_and_commit_pin_the_snapshot(hub_cache):
    main = resolve_hub("org/tiny")
    assert main.commit == NEW and main.path.name == NEW
    assert json.loads((main.path / "config.json").read_text())["note"] == "new"
    tagged = resolve_hub("org/tiny@v1")
    assert tagged.commit == OLD and "note" not in json.loads((tagged.path / "config.json").read_text())
    assert resolve_hub(f"org/tiny@{OLD}").path == tagged.path
    # the one place a checkpoint argument is resolved takes hub ids too
    assert resolve_model("org/tiny@v1") == tagged.path
    origin = hub_origin(tagged.path)
    assert origin == {"repo_id": "org/tiny", "commit": OLD, "requested": "org/tiny@v1"}
    assert checkpoint_label(tagged.path) == f"org/tiny@{OLD[:12]}"


def test_snapshot_symlinks_into_blobs_are_accepted_but_others_are_not(hub_cache, tmp_path):
    ck = open_checkpoint(resolve_hub("org/tiny").path)
    assert ck.layout == "folder" and ck.tensors
    # a folder linking a weight file somewhere else is still refused
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    src = next((hub_cache / "models--org--tiny" / "snapshots" / NEW).glob("*.safetensors"))
    (elsewhere / "model.safetensors").symlink_to(src.resolve())
    (elsewhere / "config.json").write_text((src.parent / "config.json").read_text())
    with pytest.raises(UnsafeInput, match="symlink"):
        open_checkpoint(elsewhere)


def test_offline_miss_says_what_to_do(hub_cache):
    with pytest.raises(BadInput, match="HF_HUB_OFFLINE is set.*not in the local Hub cache") as err:
        resolve_hub("org/absent")
    assert "hf download org/absent" in str(err.value)
    with pytest.raises(BadInput, match="not in the local Hub cache"):
        resolve_hub("org/tiny@no-such-branch")


def test_pickle_only_repo_is_refused(hub_cache):
    with pytest.raises(UnsafeInput, match="only as pickle files.*pytorch_model.bin"):
        resolve_hub("org/pickled")


def test_local_paths_and_registry_names_take_precedence(hub_cache, tmp_path, monkeypatch, tiny_llama):
    # a local folder spelled like a hub id is the folder
    local = tmp_path / "org" / "tiny"
    shutil.copytree(tiny_llama, local)
    monkeypatch.chdir(tmp_path)
    assert resolve_model("org/tiny") == Path("org/tiny")
    with pytest.raises(BadInput, match="neither an existing path"):
        resolve_model("not a model")


def test_online_listing_refuses_pickle_only_before_fetching(monkeypatch, tmp_path):
    """With network, the repo's file list is checked first: nothing is downloaded for a .bin-only repo."""
    import huggingface_hub

    class Sibling:
        def __init__(self, name):
            self.rfilename = name

    class Info:
        sha = "3" * 40
        siblings = [Sibling("config.json"), Sibling("pytorch_model.bin"), Sibling("sub/model.safetensors")]

    fetched = []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo, revision=None, files_metadata=False: Info())
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: fetched.append(k))
    with pytest.raises(UnsafeInput, match="pickle"):
        resolve_hub("org/pickled")
    assert fetched == []

    Info.siblings = [Sibling("config.json"), Sibling("model.safetensors"), Sibling("pytorch_model.bin"),
                     Sibling("modeling_evil.py"), Sibling("tokenizer.json")]
    snap = tmp_path / "models--org--ok" / "snapshots" / Info.sha
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: fetched.append(k) or str(snap))
    got = resolve_hub("org/ok@main")
    assert got.commit == Info.sha and got.requested == "main"
    assert fetched[0]["revision"] == Info.sha  # pinned: the commit, not the branch name
    assert sorted(fetched[0]["allow_patterns"]) == ["config.json", "model.safetensors", "tokenizer.json"]


def test_scan_records_the_pinned_commits(hub_cache):
    from editaudit.scan.service import ScanOptions, run_scan
    from editaudit.store import Store

    store = Store()
    report = run_scan("org/tiny", "org/tiny@v1", ScanOptions(read_edits=False), store=store)
    doc = report.to_dict()
    assert doc["suspect"]["hub"] == {"repo_id": "org/tiny", "commit": NEW, "requested": "org/tiny"}
    assert doc["base"]["hub"]["commit"] == OLD and doc["base"]["hub"]["requested"] == "org/tiny@v1"
    assert doc["verdict"] == "clean"
    row = store.db["sessions"].get(report.session_id)
    assert row["title"] == f"scan org/tiny@{NEW[:12]}" and NEW in row["suspect"] and OLD in row["base"]


def test_cli_offline_miss_exits_2_with_the_reason(hub_cache, tiny_llama):
    from typer.testing import CliRunner

    from editaudit.cli.main import app

    res = CliRunner().invoke(app, ["scan", "org/absent@v2", "--base", str(tiny_llama), "--no-store", "--format", "json"])
    assert res.exit_code == 2
    assert "HF_HUB_OFFLINE is set" in res.output and "org/absent@v2" in res.output
    res = CliRunner().invoke(app, ["scan", "org/tiny", "--base", "org/tiny@v1", "--no-store", "--format", "json",
                                   "--read", "off"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["suspect"]["hub"]["commit"] == NEW


def test_unknown_repo_online_names_both_readings(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub import errors as hub_errors

    class Missing(hub_errors.RepositoryNotFoundError):
        def __init__(self):  # the Hub's 404, without an HTTP response to build it from
            Exception.__init__(self, "404")

    def missing(self, repo, revision=None, files_metadata=False):
        raise Missing()

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", missing)
    with pytest.raises(BadInput, match="'models/typo' is not an existing path, and models/typo is not a model"):
        resolve_model("models/typo")
