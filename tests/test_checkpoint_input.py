"""Bad input gets a clear error, never a crash, hang or unbounded memory."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from typer.testing import CliRunner

from editaudit.checkpoint import open_checkpoint, read_header
from editaudit.checkpoint.header import parse_header_bytes
from editaudit.cli.main import app
from editaudit.errors import BadInput, IncompatibleCheckpoints, UnsafeInput
from editaudit.scan.service import run_scan
from editaudit.testing import plant


def raw_file(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(body) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + body + data)
    return path


def good(path: Path) -> Path:
    save_file({"a": torch.ones(2, 3), "b": torch.zeros(4)}, str(path))
    return path


def test_valid_file_reads(tmp_path):
    h = read_header(good(tmp_path / "x.safetensors"))
    assert set(h.tensors) == {"a", "b"} and h.tensors["a"].shape == (2, 3)


@pytest.mark.parametrize("case, message", [
    ("truncated", "outside"),
    ("too_short", "too short"),
    ("header_longer_than_file", "larger than the file"),
    ("garbage_json", "not valid JSON"),
    ("overlap", "overlap"),
    ("out_of_range", "outside"),
    ("duplicate_key", "duplicate key"),
    ("bad_dtype", "unknown dtype"),
    ("size_mismatch", "needs"),
    ("huge_header", "exceeds"),
    ("not_object", "JSON object"),
])
def test_malformed_safetensors_give_clear_errors(tmp_path, case, message):
    p = tmp_path / f"{case}.safetensors"
    if case == "truncated":
        good(p)
        p.write_bytes(p.read_bytes()[:-8])
    elif case == "too_short":
        p.write_bytes(b"\x01\x02")
    elif case == "header_longer_than_file":
        raw_file(p, {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, length=10_000)
    elif case == "garbage_json":
        raw_file(p, b"{not json at all", b"")
    elif case == "overlap":
        raw_file(p, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                     "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12)
    elif case == "out_of_range":
        raw_file(p, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4)
    elif case == "duplicate_key":
        raw_file(p, b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                    b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4)
    elif case == "bad_dtype":
        raw_file(p, {"a": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    elif case == "size_mismatch":
        raw_file(p, {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 4]}}, b"\0" * 4)
    elif case == "huge_header":
        p.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    elif case == "not_object":
        raw_file(p, [1, 2, 3])
    with pytest.raises(BadInput, match=message):
        read_header(p)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512), st.integers(min_value=0, max_value=4096))
def test_fuzz_header_bytes_never_crash(raw, data_len):
    try:
        parse_header_bytes(raw, data_len)
    except BadInput:
        pass


entry = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I8", "X"]),
    "shape": st.lists(st.integers(min_value=-1, max_value=5), max_size=3),
    "data_offsets": st.lists(st.integers(min_value=-2, max_value=64), min_size=0, max_size=3),
})


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), entry, max_size=5), st.integers(min_value=0, max_value=64))
def test_fuzz_structured_headers(header, data_len):
    """Any header either validates into in-range, non-overlapping tensors or raises BadInput."""
    try:
        tensors, _ = parse_header_bytes(json.dumps(header).encode(), data_len)
    except BadInput:
        return
    spans = sorted((t.start, t.end) for t in tensors.values() if t.end > t.start)
    assert all(0 <= s <= e <= data_len for s, e in spans)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.text(min_size=1, max_size=6), st.one_of(st.text(max_size=12), st.integers()), max_size=4))
def test_fuzz_shard_index(tmp_path_factory, weight_map):
    folder = tmp_path_factory.mktemp("idx")
    good(folder / "model-00001-of-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    try:
        ck = open_checkpoint(folder)
    except BadInput:
        return
    for fname in ck.headers:
        assert (folder / fname).resolve().parent == folder.resolve()


def sharded(folder: Path) -> Path:
    folder.mkdir()
    save_file({"a": torch.ones(2)}, str(folder / "s1.safetensors"))
    save_file({"b": torch.ones(2)}, str(folder / "s2.safetensors"))
    return folder


def write_index(folder: Path, weight_map: dict) -> None:
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_index_naming_parent_directory_is_refused(tmp_path):
    outside = tmp_path / "outside.safetensors"
    good(outside)
    folder = sharded(tmp_path / "m")
    write_index(folder, {"a": "s1.safetensors", "b": "../outside.safetensors"})
    with pytest.raises(UnsafeInput, match="outside"):
        open_checkpoint(folder)
    write_index(folder, {"a": str(outside)})
    with pytest.raises(UnsafeInput, match="outside"):
        open_checkpoint(folder)


def test_symlink_leaving_folder_is_refused(tmp_path):
    outside = good(tmp_path / "elsewhere.safetensors")
    folder = sharded(tmp_path / "m")
    os.symlink(outside, folder / "s3.safetensors")
    write_index(folder, {"a": "s1.safetensors", "b": "s3.safetensors"})
    with pytest.raises(UnsafeInput, match="symlink"):
        open_checkpoint(folder)
    assert open_checkpoint(folder, follow_symlinks=True).tensors["b"][0] == "s3.safetensors"


def test_index_disagreeing_with_shards(tmp_path):
    folder = sharded(tmp_path / "m")
    write_index(folder, {"a": "s2.safetensors", "b": "s2.safetensors"})
    with pytest.raises(BadInput, match="does not contain"):
        open_checkpoint(folder)


def test_duplicate_and_unindexed_tensors_are_noted(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({"a": torch.ones(2), "b": torch.ones(2)}, str(folder / "s1.safetensors"))
    save_file({"a": torch.zeros(2), "c": torch.ones(2)}, str(folder / "s2.safetensors"))
    write_index(folder, {"a": "s2.safetensors", "b": "s1.safetensors"})
    ck = open_checkpoint(folder)
    rules = {n.rule: n for n in ck.notes}
    assert rules["EA210"].data["tensors"]["a"]["loaded_from"] == "s2.safetensors"
    assert "c" in rules["EA211"].data["tensors"]


def test_pickle_only_folder_is_refused_without_unpickling(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    # a pickle that would create a file if anybody unpickled it
    marker = tmp_path / "pwned"
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    (folder / "pytorch_model.bin").write_bytes(payload)
    with pytest.raises(UnsafeInput, match="never unpickles"):
        open_checkpoint(folder)
    with pytest.raises(UnsafeInput):
        open_checkpoint(folder / "pytorch_model.bin")
    assert not marker.exists()


def test_gguf_needs_explicit_conversion(tmp_path):
    p = tmp_path / "m.gguf"
    p.write_bytes(b"GGUF")
    with pytest.raises(BadInput, match="models convert"):
        open_checkpoint(p)


def test_remote_code_and_templates_are_reported(tmp_path, tiny_llama):
    folder = plant(tiny_llama, tmp_path / "s", {})
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "modeling_evil.py").write_text("import os\n")
    (folder / "chat_template.jinja").write_text("{{ ''.__class__.__mro__ }}")
    rules = {n.rule for n in open_checkpoint(folder).notes}
    assert {"EA201", "EA202", "EA222"} <= rules


def test_mismatched_architectures_list_differences(tmp_path, tiny_llama, tiny_gpt2):
    with pytest.raises(IncompatibleCheckpoints) as exc:
        run_scan(tiny_gpt2, tiny_llama)
    assert any("model_type" in d for d in exc.value.differences)
    assert any("missing in suspect" in d for d in exc.value.differences)


def test_cli_reports_bad_input_with_exit_2(tmp_path, tiny_llama):
    runner = CliRunner()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 3)
    res = runner.invoke(app, ["scan", str(bad), "--base", str(tiny_llama), "--no-store"])
    assert res.exit_code == 2 and "too short" in res.output


def test_escape_sequences_in_tensor_names_are_shown_escaped(tmp_path):
    name = "model.layers.0.mlp.down_proj.weight\x1b[31m[bold]x"
    base, sus = tmp_path / "b.safetensors", tmp_path / "s.safetensors"
    w = torch.randn(8, 16)
    save_file({name: w}, str(base))
    save_file({name: w + torch.outer(torch.randn(8), torch.randn(16))}, str(sus))
    res = CliRunner().invoke(app, ["scan", str(sus), "--base", str(base), "--no-store", "--fail-on", "warning"])
    assert res.exit_code == 1
    assert "\x1b[31m" not in res.stdout and "EA106" in res.stdout
    res = CliRunner().invoke(app, ["scan", str(sus), "--base", str(base), "--no-store", "-f", "json"])
    assert json.loads(res.stdout)["tensors"][0]["name"] == name  # data keeps the exact name


class Blocked(BaseException):
    """Raised by the alarm below: not an OSError, so no ``except OSError`` swallows it."""


@pytest.fixture
def no_hang():
    """Fail, rather than hang the suite, if a read blocks (a FIFO nobody writes to)."""
    import signal

    def boom(*_):
        raise Blocked("blocked reading a file that is not a regular file")

    old = signal.signal(signal.SIGALRM, boom)
    signal.setitimer(signal.ITIMER_REAL, 5, 1)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_and_devices_are_refused_not_read(tmp_path, no_hang):
    """A FIFO named like a weight file or chat template blocked the scan forever; a device as the model was a
    NotADirectoryError (an unexpected error)."""
    folder = tmp_path / "m"
    folder.mkdir()
    os.mkfifo(folder / "model.safetensors")
    with pytest.raises(BadInput, match="not a regular file"):
        open_checkpoint(folder)
    (folder / "model.safetensors").unlink()
    good(folder / "model.safetensors")
    os.mkfifo(folder / "chat_template.jinja")
    assert set(open_checkpoint(folder).tensors) == {"a", "b"}
    os.mkfifo(tmp_path / "pipe.safetensors")
    with pytest.raises(BadInput, match="neither"):
        open_checkpoint(tmp_path / "pipe.safetensors")
    with pytest.raises(BadInput, match="neither"):
        open_checkpoint(os.devnull)
