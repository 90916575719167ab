"""The checkpoint writer lives beside the reader, in ``checkpoint/writer.py``; these names stay importable here."""

from ..checkpoint.writer import SKIP_SUFFIXES, tensor_bytes, write_checkpoint

__all__ = ["SKIP_SUFFIXES", "tensor_bytes", "write_checkpoint"]
