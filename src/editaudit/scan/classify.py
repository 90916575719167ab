"""From per-tensor change statistics to findings about the checkpoint as a whole.

Signatures (what each editing method leaves in the weights):
- ROME-like: a rank-one change in one layer's MLP output matrix.
- MEMIT/AlphaEdit-like: low-rank changes in the MLP output matrices of a run of consecutive layers.
- merged LoRA: low-rank changes in attention projections (often across many layers, one rank).
- dense fine-tune: full-rank changes across many matrices.
- hidden edit: a dense change whose leading components stand far above its own bulk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .names import TensorName
from .rules import EDIT_RULES, LEVELS, RULES  # noqa: F401  (re-exported)
from .spectral import DeltaStats


@dataclass
class Changed:
    """One changed tensor with its parsed name and statistics (and top singular vectors if kept)."""

    name: TensorName
    stats: DeltaStats
    vectors: tuple | None = None  # (U, S, V) in the tensor's own orientation
    rows: dict | None = None  # embeddings: which token rows changed


@dataclass
class Finding:
    rule: str
    message: str
    tensors: list[str]
    layers: list[int] = field(default_factory=list)
    rank: int | None = None
    data: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return RULES[self.rule][0]

    @property
    def level(self) -> str:
        return RULES[self.rule][1]

    def to_dict(self) -> dict:
        return {
            "rule": self.rule, "kind": self.kind, "level": self.level, "message": self.message,
            "layers": self.layers, "tensors": self.tensors, "rank": self.rank, **self.data,
        }


def _runs(layers: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for layer in sorted(set(layers)):
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return runs


def classify(changed: list[Changed], n_layers: int) -> list[Finding]:
    findings: list[Finding] = []
    weights = [c for c in changed if c.name.param == "weight" or c.stats.singular_values]

    for c in changed:
        if c.stats.kind == "nonfinite":
            findings.append(Finding("EA107", f"{c.stats.nonfinite} non-finite values in {c.name.name}", [c.name.name], _layer(c)))

    # MLP output matrices with low-rank changes: single layers are ROME-like, runs are MEMIT-like
    mlp_low = [c for c in weights if c.name.role == "mlp_out" and c.stats.kind in ("rank-one", "low-rank")]
    by_layer = {c.name.layer: c for c in mlp_low if c.name.layer is not None}
    for run in _runs(list(by_layer)):
        members = [by_layer[layer] for layer in run]
        ranks = [m.stats.rank_above_noise if m.stats.kind == "low-rank" else 1 for m in members]
        tensors = [m.name.name for m in members]
        if len(run) == 1:
            m = members[0]
            if m.stats.kind == "rank-one":
                findings.append(Finding(
                    "EA101", f"rank-one edit in layer {run[0]} MLP output ({m.stats.rel_change:.2%} of the matrix)",
                    tensors, run, 1,
                ))
            else:
                findings.append(Finding(
                    "EA102", f"rank-{ranks[0]} change in layer {run[0]} MLP output (several edits in one layer)",
                    tensors, run, ranks[0],
                ))
        else:
            findings.append(Finding(
                "EA102", f"low-rank edits in MLP outputs of layers {run[0]}–{run[-1]} (ranks {ranks})",
                tensors, run, max(ranks), {"ranks": ranks},
            ))

    # a dense change with components standing out of its own bulk: an edit under later fine-tuning
    _peer_check(weights)
    for c in weights:
        if c.stats.kind == "dense+spike":
            findings.append(Finding(
                "EA103",
                f"{c.stats.spikes} component(s) stand {c.stats.singular_values[0] / max(c.stats.bulk, 1e-30):.0f}× above "
                f"the dense change in {c.name.name}",
                [c.name.name], _layer(c), c.stats.spikes,
            ))

    # attention low-rank: merged LoRA
    attn_low = [c for c in weights if c.name.role.startswith("attn") and c.stats.kind in ("rank-one", "low-rank")]
    if attn_low:
        ranks = sorted({c.stats.rank_above_noise for c in attn_low})
        layers = sorted({c.name.layer for c in attn_low if c.name.layer is not None})
        modules = sorted({c.name.module for c in attn_low})
        findings.append(Finding(
            "EA104", f"low-rank (rank {'/'.join(map(str, ranks))}) changes in {len(attn_low)} attention matrices "
            f"({', '.join(modules)}) over {len(layers)} layer(s)", [c.name.name for c in attn_low], layers, max(ranks),
            {"modules": modules},
        ))

    other_low = [c for c in weights if c.stats.kind in ("rank-one", "low-rank")
                 and c.name.role not in ("mlp_out",) and not c.name.role.startswith("attn")
                 and c.name.role not in ("embed", "unembed")]
    if other_low:
        findings.append(Finding(
            "EA106", f"low-rank changes in {len(other_low)} other matrices", [c.name.name for c in other_low],
            sorted({c.name.layer for c in other_low if c.name.layer is not None}),
            max(c.stats.rank_above_noise for c in other_low),
        ))

    dense = [c for c in weights if c.stats.kind in ("dense", "dense+spike") and c.name.role not in ("embed", "unembed")]
    if dense and _ft_l_like(dense, weights):
        layers = sorted({c.name.layer for c in dense})
        findings.append(Finding(
            "EA111", f"dense change confined to the MLP output of layer(s) {', '.join(map(str, layers))} and nothing "
            "else (constrained fine-tuning of one layer, FT-L-like)", [c.name.name for c in dense], layers, None,
            {"rel_change": [round(c.stats.rel_change, 6) for c in dense]},
        ))
    elif dense:
        layers = sorted({c.name.layer for c in dense if c.name.layer is not None})
        findings.append(Finding(
            "EA105", f"dense changes in {len(dense)} matrices over {len(layers)} of {n_layers} layers (fine-tuning)",
            [c.name.name for c in dense], layers, None,
            {"median_rel_change": sorted(c.stats.rel_change for c in dense)[len(dense) // 2]},
        ))

    emb = [c for c in changed if c.name.role in ("embed", "unembed") and c.stats.kind not in ("rounding", "nonfinite")]
    if emb:
        rows = {c.name.name: c.rows for c in emb if c.rows}
        detail = "; ".join(f"{n}: {r['changed']} of {r['total']} token rows" for n, r in rows.items())
        findings.append(Finding("EA108", f"{len(emb)} embedding/unembedding matrices changed" + (f" ({detail})" if detail else ""),
                                [c.name.name for c in emb], data={"rows": rows} if rows else {}))

    vec = [c for c in changed if c.stats.kind == "vector"]
    if vec:
        findings.append(Finding("EA109", f"{len(vec)} norm or bias vectors changed", [c.name.name for c in vec],
                                sorted({c.name.layer for c in vec if c.name.layer is not None})))

    rounding = [c for c in changed if c.stats.kind == "rounding"]
    if rounding:
        findings.append(Finding("EA110", f"{len(rounding)} tensors differ only by rounding of the stored dtype",
                                [c.name.name for c in rounding]))
    return findings


PEER_RATIO = 3.0  # a hidden edit's top component also stands this far above the same matrix in other layers
LONE_GAP = 5.0  # without enough peers to compare with, the cliff alone must be this steep


def _peer_check(weights: list[Changed]) -> None:
    """Demote ``dense+spike`` tensors whose top component is ordinary for their role.

    A fine-tune moves every layer's copy of a matrix alike (attention output matrices, for one, often
    gain a dominant direction everywhere), while an edit stands out of its peers in other layers.
    """
    by_role: dict[str, list[Changed]] = {}
    for c in weights:
        if c.name.layer is not None and c.stats.kind in ("dense", "dense+spike") and c.stats.singular_values:
            by_role.setdefault(c.name.role, []).append(c)
    for c in weights:
        if c.stats.kind != "dense+spike":
            continue
        if c.name.layer is None:  # embeddings: frequent tokens' rows move together under any fine-tune
            c.stats.kind = "dense"
            continue
        peers = [p.stats.singular_values[0] for p in by_role.get(c.name.role, []) if p is not c]
        if len(peers) >= 4:
            median = sorted(peers)[len(peers) // 2]
            standout = c.stats.singular_values[0] / max(median, 1e-30)
            c.stats.peer_ratio = standout
            ok = standout >= PEER_RATIO
        else:
            ok = c.stats.gap >= LONE_GAP
        if not ok:
            c.stats.kind = "dense"


FT_L_MAX_LAYERS = 2  # FT-L tunes one layer's MLP output; a fine-tune of the whole model moves far more


def _ft_l_like(dense: list[Changed], weights: list[Changed]) -> bool:
    """Only MLP output matrices of at most two layers changed, densely: an edit by constrained fine-tuning."""
    if any(c.name.role != "mlp_out" or c.name.layer is None for c in dense):
        return False
    if len({c.name.layer for c in dense}) > FT_L_MAX_LAYERS:
        return False
    others = [c for c in weights if c not in dense and c.stats.kind not in ("rounding",)]
    return not others


def _layer(c: Changed) -> list[int]:
    return [c.name.layer] if c.name.layer is not None else []


def verdict(findings: list[Finding]) -> str:
    """``edited`` (a knowledge edit), ``modified`` (other weight changes), ``clean`` (identical or rounding only)."""
    rules = {f.rule for f in findings}
    if rules & EDIT_RULES:
        return "edited"
    if rules & {"EA104", "EA105", "EA106", "EA107", "EA108", "EA109"}:
        return "modified"
    return "clean"


def overall_kind(findings: list[Finding]) -> str:
    rules = [f.rule for f in findings]
    kinds = []
    if "EA101" in rules:
        kinds.append("rome-like")
    if "EA102" in rules:
        kinds.append("memit-like")
    if "EA103" in rules:
        kinds.append("hidden-edit")
    if "EA111" in rules:
        kinds.append("ft-l-like")
    if "EA104" in rules:
        kinds.append("merged-lora")
    if "EA105" in rules:
        kinds.append("dense-finetune")
    return "+".join(kinds) if kinds else ("unchanged" if not findings else "minor")
