"""A strict parser for safetensors headers.

The file format is: 8 bytes little-endian header length N, N bytes of JSON, then the data block.
Checkpoints under review are untrusted, so every field is checked before any tensor is touched:
the length against the file size and a hard cap, duplicate keys, dtypes, shapes, offsets that
must be in range, match the shape's byte size and never overlap.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput

# safetensors dtype -> bytes per element
DTYPES: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
MAX_DIMS = 8


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute file offset of the first byte
    end: int  # absolute file offset one past the last byte

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class Header:
    path: Path
    file_size: int
    header_len: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    raw: bytes  # the header JSON bytes, for fingerprinting

    @property
    def data_start(self) -> int:
        return 8 + self.header_len


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise BadInput(f"duplicate key {key!r} in safetensors header")
        seen[key] = value
    return seen


def parse_header_bytes(raw: bytes, data_len: int, path: Path = Path("<memory>")) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Validate the JSON header of a file whose data block is ``data_len`` bytes long.

    Offsets in the returned TensorInfo are relative to the data block; ``read_header`` shifts them.
    """
    where = str(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"{where}: safetensors header is not UTF-8 text") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except BadInput as exc:
        raise BadInput(f"{where}: {exc}") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise BadInput(f"{where}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise BadInput(f"{where}: safetensors header must be a JSON object")
    metadata: dict[str, str] = {}
    tensors: dict[str, TensorInfo] = {}
    for name, entry in obj.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in entry.items()):
                raise BadInput(f"{where}: __metadata__ must map strings to strings")
            metadata = entry
            continue
        label = f"{where}: tensor {name!r}"
        if not isinstance(entry, dict):
            raise BadInput(f"{label}: entry is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPES:
            raise BadInput(f"{label}: unknown dtype {dtype!r}")
        if (
            not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape)
        ):
            raise BadInput(f"{label}: bad shape {shape!r}")
        if (
            not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise BadInput(f"{label}: bad data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise BadInput(f"{label}: data_offsets {offsets} fall outside the {data_len}-byte data block (truncated file?)")
        expected = math.prod(shape) * DTYPES[dtype]
        if end - begin != expected:
            raise BadInput(f"{label}: {end - begin} bytes stored but shape {shape} of {dtype} needs {expected}")
        tensors[name] = TensorInfo(name, dtype, tuple(shape), begin, end)
    spans = sorted((t.start, t.end, t.name) for t in tensors.values() if t.end > t.start)
    for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise BadInput(f"{where}: tensors {n0!r} and {n1!r} overlap in the data block")
    return tensors, metadata


def read_header(path: str | Path) -> Header:
    """Read and validate the header of one .safetensors file. Never reads the data block."""
    path = Path(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or never end: only plain files are read
            raise BadInput(f"{path} is not a regular file")
        size = st.st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise BadInput(f"{path}: too short to be a safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise BadInput(f"{path}: header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
            if 8 + n > size:
                raise BadInput(f"{path}: header length {n} is larger than the file ({size} bytes); truncated or not safetensors")
            raw = fh.read(n)
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) != n:
        raise BadInput(f"{path}: file ended inside the header")
    tensors, metadata = parse_header_bytes(raw, size - 8 - n, path)
    shift = 8 + n
    tensors = {k: TensorInfo(t.name, t.dtype, t.shape, t.start + shift, t.end + shift) for k, t in tensors.items()}
    return Header(path=path, file_size=size, header_len=n, tensors=tensors, metadata=metadata, raw=raw)
