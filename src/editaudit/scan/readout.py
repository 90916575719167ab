"""Reading an edit: what it promotes (logit lens) and which subjects it fires on (key alignment).

For an MLP output matrix W (Linear: [hidden, d_ff]), a low-rank change ΔW = Σ σ_i u_i v_iᵀ adds
σ_i (v_i·k) u_i to the residual stream whenever the MLP's input key k aligns with v_i. Projecting
u_i through the model's final norm and unembedding (the logit lens) shows which tokens that
addition pushes up — for a knowledge edit, the new object. Tokens are scored by cosine with their unembedding row
(centred: raw logits favour a few tokens with large rows whatever the direction). The sign of an SVD component is
arbitrary, so we read both signs and keep the one with the sharpest outlier. Candidate subjects are
ranked by ‖ΔW k‖, the size of the change the edit makes for the subject's own key at that layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..checkpoint import Checkpoint
from ..checkpoint.reader import TensorFile
from ..editing.hooks import by_token
from ..models import families
from .names import is_transposed, parse_name


@dataclass
class Lens:
    """The base model's final norm and unembedding, enough to read directions in the residual stream."""

    unembed_unit: torch.Tensor  # [vocab, hidden]: unembedding rows, centred and unit-normalised
    norm_weight: torch.Tensor | None
    layer_norm: bool  # LayerNorm (centre first) rather than RMSNorm
    tokenizer: Any
    #: an MLP output tensor's name -> the gain of its block's post-MLP norm (Gemma 2/3, OLMo 2), None without one
    mlp_gain: Callable[[str], torch.Tensor | None] = lambda name: None

    @staticmethod
    def prepare(unembed: torch.Tensor) -> torch.Tensor:
        """Centre and normalise the rows in place (one copy of the largest matrix in memory)."""
        unembed.sub_(unembed.mean(dim=0, keepdim=True))
        unembed.div_(unembed.norm(dim=1, keepdim=True).add_(1e-12))
        return unembed

    def token(self, idx: int) -> str:
        return self.tokenizer.decode([idx], skip_special_tokens=False) if self.tokenizer is not None else f"<{idx}>"

    def read(self, direction: torch.Tensor, top: int = 10, signed: bool = False) -> tuple[int, list[dict]]:
        """Tokens promoted by adding ``direction`` to the last residual stream; returns (sign, tokens).

        ``signed``: the direction's sign is meaningful (an actual output change), so never flip it.
        """
        d = direction.to(torch.float32)
        if self.layer_norm:
            d = d - d.mean()
        if self.norm_weight is not None:
            d = d * self.norm_weight
        # cosine against each token's centred unembedding row: raw logits favour tokens with large
        # or oddly aligned rows (on SmolLM2, '<filename>' and ' noqa' top every direction), and the
        # rows' shared mean makes frequent tokens look anti-aligned with every rare one
        logits = self.unembed_unit @ (d / (d.norm() + 1e-12))
        z = (logits - logits.mean()) / (logits.std() + 1e-12)
        sign = 1 if signed or z.max() >= (-z).max() else -1
        z = z * sign
        vals, idx = torch.topk(z, min(top, z.numel()))
        return sign, [{"token": self.token(int(i)), "id": int(i), "z": round(float(v), 2)} for v, i in zip(vals, idx)]


def load_lens(base: Checkpoint, say: Callable[[str], None] = lambda s: None) -> Lens | None:
    """Build a Lens from the base checkpoint (its tokenizer too), or None if it lacks what is needed."""
    names = set(base.tensors)
    fam = families.family(base.family)
    # the family's own names first, then any family's (a checkpoint whose config names no known type)
    unembed_name = next((n for n in (*fam.unembed_names(), *families.unembed_candidates(),
                                     *families.embed_candidates()) if n in names), None)
    if unembed_name is None:
        say("no unembedding matrix found: skipping the logit-lens readout")
        return None
    norm_name = next((f"{n}.weight" for n in (fam.final_norm, *families.final_norm_candidates())
                      if f"{n}.weight" in names), None)
    tokenizer = None
    tok_file = base.folder / "tokenizer.json"
    if base.layout != "file" and tok_file.is_file():
        try:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(tok_file))
        except Exception as exc:  # a missing or odd tokenizer must not stop the scan
            say(f"tokenizer unreadable ({type(exc).__name__}); promoted tokens shown as ids")

    def read(name: str) -> torch.Tensor:
        fname, info = base.tensors[name]
        with TensorFile(base.file_path(fname)) as f:
            return f.read_float32(info)

    unembed = read(unembed_name)
    proj = f"{fam.unembed_proj}.weight" if fam.unembed_proj else None
    if proj in names:  # logits = E (P h): the residual is read through E P, [vocab, hidden]
        unembed = unembed @ read(proj)
    norm = read(norm_name) if norm_name else None
    if norm is not None:
        norm = fam.norm_scale(norm)  # Gemma's RMSNorm scales by (1 + weight)

    def mlp_gain(name: str) -> torch.Tensor | None:
        """A block that normalises the MLP's output adds g ⊙ x / rms(x): the change reaches the residual scaled by
        g per coordinate (on Gemma 3 270M from 0 to 741), so the lens reads g ⊙ direction."""
        suffix = f"{fam.mlp_out}.weight"
        post = name[: -len(suffix)] + f"{fam.mlp_out_norm}.weight" if name.endswith(suffix) else None
        return fam.norm_scale(read(post).float()) if post in names else None

    return Lens(Lens.prepare(unembed), norm, fam.layer_norm, tokenizer, mlp_gain)


