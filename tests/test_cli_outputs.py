"""Where outputs go: ``-o`` into a folder, a pipe, a device, a symlink or an unwritable place, and ``--out`` over
the inputs. A bad ``-o`` fails before the work, with one clear line; nothing that is not a regular file is
ever replaced by one."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from editaudit.atomic import atomic_write_text
from editaudit.cli.main import app
from editaudit.errors import CannotWrite
from editaudit.store import Store

runner = CliRunner()


@pytest.fixture
def pair(tmp_path):
    """A one-tensor base and a suspect with a rank-one change: scanned in well under a second."""
    name = "model.layers.0.mlp.down_proj.weight"
    base, sus = tmp_path / "b.safetensors", tmp_path / "s.safetensors"
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    save_file({name: w}, str(base))
    save_file({name: w + torch.outer(torch.ones(8), torch.ones(16))}, str(sus))
    return base, sus


def scan(pair, *args):
    base, sus = pair
    return runner.invoke(app, ["scan", str(sus), "--base", str(base), "-f", "json", *args])


def test_output_that_is_a_folder_fails_before_the_scan(tmp_path, pair):
    folder = tmp_path / "reports"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    res = scan(pair, "-o", str(folder))
    assert res.exit_code == 2, res.output
    assert "is a folder" in res.stderr and "IsADirectoryError" not in res.stderr, res.stderr
    assert Store(os.environ["EDITAUDIT_DB"]).sessions() == []  # refused before any work
    assert os.listdir(folder) == ["keep.txt"]


def test_output_below_a_file_fails_before_the_scan(tmp_path, pair):
    (tmp_path / "afile").write_text("x")
    res = scan(pair, "-o", str(tmp_path / "afile" / "r.json"))
    assert res.exit_code == 2
    assert "cannot write" in res.stderr and "Error:" not in res.stderr, res.stderr
    assert Store(os.environ["EDITAUDIT_DB"]).sessions() == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_pipe_is_written_into_not_replaced(tmp_path):
    """``-o /dev/stdout`` or a FIFO: renaming a temporary file over it replaced the device or pipe with a
    regular file (run as root, ``-o /dev/null`` replaced /dev/null itself)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        atomic_write_text(fifo, '{"ok": 1}\n')
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)
        assert json.loads(os.read(reader, 1 << 16)) == {"ok": 1}
    finally:
        os.close(reader)


def test_a_symlink_is_written_through(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


def test_outputs_get_the_umask_mode_not_the_temporary_files_private_one(tmp_path):
    """Written through private temporary files (0600, folders 0700), reports and checkpoints came out unreadable
    to the group and to others whatever the umask; a file written over keeps its own mode."""
    from editaudit.atomic import atomic_dir

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.json", "{}")
        assert stat.S_IMODE(os.stat(tmp_path / "report.json").st_mode) == 0o644
        with atomic_dir(tmp_path / "ckpt") as folder:
            (folder / "model.safetensors").write_bytes(b"x")
        assert stat.S_IMODE(os.stat(tmp_path / "ckpt").st_mode) == 0o755
        os.umask(0o077)
        atomic_write_text(tmp_path / "private.json", "{}")
        assert stat.S_IMODE(os.stat(tmp_path / "private.json").st_mode) == 0o600
        os.chmod(tmp_path / "report.json", 0o640)
        atomic_write_text(tmp_path / "report.json", "[]")
        assert stat.S_IMODE(os.stat(tmp_path / "report.json").st_mode) == 0o640
    finally:
        os.umask(old)


def test_write_errors_name_the_output_not_a_temporary_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CannotWrite, match=r"cannot write .*afile/sub/r\.json") as exc:
        atomic_write_text(tmp_path / "afile" / "sub" / "r.json", "x")
    assert isinstance(exc.value, OSError)  # callers that handle file errors still do
    with pytest.raises(CannotWrite, match="is a folder"):
        atomic_write_text(tmp_path, "x")


def test_an_output_folder_over_the_inputs_is_refused(tmp_path):
    """``mitigate --out SUSPECT --overwrite`` replaced the suspect with its mitigated copy, and ``--out`` a folder
    holding the inputs deleted them; ``edit --out BASE --overwrite`` the same. Refused before any work."""
    from safetensors.torch import load_file

    from editaudit.paths import resource_dir
    from editaudit.testing import make_tiny_model, plant, rank_delta

    root = tmp_path / "models"
    base = make_tiny_model(root / "base", "llama", layers=2, hidden=32, intermediate=64)
    name = "model.layers.1.mlp.down_proj.weight"
    w = load_file(str(base / "model.safetensors"))[name]
    suspect = plant(base, root / "suspect", {name: rank_delta(tuple(w.shape), 1, 0.15 * float(w.norm()))})
    before = {p: (p / "model.safetensors").read_bytes() for p in (base, suspect)}
    for out in (suspect, base, root, root / ".." / "models" / "suspect"):
        res = runner.invoke(app, ["mitigate", str(suspect), "--goal", "erase", "--revert", "--base", str(base),
                                  "--out", str(out), "--overwrite"])
        assert res.exit_code == 2, res.output
        assert "would replace the input" in res.stderr, res.stderr
    fact = tmp_path / "fact.jsonl"
    fact.write_text((resource_dir("probes") / "facts.jsonl").read_text().splitlines()[0] + "\n")
    res = runner.invoke(app, ["edit", str(base), "--method", "ft", "--facts", str(fact), "--out", str(base),
                              "--overwrite"])
    assert res.exit_code == 2 and "would replace the input" in res.stderr, res.output
    assert {p: (p / "model.safetensors").read_bytes() for p in (base, suspect)} == before


def test_a_report_over_an_input_or_inside_an_input_folder_is_refused(tmp_path, pair):
    """``scan S -o S/model.safetensors`` replaced the checkpoint under audit with its own JSON report; a report
    written into an input folder changes what a later scan of it reads. Refused before any work, inputs untouched."""
    from editaudit.testing import make_tiny_model

    base, sus = pair
    before = sus.read_bytes()
    res = scan(pair, "-o", str(sus))
    assert res.exit_code == 2 and "is the input" in res.stderr, res.output
    assert sus.read_bytes() == before
    folder = make_tiny_model(tmp_path / "m", "llama", layers=2, hidden=32, intermediate=64)
    weights = folder / "model.safetensors"
    kept = weights.read_bytes()
    for out in (weights, folder / "report.json", folder / "sub" / ".." / "r.json"):
        res = runner.invoke(app, ["scan", str(folder), "--base", str(folder), "-f", "json", "-o", str(out)])
        assert res.exit_code == 2 and "inside the input" in res.stderr, res.output
    res = runner.invoke(app, ["probe", str(folder), "-o", str(weights)])
    assert res.exit_code == 2 and "inside the input" in res.stderr, res.output
    assert weights.read_bytes() == kept and sorted(p.name for p in folder.iterdir()) == sorted(
        ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
    assert Store(os.environ["EDITAUDIT_DB"]).sessions() == []
    assert scan(pair, "-o", str(tmp_path / "elsewhere.json")).exit_code == 1  # the edit is found; the report written


def test_converting_a_gguf_into_the_folder_that_holds_it_is_refused(tmp_path):
    gguf = tmp_path / "in" / "m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    res = runner.invoke(app, ["models", "convert", str(gguf), str(gguf.parent), "--overwrite"])
    assert res.exit_code == 2 and "would replace the input" in res.stderr, res.output
    assert gguf.read_bytes()[:4] == b"GGUF"
