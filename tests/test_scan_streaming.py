"""The streaming scan: sharded checkpoints give the same result as whole-file loading, changed tensors
are handed on while the rest is still being read, and memory stays near the largest tensor's float work."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from editaudit.checkpoint import open_checkpoint
from editaudit.checkpoint.reader import WINDOW
from editaudit.scan.compare import compare
from editaudit.scan.names import parse_name
from editaudit.scan.service import ScanOptions, analysis_threads, run_scan
from editaudit.scan.spectral import delta_stats
from editaudit.testing import make_tiny_model, plant, rank_delta

DOWN = "model.layers.{}.mlp.down_proj.weight"


def shard(folder: Path, out: Path, parts: int) -> Path:
    """The same weights as a Hugging Face sharded checkpoint of ``parts`` files (with index)."""
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns("model.safetensors"))
    tensors = load_file(str(folder / "model.safetensors"))
    names = list(tensors)
    step = -(-len(names) // parts)
    weight_map = {}
    for i in range(parts):
        fname = f"model-{i + 1:05d}-of-{parts:05d}.safetensors"
        chunk = {n: tensors[n] for n in names[i * step:(i + 1) * step]}
        save_file(chunk, str(out / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in chunk})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A bf16 base and a suspect with a rank-one and a rank-two edit, single-file."""
    root = tmp_path_factory.mktemp("stream")
    base = make_tiny_model(root / "base", "llama", layers=6, hidden=64, intermediate=256, dtype="bfloat16")
    w = load_file(str(base / "model.safetensors"))
    deltas = {}
    for layer, rank in ((1, 1), (4, 2)):
        m = w[DOWN.format(layer)].float()
        deltas[DOWN.format(layer)] = rank_delta(tuple(m.shape), rank, 0.2 * float(m.norm()), seed=layer)
    return base, plant(base, root / "suspect", deltas)


def reference(base: Path, suspect: Path) -> dict:
    """What the scan must find, computed the plain way: both sides loaded whole, every tensor compared."""
    b, s = load_file(str(base / "model.safetensors")), load_file(str(suspect / "model.safetensors"))
    before = torch.get_num_threads()
    torch.set_num_threads(analysis_threads(before))  # the scan's float work runs on this many threads
    try:
        out = {}
        for name in s:
            if not torch.equal(b[name], s[name]):
                keep = 16 if parse_name(name).role == "mlp_out" else 0
                out[name] = delta_stats(b[name].float(), s[name].float(), "BF16", "BF16", keep_vectors=keep)[0]
        return out
    finally:
        torch.set_num_threads(before)


def test_sharded_scan_equals_the_whole_file_reference(pair, tmp_path):
    base, suspect = pair
    expected = reference(base, suspect)
    whole = run_scan(suspect, base, ScanOptions(read="off"), store=None)
    # differently sharded sides: tensors are paired by name, not by file or position
    sharded = run_scan(shard(suspect, tmp_path / "s", 3), shard(base, tmp_path / "b", 2), ScanOptions(read="off"),
                       store=None)
    assert sorted(expected) == [DOWN.format(1), DOWN.format(4)]
    for report in (whole, sharded):
        got = {c.name.name: c.stats for c in report.changed}
        assert sorted(got) == sorted(expected)
        for name, stats in expected.items():
            assert got[name].kind == stats.kind and got[name].rank_above_noise == stats.rank_above_noise
            assert got[name].singular_values == pytest.approx(stats.singular_values, rel=1e-5)
            assert got[name].rel_change == pytest.approx(stats.rel_change, rel=1e-6)
        assert report.n_unchanged == report.n_tensors - 2
    def found(report):
        return [(f.rule, f.layers, f.tensors) for f in report.findings]

    assert found(sharded) == found(whole)
    assert {c.name.name: c.stats.kind for c in sharded.changed} == {DOWN.format(1): "rank-one",
                                                                     DOWN.format(4): "low-rank"}