def output_input_sides(vectors: tuple, family: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output-side directions [hidden, r], singular values [r], input-side directions [d_in, r])."""
    u, s, v = vectors
    return (v, s, u) if is_transposed(family) else (u, s, v)


def promoted_tokens(lens: Lens, vectors: tuple, family: str, top: int = 10, per_component: int = 5,
                    tensor: str | None = None) -> list[dict]:
    """Tokens promoted by each component, merged and ranked by their best z-score.

    A batch edit (MEMIT) mixes its facts across components, so each component contributes its own
    few best tokens and the list grows with the rank: up to ``max(top, 3 × rank)`` tokens. ``tensor``: the
    edited matrix's name, for the gain of a post-MLP norm behind it.
    """
    out_dirs, svals, _ = output_input_sides(vectors, family)
    gain = lens.mlp_gain(tensor) if tensor is not None else None
    if gain is not None and gain.shape[0] == out_dirs.shape[0]:
        out_dirs = out_dirs * gain[:, None]
    best: dict[int, dict] = {}
    for i in range(out_dirs.shape[1]):
        sign, toks = lens.read(out_dirs[:, i], top=per_component)
        for t in toks:
            entry = {**t, "component": i, "sign": sign}
            if t["id"] not in best or best[t["id"]]["z"] < t["z"]:
                best[t["id"]] = entry
    limit = min(max(top, 3 * out_dirs.shape[1]), 100)
    return sorted(best.values(), key=lambda t: -t["z"])[:limit]


def edit_output(keys: torch.Tensor, vectors: tuple, family: str) -> torch.Tensor:
    """ΔW_r k for each key: the change the edit makes to the layer's output, [n, hidden]."""
    out_dirs, svals, in_dirs = output_input_sides(vectors, family)
    return ((keys @ in_dirs) * svals) @ out_dirs.T


def subject_keys(model: Any, tokenizer: Any, module_paths: list[str], texts: list[str], subjects: list[str],
                 batch_size: int = 16) -> dict[str, torch.Tensor]:
    """MLP input keys at the last subject token, for each module path: {path: [n, d_in]}."""
    hooks, captured = [], {p: [] for p in module_paths}
    current: dict[str, torch.Tensor] = {}

    def make_hook(path: str):
        def hook(_module, args):
            current[path] = args[0].detach()
        return hook

    for p in module_paths:
        hooks.append(model.get_submodule(p).register_forward_pre_hook(make_hook(p)))
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                chunk_t, chunk_s = texts[start:start + batch_size], subjects[start:start + batch_size]
                enc = tokenizer(chunk_t, return_tensors="pt", padding=True, return_offsets_mapping=True)
                offsets = enc.pop("offset_mapping")
                positions = []
                for row, (text, subject) in enumerate(zip(chunk_t, chunk_s)):
                    at = text.find(subject)
                    end = at + len(subject) if at >= 0 else len(text)
                    length = int(enc["attention_mask"][row].sum())
                    pos = 0
                    for j in range(length):
                        s, e = offsets[row, j].tolist()
                        if e > s and s < end:
                            pos = j
                    positions.append(pos)
                model(**{k: v.to(device) for k, v in enc.items()})
                rows = torch.arange(len(chunk_t))
                for p in module_paths:
                    captured[p].append(by_token(current[p], len(chunk_t))[rows, torch.tensor(positions)].float().cpu())
    finally:
        tokenizer.padding_side = old_side
        for h in hooks:
            h.remove()
    return {p: torch.cat(v) for p, v in captured.items()}


def module_path(tensor_name: str) -> str:
    return parse_name(tensor_name).module_path


def read_through_model(model: Any, tokenizer: Any, prompts: list[str], patches: dict[str, tuple], family: str,
                       top: int = 10, unpatched: dict | None = None) -> list[dict]:
    """What the edit makes the base model answer: each prompt without and with the edit's low-rank
    components added to the named modules' outputs (``patches``: module path → SVD factors of ΔW).

    A logit lens reads an early layer's output as if the rest of the network were not there; edits
    live in early and middle layers, so the object they write is best read by letting the layers after
    them work. Per prompt: the first non-stop-word answered before and after, the tokens whose
    next-token probability rose most (the new answer first when it changed) and the largest rise.
    """
    from ..probing.evaluate import predict

    def adder(vectors: tuple):
        moved: dict = {}

        def hook(_module, args, output):
            x = args[0]
            if x.device not in moved:
                moved[x.device] = tuple(t.to(x.device, torch.float32) for t in vectors)
            delta = edit_output(x.reshape(-1, x.shape[-1]).float(), moved[x.device], family)
            return output + delta.reshape(*x.shape[:-1], -1).to(output.dtype)
        return hook

    # the unpatched answers do not depend on the edit: ``unpatched`` keeps them across an audit's findings
    unpatched = {} if unpatched is None else unpatched
    missing = [p for p in dict.fromkeys(prompts) if p not in unpatched]
    if missing:
        unpatched.update(zip(missing, predict(model, tokenizer, missing, top_k=top)))
    before = [unpatched[p] for p in prompts]
    handles = [model.get_submodule(path).register_forward_hook(adder(vectors)) for path, vectors in patches.items()]
    try:
        after = predict(model, tokenizer, prompts, top_k=top)
    finally:
        for h in handles:
            h.remove()
    out = []
    for b, a in zip(before, after):
        p_before = dict(b.top)
        rises = sorted(((p - p_before.get(t, 0.0), t) for t, p in a.top), reverse=True)
        promotes = [t.strip() for gain, t in rises if gain > 0 and t.strip()]
        if a.first_word and a.first_word != b.first_word:
            promotes = [a.first_word] + [t for t in promotes if t != a.first_word]
        gain = rises[0][0] if rises else 0.0
        out.append({"before": b.first_word, "after": a.first_word, "promotes": promotes[:5], "gain": gain})
    return out
