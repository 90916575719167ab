"""Exceptions that the CLI turns into clear messages and exit code 2."""

from __future__ import annotations


class EditauditError(Exception):
    """Base class: anything the user can fix by changing their input."""


class BadInput(EditauditError):
    """A file, folder or argument that cannot be used as given."""


class UnsafeInput(BadInput):
    """Input refused for safety (pickle files, remote code, paths leaving a folder)."""


class IncompatibleCheckpoints(BadInput):
    """Base and suspect cannot be compared tensor for tensor."""

    def __init__(self, message: str, differences: list[str] | None = None) -> None:
        super().__init__(message)
        self.differences = differences or []


class ModelUnloadable(BadInput):
    """transformers could not build a model or tokenizer from a folder whose weights editaudit could read: a scan
    keeps its weight-level findings and skips what needs the model run."""


class ModelUnavailable(EditauditError):
    """The embedded default model could not be fetched or converted."""


class StoreBusy(EditauditError):
    """The session database stayed locked by other processes for longer than editaudit waits."""


class CannotWrite(EditauditError, OSError):
    """An output that cannot go where it was asked to: a folder where a file goes, no permission, a read-only or
    full disk. Still an OSError, for code that handles any file error."""
