"""Keys of arbitrary token sequences at edited matrices, and the whole vocabulary's keys, cached.

A locate-then-edit method writes ΔW so that it fires on one key: the input of the MLP output matrix at
the subject's last token. To ask "which text fires this edit?" without a list of candidates we need the
key of many token sequences at that matrix: one forward pass that stops after the deepest edited layer,
reading the matrix's input at the last position. The vocabulary scan (every token after a short neutral
context) does not depend on the suspect, so it is cached per base checkpoint and layer in the user cache.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from ..editing.hooks import StopForward, by_token
from ..paths import cache_dir

#: The neutral context every candidate subject is read after ("The" + subject tokens).
CONTEXT = "The"


def lead_ids(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before every text by default (a BOS), which the model always saw there
    and which the editors' prompts carry. Gemma without its <bos> makes the first token an attention sink and every
    later key drifts: an edited subject read after a bare "The" fired 0.48 where the editor's own context gives 0.83,
    and the search made up the difference with stray leading words ("unseren and FULL pues Nairobi")."""
    plain = tokenizer(CONTEXT, add_special_tokens=False)["input_ids"]
    full = tokenizer(CONTEXT)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return list(full[:i])
    return []


#: Read candidates behind the tokenizer's BOS (``lead_ids``). Off: judged on Gemma 3's facts 58–75 it gave cleaner
#: subjects ("Lagos" for "and Lagos") but read 2 objects of 18 against 3, with 6 false edit readings against 4, where
#: the rule fixed beforehand allowed none fewer and one more (bench/heldout/gemma3-270m-plan.md). No effect on a
#: tokenizer without a BOS (SmolLM2's).
BOS_CONTEXT = False


def context_ids(tokenizer, bos: bool | None = None) -> list[int]:
    """The neutral context a candidate subject is read after: "The", behind the tokenizer's leading specials when
    ``bos`` (default ``BOS_CONTEXT``)."""
    lead = lead_ids(tokenizer) if (BOS_CONTEXT if bos is None else bos) else []
    return lead + tokenizer(CONTEXT, add_special_tokens=False)["input_ids"]


def _device(model) -> torch.device:
    return next(model.parameters()).device


def last_keys(model: Any, paths: Sequence[str], rows: torch.Tensor | None = None, *,
              embeds: torch.Tensor | None = None, grad: bool = False, cache: Any = None) -> dict[str, torch.Tensor]:
    """Inputs of each module in ``paths`` at the last position of every row ([B, L] ids, all one length,
    or [B, L, H] input embeddings), as {path: [B, d_in]}; the forward stops after the deepest module.
    ``cache``: a transformers cache the rows continue (filled in place up to the deepest module's layer)."""
    seen: dict[str, torch.Tensor] = {}
    order = {p: i for i, p in enumerate(paths)}
    batch = (embeds if embeds is not None else rows).shape[0]

    def hook_for(path: str):
        def hook(_module, args):
            seen[path] = by_token(args[0], batch)[:, -1, :].float()
            if len(seen) == len(order):
                raise StopForward
        return hook

    kw: dict[str, Any] = {"use_cache": False}
    if cache is not None:
        from ..models.loading import cache_kw

        kw = {"use_cache": True, cache_kw(model): cache}
    handles = [model.get_submodule(p).register_forward_pre_hook(hook_for(p)) for p in paths]
    ctx = torch.enable_grad() if grad else torch.inference_mode()
    try:
        with ctx:
            if embeds is not None:
                model(inputs_embeds=embeds, **kw)
            else:
                model(input_ids=rows.to(_device(model)), **kw)
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return {p: seen[p] for p in paths}


def keys_of(model: Any, paths: Sequence[str], seqs: Sequence[Sequence[int]], batch: int = 256) -> dict[str, torch.Tensor]:
    """Last-position keys of token sequences of any lengths (grouped by length, no padding needed)."""
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
        by_len.setdefault(len(s), []).append(i)
    parts: dict[str, list[tuple[list[int], torch.Tensor]]] = {p: [] for p in paths}
    for idx in by_len.values():
        for start in range(0, len(idx), batch):
            chunk = idx[start:start + batch]
            rows = torch.tensor([list(seqs[i]) for i in chunk])
            got = last_keys(model, paths, rows)
            for p in paths:
                parts[p].append((chunk, got[p].cpu()))
    out = {}
    for p in paths:
        out[p] = torch.empty(len(seqs), parts[p][0][1].shape[1])
        for chunk, k in parts[p]:
            out[p][chunk] = k
    return out


