"""The scan's rules: stable ids (SARIF), levels and which rules mean a knowledge edit.

Kept apart from the classifier (which needs torch) so that the app and reports can read them cheaply.
"""

from __future__ import annotations

# Stable rule ids (SARIF); severity levels as SARIF uses them.
RULES: dict[str, tuple[str, str, str]] = {
    # id: (short name, level, description)
    "EA101": ("rome-like-edit", "error", "Rank-one change in one layer's MLP output matrix (ROME-like knowledge edit)"),
    "EA102": ("memit-like-edit", "error", "Low-rank changes in MLP output matrices of consecutive layers (MEMIT/AlphaEdit-like edit)"),
    "EA103": ("hidden-low-rank-edit", "error", "Low-rank components standing out of a dense change (edit hidden under fine-tuning)"),
    "EA104": ("merged-lora", "warning", "Low-rank changes in attention projections (merged LoRA adapter)"),
    "EA105": ("dense-finetune", "warning", "Dense full-rank changes (fine-tuning)"),
    "EA106": ("low-rank-change", "warning", "Other low-rank weight change"),
    "EA107": ("nonfinite-weights", "error", "NaN or Inf values in the suspect's weights"),
    "EA108": ("embedding-change", "warning", "Embedding or unembedding rows changed"),
    "EA109": ("vector-change", "note", "Norm weights or biases changed"),
    "EA110": ("rounding-only", "note", "Changes no larger than the stored dtype's rounding (dtype conversion)"),
    "EA111": ("ft-l-edit", "error", "Dense change confined to one or two layers' MLP output (FT-L-like edit)"),
    "EA201": ("remote-code", "warning", "config.json asks for remote code (auto_map)"),
    "EA202": ("python-files", "warning", "Python files in the checkpoint folder"),
    "EA203": ("pickle-files", "note", "Pickle weight files present (never loaded)"),
    "EA210": ("duplicate-tensors", "warning", "A tensor stored in more than one shard"),
    "EA211": ("unindexed-tensors", "warning", "Tensors in shards that the index does not map"),
    "EA212": ("bad-tokenizer-config", "warning", "tokenizer_config.json could not be read"),
    "EA213": ("extra-weight-files", "note", "Weight files a loader ignores"),
    "EA220": ("chat-template", "note", "Chat template present (compiled only in Jinja's sandbox)"),
    "EA221": ("chat-template-error", "warning", "Chat template does not compile in Jinja's sandbox"),
    "EA222": ("chat-template-unusual", "warning", "Chat template uses unusual constructs"),
    "EA230": ("adapter-knowledge-edit", "warning", "peft adapter shaped like a knowledge edit (few rank-one MLP output changes in a narrow layer range)"),
    "EA231": ("task-adapter", "note", "peft adapter shaped like a task adapter (read as the change to its base)"),
}
LEVELS = {"note": 0, "warning": 1, "error": 2}
EDIT_RULES = frozenset({"EA101", "EA102", "EA103", "EA111"})
