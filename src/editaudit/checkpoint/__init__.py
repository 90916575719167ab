"""Reading checkpoints safely: safetensors headers, folders, shard indexes, tensors."""

from .header import DTYPES, Header, TensorInfo, read_header
from .folder import Checkpoint, FolderNote, open_checkpoint

__all__ = ["DTYPES", "Header", "TensorInfo", "read_header", "Checkpoint", "FolderNote", "open_checkpoint"]
