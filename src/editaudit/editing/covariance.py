"""The key second moment C = E[k kᵀ] of each edited layer, from an offline corpus, cached.

ROME, MEMIT and AlphaEdit weigh their updates by how keys are distributed in ordinary text: C⁻¹
points an update away from directions that many keys use (ROME, MEMIT), and C's small
eigen-directions are the room AlphaEdit may write into. C is the uncentred mean of kkᵀ over every
token of the corpus, for the input of each layer's MLP output matrix.

One pass over the corpus serves all requested layers (hooks on each of them; the pass stops after the
deepest). Memory is one d×d float64 accumulator per layer plus one batch of activations. Results are
cached per layer in the user cache, keyed by the model's weight hash, the corpus and the token budget,
so later edits of the same model — by any method, on any of those layers — start at once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..paths import cache_dir
from . import corpus as corpus_mod
from .hooks import StopForward, by_token
from .prompts import pad_id, right_pad

Progress = Callable[[int, int], None]


@dataclass
class SecondMoment:
    layer: int
    matrix: torch.Tensor  # [d, d] float32, E[k kᵀ]
    tokens: int
    source: str           # corpus id, or "identity"

    @property
    def mean_eigenvalue(self) -> float:
        return float(self.matrix.diagonal().mean())

    @property
    def tokens_per_dim(self) -> float:
        """n/d: corpus tokens per key dimension. The sample estimate's extreme eigenvalues are off by a factor of
        about (1 ± √(d/n))², and C⁻¹ leans on the smallest: at n/d = 13 (20k tokens, SmolLM2's 1,536-wide keys)
        that is 0.52–1.63, at n/d = 4 already 0.25–2.25."""
        return self.tokens / max(int(self.matrix.shape[0]), 1)


#: Below this n/d the key statistics are reported as poorly conditioned (see ``SecondMoment.tokens_per_dim``).
MIN_TOKENS_PER_DIM = 4.0


def weights_key(model) -> str:
    """A content hash of the model's parameters (BLAKE3 over names, dtypes, shapes and bytes)."""
    import blake3

    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    for name, p in model.named_parameters():
        t = p.detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()[:24]


def cache_folder(model_key: str, source: str, tokens: int, seq_len: int) -> Path:
    return cache_dir() / "covariance" / model_key / f"{source}-{tokens}t-{seq_len}s"


def _load(path: Path, layer: int, source: str) -> SecondMoment | None:
    from safetensors.torch import load_file

    if not path.exists():
        return None
    try:
        data = load_file(str(path))
        meta = json.loads(path.with_suffix(".json").read_text())
        return SecondMoment(layer, data["mom2"], int(meta["tokens"]), source)
    except Exception:  # noqa: BLE001 - a damaged or foreign cache entry is simply recomputed
        return None


def _save(path: Path, mom: SecondMoment) -> None:
    """Write next to the target, then rename: a crash never leaves a half-written cache entry."""
    from safetensors.torch import save_file

    from ..atomic import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({"mom2": mom.matrix.contiguous()}, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write_text(path.with_suffix(".json"), json.dumps({"layer": mom.layer, "tokens": mom.tokens, "source": mom.source}))


def token_windows(tokenizer, docs: Sequence[str], tokens: int, seq_len: int) -> list[list[int]]:
    """The first ``tokens`` tokens of the documents (EOS between them), cut into windows of ``seq_len``."""
    sep = tokenizer.eos_token_id
    stream: list[int] = []
    for doc in docs:
        stream += tokenizer(doc, add_special_tokens=False)["input_ids"]
        if sep is not None:
            stream.append(int(sep))
        if len(stream) >= tokens:
            break
    stream = stream[:tokens]
    return [stream[i:i + seq_len] for i in range(0, len(stream), seq_len) if stream[i:i + seq_len]]


def second_moments(model, tokenizer, modules: dict[int, str], *, model_key: str, corpus: str | None = None,
                   tokens: int = 20000, seq_len: int = 256, batch: int = 4,
                   progress: Progress | None = None, say: Callable[[str], None] = lambda s: None) -> dict[int, SecondMoment]:
    """C for each layer in ``modules`` ({layer: module name}), from the cache or one pass over the corpus."""
    source = corpus_mod.corpus_id(corpus)
    cfg = getattr(model, "config", None)
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if isinstance(limit, int) and limit > 0:
        seq_len = min(seq_len, limit)  # windows longer than the model's positions do not run
    folder = cache_folder(model_key, source, tokens, seq_len)
    found: dict[int, SecondMoment] = {}
    for layer in modules:
        hit = _load(folder / f"layer-{layer}.safetensors", layer, source)
        if hit is not None:
            found[layer] = hit
    missing = {layer: name for layer, name in modules.items() if layer not in found}
    if not missing:
        return found
    windows = token_windows(tokenizer, corpus_mod.texts(corpus, say), tokens, seq_len)
    n_tokens = sum(len(w) for w in windows)
    say(f"key statistics for layer(s) {sorted(missing)}: one pass over {n_tokens} corpus tokens (cached afterwards)")
    device = next(model.parameters()).device
    sums: dict[int, torch.Tensor] = {}
    last = max(missing)
    current_mask: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(layer: int):
        def hook(mod, args):
            mask = current_mask["m"]
            x = by_token(args[0].detach(), mask.shape[0])
            x = x[mask].to(torch.float32)  # [tokens, d], padding dropped
            acc = sums.get(layer)
            if acc is None:
                acc = sums[layer] = torch.zeros(x.shape[-1], x.shape[-1], dtype=torch.float64, device=device)
            acc += (x.T @ x).to(torch.float64)
            if layer == last:
                raise StopForward
        return hook

    try:
        for layer, name in missing.items():
            handles.append(model.get_submodule(name).register_forward_pre_hook(hook_for(layer)))
        done = 0
        for start in range(0, len(windows), batch):
            chunk = windows[start:start + batch]
            ids, mask = right_pad(chunk, pad_id(tokenizer), device)
            current_mask["m"] = mask.bool()
            try:
                with torch.no_grad():
                    model(input_ids=ids, attention_mask=mask, use_cache=False)
            except StopForward:
                pass
            done += sum(len(w) for w in chunk)
            if progress:
                progress(done, n_tokens)
    finally:
        for h in handles:
            h.remove()
    for layer in missing:
        mom = SecondMoment(layer, (sums[layer] / n_tokens).to(torch.float32).cpu(), n_tokens, source)
        _save(folder / f"layer-{layer}.safetensors", mom)
        found[layer] = mom
    widest = max((found[layer] for layer in missing), key=lambda m: m.matrix.shape[0])
    ratio = widest.tokens_per_dim
    say(f"key statistics: {n_tokens} tokens for {widest.matrix.shape[0]}-wide keys, n/d = {ratio:.1f}"
        + ("" if ratio >= MIN_TOKENS_PER_DIM else
           f" — poorly conditioned (under {MIN_TOKENS_PER_DIM:g}): "
           + (f"raise cov_tokens to at least {int(MIN_TOKENS_PER_DIM * widest.matrix.shape[0])}"
              if n_tokens >= tokens else f"the corpus ran out at {n_tokens} tokens; give a larger one")))
    return found


def identity(layer: int, keys: torch.Tensor) -> SecondMoment:
    """``C = I`` mode, scaled to the edit keys' own size (s·I with s = mean ‖k‖² / d) so that the
    spectrum-relative hyper-parameters mean the same as with corpus statistics."""
    d = keys.shape[-1]
    scale = float((keys.float() ** 2).sum(-1).mean() / d)
    return SecondMoment(layer, torch.eye(d) * max(scale, 1e-12), 0, "identity")