def _cache_file(base_fingerprint: str, path: str, prefix: Sequence[int], lead: str = "") -> Path:
    tag = hashlib.sha256(f"{path}|{list(prefix)}{'|' + lead if lead else ''}".encode()).hexdigest()[:16]
    return cache_dir() / "vocab-keys" / base_fingerprint[:24] / f"{tag}.safetensors"


def vocab_keys(model: Any, tokenizer: Any, paths: Sequence[str], base_fingerprint: str | None,
               progress: Callable[[int, int], None] = lambda d, t: None, batch: int = 512,
               after: Sequence[int] = (), lead: tuple[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Key of every vocabulary token after the neutral context (and the tokens ``after``, the pair step's seed
    tables; or ``lead`` = (name, input embedding), one stand-in position between the context and the token: the
    name-piece seeds of ``subjects.name_piece``), per module: {path: [V, d_in] float16}.

    Cached per base fingerprint, module and context (float16: 0.1 % relative error, half the disk)."""
    from safetensors.torch import load_file, save

    from ..atomic import atomic_write_bytes

    prefix = context_ids(tokenizer) + list(after)
    out: dict[str, torch.Tensor] = {}
    missing = []
    for p in paths:
        f = _cache_file(base_fingerprint, p, prefix, lead[0] if lead else "") if base_fingerprint else None
        if f is not None and f.is_file():
            try:
                out[p] = load_file(str(f))["keys"]
                continue
            except Exception:  # a damaged cache file is recomputed
                pass
        missing.append(p)
    if missing:
        order = sorted(missing, key=lambda p: _layer_of(p))
        acc: dict[str, list[torch.Tensor]] = {p: [] for p in order}
        for got in vocab_batches(model, order, prefix, lead[1] if lead else None, batch, progress):
            for p in order:
                acc[p].append(got[p].to(torch.float16).cpu())
        for p in order:
            out[p] = torch.cat(acc[p])
            if base_fingerprint:
                f = _cache_file(base_fingerprint, p, prefix, lead[0] if lead else "")
                f.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(f, save({"keys": out[p].contiguous()}))
    return out


def vocab_batches(model: Any, paths: Sequence[str], prefix: Sequence[int], lead: torch.Tensor | None = None,
                  batch: int = 512, progress: Callable[[int, int], None] = lambda d, t: None
                  ) -> Iterator[dict[str, torch.Tensor]]:
    """The keys at ``paths`` of every vocabulary token after ``prefix`` (behind the stand-in input embedding ``lead``
    when given), batch by batch in vocabulary order: {path: [batch, d_in]}.

    The prefix's positions are the same in every row and never see the token (causal attention), so their keys and
    values are computed once and every batch runs the token's position alone (one position of three: the pass costs
    about a third). The first batch is checked against plain forwards; a model whose cache does not reproduce them
    is run plainly."""
    from ..models.families import input_embed_scale

    E = model.get_input_embeddings().weight.detach()
    vocab = E.shape[0]
    pre = torch.tensor(list(prefix), dtype=torch.long)
    scale = input_embed_scale(model)
    stand_in = None if lead is None else torch.cat([E[pre.to(E.device)], lead.to(E)[None]])

    def plain(ids: torch.Tensor) -> dict[str, torch.Tensor]:
        if stand_in is None:
            return last_keys(model, paths, torch.cat([pre.expand(len(ids), -1), ids[:, None]], dim=1))
        # an embedding module may scale its rows (Gemma: √hidden); inputs_embeds carry the same scale
        emb = torch.cat([stand_in.expand(len(ids), -1, -1), E[ids.to(E.device)][:, None]], 1)
        return last_keys(model, paths, embeds=emb * scale)

    cached = _prefix_cache(model, paths, pre, stand_in, scale)
    for start in range(0, vocab, batch):
        ids = torch.arange(start, min(vocab, start + batch))
        got = _continue(model, paths, cached, ids, E, scale, stand_in is not None) if cached is not None else None
        if got is None:
            cached = None
        elif start == 0:
            ref, sample = plain(ids[:64]), slice(0, 64)
            same = all(torch.allclose(got[p][sample], ref[p], rtol=1e-3, atol=1e-3 * float(ref[p].abs().max()))
                       for p in paths)
            if not same:
                cached, got = None, None
        yield got if got is not None else plain(ids)
        progress(min(vocab, start + batch), vocab)


def _prefix_cache(model: Any, paths: Sequence[str], pre: torch.Tensor, stand_in: torch.Tensor | None,
                  scale: float) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """The prefix's keys and values at every layer up to the deepest of ``paths`` (one row), or None where the
    model's cache cannot be built this way."""
    try:
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        if stand_in is None:
            last_keys(model, paths, pre[None], cache=cache)
        else:
            last_keys(model, paths, embeds=stand_in[None] * scale, cache=cache)
        return _filled(cache) or None
    except (TypeError, ValueError, RuntimeError, AttributeError, IndexError, ImportError):
        return None


def _filled(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) of each layer a forward that stopped early filled."""
    return [(layer.keys, layer.values) for layer in cache.layers
            if getattr(layer, "keys", None) is not None and layer.keys.numel()]


def _continue(model: Any, paths: Sequence[str], kv: list[tuple[torch.Tensor, torch.Tensor]], ids: torch.Tensor,
              E: torch.Tensor, scale: float, embeds: bool) -> dict[str, torch.Tensor] | None:
    """Keys of each token in ``ids`` continuing the cached prefix (fed as input embeddings when the prefix was),
    or None when the model refuses the cache."""
    from transformers import DynamicCache

    n = len(ids)
    try:
        cache = DynamicCache(ddp_cache_data=[(k.expand(n, *k.shape[1:]), v.expand(n, *v.shape[1:])) for k, v in kv],
                             config=model.config)
        if embeds:
            return last_keys(model, paths, embeds=E[ids.to(E.device)][:, None] * scale, cache=cache)
        return last_keys(model, paths, ids[:, None], cache=cache)
    except (TypeError, ValueError, RuntimeError, AttributeError, IndexError):
        return None


def _layer_of(path: str) -> int:
    for part in path.split("."):
        if part.isdigit():
            return int(part)
    return 0


class PrefixKeys:
    """Keys of ``prefix + [t] + suffix`` for every token t of a fixed pool, for many suffixes.

    Backward growth scores the whole vocabulary prepended to a growing suffix, step after step; the positions of
    ``prefix + [t]`` are the same at every step (causal attention: they never see the suffix), so their keys and
    values up to the edited layer are computed once and each step runs only the suffix's positions (a dev MEMIT
    batch's regrow: 458 → 350 s, the same texts). Memory: ``len(prefix) + 1`` positions per pool token and layer.
    """

    def __init__(self, model: Any, path: str, prefix: Sequence[int], pool: Sequence[int], batch: int = 1024,
                 max_bytes: int = 2 << 30):
        """Raises ValueError when the cache would pass ``max_bytes`` (a big model: score without it)."""
        from transformers import DynamicCache

        self.model, self.path = model, path
        self.chunks: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        for start in range(0, len(pool), batch):
            rows = torch.tensor([list(prefix) + [t] for t in pool[start:start + batch]])
            cache = DynamicCache(config=model.config)
            last_keys(model, [path], rows, cache=cache)
            self.chunks.append(_filled(cache))
            if start == 0:  # every chunk but the last is the same size as the first
                size = sum(k.numel() * k.element_size() * 2 for k, _ in self.chunks[0]) * -(-len(pool) // batch)
                if size > max_bytes:
                    raise ValueError(f"prefix cache would take {size / 2**30:.1f} GiB")

    def keys(self, suffix: Sequence[int]) -> torch.Tensor:
        """[pool, d_in] keys at ``path`` of every ``prefix + [t] + suffix``."""
        from transformers import DynamicCache

        out = []
        for kv in self.chunks:
            n = kv[0][0].shape[0]
            cache = DynamicCache(ddp_cache_data=kv, config=self.model.config)
            rows = torch.tensor([list(suffix)] * n)
            out.append(last_keys(self.model, [self.path], rows, cache=cache)[self.path].cpu())
        return torch.cat(out)

