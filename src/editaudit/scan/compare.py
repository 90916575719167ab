"""First pass: which tensors differ at all, in bounded memory and at the speed of reading.

Each side's tensors are hashed with BLAKE3 (cryptographic, so an adversarial suspect cannot
craft a collision with the base, and about as fast as reading page-cached bytes) in 8 MiB views of
the mapped file (no copy), shard by shard and in file order, one reader thread per side (hashing
releases the GIL). Memory stays at one mapped window per reader whatever the checkpoint's size.
A tensor is decided as soon as both its digests are known, and ``on_changed`` hears of it then, so
the float work on an edited tensor overlaps the reading of the rest. Byte-equal tensors are never
converted to numbers. Only tensors whose digests differ — or whose dtypes differ and whose values
differ — go on to float work. When the store already holds the base's digests for the same files,
the base is not read at all.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import torch
from blake3 import blake3

from ..checkpoint import Checkpoint
from ..checkpoint.reader import TensorFile, to_torch
from ..errors import IncompatibleCheckpoints

ProgressFn = Callable[[int], None]  # called with bytes processed since the last call
DigestFn = Callable[[str, tuple[str, int]], None]  # called with (tensor name, (digest, nbytes)) as each completes
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


def file_order(ckpt: Checkpoint, names: list[str]) -> list[str]:
    """``names`` in storage order (shard by shard, by offset), so each file is read front to back once."""
    return sorted(names, key=lambda n: (ckpt.tensors[n][0], ckpt.tensors[n][1].start))


def digest_tensors(ckpt: Checkpoint, names: list[str], progress: ProgressFn,
                   cancelled: Callable[[], bool], on_digest: DigestFn | None = None) -> dict[str, tuple[str, int]]:
    """BLAKE3 digest of each named tensor's stored bytes, reading in file order, one shard open at a time."""
    files: dict[str, TensorFile] = {}
    out: dict[str, tuple[str, int]] = {}
    try:
        for name in file_order(ckpt, names):
            fname, info = ckpt.tensors[name]
            f = files.get(fname)
            if f is None:  # shards are read one after another: close the finished one
                for old in files.values():
                    old.close()
                files = {fname: TensorFile(ckpt.file_path(fname))}
                f = files[fname]
            h = blake3()

            def consume(part: memoryview) -> None:
                if cancelled():
                    raise KeyboardInterrupt
                h.update(part)
                progress(len(part))

            f.feed(info, consume)
            out[name] = (h.hexdigest(), info.nbytes)
            if on_digest is not None:
                on_digest(name, out[name])
    finally:
        for f in files.values():
            f.close()
    return out


def _split(names: list[str], ckpt: Checkpoint, parts: int) -> list[list[str]]:
    """Split names into ``parts`` contiguous runs of storage of similar byte size (each read front to back)."""
    ordered = file_order(ckpt, names)
    total = sum(ckpt.tensors[n][1].nbytes for n in ordered)
    groups: list[list[str]] = [[] for _ in range(max(parts, 1))]
    acc = 0
    for n in ordered:
        i = min(len(groups) - 1, acc * len(groups) // max(total, 1))
        groups[i].append(n)
        acc += ckpt.tensors[n][1].nbytes
    return [g for g in groups if g]


def compare(base: Checkpoint, suspect: Checkpoint, cached: dict[str, str] | None = None,
            progress: ProgressFn = lambda n: None, cancelled: Callable[[], bool] = lambda: False,
            threads: int = 2, on_changed: Callable[[str], None] | None = None) -> CompareResult:
    """Find the tensors whose stored values differ.

    ``on_changed(name)`` is called from the calling thread the moment a same-dtype tensor is known
    to differ (before the rest is read); tensors of different dtypes are decided at the end.
    """
    names = list(suspect.tensors)
    same_dtype = [n for n in names if base.tensors[n][1].dtype == suspect.tensors[n][1].dtype]
    cross_dtype = [n for n in names if base.tensors[n][1].dtype != suspect.tensors[n][1].dtype]
    use_cache = bool(cached) and all(n in cached for n in same_dtype)
    lock = threading.Lock()

    def tick(n: int) -> None:
        with lock:
            progress(n)

    result = CompareResult([], 0, 0, used_cache=use_cache)
    events: queue.Queue = queue.Queue()  # ("digest", side, name, (digest, nbytes)) | ("done", side, None, error)
    seen: dict[str, dict[str, str]] = {"base": {}, "suspect": {}}
    if use_cache:
        seen["base"] = {n: cached[n] for n in same_dtype}

    def decide(name: str) -> None:
        if seen["suspect"][name] == seen["base"][name]:
            result.unchanged += 1
        else:
            result.changed.append(name)
            if on_changed is not None:
                on_changed(name)

    stop = threading.Event()  # a reader failed or the caller gave up: the others stop at their next chunk

    def stopped() -> bool:
        return stop.is_set() or cancelled()

    def reader(side: str, ckpt: Checkpoint, group: list[str]):
        def emit(name: str, digest: tuple[str, int]) -> None:
            events.put(("digest", side, name, digest))
        error = None
        try:
            return digest_tensors(ckpt, group, tick, stopped, emit)
        except BaseException as exc:
            error = exc
            raise
        finally:
            events.put(("done", side, None, error))

    if use_cache:
        plan = [("suspect", suspect, g) for g in _split(same_dtype, suspect, threads)]
    else:
        plan = [("suspect", suspect, same_dtype), ("base", base, same_dtype)] if same_dtype else []
    first_error: BaseException | None = None
    with ThreadPoolExecutor(max_workers=max(len(plan), 1)) as pool:
        jobs = [(side, pool.submit(reader, side, ckpt, group)) for side, ckpt, group in plan]
        running = len(jobs)
        try:
            while running:
                kind, side, name, payload = events.get()
                if kind == "done":
                    running -= 1
                    if payload is not None and first_error is None:
                        first_error = payload
                        stop.set()
                    continue
                if first_error is not None:
                    continue
                seen[side][name] = payload[0]
                other = "base" if side == "suspect" else "suspect"
                if name in seen[other]:
                    decide(name)
        except BaseException:
            stop.set()
            raise
    if first_error is not None:
        raise first_error
    for side, job in jobs:
        (result.suspect_hashes if side == "suspect" else result.base_hashes).update(job.result())
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
