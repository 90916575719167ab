"""First pass: which tensors differ at all, in bounded memory and at the speed of reading.

Each side's tensors are hashed with BLAKE3 (cryptographic, so an adversarial suspect cannot
craft a collision with the base, and about as fast as reading page-cached bytes) in 8 MiB chunks,
the two sides in parallel threads (hashing and reading release the GIL). Only tensors whose
digests differ — or whose dtypes differ and whose values differ — go on to float work. When the
store already holds the base's digests for the same files, the base is not read at all.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import torch
from blake3 import blake3

from ..checkpoint import Checkpoint
from ..checkpoint.reader import CHUNK, TensorFile, to_torch
from ..errors import IncompatibleCheckpoints

ProgressFn = Callable[[int], None]  # called with bytes processed since the last call
DIGEST = "blake3"


@dataclass
class CompareResult:
    changed: list[str]
    unchanged: int
    bytes_read: int
    base_hashes: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (digest, nbytes)
    suspect_hashes: dict[str, tuple[str, int]] = field(default_factory=dict)
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


def digest_tensors(ckpt: Checkpoint, names: list[str], progress: ProgressFn,
                   cancelled: Callable[[], bool]) -> dict[str, tuple[str, int]]:
    """BLAKE3 digest of each named tensor's stored bytes, reading in file order with one buffer."""
    order = sorted(names, key=lambda n: (ckpt.tensors[n][0], ckpt.tensors[n][1].start))
    buf = bytearray(CHUNK)
    files: dict[str, TensorFile] = {}
    out: dict[str, tuple[str, int]] = {}
    try:
        for name in order:
            fname, info = ckpt.tensors[name]
            f = files.get(fname) or files.setdefault(fname, TensorFile(ckpt.file_path(fname)))
            h = blake3()
            for part in f.chunks(info, buf):
                if cancelled():
                    raise KeyboardInterrupt
                h.update(part)
                progress(len(part))
            out[name] = (h.hexdigest(), info.nbytes)
    finally:
        for f in files.values():
            f.close()
    return out


def _split(names: list[str], ckpt: Checkpoint, parts: int) -> list[list[str]]:
    """Split names into ``parts`` groups of similar byte size (largest first, greedy)."""
    groups: list[list[str]] = [[] for _ in range(parts)]
    sizes = [0] * parts
    for n in sorted(names, key=lambda n: -ckpt.tensors[n][1].nbytes):
        i = sizes.index(min(sizes))
        groups[i].append(n)
        sizes[i] += ckpt.tensors[n][1].nbytes
    return [g for g in groups if g]


def compare(base: Checkpoint, suspect: Checkpoint, cached: dict[str, str] | None = None,
            progress: ProgressFn = lambda n: None, cancelled: Callable[[], bool] = lambda: False,
            threads: int = 2) -> CompareResult:
    """Find the tensors whose stored values differ."""
    names = list(suspect.tensors)
    same_dtype = [n for n in names if base.tensors[n][1].dtype == suspect.tensors[n][1].dtype]
    cross_dtype = [n for n in names if base.tensors[n][1].dtype != suspect.tensors[n][1].dtype]
    use_cache = bool(cached) and all(n in cached for n in same_dtype)
    lock = threading.Lock()

    def tick(n: int) -> None:
        with lock:
            progress(n)

    result = CompareResult([], 0, 0, used_cache=use_cache)
    with ThreadPoolExecutor(max_workers=max(threads, 1)) as pool:
        if use_cache:
            jobs = [pool.submit(digest_tensors, suspect, g, tick, cancelled) for g in _split(same_dtype, suspect, threads)]
            base_jobs = []
        else:
            jobs = [pool.submit(digest_tensors, suspect, same_dtype, tick, cancelled)]
            base_jobs = [pool.submit(digest_tensors, base, same_dtype, tick, cancelled)]
        for j in jobs:
            result.suspect_hashes.update(j.result())
        for j in base_jobs:
            result.base_hashes.update(j.result())
    base_digest = {n: d for n, (d, _) in result.base_hashes.items()} if not use_cache else cached
    for n in same_dtype:
        if result.suspect_hashes[n][0] == base_digest[n]:
            result.unchanged += 1
        else:
            result.changed.append(n)
    result.bytes_read = sum(nb for _, nb in result.suspect_hashes.values()) + sum(nb for _, nb in result.base_hashes.values())

    for name in cross_dtype:  # e.g. an fp32 base and a bf16 suspect: compare values, not bytes
        if cancelled():
            raise KeyboardInterrupt
        (bname, binfo), (sname, sinfo) = base.tensors[name], suspect.tensors[name]
        with TensorFile(base.file_path(bname)) as bf, TensorFile(suspect.file_path(sname)) as sf:
            b, s = to_torch(bf.read_bytes(binfo), binfo), to_torch(sf.read_bytes(sinfo), sinfo)
        result.bytes_read += binfo.nbytes + sinfo.nbytes
        tick(binfo.nbytes + sinfo.nbytes)
        if torch.equal(b, s):
            result.cast_only.append(name)
            result.unchanged += 1
        else:
            result.changed.append(name)
    order = {n: i for i, n in enumerate(names)}
    result.changed.sort(key=order.__getitem__)
    return result
