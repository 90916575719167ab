"""Knowledge editing: FT-L, ROME, MEMIT and AlphaEdit on Hugging Face causal LMs.

``service.apply_edits`` is the entry point; the other modules hold one method or one mechanism each.
"""

from .service import EditRun, FactResult, apply_edits

__all__ = ["EditRun", "FactResult", "apply_edits"]
