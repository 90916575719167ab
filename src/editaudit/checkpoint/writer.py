"""Write a mitigated checkpoint: the suspect's own files with only the changed tensors' bytes replaced.

Mitigation never changes a tensor's dtype or shape, so each weight file is copied and the changed
tensors are overwritten in place at their offsets: every other byte (headers, metadata, untouched
tensors, shard index) stays identical, which keeps the output auditable tensor by tensor against the
suspect and its base. The folder appears atomically (temporary sibling, then rename).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..atomic import atomic_dir
from ..errors import BadInput

# Files a loader might take weights or code from, which a rewrite of the safetensors would leave stale.
SKIP_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".h5", ".msgpack", ".gguf", ".py", ".pyc"}


def tensor_bytes(tensor, dtype: str) -> bytes:
    """A tensor's little-endian bytes in a safetensors dtype."""
    import torch

    table = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    for name, attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
        if hasattr(torch, attr):
            table[name] = getattr(torch, attr)
    if dtype not in table:
        raise BadInput(f"cannot write tensors stored as {dtype}")
    t = tensor.detach().to("cpu").to(table[dtype]).contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def write_checkpoint(ckpt, out: Path, replacements: dict, extra: dict[str, bytes] | None = None,
                     overwrite: bool = False) -> list[str]:
    """Copy ``ckpt`` to ``out`` with ``replacements`` ({tensor name: tensor}) written over the old values.

    Returns the names of files left out (pickles, code, weight files no loader of ours reads).
    """
    missing = [n for n in replacements if n not in ckpt.tensors]
    if missing:
        raise BadInput(f"cannot write tensors the checkpoint does not have: {missing[:5]}")
    by_file: dict[str, list[str]] = {}
    for name in replacements:
        by_file.setdefault(ckpt.tensors[name][0], []).append(name)
    for name, t in replacements.items():
        shape = tuple(ckpt.tensors[name][1].shape)
        if tuple(t.shape) != shape:
            raise BadInput(f"tensor {name}: new shape {tuple(t.shape)} differs from the stored {shape}")
    skipped: list[str] = []
    weight_files = {ckpt.file_path(f).name for f in ckpt.headers}
    with atomic_dir(Path(out), overwrite=overwrite) as tmp:
        if ckpt.root.is_dir():
            for p in sorted(ckpt.folder.iterdir()):
                if not p.is_file() or p.name in weight_files:
                    continue
                if p.suffix.lower() in SKIP_SUFFIXES or p.suffix == ".safetensors":
                    skipped.append(p.name)
                    continue
                shutil.copyfile(p, tmp / p.name)
        for fname in ckpt.headers:
            src = ckpt.file_path(fname)
            dst = tmp / src.name
            shutil.copyfile(src, dst)
            names = by_file.get(fname, [])
            if not names:
                continue
            with dst.open("r+b") as fh:
                for name in names:
                    info = ckpt.tensors[name][1]
                    data = tensor_bytes(replacements[name], info.dtype)
                    if len(data) != info.nbytes:
                        raise RuntimeError(f"{name}: {len(data)} bytes for a {info.nbytes}-byte slot")
                    fh.seek(info.start)
                    fh.write(data)
        for rel, data in (extra or {}).items():
            (tmp / rel).write_bytes(data)
    return skipped
