"""Does asking for the next mapped window ahead speed up the scan's cold reading? Both sides of a pair built by
``bench/scan_throughput.py --keep DIR`` are digested as the scan does (one thread per side), from a cold page cache,
with ``TensorFile.feed`` as it ships and with a variant that also calls ``posix_fadvise(WILLNEED)`` on the next
window before using the current one; raw ``readv`` of the same files is the reference. Arms alternate, round by round.

    python bench/scan_throughput.py --sizes 1 --cache cold --repeat 1 --keep /tmp/tp
    python scripts/dev/readahead_trial.py /tmp/tp/1gb [ROUNDS]
"""
from __future__ import annotations

import mmap
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
import editaudit.checkpoint.reader as reader  # noqa: E402
from editaudit.checkpoint import open_checkpoint  # noqa: E402
from editaudit.scan.compare import digest_tensors  # noqa: E402

SHIPPED = reader.TensorFile.feed


def feed_ahead(self, info, consume) -> None:
    """``TensorFile.feed`` with the next window asked for before this one is used (mapping path only)."""
    if info.end <= info.start:
        return
    size = os.fstat(self.fd).st_size
    pos = info.start
    while pos < info.end:
        base = pos - pos % mmap.ALLOCATIONGRANULARITY
        stop = min(info.end, base + reader.WINDOW)
        if stop < size:
            os.posix_fadvise(self.fd, stop, min(reader.WINDOW, size - stop), os.POSIX_FADV_WILLNEED)
        with mmap.mmap(self.fd, stop - base, access=mmap.ACCESS_READ, offset=base) as m:
            m.madvise(mmap.MADV_WILLNEED)
            with memoryview(m) as view:
                for at in range(pos - base, stop - base, reader.CHUNK):
                    with view[at:min(at + reader.CHUNK, stop - base)] as part:
                        consume(part)
        pos = stop


def main() -> None:
    root = Path(sys.argv[1])
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    sides = [root / "base", root / "suspect"]
    files = [f for d in sides for f in sorted(d.glob("*.safetensors"))]

    def drop() -> None:
        for f in files:
            fd = os.open(f, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)

    def raw(d: Path) -> int:
        buf, n = bytearray(8 << 20), 0
        for f in sorted(d.glob("*.safetensors")):
            fd = os.open(f, os.O_RDONLY)
            while k := os.readv(fd, [buf]):
                n += k
            os.close(fd)
        return n

    def digest(d: Path):
        ck = open_checkpoint(d)
        return digest_tensors(ck, list(ck.tensors), lambda n: None, lambda: False)

    res: dict[str, list[float]] = {"raw read": [], "digest, shipped": [], "digest, next window ahead": []}
    for _ in range(rounds):
        for arm in res:
            reader.TensorFile.feed = feed_ahead if arm.endswith("ahead") else SHIPPED
            drop()
            time.sleep(0.5)
            t = time.perf_counter()
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(raw if arm == "raw read" else digest, sides))
            res[arm].append(round(time.perf_counter() - t, 2))
    reader.TensorFile.feed = SHIPPED
    print(f"# both sides of {root}, cold page cache, one thread per side; seconds per round (best)")
    for arm, v in res.items():
        print(f"{arm:<28}{' '.join(f'{x:5.2f}' for x in v)}   best {min(v):.2f}")


if __name__ == "__main__":
    main()