def test_a_changed_tensor_is_handed_on_before_the_reading_ends(pair, tmp_path, monkeypatch):
    """Each reader pauses before the tensors stored after the first changed one until that change has
    been reported. A compare that decided only at the end would report it after the last byte (the
    readers give up waiting after 10 s), and the assertion on the byte count would fail."""
    import editaudit.scan.compare as compare_mod
    from editaudit.checkpoint.reader import TensorFile

    base, suspect = pair
    b, s = open_checkpoint(shard(base, tmp_path / "b", 3)), open_checkpoint(shard(suspect, tmp_path / "s", 3))
    fname, info = s.tensors[DOWN.format(1)]
    later = {n for n, (f, i) in s.tensors.items() if (f, i.start) > (fname, info.start)}
    assert later and b.tensors[DOWN.format(1)][0] == fname  # both sides are laid out alike
    reported = threading.Event()
    waited: set[int] = set()

    class Gated(TensorFile):
        def feed(self, info, consume):
            if info.name in later and threading.get_ident() not in waited:
                waited.add(threading.get_ident())
                reported.wait(10)
            super().feed(info, consume)

    monkeypatch.setattr(compare_mod, "TensorFile", Gated)
    total = 2 * sum(i.nbytes for _, i in s.tensors.values())
    done = [0]
    seen_at: list[int] = []

    def progress(n: int) -> None:
        done[0] += n

    def on_changed(name: str) -> None:
        seen_at.append(done[0])
        reported.set()

    result = compare(b, s, progress=progress, on_changed=on_changed)
    assert result.changed == [DOWN.format(1), DOWN.format(4)]
    assert len(seen_at) == 2 and seen_at[0] < total  # the first change was out while bytes were still unread
    assert len(waited) == 2  # both readers reached the gate


def test_a_failing_reader_stops_the_scan_with_its_error(pair, tmp_path):
    base, suspect = pair
    b, s = open_checkpoint(shard(base, tmp_path / "b", 3)), open_checkpoint(shard(suspect, tmp_path / "s", 3))
    victim = sorted(b.headers)[1]
    path = b.file_path(victim)
    path.write_bytes(path.read_bytes()[:-4096])  # truncated after the header was validated
    with pytest.raises(OSError, match="unexpected end of file"):
        compare(b, s)


_MEMORY_PROBE = """
import json, sys
from editaudit.scan.service import ScanOptions, run_scan
run_scan(sys.argv[3], sys.argv[4], ScanOptions(read="off"), store=None)  # imports and warms everything up
def kb(field):
    return int([l.split()[1] for l in open('/proc/self/status') if l.startswith(field)][0])
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # resets the peak (VmHWM) to the current RSS
start = kb('VmRSS')
report = run_scan(sys.argv[1], sys.argv[2], ScanOptions(read="off"), store=None)
print(json.dumps({"growth_mb": (kb('VmHWM') - start) / 1024, "changed": [c.name.name for c in report.changed]}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure peak RSS")
def test_peak_memory_is_a_small_multiple_of_the_largest_tensor(tmp_path):
    """64 tensors of 2 MiB per side (256 MiB for both sides, in 4 shards), one changed: the scan's peak
    grows by one mapped window per reader and the float work on that one tensor, not by the checkpoint's size."""
    gen = torch.Generator().manual_seed(0)
    names = [f"blocks.{i}.weight" for i in range(64)]
    tensors = {n: (torch.randn(1024, 1024, generator=gen) * 0.02).to(torch.bfloat16) for n in names}
    edited = dict(tensors)
    edited[names[7]] = (tensors[names[7]].float() + rank_delta((1024, 1024), 1, 0.5)).to(torch.bfloat16)
    folders = []
    for side, ts in (("base", tensors), ("suspect", edited)):
        d = tmp_path / side
        d.mkdir()
        weight_map = {}
        for k in range(4):
            fname = f"model-{k + 1:05d}-of-00004.safetensors"
            part = {n: ts[n] for n in names[k * 16:(k + 1) * 16]}
            save_file(part, str(d / fname))
            weight_map.update({n: fname for n in part})
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        folders.append(d)
    small = [tmp_path / "small_base.safetensors", tmp_path / "small_suspect.safetensors"]
    save_file({"w": torch.zeros(64, 64)}, str(small[0]))
    save_file({"w": torch.ones(64, 64)}, str(small[1]))
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(folders[0]), str(folders[1]), str(small[0]),
                          str(small[1])], capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["changed"] == [names[7]]
    largest_mb = 1024 * 1024 * 2 / 2**20  # 2 MiB stored; its float work needs several float32 copies of it
    # one mapped window per reader (here a tensor: windows end where tensors do), the float work (float32
    # copies, ΔW, its |ΔW|, SVD workspace) and thread arenas: 52 MiB, a fifth of both sides' 256 MiB
    assert doc["growth_mb"] < 2 * min(WINDOW / 2**20, largest_mb) + 24 * largest_mb, doc


