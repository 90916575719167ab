"""Atomic file and folder output: write to a temporary sibling, then rename into place.

A file output that is not a regular file (``-o /dev/stdout``, ``/dev/null``, a FIFO) is written into, never
replaced; one that is a symlink is replaced at its target, so the link stays. A write that fails says which
path and why (:class:`CannotWrite`), not which temporary file. Temporary files and folders are created private
(0600, 0700); before the rename they get the mode a plain ``open`` or ``mkdir`` would have given under the user's
umask, or, for a file written over, that file's mode, so a shared checkpoint or report stays readable by others.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import BadInput, CannotWrite


def _cannot(path: Path, exc: OSError) -> CannotWrite:
    return CannotWrite(f"cannot write {path}: {exc.strerror or exc}")


def check_writable(path: Path, folder: bool = False) -> None:
    """Fail now, before long work, if a file (or with ``folder``, a folder) could not be written at ``path``: a
    folder is where the file goes, or the nearest existing folder above it is not writable."""
    path = Path(path)
    if not folder:
        if path.is_dir():
            raise CannotWrite(f"cannot write {path}: it is a folder (give a file name)")
        if path.exists() and not path.is_file():  # a device or a pipe: written into, see atomic_write_bytes
            return
    parent = Path(os.path.realpath(path)).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CannotWrite(f"cannot write {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CannotWrite(f"cannot write {path}: {parent} is not writable")


def _input_paths(inputs):
    """(spec, real path) of each input that is a path here; a model name or Hub id (in the cache) is skipped."""
    for spec in inputs:
        if spec is not None and Path(str(spec)).expanduser().exists():
            yield spec, Path(os.path.realpath(Path(str(spec)).expanduser()))


def refuse_file_over_inputs(out: Path, inputs) -> None:
    """Refuse an output file (``-o``) that is one of ``inputs`` or lies inside an input folder: ``scan S -o
    S/model.safetensors`` would replace the checkpoint under audit with its own report, and any file written into
    an input folder changes what is audited."""
    real = Path(os.path.realpath(Path(out).expanduser()))
    for spec, source in _input_paths(inputs):
        if source == real or (source.is_dir() and source in real.parents):
            what = "is" if source == real else "would be written inside"
            raise BadInput(f"the output {out} {what} the input {spec}: it would change what is read; "
                           "write it somewhere else")


def refuse_output_over_inputs(out: Path, inputs) -> None:
    """Refuse an output folder that is one of ``inputs`` or holds one: with --overwrite, writing it would delete
    the input."""
    real = Path(os.path.realpath(out))
    for spec, source in _input_paths(inputs):
        if source == real or real in source.parents:
            what = "is" if source == real else "holds"
            raise BadInput(f"the output {out} {what} the input {spec}: writing it would replace the input; "
                           "choose another --out")


def _umask() -> int:
    """The process umask, read without changing it where the system says it (Linux); elsewhere set and reset."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _plain_mode(folder: bool = False) -> int:
    return (0o777 if folder else 0o666) & ~_umask()


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise _cannot(path, exc) from exc
    if mode is not None and stat.S_ISDIR(mode):
        raise CannotWrite(f"cannot write {path}: it is a folder (give a file name)")
    if mode is not None and not stat.S_ISREG(mode):  # a device or a pipe: renaming over it would replace it
        try:
            with open(path, "wb") as fh:
                fh.write(data)
        except OSError as exc:
            raise _cannot(path, exc) from exc
        return
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _cannot(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, stat.S_IMODE(mode) if mode is not None else _plain_mode())
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, CannotWrite):
            raise _cannot(path, exc) from exc
        raise


@contextmanager
def atomic_dir(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it is renamed to ``path``.

    On any exception (Ctrl-C included) the temporary folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (use --overwrite to replace it)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    except OSError as exc:
        raise _cannot(path, exc) from exc
    try:
        yield tmp
        try:
            os.chmod(tmp, _plain_mode(folder=True))
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except OSError as exc:
            raise _cannot(path, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
