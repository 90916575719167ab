"""First pass: which tensors differ at all. Byte comparison, tensor by tensor, in bounded memory.

Both files are read in 8 MiB chunks and compared with memcmp; only tensors whose bytes differ (or
whose dtypes differ and whose values differ) go on to float work. When the store already holds the
base's per-tensor sha256 digests (same files, same headers), the base is not read at all: the
suspect is hashed and compared against the cache.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..checkpoint import Checkpoint
from ..checkpoint.reader import CHUNK, TensorFile, to_torch
from ..errors import IncompatibleCheckpoints

ProgressFn = Callable[[int], None]  # called with bytes processed since the last call


@dataclass
class CompareResult:
    changed: list[str]
    unchanged: int
    bytes_read: int
    base_hashes: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (sha256, nbytes)
    used_cache: bool = False
    cast_only: list[str] = field(default_factory=list)  # different dtype, same values


def check_compatible(base: Checkpoint, suspect: Checkpoint) -> list[str]:
    """Every difference that stops a tensor-for-tensor comparison (empty list: comparable)."""
    diffs: list[str] = []
    bfam, sfam = base.family, suspect.family
    if base.config and suspect.config and bfam != sfam:
        diffs.append(f"model_type differs: base {bfam!r}, suspect {sfam!r}")
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size", "n_embd", "n_layer"):
        bv, sv = (base.config or {}).get(key), (suspect.config or {}).get(key)
        if bv is not None and sv is not None and bv != sv:
            diffs.append(f"config {key} differs: base {bv}, suspect {sv}")
    bnames, snames = set(base.tensors), set(suspect.tensors)
    for n in sorted(bnames - snames):
        diffs.append(f"tensor missing in suspect: {n}")
    for n in sorted(snames - bnames):
        diffs.append(f"tensor only in suspect: {n}")
    for n in sorted(bnames & snames):
        bs, ss = base.tensors[n][1].shape, suspect.tensors[n][1].shape
        if bs != ss:
            diffs.append(f"shape of {n} differs: base {list(bs)}, suspect {list(ss)}")
    return diffs


def require_compatible(base: Checkpoint, suspect: Checkpoint) -> None:
    diffs = check_compatible(base, suspect)
    if diffs:
        raise IncompatibleCheckpoints(
            f"base and suspect cannot be compared tensor for tensor ({len(diffs)} difference(s))", diffs
        )


class _Files:
    """Open file handles for a checkpoint's shards, closed together."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self.files: dict[str, TensorFile] = {}

    def get(self, fname: str) -> TensorFile:
        if fname not in self.files:
            self.files[fname] = TensorFile(self.ckpt.file_path(fname))
        return self.files[fname]

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def compare(base: Checkpoint, suspect: Checkpoint, cached: dict[str, str] | None = None,
            hash_base: bool = True, progress: ProgressFn = lambda n: None,
            cancelled: Callable[[], bool] = lambda: False) -> CompareResult:
    """Find the tensors whose stored values differ."""
    names = sorted(suspect.tensors, key=lambda n: (suspect.tensors[n][0], suspect.tensors[n][1].start))
    use_cache = bool(cached) and all(n in cached for n in names)
    bfiles, sfiles = _Files(base), _Files(suspect)
    buf_b, buf_s = bytearray(CHUNK), bytearray(CHUNK)
    result = CompareResult([], 0, 0, used_cache=use_cache)
    try:
        for name in names:
            if cancelled():
                raise KeyboardInterrupt
            bname, binfo = base.tensors[name]
            sname, sinfo = suspect.tensors[name]
            bf, sf = bfiles.get(bname), sfiles.get(sname)
            if binfo.dtype != sinfo.dtype:
                b = to_torch(bf.read_bytes(binfo), binfo)
                s = to_torch(sf.read_bytes(sinfo), sinfo)
                result.bytes_read += binfo.nbytes + sinfo.nbytes
                progress(binfo.nbytes + sinfo.nbytes)
                same = bool(torch.equal(b, s))
                (result.cast_only.append(name) if same else result.changed.append(name))
                result.unchanged += same
                continue
            if use_cache:
                h = hashlib.sha256()
                for part in sf.chunks(sinfo, buf_s):
                    h.update(part)
                    progress(len(part))
                result.bytes_read += sinfo.nbytes
                sf.advise_done(sinfo)
                if h.hexdigest() == cached[name]:
                    result.unchanged += 1
                else:
                    result.changed.append(name)
                continue
            hb = hashlib.sha256() if hash_base else None
            differ = False
            view_b, view_s = memoryview(buf_b), memoryview(buf_s)
            pos = 0
            while pos < sinfo.nbytes:
                n = min(CHUNK, sinfo.nbytes - pos)
                pb, ps = view_b[:n], view_s[:n]
                bf.read_into(pb, binfo.start + pos)
                if hb is not None:
                    hb.update(pb)
                if not differ:
                    sf.read_into(ps, sinfo.start + pos)
                    differ = bytes(pb) != bytes(ps) if n < CHUNK else buf_b != buf_s
                    result.bytes_read += n
                    progress(n)
                result.bytes_read += n
                progress(n)
                pos += n
                if differ and hb is None:
                    break
            bf.advise_done(binfo)
            sf.advise_done(sinfo)
            if hb is not None:
                result.base_hashes[name] = (hb.hexdigest(), binfo.nbytes)
            if differ:
                result.changed.append(name)
            else:
                result.unchanged += 1
    finally:
        bfiles.close()
        sfiles.close()
    return result