@pytest.mark.parametrize("mappable", [True, False])
def test_mapped_windows_pass_exactly_the_tensors_bytes(tmp_path, monkeypatch, mappable):
    """Windows start on page boundaries below unaligned tensors and end at the tensor's end; where a
    file system cannot map files the same bytes come through read copies."""
    import editaudit.checkpoint.reader as reader
    from editaudit.checkpoint.header import read_header

    monkeypatch.setattr(reader, "WINDOW", 64 << 10)
    monkeypatch.setattr(reader, "CHUNK", 16 << 10)
    if not mappable:
        def refuse(*a, **k):
            raise OSError("mmap not supported")

        monkeypatch.setattr(reader.mmap, "mmap", refuse)
    gen = torch.Generator().manual_seed(0)
    path = tmp_path / "t.safetensors"
    save_file({"a": torch.randn(3, generator=gen), "b": torch.randn(300, 257, generator=gen)}, str(path))
    header = read_header(path)
    with reader.TensorFile(path) as f:
        for info in header.tensors.values():
            parts: list[bytes] = []
            f.feed(info, lambda view: parts.append(bytes(view)))
            assert b"".join(parts) == bytes(f.read_bytes(info))
            assert max(len(p) for p in parts) <= 16 << 10
    assert header.tensors["b"].start % 4096 != 0  # the case that needs the page-aligned window


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_a_tensor_read_as_float32_chunk_by_chunk_equals_the_whole_read(tmp_path, monkeypatch, dtype):
    """The lens's float32 read converts each chunk into the final buffer; chunks that do not divide the tensor
    (and a tensor smaller than one chunk) give the same values as reading the bytes whole and casting."""
    import editaudit.checkpoint.reader as reader
    from editaudit.checkpoint.header import read_header

    monkeypatch.setattr(reader, "CHUNK", 1000)  # not a multiple of 4: the reader rounds it to whole elements
    gen = torch.Generator().manual_seed(1)
    path = tmp_path / "t.safetensors"
    save_file({"big": torch.randn(37, 53, generator=gen).to(dtype), "small": torch.randn(5, generator=gen).to(dtype)},
              str(path))
    with reader.TensorFile(path) as f:
        for info in read_header(path).tensors.values():
            got = f.read_float32(info)
            assert got.dtype == torch.float32 and tuple(got.shape) == tuple(info.shape)
            assert torch.equal(got, reader.to_torch(f.read_bytes(info), info))


@pytest.mark.parametrize("cores", [2, 8])
def test_the_lens_is_read_while_the_comparison_goes_on(pair, tmp_path, monkeypatch, cores):
    """On a machine with cores to spare, a changed MLP output matrix starts the lens's read in the background,
    before the comparison has read every byte; on 2 cores it is read afterwards. The promoted tokens are the same."""
    import editaudit.scan.service as service

    monkeypatch.setattr(service, "usable_cores", lambda: cores)
    base, suspect = pair
    b, s = shard(base, tmp_path / "b", 3), shard(suspect, tmp_path / "s", 3)
    plain = run_scan(s, b, ScanOptions(read="off"), store=None)
    seen: list[tuple[str, bool]] = []
    real = service.load_lens
    comparing = threading.Event()
    real_compare = service.compare

    def timed_compare(*a, **k):
        comparing.set()
        try:
            return real_compare(*a, **k)
        finally:
            comparing.clear()

    def watched(ck, say=lambda s: None):
        seen.append((threading.current_thread().name, comparing.is_set()))
        return real(ck, say)

    monkeypatch.setattr(service, "compare", timed_compare)
    monkeypatch.setattr(service, "load_lens", watched)
    again = run_scan(s, b, ScanOptions(read="off"), store=None)
    ahead = cores >= service.LENS_AHEAD_CORES
    assert seen == [("editaudit-lens", True) if ahead else (threading.current_thread().name, False)]  # read once
    tokens = [[t["id"] for t in f.data.get("promoted_tokens", [])] for f in plain.findings]
    assert tokens == [[t["id"] for t in f.data.get("promoted_tokens", [])] for f in again.findings]
    assert any(tokens)


def test_a_lens_that_fails_in_the_background_fails_the_scan(pair, monkeypatch):
    import editaudit.scan.service as service

    def broken(ck, say=lambda s: None):
        raise OSError("unembedding unreadable")

    monkeypatch.setattr(service, "load_lens", broken)
    monkeypatch.setattr(service, "usable_cores", lambda: 8)
    with pytest.raises(OSError, match="unembedding unreadable"):
        run_scan(pair[1], pair[0], ScanOptions(read="off"), store=None)
